"""The expected accuracy gain of asking a group (what the ``accuracy_per_prompt`` policy reads): under the answer
channel (engine.core.scoring) and under the Gaussian few-shot posterior's own predictive (engine.core.gaussian),
and the policy in the loop on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp

from engine.core import gaussian as GP
from engine.core.scoring import build_channel, expected_accuracy_gain
from tests.strategies import EPS, make_system, posteriors, systems
from tests.support.policies import assert_greedy_paths
from tests.test_gaussian_posterior import gaussian_images, random_gaussian
from tests.test_settle import settle_problem


# --------------------------------------------------------------------------- the channel's
@settings(max_examples=60, deadline=None)
@given(system=systems(), eps=EPS, data=st.data())
def test_the_channel_gain_is_the_expected_rise_of_the_top_class_after_a_hard_answer(system, eps, data):
    """By Bayes' rule, answer by answer: Σ_k P(k)·max_c π(c | k) − max_c π(c), and never below 0."""
    ch = build_channel(system.rule_matrix, system.option_counts, eps)
    post = data.draw(posteriors(system.n_classes, 3))
    got = expected_accuracy_gain(post, ch)
    assert got.shape == (3, system.n_groups) and (got >= 0).all()
    for i in range(3):
        for g in range(system.n_groups):
            P = ch.P[:, ch.cols(g)]  # (C, K_g)
            joint = post[i][:, None] * P
            p_k = joint.sum(axis=0)
            after = sum(p_k[k] * (joint[:, k] / p_k[k]).max() for k in range(P.shape[1]) if p_k[k] > 0)
            assert got[i, g] == pytest.approx(max(after - post[i].max(), 0.0), abs=1e-12)


def test_a_certain_image_gains_nothing_and_an_undecided_one_gains_most_from_the_separating_group():
    rules = [(frozenset([0]), frozenset([0])), (frozenset([1]), frozenset([0]))]  # group 0 separates, group 1 not
    system = make_system(rules, np.array([2, 2]))
    ch = build_channel(system.rule_matrix, system.option_counts, 0.0)
    gain = expected_accuracy_gain(np.array([[1.0, 0.0], [0.5, 0.5]]), ch)
    np.testing.assert_allclose(gain, [[0.0, 0.0], [0.5, 0.0]], atol=1e-12)


# --------------------------------------------------------------------------- the Gaussian's own
def brute_gaussian_gain(post, sims, asked, log_post, g, draws):
    """One image, one group, written out: the conditional N(m_c, S/t) by explicit inverses, z_g drawn as
    m_c + chol(S)·ε/√t for each class c and draw ε, the new posterior by Bayes with the same tempered density."""
    cols = np.repeat(np.arange(len(post.sizes)), post.sizes)
    A, Bg = asked[cols], cols == g
    z = (sims - post.mean) / post.scale
    cov, M, t = post.cov, post.means, post.temperature
    if A.any():
        K = cov[np.ix_(Bg, A)] @ np.linalg.inv(cov[np.ix_(A, A)])
        m = M[:, Bg] + (z[A][None, :] - M[:, A]) @ K.T
        S = cov[np.ix_(Bg, Bg)] - K @ cov[np.ix_(A, Bg)]
    else:
        m, S = M[:, Bg], cov[np.ix_(Bg, Bg)]
    L, Sinv = np.linalg.cholesky(S), np.linalg.inv(S)
    p = np.exp(log_post)
    total = 0.0
    for c in range(len(p)):
        for e in draws:
            x = m[c] + L @ e / np.sqrt(t)
            new = log_post - 0.5 * t * np.array([(x - m[j]) @ Sinv @ (x - m[j]) for j in range(len(p))])
            total += p[c] * np.exp(new.max() - logsumexp(new)) / len(draws)
    return max(total - p.max(), 0.0)


