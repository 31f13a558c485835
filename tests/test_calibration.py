"""Properties of engine.core.channel_fit: ECE, reliability bins, and the λ/ε fit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.core.channel_fit import (
    expected_calibration_error, fit_logit_scale_and_eps, full_log_posterior, reliability_bins, true_class_nll,
)
from engine.core.scoring import build_channel, full_bayes_log_posterior, group_log_probs


@st.composite
def conf_correct(draw):
    n = draw(st.integers(1, 60))
    conf = draw(arrays(np.float64, n, elements=st.floats(0, 1)))
    correct = draw(arrays(np.bool_, n))
    return conf, correct


@given(conf_correct(), st.integers(1, 20))
def test_ece_in_unit_interval(cc, n_bins):
    conf, correct = cc
    e = expected_calibration_error(conf, correct, n_bins)
    assert 0.0 <= e <= 1.0


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 8)), min_size=1, max_size=10), st.integers(0, 2**16))
def test_ece_zero_when_perfectly_calibrated(bins, seed):
    """In each bin, confidence k/m on m items of which exactly k are right: ECE = 0."""
    rng = np.random.default_rng(seed)
    conf, correct = [], []
    for b, m in bins:
        lo = b / 10
        # a confidence inside bin b that is a multiple of 1/m, if one exists
        ks = [k for k in range(m + 1) if lo <= k / m < lo + 0.1 or (b == 9 and k == m)]
        if not ks:
            continue
        k = ks[rng.integers(len(ks))]
        conf += [k / m] * m
        correct += [1] * k + [0] * (m - k)
    if not conf:
        return
    perm = rng.permutation(len(conf))
    e = expected_calibration_error(np.array(conf)[perm], np.array(correct)[perm], 10)
    assert e == pytest.approx(0.0, abs=1e-12)


@given(conf_correct(), st.integers(1, 20))
def test_reliability_bins_account_for_every_item(cc, n_bins):
    conf, correct = cc
    b = reliability_bins(conf, correct, n_bins)
    assert b["count"].sum() == len(conf)
    assert b["edges"].shape == (n_bins + 1,)
    nz = b["count"] > 0
    assert np.all((b["confidence"][nz] >= b["edges"][:-1][nz] - 1e-12) & (b["confidence"][nz] <= b["edges"][1:][nz] + 1e-12))
    assert np.all((b["accuracy"][nz] >= 0) & (b["accuracy"][nz] <= 1))
    assert np.isnan(b["accuracy"][~nz]).all()


def test_ece_known_value():
    # one bin: confidence 0.9 on 10 items, 6 right -> |0.6 - 0.9| = 0.3
    assert expected_calibration_error(np.full(10, 0.9), np.r_[np.ones(6), np.zeros(4)], 10) == pytest.approx(0.3)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.5]), np.array([1]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0.5, 0.5]), np.array([1]))


def _random_rule_matrix(rng, C, G, K):
    sizes = np.full(G, K)
    rm = np.zeros((C, G * K), dtype=bool)
    for c in range(C):
        for g in range(G):
            rm[c, g * K + rng.integers(K)] = True
    return rm, sizes


@given(st.integers(0, 2**16), st.floats(0.5, 200), st.floats(0, 0.5))
@settings(max_examples=25, deadline=None)
def test_full_log_posterior_matches_engine(seed, lam, eps):
    rng = np.random.default_rng(seed)
    rm, sizes = _random_rule_matrix(rng, 6, 3, 4)
    sims = rng.uniform(-1, 1, (5, 12))
    ch = build_channel(rm, sizes, eps)
    ref = full_bayes_log_posterior([group_log_probs(sims[:, ch.cols(g)], lam) for g in range(3)], ch)
    np.testing.assert_allclose(full_log_posterior(sims, rm, sizes, lam, eps), ref, atol=1e-10)


def _planted(seed, lam_true, n=1500, C=8, G=4, K=5):
    """Data whose true class follows the ε=0 Bayes posterior at λ = lam_true exactly.

    With ε = 0 and one option per rule, π(c) ∝ exp(λ Σ_g s_g[r_g(c)]), so
    drawing y ~ π makes λ the maximum-likelihood target.
    """
    rng = np.random.default_rng(seed)
    rm, sizes = _random_rule_matrix(rng, C, G, K)
    # make rule signatures distinct so the classes are identifiable
    sims = rng.normal(0, 0.05, (n, G * K))
    logits = lam_true * sims @ rm.T.astype(float)  # (n, C)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(C, p=row) for row in p])
    return sims, y, rm, sizes


@given(st.integers(0, 2**10), st.floats(5, 60))
@settings(max_examples=6, deadline=None)
def test_fit_recovers_planted_logit_scale(seed, lam_true):
    sims, y, rm, sizes = _planted(seed, lam_true)
    fit = fit_logit_scale_and_eps(sims, y, rm, sizes, lam0=3 * lam_true, eps0=1e-6, fit_eps=False)
    assert fit.eps == pytest.approx(1e-6)
    assert fit.lam == pytest.approx(lam_true, rel=0.2)
    assert fit.nll <= fit.nll_start + 1e-9


def test_fit_with_eps_lowers_nll_and_recovers_lambda():
    sims, y, rm, sizes = _planted(1, 20.0)
    fit = fit_logit_scale_and_eps(sims, y, rm, sizes, lam0=100.0, eps0=0.2)
    assert fit.nll <= fit.nll_start
    assert fit.lam == pytest.approx(20.0, rel=0.25)
    assert fit.eps < 0.05  # the planted channel has no rule noise
    lp = full_log_posterior(sims, rm, sizes, fit.lam, fit.eps)
    assert true_class_nll(lp, y) == pytest.approx(fit.nll, rel=1e-6)


def _planted_noisy(seed, lam_true, eps_true, n=300, C=6, G=3, K=3):
    """Classes drawn from the model's own posterior at (lam_true, eps_true): rule noise included."""
    rng = np.random.default_rng(seed)
    rm, sizes = _random_rule_matrix(rng, C, G, K)
    sims = rng.normal(0, 0.05, (n, G * K))
    p = np.exp(full_log_posterior(sims, rm, sizes, lam_true, eps_true))
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, C - 1)
    return sims, y, rm, sizes


