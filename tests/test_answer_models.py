"""Properties of engine.core.answer_models: the few-shot posterior and the per-class channel (issue 26)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax

from engine.core import answer_models as AM
from engine.core.scoring import build_channel


@st.composite
def problem(draw, max_classes=5, max_groups=4):
    """sizes (G,), C, sims (B, Q), truth (B,) with every class present, a seed."""
    G = draw(st.integers(1, max_groups))
    sizes = np.array(draw(st.lists(st.integers(1, 4), min_size=G, max_size=G)), dtype=np.int64)
    C = draw(st.integers(1, max_classes))
    per = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(C), per)
    ties = draw(st.booleans())
    sims = np.round(rng.normal(0, 0.1, (len(truth), int(sizes.sum()))), 1 if ties else 6)
    return sizes, C, sims, truth, seed


def random_posterior(sizes, C, seed):
    rng = np.random.default_rng(seed)
    Q, G = int(sizes.sum()), len(sizes)
    return AM.FewShotPosterior(mean=rng.normal(0, 0.1, Q), scale=rng.uniform(0.05, 1, Q), W=rng.normal(0, 2, (C, Q)),
                               m=rng.normal(0, 1, (C, G)), b=rng.normal(0, 1, C), sizes=sizes, reg=0.1,
                               n_dev=np.ones(C, dtype=np.int64))


@given(problem(), st.data())
def test_posterior_is_a_distribution_for_any_asked_set(pb, data):
    sizes, C, sims, truth, seed = pb
    post = random_posterior(sizes, C, seed)
    asked = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)),
                                        min_size=len(truth), max_size=len(truth))), dtype=bool)
    lp = post.log_posterior(sims, asked)
    assert lp.shape == (len(truth), C)
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-12)


@given(problem())
def test_all_groups_asked_is_a_plain_multinomial_lr(pb):
    """With every group asked: softmax(b + Σ_g m_g + W·z), one LR on all Q standardised similarities."""
    sizes, C, sims, truth, seed = pb
    post = random_posterior(sizes, C, seed)
    z = (sims - post.mean) / post.scale
    plain = log_softmax(post.b + post.m.sum(axis=1) + z @ post.W.T, axis=1)
    np.testing.assert_allclose(post.log_posterior(sims), plain, atol=1e-10)


@given(problem(), st.data())
def test_posterior_is_additive_and_order_free_over_groups(pb, data):
    """log prior + Σ_{g asked} ℓ_g, normalised, in any order of the groups, equals log_posterior on that set."""
    sizes, C, sims, truth, seed = pb
    post = random_posterior(sizes, C, seed)
    G = len(sizes)
    order = data.draw(st.permutations(range(G)))
    k = data.draw(st.integers(0, G))
    asked = np.zeros((len(truth), G), dtype=bool)
    asked[:, list(order[:k])] = True
    x = post.log_prior(len(truth))
    for g in order[:k]:
        x = x + post.group_loglik(g, sims[:, post.cols(g)])
    np.testing.assert_allclose(log_softmax(x, axis=1), post.log_posterior(sims, asked), atol=1e-10)


def test_no_group_asked_is_the_prior():
    sizes, C = np.array([2, 3]), 4
    post = random_posterior(sizes, C, 0)
    sims = np.random.default_rng(1).normal(size=(3, 5))
    np.testing.assert_allclose(post.log_posterior(sims, np.zeros((3, 2), bool)), log_softmax(post.b)[None].repeat(3, 0))


@settings(max_examples=15, deadline=None)
@given(problem(max_classes=4, max_groups=3))
def test_fit_gives_finite_distributions_for_ties_single_option_and_one_class(pb):
    sizes, C, sims, truth, seed = pb
    fit = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,), per_image=3, seed=seed)
    lp = fit.posterior.log_posterior(sims)
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-9)
    assert fit.posterior.n_dev.tolist() == np.bincount(truth, minlength=C).tolist()


def test_fit_with_only_full_rows_matches_sklearn_logistic_regression():
    """The L-BFGS fit is a plain L2 multinomial LR: with no masked copies (per_image=0) it gives sklearn's
    probabilities (sklearn's C = 1 / (reg · n), same standardised features, unpenalised intercept)."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    sizes, C = np.array([3, 2, 4]), 3
    truth = np.repeat(np.arange(C), 20)
    sims = rng.normal(0, 1, (len(truth), 9)) + truth[:, None] * rng.normal(0, 0.5, 9)
    reg = 0.05
    post = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(reg,), per_image=0).posterior
    z = (sims - post.mean) / post.scale
    ref = sklearn.LogisticRegression(C=1.0 / (reg * len(truth)), tol=1e-10, max_iter=10000).fit(z, truth)
    np.testing.assert_allclose(np.exp(post.log_posterior(sims)), ref.predict_proba(z), atol=2e-4)


