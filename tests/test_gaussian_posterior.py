"""The Gaussian few-shot posterior (engine.core.gaussian): exact marginals for any asked set, its fit, its file form,
the loop that recomputes it after every question, and calibrate's choice between it and the group-masked LR."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax
from scipy.stats import multivariate_normal

from engine.core import gaussian as GP


@st.composite
def problem(draw, max_classes=4, max_groups=3):
    """sizes (G,), C, a seed, B images, and an asked set per image."""
    G = draw(st.integers(1, max_groups))
    sizes = np.array(draw(st.lists(st.integers(1, 3), min_size=G, max_size=G)), dtype=np.int64)
    C = draw(st.integers(1, max_classes))
    B = draw(st.integers(1, 6))
    asked = np.array(draw(st.lists(st.lists(st.booleans(), min_size=G, max_size=G), min_size=B, max_size=B)), bool)
    return sizes, C, draw(st.integers(0, 2**16)), asked


def random_gaussian(sizes, C, seed, temperature=None) -> GP.GaussianPosterior:
    rng = np.random.default_rng(seed)
    Q = int(sizes.sum())
    a = rng.normal(0, 1, (Q, Q))
    return GP.GaussianPosterior(mean=rng.normal(0, 0.1, Q), scale=rng.uniform(0.05, 1, Q), means=rng.normal(0, 1, (C, Q)),
                                cov=a @ a.T / Q + 0.2 * np.eye(Q), log_prior_c=log_softmax(rng.normal(0, 1, C)),
                                temperature=float(rng.uniform(0.1, 2) if temperature is None else temperature),
                                shrink=0.1, sizes=sizes, n_dev=np.ones(C, dtype=np.int64))


def gaussian_images(n: int, seed: int = 7, sizes=(3, 1, 2, 2), temperature: float = 0.8):
    """(post, sims (n, Q), system): a random Gaussian posterior over 4 classes, n images drawn around its class
    means, and a system of its group sizes (for running the loop with it)."""
    from tests.strategies import make_system

    sizes = np.asarray(sizes, dtype=np.int64)
    C = 4
    post = random_gaussian(sizes, C, seed, temperature=temperature)
    rng = np.random.default_rng(1)
    z = post.means[rng.integers(0, C, n)] + rng.normal(0, 1, (n, sizes.sum()))
    system = make_system([tuple(frozenset([k % int(s)]) for s in sizes) for k in range(C)], sizes)
    return post, z * post.scale + post.mean, system


def brute_force(post: GP.GaussianPosterior, sims: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """log p(c | z_A) ∝ t·(log π_c + log N(z_A; μ_c,A, Σ_AA)), one image at a time, by scipy."""
    cols = np.repeat(np.arange(len(post.sizes)), post.sizes)
    out = []
    for s, a in zip(sims, asked):
        A = a[cols]
        z = (s - post.mean) / post.scale
        ll = np.array([multivariate_normal(post.means[c, A], post.cov[np.ix_(A, A)]).logpdf(z[A]) if A.any() else 0.0
                       for c in range(post.n_classes)])
        out.append(log_softmax(post.temperature * (post.log_prior_c + ll)))
    return np.array(out)


@given(problem())
def test_the_posterior_after_any_asked_set_is_the_marginal_gaussians(pb):
    sizes, C, seed, asked = pb
    post = random_gaussian(sizes, C, seed)
    sims = np.random.default_rng(seed + 1).normal(0, 0.3, (len(asked), int(sizes.sum())))
    lp = post.log_posterior(sims, asked)
    assert lp.shape == (len(asked), C) and np.isfinite(lp).all()
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(lp, brute_force(post, sims, asked), atol=1e-8)


@given(problem())
def test_every_group_asked_is_linear_discriminant_analysis(pb):
    """With every group asked the log posterior is t·(log π_c + μ_cᵀΣ⁻¹z − ½μ_cᵀΣ⁻¹μ_c), normalised: LDA's linear
    form, the quadratic term zᵀΣ⁻¹z being the same for every class."""
    sizes, C, seed, asked = pb
    post = random_gaussian(sizes, C, seed)
    sims = np.random.default_rng(seed + 2).normal(0, 0.3, (len(asked), int(sizes.sum())))
    z = (sims - post.mean) / post.scale
    w = np.linalg.solve(post.cov, post.means.T).T  # (C, Q) Σ⁻¹μ_c
    want = log_softmax(post.temperature * (post.log_prior_c + z @ w.T - 0.5 * (w * post.means).sum(axis=1)), axis=1)
    np.testing.assert_allclose(post.log_posterior(sims), want, atol=1e-8)
    np.testing.assert_allclose(post.log_posterior(sims, np.ones_like(asked)), want, atol=1e-8)


def test_nothing_asked_is_the_tempered_prior_and_unasked_columns_are_not_read():
    sizes = np.array([2, 3])
    post = random_gaussian(sizes, 4, 1, temperature=0.5)
    sims = np.random.default_rng(0).normal(0, 0.3, (3, 5))
    none = np.zeros((3, 2), bool)
    np.testing.assert_allclose(post.log_posterior(sims, none), post.log_prior(3), atol=1e-12)
    np.testing.assert_allclose(post.log_prior(1)[0], log_softmax(0.5 * post.log_prior_c), atol=1e-12)
    first = np.array([[True, False]] * 3)
    other = sims.copy()
    other[:, 2:] = np.nan  # the second group's columns: never read when it is not asked
    np.testing.assert_allclose(post.log_posterior(other, first), post.log_posterior(sims, first), atol=1e-12)


def test_round_trips_through_a_dict_and_refuses_damage():
    post = random_gaussian(np.array([2, 1]), 3, 5)
    back = GP.GaussianPosterior.from_dict(post.to_dict())
    assert back.to_dict() == post.to_dict() and back.to_dict()["kind"] == GP.KIND
    sims = np.random.default_rng(1).normal(0, 0.3, (4, 3))
    np.testing.assert_allclose(back.log_posterior(sims), post.log_posterior(sims), atol=1e-12)
    for key, value, match in (("cov", [[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "positive definite"),
                              ("cov", [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "symmetric"),
                              ("temperature", 0.0, "temperature"), ("means", [[0.0, 0.0, 0.0]] * 2, "shape"),
                              ("scale", [1.0, 0.0, 1.0], "scale"), ("log_prior", [0.0, float("nan"), 0.0], "log_prior")):
        d = post.to_dict()
        d[key] = value
        with pytest.raises(ValueError, match=match):
            GP.GaussianPosterior.from_dict(d)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_the_pooled_covariance_is_the_within_class_scatter(C, Q, per, seed):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(C), per)
    z = rng.normal(0, 1, (len(truth), Q))
    means, cov = GP.pooled_covariance(z, truth, C)
    scatter = sum(((z[truth == c] - z[truth == c].mean(0)).T @ (z[truth == c] - z[truth == c].mean(0)))
                  for c in range(C))
    np.testing.assert_allclose(means, np.array([z[truth == c].mean(0) for c in range(C)]), atol=1e-12)
    np.testing.assert_allclose(cov, scatter / max(len(truth) - C, 1), atol=1e-12)
    s = float(rng.uniform(0, 1))
    shr = GP.shrunk(cov, s)
    np.testing.assert_allclose(np.diag(shr), np.diag(cov) + GP.RIDGE, atol=1e-12)  # the diagonal is kept
    off = ~np.eye(Q, dtype=bool)
    np.testing.assert_allclose(shr[off], (1 - s) * cov[off], atol=1e-12)


def lda_data(seed: int, n_per: int, C: int = 4, sizes=(3, 2, 3), draw: int = 0):
    """Images drawn from a true LDA model (correlated columns; the model is fixed by ``seed``, the images by
    ``draw``), as similarities around 0.2."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, dtype=np.int64)
    Q = int(sizes.sum())
    a = rng.normal(0, 1, (Q, Q))
    cov = (a @ a.T / Q + 0.3 * np.eye(Q)) * 1e-4
    mu = 0.2 + rng.normal(0, 0.012, (C, Q))
    truth = np.repeat(np.arange(C), n_per)
    sims = mu[truth] + np.random.default_rng([seed, draw]).multivariate_normal(np.zeros(Q), cov, len(truth))
    return sims, truth, sizes, C