@settings(max_examples=30, deadline=None)
@given(settle_problem())
def test_the_gaussian_gain_is_the_written_out_expectation_over_its_own_predictive(pb):
    sizes, C, seed, asked, _ = pb
    post = random_gaussian(sizes, C, seed)
    rng = np.random.default_rng(seed)
    sims = (post.means[rng.integers(0, C)] + rng.normal(0, 1, sizes.sum())) * post.scale + post.mean
    offset = rng.normal(0, 1, C)  # the caller's prior carries over
    log_post = log_softmax(post.log_posterior(sims[None], asked[None])[0] + offset)
    got = GP.expected_accuracy_gain(post, sims[None], asked[None], log_post[None])[0]
    for g in range(len(sizes)):
        if asked[g]:
            assert got[g] == 0.0
            continue
        draws = GP._gain_draws(GP.GAIN_DRAWS, int(sizes[g]))
        assert got[g] == pytest.approx(brute_gaussian_gain(post, sims, asked, log_post, g, draws), abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(settle_problem(max_classes=3))
def test_its_predictive_is_the_models_own_so_the_posterior_is_a_martingale_and_the_gain_not_negative(pb):
    """Drawn from the tempered predictive, the expected new posterior is the posterior now (Monte Carlo, 20,000
    draws): the draws and the update are one model. Hence E[max p'] ≥ max p."""
    sizes, C, seed, asked, _ = pb
    post = random_gaussian(sizes, C, seed)
    rng = np.random.default_rng(seed + 1)
    sims = (post.means[rng.integers(0, C)] + rng.normal(0, 1, sizes.sum())) * post.scale + post.mean
    log_post = post.log_posterior(sims[None], asked[None])[0]
    p = np.exp(log_post)
    for g in np.nonzero(~asked)[0]:
        cols = np.repeat(np.arange(len(sizes)), sizes)
        A, Bg = asked[cols], cols == g
        z = (sims - post.mean) / post.scale
        cov, M, t = post.cov, post.means, post.temperature
        K = cov[np.ix_(Bg, A)] @ np.linalg.inv(cov[np.ix_(A, A)]) if A.any() else np.zeros((Bg.sum(), 0))
        m = M[:, Bg] + (z[A][None, :] - M[:, A]) @ K.T
        S = cov[np.ix_(Bg, Bg)] - K @ cov[np.ix_(A, Bg)]
        n = 20_000
        cls = rng.choice(C, n, p=p)
        x = m[cls] + rng.standard_normal((n, Bg.sum())) @ np.linalg.cholesky(S).T / np.sqrt(t)
        d = x[:, None, :] - m[None]
        new = log_post[None] - 0.5 * t * np.einsum("ncq,qr,ncr->nc", d, np.linalg.inv(S), d)
        new = np.exp(new - logsumexp(new, axis=1, keepdims=True))
        np.testing.assert_allclose(new.mean(axis=0), p, atol=5 * np.sqrt(0.25 / n))
    assert (GP.expected_accuracy_gain(post, sims[None], asked[None], log_post[None]) >= 0).all()


def test_over_more_classes_than_it_weighs_it_uses_each_images_most_probable_renormalised():
    sizes = np.array([2, 3, 2])
    post = random_gaussian(sizes, 6, 3, temperature=0.6)
    rng = np.random.default_rng(0)
    sims = rng.normal(0, 1, (4, sizes.sum())) * post.scale + post.mean
    asked = np.array([[1, 0, 0]] * 4, bool)
    lp = post.log_posterior(sims, asked)
    got = GP.expected_accuracy_gain(post, sims, asked, lp, components=3)
    for i in range(4):
        keep = np.argsort(-lp[i], kind="stable")[:3]
        sub = GP.GaussianPosterior(mean=post.mean, scale=post.scale, means=post.means[keep], cov=post.cov,
                                   log_prior_c=post.log_prior_c[keep], temperature=post.temperature, shrink=post.shrink,
                                   sizes=sizes, n_dev=post.n_dev[keep])
        want = GP.expected_accuracy_gain(sub, sims[i:i + 1], asked[i:i + 1], log_softmax(lp[i, keep])[None])
        np.testing.assert_allclose(got[i], want[0], atol=1e-12)
    assert not np.allclose(got, GP.expected_accuracy_gain(post, sims, asked, lp))


# --------------------------------------------------------------------------- the policy in the loop
def _gaussian_run(backend, budget=None):
    from engine.core.adaptive import StopRule
    from engine.core.sources import ArraySource
    from engine.run.engines import classify

    post, sims, system = gaussian_images(30)
    res = classify(ArraySource(sims, system), system, "accuracy_per_prompt", engine=backend,
                   stop=StopRule(tau=0.97, budget=budget), logit_scale=100.0, answer_model=post, trace=True)
    return post, sims, system, res


def test_in_the_loop_it_asks_the_group_of_most_gain_per_prompt_under_the_gaussians_own_predictive():
    """Replays every path: at each step, the asked set before it, the posterior the loop held, the Gaussian's gain;
    the group asked is the best per prompt among the affordable ones (ties: lowest index)."""
    post, sims, system, res = _gaussian_run("numpy", budget=6)
    sizes = np.asarray(system.option_counts)

    def rate(lp, asked, i):
        return GP.expected_accuracy_gain(post, sims[i:i + 1], asked[None], lp)[0] / sizes

    checked = assert_greedy_paths(res, system, post, sims, 6, rate, tol=1e-12)
    assert checked > 30


def test_the_torch_loop_asks_what_the_numpy_loop_asks():
    pytest.importorskip("torch")
    _, _, _, want = _gaussian_run("numpy")
    _, _, _, got = _gaussian_run("torch")
    assert [[s.group for s in r.steps] for r in got] == [[s.group for s in r.steps] for r in want]
    assert [r.label for r in got] == [r.label for r in want]
