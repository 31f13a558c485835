"""Properties of engine.core.predictive: the information gain of what the few-shot posterior will do (issue 26)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, softmax

from engine.core import answer_models as AM
from engine.core import predictive as PR
from engine.core.scoring import expected_information_gain


def entropy(p):
    p = np.asarray(p)
    return float(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)))


def brute_force(log_post, terms, labels, C):
    """E_g for every image and group by plain loops over classes and dev samples (the module's definition)."""
    G, M, _ = terms.shape
    n = log_post.shape[0]
    out = np.zeros((n, G))
    for b in range(n):
        p = np.exp(log_post[b])
        for g in range(G):
            tot = 0.0
            for c in range(C):
                mine = [i for i in range(M) if labels[i] == c]
                if not mine:
                    tot += p[c] * entropy(p)
                    continue
                tot += p[c] * np.mean([entropy(softmax(log_post[b] + terms[g, i])) for i in mine])
            out[b, g] = entropy(p) - tot
    return out


@st.composite
def predictive_problem(draw, max_classes=5, max_groups=3):
    """log_post (n, C), terms (G, M, C), labels (M,), C: random terms, some classes maybe without samples."""
    C = draw(st.integers(1, max_classes))
    G = draw(st.integers(1, max_groups))
    n = draw(st.integers(1, 4))
    M = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, M)
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    terms = rng.normal(0, scale, (G, M, C))
    log_post = log_softmax(rng.normal(0, draw(st.sampled_from([0.5, 3.0])), (n, C)), axis=1)
    return log_post, terms, labels, C