def test_held_out_density_is_the_gaussian_log_density():
    sims, truth, sizes, C = lda_data(0, 20)
    post = GP.fit_gaussian_posterior(sims, truth, sizes, C).posterior
    z = (sims - post.mean) / post.scale
    want = np.mean([multivariate_normal(post.means[y], post.cov).logpdf(x) for x, y in zip(z, truth)])
    assert GP.heldout_log_density(post, sims, truth) == pytest.approx(want, abs=1e-8)


def test_the_fit_chooses_the_shrinkage_and_temperature_that_score_best_held_out():
    sims, truth, sizes, C = lda_data(1, 25)
    fit = GP.fit_gaussian_posterior(sims, truth, sizes, C, seed=3)
    cv = dict(fit.cv)
    assert set(cv) == set(GP.SHRINK_GRID)
    assert fit.posterior.shrink == max(cv, key=lambda s: (cv[s], s))
    assert all(p.shrink == fit.posterior.shrink for p in fit.fold_posteriors) and len(fit.fold_posteriors) == 3
    # each fold posterior is fitted without its fold: its class counts are the other folds'
    for f, p in zip(np.unique(fit.folds), fit.fold_posteriors):
        assert p.n_dev.tolist() == np.bincount(truth[fit.folds != f], minlength=C).tolist()
    # the temperature minimises the held-out NLL: moving it either way does not lower it
    from engine.core.answer_models import training_rows

    def nll(t):
        tot, n = 0.0, 0
        for f, p in zip(np.unique(fit.folds), fit.fold_posteriors):
            te = np.nonzero(fit.folds == f)[0]
            img, asked = training_rows(len(te), len(sizes), seed=3 + 1)
            lp = replace(p, temperature=t).log_posterior(sims[te][img], asked)
            tot -= lp[np.arange(len(img)), truth[te][img]].sum()
            n += len(img)
        return tot / n

    t = fit.posterior.temperature
    assert GP.TEMPERATURE_BOUNDS[0] < t < GP.TEMPERATURE_BOUNDS[1]
    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1)) + 1e-9
    # the held-out posterior is the fold posteriors' on their own fold
    for f, p in zip(np.unique(fit.folds), fit.fold_posteriors):
        np.testing.assert_allclose(fit.heldout_log_post[fit.folds == f], p.log_posterior(sims[fit.folds == f]))