def _few_shot_fit():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 10)
    AM.fit_few_shot_posterior(rng.normal(0, 1, (30, 5)) + truth[:, None], truth, np.array([2, 3]), 3, regs=(0.1,))


def _tempering_fit():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    AM.fit_tempering(np.log(rng.dirichlet(np.ones(3), (2, 60))), truth)


def _channel_fits():
    from engine.core.channel_fit import fit_answer_channels, fit_logit_scale_and_eps
    from engine.core.simulate import SimulatedSource
    from systems import load_system

    s = load_system("pokemon15")
    y = np.arange(150) % s.n_classes
    src = SimulatedSource(s, y, margin=0.05, noise=0.02, wrong_rate=np.linspace(0.1, 0.9, s.n_groups), seed=0)
    sims = np.concatenate([src.similarities(np.arange(150), g) for g in range(s.n_groups)], axis=1)
    fit_logit_scale_and_eps(sims, y, s.rule_matrix, s.option_counts, lam0=50.0, eps0=0.05)
    fit_answer_channels(sims, y, s.rule_matrix, s.option_counts, lam0=50.0, eps=0.05)


@pytest.mark.parametrize("module, fit, calls", [("engine.core.answer_models", _few_shot_fit, 1),
                                                 ("engine.core.answer_models", _tempering_fit, 1),
                                                 ("engine.core.channel_fit", _channel_fits, 2)])
def test_every_lbfgs_fit_runs_on_one_blas_thread_and_gives_back_the_callers_threads(monkeypatch, module, fit, calls):
    """Every L-BFGS fit in engine.core (the few-shot LR, the per-group tempering, λ/ε and the reliabilities) runs
    its objective with every BLAS pool at one thread (docs/calibration.md: the LR fit 2.9-16.6x faster on the
    2-core machine), and the caller's thread counts are back afterwards. The caller here runs two BLAS threads
    (set by the test, so that OMP_NUM_THREADS=1 in the environment cannot hide a missing limit)."""
    import importlib

    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    mod = importlib.import_module(module)
    seen = []
    real = mod.minimize

    def spy(f, x0, **kw):
        seen.append(set(blas_threads()))
        return real(f, x0, **kw)

    monkeypatch.setattr(mod, "minimize", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        fit()
        assert set(before) == {2} and blas_threads() == before
    assert len(seen) >= calls and all(x == {1} for x in seen)


def test_masked_training_learns_partial_evidence():
    """Two groups, each alone decisive for a different pair of classes: the masked fit must use group 0 alone
    (the posterior after group 0 only puts most mass on the right half), a fit on full rows need not."""
    rng = np.random.default_rng(0)
    C = 4
    truth = np.repeat(np.arange(C), 30)
    g0 = np.stack([truth < 2, truth >= 2], 1) * 1.0 + rng.normal(0, 0.2, (len(truth), 2))
    g1 = np.stack([truth % 2 == 0, truth % 2 == 1], 1) * 1.0 + rng.normal(0, 0.2, (len(truth), 2))
    sims = np.concatenate([g0, g1], 1)
    post = AM.fit_few_shot_posterior(sims, truth, np.array([2, 2]), C, regs=(0.01,), seed=0).posterior
    asked = np.zeros((len(truth), 2), bool)
    asked[:, 0] = True
    p = np.exp(post.log_posterior(sims, asked))
    half = np.where(truth[:, None] < 2, p[:, :2], p[:, 2:]).sum(1)
    assert half.mean() > 0.9
    assert (post.log_posterior(sims).argmax(1) == truth).mean() > 0.9


def test_cross_validation_picks_a_strength_from_the_grid_and_reports_heldout():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 12)
    sims = rng.normal(0, 1, (36, 5)) + truth[:, None] * 0.8
    fit = AM.fit_few_shot_posterior(sims, truth, np.array([2, 3]), 3, regs=(1e-3, 1e-1, 10.0))
    assert fit.posterior.reg in (1e-3, 1e-1, 10.0)
    assert [r[0] for r in fit.cv] == [1e-3, 1e-1, 10.0]
    assert fit.posterior.reg == min(fit.cv, key=lambda r: r[1])[0]
    assert fit.heldout_log_post.shape == (36, 3)