def _nll(sims, y, rm, sizes, lam, eps):
    return true_class_nll(full_log_posterior(sims, rm, sizes, lam, eps), y)


@pytest.mark.slow
@given(st.integers(0, 2**10), st.floats(10, 60), st.floats(0.05, 0.3))
@settings(max_examples=4, deadline=None)
def test_fit_is_the_optimum_of_a_brute_force_grid_and_a_local_minimum(seed, lam_true, eps_true):
    """The fitted (λ, ε) is no worse than any point of a dense grid over the search box, and no step of 1%
    in log λ or logit ε from it lowers the NLL: it is the optimum, not just an improvement on the start."""
    from scipy.special import expit, logit
    sims, y, rm, sizes = _planted_noisy(seed, lam_true, eps_true)
    fit = fit_logit_scale_and_eps(sims, y, rm, sizes, lam0=100.0, eps0=0.05)
    assert fit.success is True
    assert fit.nll == pytest.approx(_nll(sims, y, rm, sizes, fit.lam, fit.eps), rel=1e-12)
    assert fit.nll_start == pytest.approx(_nll(sims, y, rm, sizes, 100.0, 0.05), rel=1e-12)
    assert 1e-2 <= fit.lam <= 1e4 and 1e-6 <= fit.eps <= 0.99
    grid = min(_nll(sims, y, rm, sizes, la, e) for la in np.geomspace(1.0, 1e3, 15)
               for e in expit(np.linspace(logit(1e-4), logit(0.9), 15)))
    assert fit.nll <= grid + 1e-6
    # the NLL is nearly flat in ε near 0, where L-BFGS-B may stop a hair short: a tolerance of 1e-6 nats
    for dl, de in ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)):
        other = _nll(sims, y, rm, sizes, fit.lam * np.exp(dl), float(expit(logit(fit.eps) + de)))
        assert fit.nll <= other + 1e-6


@given(st.integers(0, 2**10), st.floats(10, 60), st.sampled_from([0.0, 0.1, 0.3]))
@settings(max_examples=4, deadline=None)
def test_fit_of_lambda_alone_is_the_one_dimensional_optimum(seed, lam_true, eps0):
    """With ε fixed, the fitted λ beats a dense λ grid and every 1% step in λ; ε stays eps0 exactly."""
    sims, y, rm, sizes = _planted_noisy(seed, lam_true, 0.1)
    fit = fit_logit_scale_and_eps(sims, y, rm, sizes, lam0=100.0, eps0=eps0, fit_eps=False)
    assert fit.eps == eps0 and fit.success is True
    assert fit.nll == pytest.approx(_nll(sims, y, rm, sizes, fit.lam, eps0), rel=1e-12)
    grid = min(_nll(sims, y, rm, sizes, la, eps0) for la in np.geomspace(0.5, 2e3, 200))
    assert fit.nll <= grid + 1e-6
    for d in (0.01, -0.01):
        assert fit.nll <= _nll(sims, y, rm, sizes, fit.lam * np.exp(d), eps0) + 1e-6