def test_the_fit_recovers_a_true_lda_model_on_any_asked_set():
    sims, truth, sizes, C = lda_data(2, 200)
    post = GP.fit_gaussian_posterior(sims, truth, sizes, C).posterior
    test_sims, test_truth, _, _ = lda_data(2, 200, draw=1)  # the same model (μ, Σ), other images
    for asked in ([True, True, True], [True, False, False], [False, True, True]):
        a = np.array([asked] * len(truth))
        acc = (post.log_posterior(test_sims, a).argmax(1) == test_truth).mean()
        assert acc > 1.0 / C + 0.2, (asked, acc)
    full = (post.log_posterior(test_sims).argmax(1) == test_truth).mean()
    one = (post.log_posterior(test_sims, np.array([[True, False, False]] * len(truth))).argmax(1) == test_truth).mean()
    assert full >= one


def test_the_loop_recomputes_it_after_every_question_on_every_backend():
    """After each question the posterior is the model's on every similarity seen so far (not a sum of per-group
    terms); a prior given to the loop multiplies it; numpy and torch agree; a budget that stops short leaves the
    posterior of the groups asked."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from engine.run.engines import classify
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = random_gaussian(sizes, system.n_classes, 7)
    sims = np.random.default_rng(2).normal(0, 0.3, (10, int(sizes.sum())))
    src = ArraySource(sims, system)
    names = [g.name for g in system.groups]
    res = classify_batch(src, system, "eig", answer_model=post, top_k=system.n_classes, trace=True)
    want = np.exp(post.log_posterior(sims))
    for i, r in enumerate(res):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], want[i], atol=1e-9)
        asked = np.zeros((1, len(sizes)), bool)
        for s in r.steps:
            asked[0, names.index(s.group)] = True
            np.testing.assert_allclose(s.confidence_after, np.exp(post.log_posterior(sims[i:i + 1], asked)).max(),
                                       atol=1e-9)
    for engine in ("numpy", "torch"):
        other = classify(src, system, "eig", engine=engine, answer_model=post, top_k=system.n_classes)
        for a, b in zip(other, res):
            assert (a.label, a.q_spent) == (b.label, b.q_spent)
            np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-9)
    prior = np.random.default_rng(3).dirichlet(np.ones(system.n_classes))
    with_prior = classify_batch(src, system, "fixed", answer_model=post, top_k=system.n_classes, prior=prior)
    lp = log_softmax(np.log(prior)[None, :] + post.log_posterior(sims), axis=1)
    for i, r in enumerate(with_prior):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], np.exp(lp[i]), atol=1e-9)
    short = classify_batch(src, system, "fixed", stop=StopRule(budget=int(sizes[0])), answer_model=post,
                           top_k=system.n_classes)
    first = np.zeros((10, len(sizes)), bool)
    first[:, 0] = True
    for i, r in enumerate(short):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], np.exp(post.log_posterior(sims, first)[i]),
                                   atol=1e-9)


def test_dev_order_reads_a_conditional_model_on_each_asked_set():
    """dev_greedy_order with the Gaussian posterior: its first group is the one whose own posterior gains the most
    dev accuracy per prompt (the model's log_posterior on that set, not a sum of per-group terms)."""
    from engine.core.channel_fit import dev_greedy_order
    from engine.core.scoring import build_channel
    from tests.strategies import make_system

    sims, truth, sizes, C = lda_data(4, 30)
    post = GP.fit_gaussian_posterior(sims, truth, sizes, C).posterior
    rules = [tuple(frozenset([k % int(s)]) for s in sizes) for k in range(C)]
    system = make_system(rules, sizes)
    order = dev_greedy_order(sims, truth, 100.0, build_channel(system.rule_matrix, sizes, 0.05), answer_model=post)
    assert sorted(order) == list(range(len(sizes)))

    def acc(groups):
        a = np.zeros((len(truth), len(sizes)), bool)
        a[:, groups] = True
        return (post.log_posterior(sims, a).argmax(1) == truth).mean()

    base = acc([])
    gains = [((acc([g]) - base) / sizes[g], -g) for g in range(len(sizes))]
    best = max(gains)
    assert (acc([order[0]]) - base) / sizes[order[0]] == pytest.approx(best[0])


@pytest.fixture(scope="module")
def lda_calibrations():
    from engine.run.calibration_file import fit_calibration
    from tests.strategies import make_system

    sims, truth, sizes, C = lda_data(5, 24)
    rules = [tuple(frozenset([(k + j) % int(s)]) for j, s in enumerate(sizes)) for k in range(C)]
    system = make_system(rules, sizes)
    kw = dict(lam0=100.0, eps=0.05, model="sim", model_id="sim@1", policies=["fixed"], setting="few-shot", auto=False)
    return system, sims, truth, {p: fit_calibration(sims, truth, system, posterior=p, **kw)
                                 for p in ("auto", "lr", "gaussian")}, kw


def test_calibrate_keeps_the_gaussian_when_it_beats_the_lr_and_says_why(lda_calibrations, tmp_path):
    from engine.run.calibration_file import load_calibration, save_calibration

    system, sims, truth, cals, _ = lda_calibrations
    auto = cals["auto"]
    held = auto.decision["heldout"]
    assert held["few-shot posterior: Gaussian (LDA)"]["accuracy"] >= held["few-shot posterior"]["accuracy"]
    assert isinstance(auto.few_shot.posterior, GP.GaussianPosterior)
    assert "Gaussian" in auto.decision["posterior"] and auto.decision["gaussian"]["asked"] == "auto"
    any_set = auto.decision["gaussian"]["heldout_any_asked_set"]
    assert any_set["Gaussian"]["accuracy"] > any_set["LR"]["accuracy"] and any_set["Gaussian"]["nll"] <= any_set["LR"]["nll"]
    assert auto.predictive is None  # no per-group terms: the policies read the tempered per-class channel
    assert auto.answer_model(system) is auto.few_shot.posterior
    for fm in auto.crossfit:  # the fold models carry the Gaussian fitted on the other folds
        assert isinstance(fm.answer_model(), GP.GaussianPosterior)
    assert type(cals["lr"].few_shot.posterior).__name__ == "FewShotPosterior"
    assert "gaussian" not in cals["lr"].decision and cals["lr"].predictive is not None
    assert isinstance(cals["gaussian"].few_shot.posterior, GP.GaussianPosterior)
    back = load_calibration(save_calibration(auto, tmp_path / "g.json").path)
    assert back.few_shot.posterior.to_dict() == auto.few_shot.posterior.to_dict()
    res = classify_all(back, system, sims)
    np.testing.assert_array_equal(res, auto.few_shot.posterior.log_posterior(sims).argmax(1))


def classify_all(cal, system, sims):
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource

    res = classify_batch(ArraySource(sims, system), system, "fixed", logit_scale=cal.lams, channel=cal.channel(system),
                         answer_model=cal.answer_model(system), top_k=1)
    return np.array([system.classes.index(r.label) for r in res])


def test_calibrate_keeps_the_lr_when_the_gaussian_is_not_better_held_out(lda_calibrations, monkeypatch):
    from engine.run.calibration_file import fit_calibration

    system, sims, truth, _, kw = lda_calibrations
    real = GP.fit_gaussian_posterior

    def flat(*a, **k):  # a Gaussian fit whose held-out posteriors are (nearly) uniform: a worse NLL than the LR's
        fit = real(*a, **k)
        return replace(fit, heldout_log_post=np.full_like(fit.heldout_log_post, -np.log(fit.posterior.n_classes)),
                       fold_posteriors=tuple(replace(p, temperature=1e-9) for p in fit.fold_posteriors))

    monkeypatch.setattr(GP, "fit_gaussian_posterior", flat)
    cal = fit_calibration(sims, truth, system, **kw)
    assert type(cal.few_shot.posterior).__name__ == "FewShotPosterior"
    assert "Gaussian" not in cal.decision["posterior"] and "few-shot posterior: Gaussian (LDA)" in cal.decision["heldout"]
    any_set = cal.decision["gaussian"]["heldout_any_asked_set"]
    assert any_set["Gaussian"]["nll"] > any_set["LR"]["nll"]


def test_an_unknown_posterior_kind_or_setting_is_refused(lda_calibrations, tmp_path):
    import json

    from engine.run.calibration_file import CalibrationError, fit_calibration, load_calibration

    system, sims, truth, cals, kw = lda_calibrations
    d = cals["auto"].to_dict()
    d["few_shot"]["posterior"]["kind"] = "mixture"
    p = tmp_path / "k.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="kind"):
        load_calibration(p)
    with pytest.raises(ValueError, match="posterior"):
        fit_calibration(sims, truth, system, posterior="svm", **kw)


def test_the_cli_offers_exactly_the_posteriors_calibrate_knows():
    import argparse

    from engine.cli.calibrate_cmd import add_calibrate_parser
    from engine.run.calibration_file import POSTERIORS

    sub = argparse.ArgumentParser().add_subparsers()
    add_calibrate_parser(sub)
    p = sub.choices["calibrate"]
    action = next(a for a in p._actions if a.dest == "posterior")
    assert tuple(action.choices) == POSTERIORS and action.default == "auto"


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=30), st.integers(1, 4))
def test_replaces_counts_images_when_correctness_is_a_share_of_rows(pairs, rows):
    """replaces() with per-image shares of rows right (heldout_scores_any_set): the paired SE is
    sqrt(Σ(a_i − b_i)²)/n, which for right/wrong images is the discordant count's sqrt(n_ab + n_ba)/n."""
    from engine.core.answer_models import replaces

    a = np.array([min(x, rows) / rows for x, _ in pairs])
    b = np.array([min(y, rows) / rows for _, y in pairs])
    gain = a.mean() - b.mean()
    se = np.sqrt(((a - b) ** 2).sum()) / len(a)
    want = bool(gain >= 0 and gain >= se)
    assert replaces({"nll": 1.0, "accuracy": a.mean(), "correct": a}, {"nll": 1.0, "accuracy": b.mean(), "correct": b}) == want
    assert not replaces({"nll": 1.1, "accuracy": 1.0, "correct": np.ones(len(a))},
                        {"nll": 1.0, "accuracy": 0.0, "correct": np.zeros(len(a))})
    ra, rb = a >= 0.5, b >= 0.5  # right/wrong images: the discordant count
    g2 = ra.mean() - rb.mean()
    assert replaces({"nll": 0, "accuracy": 0, "correct": ra}, {"nll": 0, "accuracy": 0, "correct": rb}) == \
        bool(g2 >= 0 and g2 >= np.sqrt((ra != rb).sum()) / len(ra))


