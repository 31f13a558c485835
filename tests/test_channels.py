"""Per-group answer channels (issue 16): confusions, per-group λ, the fit, and τ for a target accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.core.adaptive import StopRule, classify_batch
from engine.core.channel_fit import (
    AnswerChannels, binomial_lower_bound, choose_tau, fit_answer_channels, full_log_posterior, min_stops,
    stop_outcomes, true_class_nll,
)
from engine.core.scoring import (
    build_channel, check_logit_scales, entropy, eps_confusion, expected_information_gain,
)
from engine.core.simulate import SimulatedSource, sample_classes
from engine.core.sources import ArraySource
from tests.strategies import EPS, LOGIT_SCALES, confusion_sets, posteriors, similarity_arrays, systems
from tests.support.policies import distinct_policies

POLICIES = distinct_policies()


# --------------------------------------------------------------------------- the channel
@given(systems(), EPS)
@settings(max_examples=60, deadline=None)
def test_eps_confusions_give_todays_channel(system, eps):
    """M_g = (1−ε)·I + ε/K_g for every group is the method's ε channel: same P, H, A."""
    base = build_channel(system.rule_matrix, system.option_counts, eps)
    conf = build_channel(system.rule_matrix, system.option_counts, eps,
                         confusions=[eps_confusion(k, eps) for k in system.option_counts])
    np.testing.assert_allclose(conf.P, base.P, rtol=0, atol=1e-12)
    np.testing.assert_allclose(conf.H, base.H, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(conf.A, base.A)
    assert conf.confused.all() and not base.confused.any()


@given(st.data(), systems(), EPS, LOGIT_SCALES, st.sampled_from(POLICIES), st.floats(0.3, 1.0))
@settings(max_examples=40, deadline=None)
def test_eps_confusions_and_per_group_lambda_give_todays_results(data, system, eps, lam, policy, tau):
    """With the confusions equal to the ε channel and λ_g all equal to λ, classify_batch gives today's labels,
    paths, stop reasons and Q, and posteriors within float tolerance."""
    sims = data.draw(similarity_arrays(4, system.q_total))
    ch = build_channel(system.rule_matrix, system.option_counts, eps,
                       confusions=[eps_confusion(k, eps) for k in system.option_counts])
    stop = StopRule(tau=tau)
    a = classify_batch(ArraySource(sims, system), system, policy, stop=stop, logit_scale=lam, eps=eps)
    b = classify_batch(ArraySource(sims, system), system, policy, stop=stop,
                       logit_scale=np.full(system.n_groups, lam), channel=ch)
    for x, y in zip(a, b):
        assert [s.group for s in x.steps] == [s.group for s in y.steps]
        assert (x.q_spent, x.stop) == (y.q_spent, y.stop)
        np.testing.assert_allclose([p for _, p in x.top], [p for _, p in y.top], atol=1e-9)
        assert x.confidence == pytest.approx(y.confidence, abs=1e-9)


@given(st.data(), systems(), EPS)
@settings(max_examples=60, deadline=None)
def test_confusion_channel_rows_and_not_applicable(data, system, eps):
    """Every class's answer distribution in every group sums to 1; a not-applicable class answers 1/K_g whatever
    the confusion; an applicable one answers the mean of its acceptable options' confusion rows."""
    confs = data.draw(confusion_sets(system))
    ch = build_channel(system.rule_matrix, system.option_counts, eps, confusions=confs)
    r = system.rule_matrix
    for g in range(system.n_groups):
        seg = ch.P[:, ch.cols(g)]
        np.testing.assert_allclose(seg.sum(axis=1), 1.0, atol=1e-12)
        k = int(system.option_counts[g])
        m = confs[g] if confs[g] is not None else eps_confusion(k, eps)
        for c in range(system.n_classes):
            acc = r[c, ch.cols(g)]
            want = m[acc].mean(axis=0) if acc.any() else np.full(k, 1.0 / k)
            np.testing.assert_allclose(seg[c], want, atol=1e-12)
        np.testing.assert_allclose(ch.H[:, g], entropy(seg, axis=1), atol=1e-12)


@given(st.data(), systems(), EPS)
@settings(max_examples=60, deadline=None)
def test_eig_bounds_hold_under_fitted_confusions(data, system, eps):
    """0 ≤ EIG_g ≤ min(H(π), log K_g) for any confusion; a uniform confusion (reliability 0: the answer says
    nothing, as for a not-applicable class) gives EIG 0."""
    confs = data.draw(confusion_sets(system))
    g0 = data.draw(st.integers(0, system.n_groups - 1))
    k0 = int(system.option_counts[g0])
    confs[g0] = np.full((k0, k0), 1.0 / k0)
    ch = build_channel(system.rule_matrix, system.option_counts, eps, confusions=confs)
    post = data.draw(posteriors(system.n_classes, 3))
    eig = expected_information_gain(post, ch)
    tol = 1e-9
    assert (eig >= 0).all()
    assert (eig <= entropy(post)[:, None] + tol).all()
    assert (eig <= np.log(system.option_counts)[None, :] + tol).all()
    np.testing.assert_allclose(eig[:, g0], 0.0, atol=1e-9)


def test_confusion_is_checked():
    from tests.strategies import make_system
    s = make_system(((frozenset([0]),), (frozenset([1]),)), np.array([2]))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        build_channel(s.rule_matrix, s.option_counts, 0.0, confusions=[np.eye(3)])
    with pytest.raises(ValueError, match="summing to 1"):
        build_channel(s.rule_matrix, s.option_counts, 0.0, confusions=[np.array([[0.5, 0.2], [0.0, 1.0]])])
    with pytest.raises(ValueError, match="one entry per group"):
        build_channel(s.rule_matrix, s.option_counts, 0.0, confusions=[None, None])
    with pytest.raises(ValueError, match="one per group"):
        check_logit_scales([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="logit_scale"):
        check_logit_scales([1.0, -2.0], 2)


@given(st.data(), systems(), LOGIT_SCALES)
@settings(max_examples=40, deadline=None)
def test_per_group_lambda_is_used_per_group(data, system, lam):
    """Changing λ of one group changes only that group's answers: a full run equals the full posterior computed
    group by group with each group's own λ."""
    sims = data.draw(similarity_arrays(3, system.q_total))
    lams = np.array([data.draw(LOGIT_SCALES) for _ in range(system.n_groups)])
    res = classify_batch(ArraySource(sims, system), system, "fixed", logit_scale=lams, eps=0.1, top_k=system.n_classes)
    lp = full_log_posterior(sims, system.rule_matrix, system.option_counts, lams, 0.1)
    for i, r in enumerate(res):
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], np.exp(lp[i]), atol=1e-9)