@settings(max_examples=60, deadline=None)
@given(predictive_problem(), st.integers(1, 4), st.sampled_from([1, 50, 10**7]))
def test_matches_a_brute_force_loop(pb, cap, chunk):
    log_post, terms, labels, C = pb
    T, valid = PR.by_class(terms, labels, C)
    got = PR.predictive_information_gain(log_post, T, valid, clip=False, chunk_elements=chunk)
    np.testing.assert_allclose(got, brute_force(log_post, terms, labels, C), atol=1e-9)
    # max_classes ≥ C is the exact expectation too
    np.testing.assert_allclose(PR.predictive_information_gain(log_post, T, valid, max_classes=C + cap, clip=False),
                               got, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(predictive_problem(), st.data())
def test_invariant_to_relabelling_the_classes(pb, data):
    log_post, terms, labels, C = pb
    perm = np.array(data.draw(st.permutations(range(C))))  # new class j is old class perm[j]
    inv = np.argsort(perm)
    T, valid = PR.by_class(terms, labels, C)
    T2, valid2 = PR.by_class(terms[:, :, perm], inv[labels], C)
    a = PR.predictive_information_gain(log_post, T, valid, clip=False)
    b = PR.predictive_information_gain(log_post[:, perm], T2, valid2, clip=False)
    np.testing.assert_allclose(a, b, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(predictive_problem(), st.floats(-5, 5))
def test_zero_when_the_terms_are_constant(pb, offset):
    """Terms equal across dev images and classes carry nothing: EIG 0. Equal across images only (a vector v):
    the update is certain, EIG = H(p) − H(softmax(L + v))."""
    log_post, terms, labels, C = pb
    G, M, _ = terms.shape
    T, valid = PR.by_class(np.full((G, M, C), offset), labels, C)
    np.testing.assert_allclose(PR.predictive_information_gain(log_post, T, valid, clip=False), 0.0, atol=1e-10)
    v = terms[:, :1, :]  # (G, 1, C): image 0's terms given to every image
    T, valid = PR.by_class(np.repeat(v, M, axis=1), labels, C)
    want = np.array([[entropy(np.exp(lp)) - entropy(softmax(lp + v[g, 0])) for g in range(G)] for lp in log_post])
    present = np.isin(np.arange(C), labels)
    if present.all():
        np.testing.assert_allclose(PR.predictive_information_gain(log_post, T, valid, clip=False), want, atol=1e-10)


@st.composite
def discrete_channel(draw, max_classes=4, max_groups=3):
    """A channel P_g(k|c) with rational entries n_ck / n, and for each class n dev samples answering exactly
    those counts; the terms of sample i are ℓ_g^i = log P_g(k_i | ·) (Bayes-consistent)."""
    C = draw(st.integers(1, max_classes))
    G = draw(st.integers(1, max_groups))
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, G)
    labels = np.repeat(np.arange(C), n)
    P = np.zeros((C, int(sizes.sum())))
    answers = np.zeros((G, C * n), dtype=np.int64)
    off = np.r_[0, np.cumsum(sizes)[:-1]]
    for g, k in enumerate(sizes):
        for c in range(C):
            counts = rng.multinomial(n, rng.dirichlet(np.ones(k)))
            P[c, off[g]:off[g] + k] = counts / n
            answers[g, c * n:(c + 1) * n] = np.repeat(np.arange(k), counts)
    with np.errstate(divide="ignore"):
        logP = np.log(P)
    terms = np.stack([logP[:, off[g] + answers[g]].T for g in range(G)])  # (G, M, C)
    log_post = log_softmax(rng.normal(0, 2, (3, C)), axis=1)
    return log_post, terms, labels, C, P, sizes


@settings(max_examples=80, deadline=None)
@given(discrete_channel())
def test_bayes_consistent_terms_give_the_channel_eig_which_is_nonnegative(pb):
    """With terms that are the log-likelihoods of the samples' own answer distribution, the predictive EIG is
    the channel's mutual information: ≥ 0 and equal to the engine's channel EIG."""
    log_post, terms, labels, C, P, sizes = pb
    T, valid = PR.by_class(terms, labels, C)
    got = PR.predictive_information_gain(log_post, T, valid, clip=False)
    assert (got >= -1e-9).all()
    ch = AM.channel_from_P(P, np.zeros(P.shape, dtype=bool), sizes, 0.0)
    np.testing.assert_allclose(got, expected_information_gain(np.exp(log_post), ch), atol=1e-9)


def test_clipped_at_zero_where_the_terms_unsettle_a_confident_posterior():
    """Class 0's dev images pull towards class 1 while the posterior is sure of class 0: the raw value is < 0,
    what the loop receives is 0."""
    log_post = np.log(np.array([[0.99, 0.01]]))
    terms = np.array([[[0.0, 5.0], [0.0, 5.0]]])  # (G=1, M=2, C=2), both samples of class 0
    T, valid = PR.by_class(terms, np.array([0, 0]), 2)
    assert PR.predictive_information_gain(log_post, T, valid, clip=False)[0, 0] < -0.5
    assert PR.predictive_information_gain(log_post, T, valid)[0, 0] == 0.0


def test_max_classes_weighs_only_the_most_probable_classes():
    """With k classes carrying all the mass, weighing the top k is exact; a class with no dev sample adds H(p)."""
    rng = np.random.default_rng(0)
    C, G, M = 6, 2, 18
    labels = np.arange(M) % C
    terms = rng.normal(0, 2, (G, M, C))
    log_post = np.full((2, C), -np.inf)
    log_post[0, [1, 4]] = np.log([0.3, 0.7])
    log_post[1, [0, 5]] = np.log([0.5, 0.5])
    T, valid = PR.by_class(terms, labels, C)
    exact = PR.predictive_information_gain(log_post, T, valid, clip=False)
    np.testing.assert_allclose(PR.predictive_information_gain(log_post, T, valid, max_classes=2, clip=False), exact,
                               atol=1e-12)
    np.testing.assert_allclose(exact, brute_force(log_post, terms, labels, C), atol=1e-9)
    # with mass everywhere, the top 2 classes' weights are renormalised: Σ_{c in top 2} p_c/Z · mean H
    lp = log_softmax(rng.normal(0, 1, (1, C)), axis=1)
    top = np.argsort(-lp[0])[:2]
    w = np.exp(lp[0, top]) / np.exp(lp[0, top]).sum()
    want = [entropy(np.exp(lp[0])) - sum(wc * np.mean([entropy(softmax(lp[0] + terms[g, i]))
                                                        for i in np.nonzero(labels == c)[0]]) for wc, c in zip(w, top))
            for g in range(G)]
    np.testing.assert_allclose(PR.predictive_information_gain(lp, T, valid, max_classes=2, clip=False)[0], want,
                               atol=1e-12)


def test_by_class_caps_the_samples_per_class_by_a_seeded_subsample():
    terms = np.arange(2 * 10 * 3, dtype=float).reshape(2, 10, 3)
    labels = np.array([0] * 7 + [2] * 3)
    T, valid = PR.by_class(terms, labels, 3, max_per_class=4, seed=1)
    assert T.shape == (2, 3, 4, 3) and valid.sum(axis=1).tolist() == [4, 0, 3]
    kept = {tuple(r) for r in T[0, 0]}
    assert kept <= {tuple(terms[0, i]) for i in range(7)} and len(kept) == 4
    T2, _ = PR.by_class(terms, labels, 3, max_per_class=4, seed=1)
    np.testing.assert_array_equal(T, T2)
    with pytest.raises(ValueError, match="labels"):
        PR.by_class(terms, np.array([0] * 9 + [3]), 3)


def fitted_problem(seed=0, C=4, per=9):
    rng = np.random.default_rng(seed)
    sizes = np.array([2, 3, 2])
    truth = np.repeat(np.arange(C), per)
    centre = rng.normal(0, 1, (C, int(sizes.sum())))
    sims = centre[truth] + rng.normal(0, 0.7, (len(truth), int(sizes.sum())))
    return sims, truth, sizes, C


def test_out_of_fold_terms_come_from_the_posterior_fitted_without_the_image():
    sims, truth, sizes, C = fitted_problem()
    folds = AM.stratified_folds(truth, 3, 0)
    terms, posts = PR.crossfit_terms(sims, truth, sizes, C, reg=0.1, folds=folds)
    assert terms.shape == (3, len(truth), C) and len(posts) == 3
    i = int(np.nonzero(folds == 1)[0][0])
    own = AM.fit_few_shot_posterior(sims[folds != 1], truth[folds != 1], sizes, C, regs=(0.1,)).posterior
    np.testing.assert_allclose(terms[1, i], own.group_loglik(1, sims[i:i + 1, 2:5])[0], atol=1e-10)
    # held out, the terms favour the true class less than in-sample terms do (cross-fitting: not over-confident)
    full = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    ins = np.stack([full.group_loglik(g, sims[:, full.cols(g)]) for g in range(3)])
    margin = lambda t: np.mean(t[:, np.arange(len(truth)), truth] - t.mean(axis=2))  # noqa: E731
    assert margin(terms) < margin(ins)


def test_predictive_terms_round_trip_and_refuse_a_damaged_entry():
    sims, truth, sizes, C = fitted_problem()
    pt = PR.fit_predictive(sims, truth, sizes, C, reg=0.1)
    back = PR.PredictiveTerms.from_dict(pt.to_dict(), C, sizes)
    lp = log_softmax(np.random.default_rng(1).normal(0, 1, (5, C)), axis=1)
    np.testing.assert_allclose(back.information_gain(lp), pt.information_gain(lp), atol=1e-12)
    d = pt.to_dict()
    d["sims"] = d["sims"][:-1]
    with pytest.raises(ValueError, match="truth and folds"):
        PR.PredictiveTerms.from_dict(d, C, sizes)
    with pytest.raises(ValueError, match="classes"):
        PR.PredictiveTerms.from_dict(pt.to_dict(), C + 1, sizes)


def test_the_loop_uses_the_predictive_eig_and_the_posterior_it_wraps():
    """A PredictivePosterior as answer_model: the posterior and labels are the wrapped posterior's; the EIG
    the steps record is the predictive's (not the channel's), and eig's path follows it."""
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from tests.strategies import make_system

    sims, truth, sizes, C = fitted_problem(per=12)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    post = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    wrapped = PR.PredictivePosterior(post, PR.fit_predictive(sims, truth, sizes, C, reg=0.1))
    src = ArraySource(sims[:6], system)
    plain = classify_batch(src, system, "fixed", logit_scale=10.0, answer_model=post)
    eig = classify_batch(src, system, "eig", logit_scale=10.0, answer_model=wrapped)
    # every group asked: the same additive posterior whatever the order
    assert [r.label for r in plain] == [r.label for r in eig]
    np.testing.assert_allclose([r.confidence for r in plain], [r.confidence for r in eig])
    gain = wrapped.information_gain(post.log_prior(6))
    best = gain.argmax(axis=1)
    assert [r.steps[0].group for r in eig] == [system.groups[g].name for g in best]
    np.testing.assert_allclose([r.steps[0].eig for r in eig], gain[np.arange(6), best], atol=1e-12)


def test_the_wrapper_keeps_the_posteriors_full_system_head():
    """A posterior with a full-system head, wrapped: once every group is asked the loop scores with the head,
    exactly as with the bare posterior (a wrapper without has_head silently dropped it)."""
    from dataclasses import replace

    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from tests.strategies import make_system

    sims, truth, sizes, C = fitted_problem(per=12)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    masked = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    rng = np.random.default_rng(0)
    headed = replace(masked, head_W=rng.normal(0, 5, (C, int(sizes.sum()))), head_b=rng.normal(0, 5, C), head_reg=1.0)
    wrapped = PR.PredictivePosterior(headed, PR.fit_predictive(sims, truth, sizes, C, reg=0.1))
    assert wrapped.has_head and not PR.PredictivePosterior(masked, wrapped.predictive).has_head
    src = ArraySource(sims, system)
    bare = classify_batch(src, system, "fixed", logit_scale=10.0, answer_model=headed)
    via = classify_batch(src, system, "fixed", logit_scale=10.0, answer_model=wrapped)
    no_head = classify_batch(src, system, "fixed", logit_scale=10.0, answer_model=masked)
    assert [r.label for r in via] == [r.label for r in bare]
    np.testing.assert_allclose([r.confidence for r in via], [r.confidence for r in bare], atol=1e-12)
    assert [r.label for r in bare] != [r.label for r in no_head]  # the random head decides: the check can fail


def test_torch_backend_gives_the_numpy_values():
    torch = pytest.importorskip("torch")
    from engine.torch_backend import TorchArrays

    rng = np.random.default_rng(3)
    C, G, M = 7, 3, 30
    labels = rng.integers(0, C, M)
    terms = rng.normal(0, 2, (G, M, C))
    lp = log_softmax(rng.normal(0, 2, (9, C)), axis=1)
    T, valid = PR.by_class(terms, labels, C)
    xp = TorchArrays("cpu")
    for k in (None, 3):
        want = PR.predictive_information_gain(lp, T, valid, max_classes=k)
        got = PR.predictive_information_gain(xp.asarray(lp), xp.asarray(T), torch.as_tensor(valid), max_classes=k,
                                             xp=xp, chunk_elements=500)
        np.testing.assert_allclose(xp.to_host(got), want, atol=1e-10)


@pytest.fixture(scope="module")
def few_shot_cal():
    from engine.run.calibration_file import fit_calibration
    from tests.strategies import make_system

    sims, truth, sizes, C = fitted_problem(seed=4, per=16)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    cal = fit_calibration(sims / 10, truth, system, lam0=100.0, eps=0.05, model="sim", model_id="sim@1",
                          policies=["fixed", "eig"], setting="few-shot", auto=False, posterior="lr")
    return cal, system, sims / 10, truth


def test_a_few_shot_calibration_stores_the_predictive_and_its_eig_paths_are_the_loops(few_shot_cal, tmp_path):
    """calibrate keeps every dev image's out-of-fold terms (the cross-validation's fold posteriors, the folds of
    the cross-fitted paths); the loop gets them through answer_model; each fold's eig τ-table paths were traced
    with the terms of the other folds' images (so a target accuracy's τ is the τ of the policy that runs, and
    an image's EIG never reads its own terms); it survives the file."""
    import json

    from engine.run.calibration_file import CalibrationError, load_calibration, save_calibration, trace_paths

    cal, system, sims, truth = few_shot_cal
    assert cal.few_shot is not None and cal.few_shot.posterior is not None
    sel = cal.select
    assert cal.predictive is not None and np.array_equal(cal.predictive.folds, sel.fold)
    np.testing.assert_array_equal(cal.predictive.sims, sel.sims)
    am = cal.answer_model(system)
    assert isinstance(am, PR.PredictivePosterior) and am.predictive is cal.predictive
    runs = cal.fold_runs(system)
    assert len(runs) == len(np.unique(sel.fold)) >= 2
    for idx, lams, ch, fold_am, _ in runs:
        assert isinstance(fold_am, PR.PredictivePosterior)
        assert len(fold_am.predictive.truth) == len(sel.truth) - len(idx)  # the fold's own images left out
        again = trace_paths(sel.sims[idx], sel.truth[idx], system, cal.policy_object("eig"), lams, ch, fold_am)
        s = again.q.shape[1]
        np.testing.assert_array_equal(again.q, cal.paths["eig"].q[idx, :s])
    lp = am.log_prior(len(sel.truth))
    assert not np.allclose(am.information_gain(lp), expected_information_gain(np.exp(lp), cal.channel(system)))
    save_calibration(cal, tmp_path / "few.json")
    back = load_calibration(tmp_path / "few.json")
    np.testing.assert_allclose(back.answer_model(system).information_gain(lp), am.information_gain(lp), atol=1e-12)
    good = json.loads((tmp_path / "few.json").read_text())
    # the file refers to the select part and the crossfit posteriors instead of holding a second copy of them
    assert good["predictive"]["from"] == "select+crossfit" and "sims" not in good["predictive"]
    full = json.loads(json.dumps(good))
    full["predictive"] = cal.predictive.to_dict()  # the full form (files of the first predictive version) loads too
    (tmp_path / "full.json").write_text(json.dumps(full))
    again = load_calibration(tmp_path / "full.json").answer_model(system)
    np.testing.assert_allclose(again.information_gain(lp), am.information_gain(lp), atol=1e-12)
    for name, damage in (("rolled", lambda d: d["predictive"].update(folds=full["predictive"]["folds"][1:]
                                                                     + full["predictive"]["folds"][:1])),
                         ("one fold less", lambda d: d["predictive"].update(
                             folds=[min(f, 1) for f in full["predictive"]["folds"]],
                             posteriors=full["predictive"]["posteriors"][:2])),
                         ("short folds", lambda d: d["predictive"].update(folds=full["predictive"]["folds"][:-1])),
                         ("max_per_class", lambda d: d.update(predictive=dict(good["predictive"], max_per_class=-1))),
                         ("no crossfit", lambda d: d.update(predictive=good["predictive"], crossfit=None)),
                         ("a list", lambda d: d.update(predictive=[1, 2]))):
        d = json.loads(json.dumps(full))
        damage(d)
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        with pytest.raises(CalibrationError, match="predictive") as e:  # one line at load, not an error mid-run
            load_calibration(tmp_path / f"{name}.json")
        assert f"{name}.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("policy, delta, calls", [("fixed", 0.0, False), ("random", 0.0, False),
                                                  ("fixed", 0.01, True), ("eig", 0.0, True), ("top2", 0.0, True)])