def test_the_whole_dev_order_is_greedy_on_the_models_posterior_of_each_asked_set():
    """Every step of dev_greedy_order with a conditional model appends the group with the best (accuracy gain,
    mean true-class log posterior gain) per prompt on the posterior of the groups so far plus that one."""
    from engine.core.channel_fit import dev_greedy_order
    from engine.core.scoring import build_channel
    from tests.strategies import make_system

    sims, truth, _, C = lda_data(6, 20, sizes=(2, 3, 1, 2))
    sizes = np.array([2, 3, 1, 2])
    post = GP.fit_gaussian_posterior(sims, truth, sizes, C).posterior
    system = make_system([tuple(frozenset([k % int(s)]) for s in sizes) for k in range(C)], sizes)
    order = dev_greedy_order(sims, truth, 100.0, build_channel(system.rule_matrix, sizes, 0.05), answer_model=post)

    def score(groups):
        a = np.zeros((len(truth), len(sizes)), bool)
        a[:, list(groups)] = True
        lp = post.log_posterior(sims, a)
        return (lp.argmax(1) == truth).mean(), lp[np.arange(len(truth)), truth].mean()

    want, (acc0, lt0) = [], score([])
    while len(want) < len(sizes):
        keys = {}
        for g in (g for g in range(len(sizes)) if g not in want):
            acc, lt = score(want + [g])
            keys[g] = ((acc - acc0) / sizes[g], (lt - lt0) / sizes[g], -g)
        g = max(keys, key=keys.get)
        want.append(g)
        acc0, lt0 = score(want)
    assert list(order) == want