# --------------------------------------------------------------------------- the fit
def _hetero_system(n_classes=12, G=4, K=4, seed=0):
    from tests.strategies import make_system
    rng = np.random.default_rng(seed)
    rules = tuple(tuple(frozenset([int(rng.integers(K))]) for _ in range(G)) for _ in range(n_classes))
    return make_system(rules, np.full(G, K))


def _sims(system, n, seed, margin, wrong):
    y = sample_classes(n, system.n_classes, seed)
    src = SimulatedSource(system, y, margin=margin, noise=0.02, wrong_rate=wrong, seed=seed)
    return np.concatenate([src.similarities(np.arange(n), g) for g in range(system.n_groups)], axis=1), y


def test_fit_finds_which_group_is_answered_well():
    """Group 0 is answered right 90% of the time, group 3 at chance: the fitted reliability and the confusion's
    diagonal rank them so, and the fitted channels beat the ε channel on held-out images."""
    s = _hetero_system()
    margin, wrong = 0.08, np.array([0.1, 0.3, 0.5, 0.75])
    dev, y_dev = _sims(s, 600, 1, margin, wrong)
    test, y_test = _sims(s, 600, 2, margin, wrong)
    fit = fit_answer_channels(dev, y_dev, s.rule_matrix, s.option_counts, lam0=50.0, eps=0.05)
    assert isinstance(fit, AnswerChannels)
    diag = [np.diag(m).mean() for m in fit.confusions]
    assert diag[0] > diag[1] > diag[2] > diag[3]
    assert fit.reliability[0] > fit.reliability[3]
    assert (fit.n_dev == 600).all()
    ch = fit.channel(s.rule_matrix, s.option_counts)
    nll_fit = true_class_nll(full_log_posterior(test, s.rule_matrix, s.option_counts, fit.lams, fit.eps, ch), y_test)
    nll_eps = true_class_nll(full_log_posterior(test, s.rule_matrix, s.option_counts, 50.0, 0.05), y_test)
    assert nll_fit < nll_eps - 0.1
    # EIG now prefers the group that is answered well, from the uniform prior
    eig = expected_information_gain(np.full((1, s.n_classes), 1 / s.n_classes), ch)[0]
    assert int(np.argmax(eig)) == 0