def test_the_predictive_is_computed_only_where_the_policy_or_delta_reads_the_eig(policy, delta, calls):
    from engine import StopRule
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from tests.strategies import make_system

    sims, truth, sizes, C = fitted_problem(per=4)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    post = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    wrapped = PR.PredictivePosterior(post, PR.fit_predictive(sims, truth, sizes, C, reg=0.1))
    seen = []
    inner = wrapped.information_gain
    wrapped.information_gain = lambda lp, xp: seen.append(1) or inner(lp, xp)
    classify_batch(ArraySource(sims[:3], system), system, policy, stop=StopRule(delta=delta), logit_scale=10.0,
                   answer_model=wrapped)
    assert bool(seen) == calls


def test_the_torch_loop_with_the_predictive_gives_the_numpy_paths():
    pytest.importorskip("torch")
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from engine.torch_backend import TorchArrays
    from tests.strategies import make_system

    sims, truth, sizes, C = fitted_problem(seed=5, per=10)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    post = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    wrapped = PR.PredictivePosterior(post, PR.fit_predictive(sims, truth, sizes, C, reg=0.1))
    src = ArraySource(sims, system)
    kw = dict(logit_scale=10.0, answer_model=wrapped)
    a = classify_batch(src, system, "eig_per_prompt", **kw)
    b = classify_batch(src, system, "eig_per_prompt", xp=TorchArrays("cpu"), **kw)
    assert [[s.group for s in r.steps] for r in a] == [[s.group for s in r.steps] for r in b]
    np.testing.assert_allclose([s.eig for r in a for s in r.steps], [s.eig for r in b for s in r.steps], atol=1e-9)