def test_heldout_scores_any_set_scores_each_fold_by_its_own_posterior_on_full_rows_and_prefixes():
    from engine.core.answer_models import heldout_scores_any_set, training_rows

    sims, truth, sizes, C = lda_data(7, 12)
    fit = GP.fit_gaussian_posterior(sims, truth, sizes, C, seed=2)
    got = heldout_scores_any_set(fit.fold_posteriors, fit.folds, sims, truth, len(sizes), per_image=3, seed=2)
    share, nll = np.zeros(len(truth)), []
    for f, p in zip(np.unique(fit.folds), fit.fold_posteriors):
        te = np.nonzero(fit.folds == f)[0]
        img, asked = training_rows(len(te), len(sizes), per_image=3, seed=2 + 2)
        assert len(img) == 4 * len(te) and asked[:len(te)].all()  # the full rows, then 3 prefixes each
        lp = p.log_posterior(sims[te][img], asked)
        right = lp.argmax(1) == truth[te][img]
        share[te] = [right[img == i].mean() for i in range(len(te))]
        nll.append(-lp[np.arange(len(img)), truth[te][img]])
    np.testing.assert_allclose(got["correct"], share)
    assert got["accuracy"] == pytest.approx(share.mean()) and got["nll"] == pytest.approx(np.concatenate(nll).mean())
    full_only = heldout_scores_any_set(fit.fold_posteriors, fit.folds, sims, truth, len(sizes), per_image=0, seed=2)
    np.testing.assert_allclose(full_only["correct"], (fit.heldout_log_post.argmax(1) == truth).astype(float))