def test_few_dev_images_fall_back_to_the_eps_channel():
    """With a huge prior strength and no reliability fit the confusions are the ε channel."""
    s = _hetero_system()
    dev, y = _sims(s, 30, 3, 0.08, 0.2)
    fit = fit_answer_channels(dev, y, s.rule_matrix, s.option_counts, lam0=50.0, eps=0.1, prior_strength=1e9,
                              fit_reliability=False)
    for m, k in zip(fit.confusions, s.option_counts):
        np.testing.assert_allclose(m, eps_confusion(k, 0.1), atol=1e-6)


def test_skipped_group_stays_on_lambda0_and_eps():
    s = _hetero_system()
    dev, y = _sims(s, 200, 4, 0.08, 0.2)
    fit = fit_answer_channels(dev, y, s.rule_matrix, s.option_counts, lam0=33.0, eps=0.05, skip_groups=(2,))
    assert fit.lams[2] == 33.0 and fit.confusions[2] is None and np.isnan(fit.reliability[2])
    assert fit.lams[0] != 33.0 and fit.confusions[0] is not None


def test_group_without_dev_evidence_stays_on_the_eps_channel():
    """A group that says nothing about any dev image's class (no rule) is not fitted: λ0, ε channel, NaN reliability."""
    from tests.strategies import make_system
    rules = tuple((frozenset([c % 3]), frozenset() if c < 6 else frozenset([c % 2])) for c in range(8))
    s = make_system(rules, np.array([3, 2]))
    y = np.arange(6).repeat(20)  # only classes 0-5: group 1 is not applicable to any of them
    sims = np.random.default_rng(0).normal(0.25, 0.05, (len(y), s.q_total))
    fit = fit_answer_channels(sims, y, s.rule_matrix, s.option_counts, lam0=40.0, eps=0.05)
    assert fit.n_dev.tolist() == [120, 0]
    assert fit.confusions[1] is None and fit.lams[1] == 40.0 and np.isnan(fit.reliability[1])
    assert fit.confusions[0] is not None and 0.0 <= fit.reliability[0] <= 1.0


def test_zero_reliability_ignores_the_group():
    """A group whose fitted reliability is 0 leaves every posterior as it was."""
    s = _hetero_system(G=2)
    confs = [eps_confusion(4, 0.05), np.full((4, 4), 0.25)]
    ch = build_channel(s.rule_matrix, s.option_counts, 0.05, confusions=confs)
    sims = np.random.default_rng(0).normal(0.25, 0.05, (5, s.q_total))
    both = full_log_posterior(sims, s.rule_matrix, s.option_counts, 30.0, 0.05, ch)
    one = full_log_posterior(sims[:, :4], s.rule_matrix[:, :4], s.option_counts[:1], 30.0, 0.05)
    np.testing.assert_allclose(both, one, atol=1e-12)


# --------------------------------------------------------------------------- τ for a target accuracy
@st.composite
def paths(draw):
    B = draw(st.integers(1, 30))
    S = draw(st.integers(1, 6))
    conf = draw(arrays(np.float64, (B, S), elements=st.floats(0.0, 1.0)))
    conf = np.maximum.accumulate(conf, axis=1) if draw(st.booleans()) else conf
    lens = draw(arrays(np.int64, (B,), elements=st.integers(1, S)))
    conf[np.arange(S)[None, :] >= lens[:, None]] = np.nan
    correct = draw(arrays(bool, (B, S)))
    return conf, correct