# ------------------------------------------------------------------ the experiments' maths (bench.predictive_variants)
def risk(p):
    return 1.0 - float(np.max(p))


@settings(max_examples=60, deadline=None)
@given(predictive_problem(), st.sampled_from([1, 50, 10**7]))
def test_error_reduction_matches_a_brute_force_loop(pb, chunk):
    """The expected error reduction: the predictive EIG's expectation with 1 − max p in place of H."""
    log_post, terms, labels, C = pb
    T, valid = PR.by_class(terms, labels, C)
    G, M, _ = terms.shape
    want = np.zeros((len(log_post), G))
    for b, lp in enumerate(log_post):
        p = np.exp(lp)
        for g in range(G):
            after = sum(p[c] * (np.mean([risk(softmax(lp + terms[g, i])) for i in np.nonzero(labels == c)[0]])
                                if (labels == c).any() else risk(p)) for c in range(C))
            want[b, g] = risk(p) - after
    np.testing.assert_allclose(PR.expected_error_reduction(log_post, T, valid, chunk_elements=chunk), want, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(discrete_channel())
def test_error_reduction_of_bayes_consistent_terms_is_the_bayes_accuracy_gain(pb):
    """Terms that are the samples' own answer log-likelihoods: E[max p'] = Σ_k max_c p_c P_g(k|c), so the
    reduction is that minus max p: never negative (an answer cannot lower the Bayes accuracy on average)."""
    log_post, terms, labels, C, P, sizes = pb
    T, valid = PR.by_class(terms, labels, C)
    got = PR.expected_error_reduction(log_post, T, valid)
    off = np.r_[0, np.cumsum(sizes)[:-1]]
    for b, lp in enumerate(log_post):
        p = np.exp(lp)
        for g, k in enumerate(sizes):
            want = sum(np.max(p * P[:, off[g] + j]) for j in range(k)) - np.max(p)
            assert got[b, g] == pytest.approx(want, abs=1e-9)
            assert got[b, g] >= -1e-9


def brute_stability(lp, asked, terms, labels, C):
    p, a = np.exp(lp), int(np.argmax(lp))
    tot = 0.0
    for c in range(C):
        mine = np.nonzero(labels == c)[0]
        if not len(mine):
            tot += p[c]
            continue
        tot += p[c] * np.mean([int(np.argmax(lp + terms[~asked, i].sum(axis=0))) == a for i in mine])
    return tot


@settings(max_examples=60, deadline=None)
@given(predictive_problem(), st.data())
def test_label_stability_matches_a_brute_force_loop_and_is_a_probability(pb, data):
    log_post, terms, labels, C = pb
    G = terms.shape[0]
    asked = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=G, max_size=G),
                                        min_size=len(log_post), max_size=len(log_post))), dtype=bool)
    T, valid = PR.by_class(terms, labels, C)
    got = PR.label_stability(log_post, asked, T, valid)
    want = [brute_stability(lp, a, terms, labels, C) for lp, a in zip(log_post, asked)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert ((got >= -1e-12) & (got <= 1 + 1e-12)).all()
    np.testing.assert_array_equal(PR.label_stability(log_post, np.ones_like(asked), T, valid), 1.0)  # nothing left
    T0, _ = PR.by_class(np.zeros_like(terms), labels, C)
    np.testing.assert_allclose(PR.label_stability(log_post, asked, T0, valid), 1.0)  # answers that say nothing


@settings(max_examples=60, deadline=None)
@given(predictive_problem(max_classes=5), st.integers(1, 3))
def test_label_stability_under_decisive_answers_is_the_top_class_mass(pb, per):
    """Each class's dev samples answer decisively for their own class: every remaining question moves the label
    to the true class, so the label stays only when the top class is the truth: stability = max p (exactly,
    with every class sampled)."""
    log_post, _, _, C = pb
    labels = np.repeat(np.arange(C), per)
    terms = np.where(np.arange(C)[None, None, :] == labels[None, :, None], 0.0, -1e3)  # (1, M, C)
    T, valid = PR.by_class(terms, labels, C)
    got = PR.label_stability(log_post, np.zeros((len(log_post), 1), dtype=bool), T, valid)
    np.testing.assert_allclose(got, np.exp(log_post.max(axis=1)), atol=1e-12)