def test_posterior_round_trips_through_a_dict_and_refuses_bad_shapes():
    post = random_posterior(np.array([2, 3]), 4, 5)
    back = AM.FewShotPosterior.from_dict(post.to_dict())
    sims = np.random.default_rng(0).normal(size=(6, 5))
    np.testing.assert_array_equal(back.log_posterior(sims), post.log_posterior(sims))
    d = post.to_dict()
    d["W"] = d["W"][:-1]
    with pytest.raises(ValueError, match="shape"):
        AM.FewShotPosterior.from_dict(d)


# --------------------------------------------------------------------------- the per-class channel
@st.composite
def channel_problem(draw):
    sizes, C, sims, truth, seed = draw(problem())
    rng = np.random.default_rng(seed)
    r = np.zeros((C, int(sizes.sum())), bool)
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for c in range(C):
        for o, k in zip(off, sizes):
            r[c, o + rng.integers(k)] = True
    ch = build_channel(r, sizes, eps=draw(st.sampled_from([0.0, 0.05, 0.5])))
    lam = draw(st.sampled_from([1.0, 10.8, 100.0, 1e4]))
    return sizes, C, sims, truth, r, ch, lam


@given(channel_problem(), st.floats(0, 1e3))
def test_per_class_channel_rows_are_distributions(cp, alpha):
    sizes, C, sims, truth, r, ch, lam = cp
    P = AM.per_class_channel(AM.soft_answers(sims, sizes, lam), truth, ch.P, alpha)
    assert np.isfinite(P).all() and (P >= 0).all()
    np.testing.assert_allclose(np.add.reduceat(P, ch.offsets, axis=1), 1.0, atol=1e-12)


@given(channel_problem())
def test_shrinkage_limits(cp):
    """α → ∞ gives the rule channel, α = 0 the mean soft answer of the class's own dev images."""
    sizes, C, sims, truth, r, ch, lam = cp
    soft = AM.soft_answers(sims, sizes, lam)
    np.testing.assert_allclose(AM.per_class_channel(soft, truth, ch.P, 1e12), ch.P, atol=1e-9)
    P0 = AM.per_class_channel(soft, truth, ch.P, 0.0)
    for c in range(C):
        np.testing.assert_allclose(P0[c], soft[truth == c].mean(axis=0), atol=1e-12)


def test_class_without_dev_image_keeps_its_rule_row():
    r = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0]], bool)
    ch = build_channel(r, np.array([2, 2]), eps=0.1)
    soft = np.array([[0.9, 0.1, 0.2, 0.8]])
    for alpha in (0.0, 5.0):
        P = AM.per_class_channel(soft, np.array([0]), ch.P, alpha)
        np.testing.assert_array_equal(P[1:], ch.P[1:])