def test_each_fold_posterior_has_a_temperature_fitted_without_its_fold():
    from engine.core.answer_models import training_rows

    sims, truth, sizes, C = lda_data(8, 15)
    fit = GP.fit_gaussian_posterior(sims, truth, sizes, C, seed=1)
    ids = np.unique(fit.folds)
    rows = []
    for f, p in zip(ids, fit.fold_posteriors):
        te = np.nonzero(fit.folds == f)[0]
        img, asked = training_rows(len(te), len(sizes), seed=1 + 1)
        rows.append((replace(p, temperature=1.0).log_posterior(sims[te][img], asked), truth[te][img]))  # t = 1
    assert fit.posterior.temperature == pytest.approx(GP._fit_temperature(rows), abs=1e-9)
    for j, p in enumerate(fit.fold_posteriors):
        assert p.temperature == pytest.approx(GP._fit_temperature(rows[:j] + rows[j + 1:]), abs=1e-9)
    assert len({round(p.temperature, 6) for p in fit.fold_posteriors}) > 1  # not one t shared by all


@pytest.mark.parametrize("key, value", [
    ("cov", "near-singular"), ("temperature", 1e308), ("temperature", True), ("temperature", "1.5"),
    ("mean", "huge"), ("scale", "tiny"), ("sizes", "fractional"), ("n_dev", [-1, 1, 1]), ("shrink", float("nan")),
    ("means", "one class short")])