@given(paths(), st.floats(0.05, 0.99), st.floats(0.05, 0.99))
@settings(max_examples=50, deadline=None)
def test_stop_outcomes_are_monotone_in_tau(p, t1, t2):
    """A higher τ never stops more images; an image counts as right only if it stopped, at its first step ≥ τ."""
    conf, correct = p
    lo, hi = sorted((t1, t2))
    s_lo, r_lo = stop_outcomes(conf, correct, lo)
    s_hi, r_hi = stop_outcomes(conf, correct, hi)
    assert (s_hi <= s_lo).all() and (r_lo <= s_lo).all() and (r_hi <= s_hi).all()
    for i in range(conf.shape[0]):
        hits = np.nonzero(np.nan_to_num(conf[i], nan=-1) >= hi)[0]
        assert s_hi[i] == bool(len(hits))
        assert r_hi[i] == (bool(len(hits)) and bool(correct[i, hits[0]]))


@given(paths(), st.floats(0.05, 0.95), st.sampled_from([0.05, 0.1, 0.2]))
@settings(max_examples=50, deadline=None)
def test_choose_tau_is_a_fixed_sequence_test(p, target, alpha):
    """Every τ tested down to the chosen one has binomial p-value ≤ α; the next one tested (if any) has p > α; τ with
    fewer than min_stopped stopped images are skipped; the reported counts and lower bound are the chosen τ's."""
    from scipy.stats import binom
    conf, correct = p
    c = choose_tau(conf, correct, target, alpha=alpha, min_stopped=3)
    assert c.min_stopped == max(3, min_stops(target, alpha))  # the floor, or the target's own minimum
    taus = [row[0] for row in c.table]
    assert taus == sorted(taus, reverse=True)
    for tau, n, k, pv in c.table:
        s, r = stop_outcomes(conf, correct, tau)
        assert (n, k) == (int(s.sum()), int(r.sum()))
        if n < c.min_stopped:
            assert np.isnan(pv)
        else:
            assert pv == pytest.approx(binom.sf(k - 1, n, target))
    tested = [row for row in c.table if not np.isnan(row[3])]
    passed = [row for row in tested if row[3] <= alpha]
    assert tested[:len(passed)] == passed and len(tested) - len(passed) in (0, 1)
    if c.reached:
        assert c.tau == passed[-1][0] and (c.n_stopped, c.n_right) == passed[-1][1:3]
        assert c.lower_bound == pytest.approx(binomial_lower_bound(c.n_right, c.n_stopped, alpha))
    else:
        assert c.tau == 1.0 and not passed


@pytest.mark.slow
def test_choose_tau_controls_accuracy_on_fresh_images():
    """Calibrated confidences (right with probability = confidence): the τ chosen on dev images gives at least
    the target accuracy among stopped fresh images in ≥ 1 − α of repetitions (here 0.9, with slack for 60 trials)."""
    rng = np.random.default_rng(0)

    def draw(n):
        conf = np.sort(rng.beta(2, 1.2, (n, 5)), axis=1)
        return conf, rng.random((n, 5)) < conf

    ok = []
    for _ in range(60):
        c = choose_tau(*draw(300), 0.8, alpha=0.1)
        assert c.reached
        s, r = stop_outcomes(*draw(20000), c.tau)
        ok.append(r.sum() / s.sum() >= 0.8)
    assert np.mean(ok) >= 0.8


def test_choose_tau_refuses_bad_targets_and_reports_unreachable():
    conf = np.array([[0.5, 0.9]])
    with pytest.raises(ValueError, match="target accuracy"):
        choose_tau(conf, np.ones_like(conf, bool), 1.0)
    c = choose_tau(conf, np.zeros_like(conf, bool), 0.8, min_stopped=1)
    assert not c.reached and c.tau == 1.0
    c = choose_tau(conf, np.ones_like(conf, bool), 0.5, min_stopped=2)  # one image: nothing can be tested
    assert not c.reached and all(np.isnan(row[3]) for row in c.table)