@given(channel_problem(), st.data())
def test_tempering_keeps_distributions_and_its_limits(cp, data):
    sizes, C, sims, truth, r, ch, lam = cp
    beta = np.array(data.draw(st.lists(st.floats(0, 2), min_size=len(sizes), max_size=len(sizes))))
    T = AM.temper_channel(ch.P, sizes, beta)
    assert np.isfinite(T).all()
    np.testing.assert_allclose(np.add.reduceat(T, ch.offsets, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(AM.temper_channel(ch.P, sizes, np.ones(len(sizes))), ch.P, atol=1e-12)
    U = AM.temper_channel(ch.P, sizes, np.zeros(len(sizes)))
    np.testing.assert_allclose(U, 1.0 / np.repeat(sizes, sizes)[None].repeat(C, 0), atol=1e-12)


def test_tempering_fit_discounts_a_duplicated_group():
    """The same informative answer asked twice (a copy of group 0 as group 1) is over-counted by naive Bayes;
    the fitted β must discount it (β_0 + β_1 well below 2), and stay in [0, 1]."""
    rng = np.random.default_rng(0)
    B, C = 400, 4
    truth = rng.integers(0, C, B)
    noisy = np.where(rng.random(B) < 0.6, truth, rng.integers(0, C, B))  # right 70% of the time
    l0 = np.log(np.where(np.arange(C)[None] == noisy[:, None], 0.7, 0.1))  # (B, C)
    ll = np.stack([l0, l0])
    beta = AM.fit_tempering(ll, truth)
    assert ((beta >= 0) & (beta <= 1)).all()
    assert beta.sum() < 1.5


def test_few_shot_model_round_trips_and_checks_rows():
    sizes = np.array([2, 3])
    r = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], bool)
    ch = build_channel(r, sizes, 0.05)
    m = AM.FewShotModel(posterior=random_posterior(sizes, 2, 0), P=ch.P.copy(), beta=np.array([0.5, 1.0]), alpha=5.0,
                        n_dev=np.array([3, 4]), sizes=sizes)
    back = AM.FewShotModel.from_dict(m.to_dict())
    np.testing.assert_array_equal(back.channel(r, sizes, 0.05).P, m.channel(r, sizes, 0.05).P)
    d = m.to_dict()
    d["per_class_channel"][0][0] += 0.5
    with pytest.raises(ValueError, match="sum to 1"):
        AM.FewShotModel.from_dict(d)


# --------------------------------------------------------------------------- choosing what to keep
def test_choose_rule_variant_keeps_uncalibrated_unless_a_fit_is_replaces_on_both():
    base = {"accuracy": 0.258, "nll": 2.3}
    # the photo set: NLL better, accuracy worse -> keep uncalibrated
    assert AM.choose_rule_variant({"uncalibrated": base, "fitted, α=10": {"accuracy": 0.185, "nll": 2.0}}) == \
        "uncalibrated"
    s = {"uncalibrated": base, "fitted, α=10": {"accuracy": 0.30, "nll": 2.1},
         "fitted, α=100": {"accuracy": 0.26, "nll": 2.05}}
    assert AM.choose_rule_variant(s) == "fitted, α=100"


def test_stratified_folds_put_every_class_in_every_fold_it_can():
    truth = np.repeat(np.arange(4), [1, 2, 3, 7])
    f = AM.stratified_folds(truth, 3, 0)
    for c, n in enumerate([1, 2, 3, 7]):
        assert len(np.unique(f[truth == c])) == min(n, 3)


# --------------------------------------------------------------------------- bench.channels --answer-models
@pytest.mark.slow
def test_bench_answer_models_on_a_small_simulated_pair():
    from bench import channels

    prep = channels.simulator_prep(images=150, seed=1)
    emb = np.random.default_rng(0).normal(size=(prep.n, 6))
    prep.meta["image_embeddings"] = emb
    res = channels.evaluate_answer_models(prep, seed=1, n_budgets=3, n_boot=50, log=lambda *_: None)
    assert res["n_dev"] + res["n_test"] == 150
    assert set(res["full"]) == set(channels.AM_MODELS) | {"LR on the same similarities",
                                                          "LR on the image embeddings (no attribute system)"}
    assert {"few-shot LR", "few-shot Gaussian"} <= set(channels.AM_MODELS)
    assert {(r["model"], r["policy"]) for r in res["rows"]} == {(m, p) for m in channels.AM_MODELS
                                                                for p in channels.AM_POLICIES}
    for v in res["full"].values():
        assert v["ci95"][0] - 1e-12 <= v["accuracy"] <= v["ci95"][1] + 1e-12
    for d in res["diffs"]:
        assert d["ci95"][0] - 1e-12 <= d["diff"] <= d["ci95"][1] + 1e-12
    report = channels.answer_model_report({"command": "x", "machine": "m", "seconds": 1.0, "load": [1, 1],
                                           "seed": 1, "n_boot": 50, "pairs": {"sim": res}})
    assert "few-shot − rule" in report and "LR, image embeddings" in report and "Gaussian − few-shot LR" in report