def test_a_damaged_gaussian_posterior_is_refused_before_it_reaches_the_loop(key, value):
    post = random_gaussian(np.array([2, 1]), 3, 5)
    d = post.to_dict()
    if value == "near-singular":
        v = np.array([1.0, 2.0, 3.0])
        value = (np.outer(v, v) + 1e-17 * np.eye(3)).tolist()
    elif value == "huge":
        value = [1e308, 0.0, 0.0]
    elif value == "tiny":
        value = [1e-308, 1.0, 1.0]
    elif value == "fractional":
        value = [2.5, 0.5]
    elif value == "one class short":
        value = d["means"][:2]
    d[key] = value
    with pytest.raises(ValueError, match="Gaussian posterior"):
        GP.GaussianPosterior.from_dict(d)


def test_a_file_whose_few_shot_sizes_are_permuted_or_that_pairs_predictive_terms_with_a_gaussian_is_refused(
        lda_calibrations, tmp_path):
    import json

    from engine.run.calibration_file import CalibrationError, load_calibration

    system, sims, truth, cals, _ = lda_calibrations
    d = cals["auto"].to_dict()
    post = d["few_shot"]["posterior"]
    post["sizes"] = post["sizes"][1:] + post["sizes"][:1]  # the same Q, another grouping than the model's
    p = tmp_path / "perm.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="sizes"):
        load_calibration(p)
    d = cals["auto"].to_dict()
    d["predictive"] = cals["lr"].to_dict()["predictive"]  # an LR file's terms grafted onto a Gaussian file
    p = tmp_path / "graft.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="conditional"):
        load_calibration(p)


def test_a_gaussian_asked_for_by_name_is_still_judged_against_the_rule_channel_on_its_own_scores(
        lda_calibrations, monkeypatch):
    """--posterior gaussian keeps the Gaussian only when *it* beats the rule channel held out (not the LR)."""
    from engine.run.calibration_file import fit_calibration

    system, sims, truth, _, kw = lda_calibrations
    real = GP.fit_gaussian_posterior

    def useless(*a, **k):  # held out, every image put in the class after its own
        fit = real(*a, **k)
        lp = np.full_like(fit.heldout_log_post, -50.0)
        lp[np.arange(len(truth)), (truth + 1) % fit.posterior.n_classes] = 0.0
        return replace(fit, heldout_log_post=lp)

    monkeypatch.setattr(GP, "fit_gaussian_posterior", useless)
    cal = fit_calibration(sims, truth, system, **{**kw, "posterior": "gaussian"})
    assert cal.few_shot is None and cal.setting == "zero-shot"