def test_the_loop_reports_the_few_shot_posterior_and_every_backend_runs_it():
    """classify_batch with an answer model: after every group the posterior is the LR's on the asked set; every
    backend of the one loop runs it (on torch, each group's ℓ_g is computed on the host) with the same paths."""
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from engine.run.engines import classify
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = random_posterior(sizes, system.n_classes, 7)
    sims = np.random.default_rng(2).normal(0, 0.1, (12, int(sizes.sum())))
    src = ArraySource(sims, system)
    res = classify_batch(src, system, "fixed", answer_model=post, top_k=system.n_classes)
    want = np.exp(post.log_posterior(sims))
    for r, w in zip(res, want):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], w, atol=1e-9)
    for engine in ("numpy", "torch", "auto"):
        other = classify(src, system, "eig", engine=engine, answer_model=post, top_k=3)
        ref = classify_batch(src, system, "eig", answer_model=post, top_k=3)
        assert [(r.label, r.q_spent) for r in other] == [(r.label, r.q_spent) for r in ref]
    with pytest.raises(ValueError, match="bayes scorer"):
        classify_batch(src, system, "fixed", answer_model=post, scorer="sum")


def test_a_fitted_part_replaces_another_only_when_its_accuracy_gain_beats_the_noise():
    """Held-out gain of 3 images of 544 with 40 images changing sides (the photo-set case, where the fit lost on
    test): kept out; a gain of 30 of 200 with 40 changing sides: kept; never with a higher NLL."""
    def sc(correct, nll):
        return {"accuracy": float(np.mean(correct)), "nll": nll, "correct": np.asarray(correct, bool)}

    b = np.zeros(544, bool)
    b[:46] = True
    a = b.copy()
    a[:20] = False
    a[46:69] = True  # 23 gained, 20 lost: +3 images, 43 discordant
    assert not AM.replaces(sc(a, 2.8), sc(b, 3.2))
    b2 = np.zeros(200, bool)
    b2[:40] = True
    a2 = b2.copy()
    a2[:5] = False
    a2[40:75] = True  # +30 images, 40 discordant
    assert AM.replaces(sc(a2, 1.9), sc(b2, 3.2))
    assert not AM.replaces(sc(a2, 3.3), sc(b2, 3.2))


# --------------------------------------------------------------------------- the full-system head
def headed(sizes, C, seed):
    """random_posterior with a random full-system head."""
    from dataclasses import replace

    rng = np.random.default_rng(seed + 99)
    post = random_posterior(sizes, C, seed)
    return replace(post, head_W=rng.normal(0, 2, (C, int(sizes.sum()))), head_b=rng.normal(0, 1, C), head_reg=0.1)


@given(problem(), st.data())
def test_with_a_head_every_group_asked_is_the_head_and_partial_sets_the_masked_model(pb, data):
    """Rows with every group asked: softmax(head_W·z + head_b); any other row: the masked model, unchanged."""
    sizes, C, sims, truth, seed = pb
    post = headed(sizes, C, seed)
    masked = random_posterior(sizes, C, seed)
    G = len(sizes)
    asked = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=G, max_size=G),
                                        min_size=len(truth), max_size=len(truth))), dtype=bool)
    lp = post.log_posterior(sims, asked)
    full = asked.all(axis=1)
    z = (sims - post.mean) / post.scale
    np.testing.assert_allclose(lp[full], log_softmax(z[full] @ post.head_W.T + post.head_b, axis=1), atol=1e-10)
    np.testing.assert_allclose(lp[~full], masked.log_posterior(sims, asked)[~full], atol=1e-12)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-12)
    # the per-group terms are the masked model's: the loop's additive update serves every partial set
    np.testing.assert_array_equal(post.group_loglik(0, sims[:, post.cols(0)]), masked.group_loglik(0, sims[:, post.cols(0)]))


def test_the_head_round_trips_and_a_damaged_head_is_refused():
    post = headed(np.array([2, 3]), 4, 5)
    back = AM.FewShotPosterior.from_dict(post.to_dict())
    assert back.has_head and back.head_reg == post.head_reg
    sims = np.random.default_rng(0).normal(size=(6, 5))
    np.testing.assert_array_equal(back.log_posterior(sims), post.log_posterior(sims))
    d = post.to_dict()
    d["head"]["W"] = d["head"]["W"][:-1]
    with pytest.raises(ValueError, match="head"):
        AM.FewShotPosterior.from_dict(d)
    d = random_posterior(np.array([2, 3]), 4, 5).to_dict()
    d.pop("head")  # a file from before the head: no head, the masked model everywhere
    assert not AM.FewShotPosterior.from_dict(d).has_head


def _correlated_problem(seed=0, n=20, C=4):
    """Two groups, each with a class-informative column and noise columns (enough for a plain LR to win on full rows)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(C), n)
    sims = rng.normal(0, 1, (len(truth), 6)) + np.eye(C, 6)[truth] * 1.2
    return sims, truth, np.array([3, 3]), C


def test_the_head_is_kept_exactly_when_its_held_out_nll_is_no_higher_and_is_the_plain_lr():
    sims, truth, sizes, C = _correlated_problem()
    fit = AM.fit_few_shot_posterior(sims, truth, sizes, C, seed=0)
    nll = lambda lp: -lp[np.arange(len(truth)), truth].mean()  # noqa: E731
    assert fit.heldout_head is not None and fit.heldout_masked is not None
    assert fit.posterior.has_head == (nll(fit.heldout_head) <= nll(fit.heldout_masked))
    (mean, scale, W, b), reg, cv, held = AM.fit_plain_lr(sims, truth, C, seed=0)
    np.testing.assert_array_equal(held, fit.heldout_head)  # same folds, same strengths, same fits
    if fit.posterior.has_head:
        np.testing.assert_array_equal(fit.posterior.head_W, W)
        assert fit.posterior.head_reg == reg
        np.testing.assert_array_equal(fit.heldout_log_post, fit.heldout_head)
        for f, p in enumerate(fit.fold_posteriors):  # every fold model carries its own head
            assert p.has_head and not np.array_equal(p.head_W, W)
    else:
        np.testing.assert_array_equal(fit.heldout_log_post, fit.heldout_masked)
    off = AM.fit_few_shot_posterior(sims, truth, sizes, C, seed=0, head=False)
    assert not off.posterior.has_head and off.heldout_head is None
    np.testing.assert_array_equal(off.posterior.W, fit.posterior.W)  # the masked model is the same either way


def test_fold_posteriors_are_fitted_without_their_fold():
    """Each fold's posterior is the fit on the other folds at the chosen strength (so cross-fitted paths are held out)."""
    sims, truth, sizes, C = _correlated_problem(1, n=9)
    fit = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.01, 0.1), per_image=2, seed=3)
    folds = AM.stratified_folds(truth, AM.N_FOLDS, 3)
    np.testing.assert_array_equal(fit.folds, folds)
    assert len(fit.fold_posteriors) == 3
    for f, p in enumerate(fit.fold_posteriors):
        tr = folds != f
        assert p.n_dev.tolist() == np.bincount(truth[tr], minlength=C).tolist()
        np.testing.assert_allclose(p.mean, sims[tr].mean(axis=0))
        np.testing.assert_allclose(p.log_posterior(sims[~tr]), fit.heldout_log_post[~tr], atol=1e-12)


def test_the_loop_switches_to_the_head_once_every_group_is_asked_on_every_backend():
    """Along a path the posterior is the masked model's after each partial set and the head's after the last group;
    the numpy and torch backends agree; under a budget that stops short, the head is never used."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from engine.run.engines import classify
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = headed(sizes, system.n_classes, 7)
    sims = np.random.default_rng(2).normal(0, 0.1, (12, int(sizes.sum())))
    src = ArraySource(sims, system)
    res = classify_batch(src, system, "eig", answer_model=post, top_k=system.n_classes, trace=True)
    want = np.exp(post.log_posterior(sims))
    for i, r in enumerate(res):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], want[i], atol=1e-9)
        asked = np.zeros((1, len(sizes)), bool)
        for s in r.steps[:-1]:  # before the last group: the masked model on the asked set
            asked[0, [g.name for g in system.groups].index(s.group)] = True
            np.testing.assert_allclose(s.confidence_after, np.exp(post.log_posterior(sims[i:i + 1], asked)).max(),
                                       atol=1e-9)
    for engine in ("numpy", "torch"):
        other = classify(src, system, "eig", engine=engine, answer_model=post, top_k=system.n_classes)
        for a, b in zip(other, res):
            assert (a.label, a.q_spent) == (b.label, b.q_spent)
            np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-9)
    short = classify_batch(src, system, "fixed", stop=StopRule(budget=int(sizes.sum()) - 1), answer_model=post,
                           top_k=system.n_classes)
    asked = np.ones((12, len(sizes)), bool)
    asked[:, -1] = False
    masked_lp = np.exp(post.log_posterior(sims, asked))
    for i, r in enumerate(short):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], masked_lp[i], atol=1e-9)