def test_a_head_and_a_conditional_model_both_keep_the_callers_prior():
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from systems import load_system
    from tests.test_answer_models import headed

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    sims = np.random.default_rng(4).normal(0, 0.1, (6, int(sizes.sum())))
    prior = np.random.default_rng(5).dirichlet(np.ones(system.n_classes))
    for post in (headed(sizes, system.n_classes, 3), random_gaussian(sizes, system.n_classes, 3)):
        res = classify_batch(ArraySource(sims, system), system, "fixed", answer_model=post, prior=prior,
                             top_k=system.n_classes)
        want = np.exp(log_softmax(np.log(prior)[None, :] + post.log_posterior(sims), axis=1))
        for r, w in zip(res, want):
            got = dict(r.top)
            np.testing.assert_allclose([got[c] for c in system.classes], w, atol=1e-9)


def test_calibrate_keeps_the_lr_when_the_gaussian_is_better_on_question_subsets_but_worse_with_all_asked(
        lda_calibrations, monkeypatch):
    """The Gaussian must also be no less accurate than the LR on the held-out full rows (the full mode's
    posterior): better over random question subsets alone is not enough."""
    from engine.run.calibration_file import fit_calibration

    system, sims, truth, _, kw = lda_calibrations
    real = GP.fit_gaussian_posterior

    def worse_when_full(*a, **k):  # the fold posteriors (question subsets) untouched; the full rows made wrong
        fit = real(*a, **k)
        lp = np.full_like(fit.heldout_log_post, -50.0)
        lp[np.arange(len(truth)), (truth + 1) % fit.posterior.n_classes] = 0.0
        return replace(fit, heldout_log_post=lp)

    monkeypatch.setattr(GP, "fit_gaussian_posterior", worse_when_full)
    cal = fit_calibration(sims, truth, system, **kw)
    any_set = cal.decision["gaussian"]["heldout_any_asked_set"]
    assert any_set["Gaussian"]["accuracy"] > any_set["LR"]["accuracy"]  # it would win on subsets alone
    assert type(cal.few_shot.posterior).__name__ == "FewShotPosterior"


def test_delta_with_a_gaussian_calibration_warns_in_one_line_that_it_reads_the_channels_eig(lda_calibrations):
    import warnings

    from engine.run.calibrated import CalibrationUse, CalibrationWarning
    from engine.run.config import RunConfig

    system, _, _, cals, _ = lda_calibrations
    with pytest.warns(CalibrationWarning, match="delta 0.01.*policy eig: δ reads the per-class answer channel"):
        CalibrationUse(cals["auto"], system).check(RunConfig(mode="adaptive", delta=0.01))
    for policy in ("auto", "dev-order"):  # resolved through the calibration: neither reads the model's own
        with pytest.warns(CalibrationWarning, match=f"policy {policy}: δ reads the per-class answer channel"):
            CalibrationUse(cals["auto"], system).check(RunConfig(mode="adaptive", delta=0.01, policy=policy))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CalibrationUse(cals["auto"], system).check(RunConfig(mode="adaptive"))  # no δ: nothing to say
        # δ reads the model's own information under this policy
        CalibrationUse(cals["auto"], system).check(RunConfig(mode="adaptive", delta=0.01,
                                                             policy="model_eig_per_prompt"))
        CalibrationUse(cals["lr"], system).check(RunConfig(mode="adaptive", delta=0.01))  # the LR's own EIG
    text = warnings.formatwarning(CalibrationWarning("a\nb"), CalibrationWarning, "f.py", 1)
    assert text == "twentyq: CalibrationWarning: a b\n"
