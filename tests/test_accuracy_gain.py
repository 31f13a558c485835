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
def predictive(post, sims, asked, g):
    """(m (C, K_g), S (K_g, K_g), Bg (Q,) bool): group g's standardised similarities given the asked ones are
    N(m_c, S) in the model (N(m_c, S/t) tempered), by the textbook formulas with explicit inverses."""
    cols = np.repeat(np.arange(len(post.sizes)), post.sizes)
    A, Bg = asked[cols], cols == g
    z = (sims - post.mean) / post.scale
    cov, M = post.cov, post.means
    K = cov[np.ix_(Bg, A)] @ np.linalg.inv(cov[np.ix_(A, A)]) if A.any() else np.zeros((Bg.sum(), 0))
    return M[:, Bg] + (z[A][None, :] - M[:, A]) @ K.T, cov[np.ix_(Bg, Bg)] - K @ cov[np.ix_(A, Bg)], Bg


def brute_gaussian_gain(post, sims, asked, log_post, g, draws):
    """One image, one group, written out: z_g drawn as m_c + chol(S)·ε/√t for each class c and draw ε, the new
    posterior by Bayes with the same tempered density."""
    m, S, _ = predictive(post, sims, asked, g)
    t = post.temperature
    L, Sinv = np.linalg.cholesky(S), np.linalg.inv(S)
    p = np.exp(log_post)
    total = 0.0
    for c in range(len(p)):
        for e in draws:
            x = m[c] + L @ e / np.sqrt(t)
            new = log_post - 0.5 * t * np.array([(x - m[j]) @ Sinv @ (x - m[j]) for j in range(len(p))])
            total += p[c] * np.exp(new.max() - logsumexp(new)) / len(draws)
    return max(total - p.max(), 0.0)


def gaussian_state(pb, salt: int):
    """A random Gaussian posterior from ``settle_problem``'s draw, one image near a class mean (rng seed + salt), a
    caller's prior ``offset`` (it carries over) and the posterior now with it: (sizes, C, asked, post, rng, sims,
    offset, log_post)."""
    sizes, C, seed, asked, _ = pb
    post = random_gaussian(sizes, C, seed)
    rng = np.random.default_rng(seed + salt)
    sims = (post.means[rng.integers(0, C)] + rng.normal(0, 1, sizes.sum())) * post.scale + post.mean
    offset = rng.normal(0, 1, C)
    log_post = log_softmax(post.log_posterior(sims[None], asked[None])[0] + offset)
    return sizes, C, asked, post, rng, sims, offset, log_post


@settings(max_examples=30, deadline=None)
@given(settle_problem())
def test_the_gaussian_gain_is_the_written_out_expectation_over_its_own_predictive(pb):
    sizes, C, asked, post, rng, sims, offset, log_post = gaussian_state(pb, 0)
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
    t = post.temperature
    for g in np.nonzero(~asked)[0]:
        m, S, Bg = predictive(post, sims, asked, g)
        n = 20_000
        cls = rng.choice(C, n, p=p)
        x = m[cls] + rng.standard_normal((n, Bg.sum())) @ np.linalg.cholesky(S).T / np.sqrt(t)
        d = x[:, None, :] - m[None]
        new = log_post[None] - 0.5 * t * np.einsum("ncq,qr,ncr->nc", d, np.linalg.inv(S), d)
        new = np.exp(new - logsumexp(new, axis=1, keepdims=True))
        np.testing.assert_allclose(new.mean(axis=0), p, atol=5 * np.sqrt(0.25 / n))
    assert (GP.expected_accuracy_gain(post, sims[None], asked[None], log_post[None]) >= 0).all()


def test_its_draws_are_fixed_antithetic_standard_normals():
    d = GP._gain_draws(32, 3)
    assert d.shape == (32, 3) and d is GP._gain_draws(32, 3)  # the same draws every call
    np.testing.assert_array_equal(d[16:], -d[:16])  # antithetic: odd moments exactly 0
    big = GP._gain_draws(20_000, 2)
    np.testing.assert_allclose(big.var(axis=0), 1.0, atol=0.05)
    np.testing.assert_allclose(np.corrcoef(big.T)[0, 1], 0.0, atol=0.05)


@settings(max_examples=10, deadline=None)
@given(settle_problem(max_classes=3))
def test_with_many_draws_the_gaussian_gain_is_an_independent_monte_carlo_of_the_models_own_update(pb):
    """Fresh random draws from the tempered predictive, the new posterior by ``log_posterior`` on the asked set
    plus g with the caller's prior added: E[max p'] − max p, against the function with 20,000 fixed draws."""
    sizes, C, asked, post, rng, sims, offset, log_post = gaussian_state(pb, 2)
    got = GP.expected_accuracy_gain(post, sims[None], asked[None], log_post[None], draws=20_000)[0]
    n, t = 4_000, post.temperature
    for g in np.nonzero(~asked)[0]:
        m, S, Bg = predictive(post, sims, asked, g)
        cls = rng.choice(C, n, p=np.exp(log_post))
        zg = m[cls] + rng.standard_normal((n, Bg.sum())) @ np.linalg.cholesky(S).T / np.sqrt(t)
        full = np.tile(sims, (n, 1))
        full[:, Bg] = zg * post.scale[Bg] + post.mean[Bg]
        now = asked.copy()
        now[g] = True
        new = post.log_posterior(full, np.tile(now, (n, 1))) + offset
        top = np.exp(new.max(axis=1) - logsumexp(new, axis=1))
        assert got[g] == pytest.approx(max(top.mean() - np.exp(log_post).max(), 0.0), abs=0.03)


@settings(max_examples=10, deadline=None)
@given(settle_problem(max_classes=3))
def test_the_remaining_gain_is_an_independent_monte_carlo_of_asking_every_group_left(pb):
    """remaining_accuracy_gain: every unasked column drawn at once from the tempered predictive (fresh draws, the
    textbook conditional), the full posterior by ``log_posterior`` with the caller's prior added: E[max p'] − max
    p, against the function with 20,000 fixed draws; with every group asked it is 0."""
    sizes, C, asked, post, rng, sims, offset, log_post = gaussian_state(pb, 3)
    got = GP.remaining_accuracy_gain(post, sims[None], asked[None], log_post[None], draws=20_000)[0]
    R = ~np.repeat(asked, sizes)
    if not R.any():
        assert got == 0.0
        return
    z, cov, M, t, n = (sims - post.mean) / post.scale, post.cov, post.means, post.temperature, 4_000
    K = cov[np.ix_(R, ~R)] @ np.linalg.inv(cov[np.ix_(~R, ~R)]) if (~R).any() else np.zeros((R.sum(), 0))
    m = M[:, R] + (z[~R][None, :] - M[:, ~R]) @ K.T
    S = cov[np.ix_(R, R)] - K @ cov[np.ix_(~R, R)]
    cls = rng.choice(C, n, p=np.exp(log_post))
    zr = m[cls] + rng.standard_normal((n, R.sum())) @ np.linalg.cholesky(S).T / np.sqrt(t)
    full = np.tile(sims, (n, 1))
    full[:, R] = zr * post.scale[R] + post.mean[R]
    new = post.log_posterior(full) + offset
    top = np.exp(new.max(axis=1) - logsumexp(new, axis=1))
    assert got == pytest.approx(max(top.mean() - np.exp(log_post).max(), 0.0), abs=0.03)


@settings(max_examples=20, deadline=None)
@given(settle_problem())
def test_with_one_group_left_the_remaining_gain_is_that_groups_gain(pb):
    sizes, C, seed, asked, _ = pb
    post = random_gaussian(sizes, C, seed)
    rng = np.random.default_rng(seed + 4)
    sims = (post.means[rng.integers(0, C)] + rng.normal(0, 1, sizes.sum())) * post.scale + post.mean
    for g in range(len(sizes)):
        now = np.ones(len(sizes), bool)
        now[g] = False
        lp = post.log_posterior(sims[None], now[None])
        one = GP.expected_accuracy_gain(post, sims[None], now[None], lp, draws=2 * GP.GAIN_DRAWS)[0]
        assert GP.remaining_accuracy_gain(post, sims[None], now[None], lp)[0] == pytest.approx(one[g], abs=1e-12)


def test_a_batch_past_one_chunk_gives_each_image_what_it_gets_alone():
    """More images with one asked set than GAIN_CHUNK: each image's gains (one group, and every group left) are
    what it gets on its own, so the chunks write their own rows."""
    sizes = np.array([2, 3, 2])
    post = random_gaussian(sizes, 5, 2, temperature=0.7)
    rng = np.random.default_rng(3)
    n = GP.GAIN_CHUNK + 37
    sims = rng.normal(0, 1, (n, sizes.sum())) * post.scale + post.mean
    asked = np.tile([True, False, False], (n, 1))
    lp = post.log_posterior(sims, asked)
    one, rest = GP.expected_accuracy_gain(post, sims, asked, lp), GP.remaining_accuracy_gain(post, sims, asked, lp)
    for i in (0, GP.GAIN_CHUNK - 1, GP.GAIN_CHUNK, n - 1):
        np.testing.assert_allclose(one[i], GP.expected_accuracy_gain(post, sims[i:i + 1], asked[i:i + 1], lp[i:i + 1])[0],
                                   atol=1e-12)
        assert rest[i] == pytest.approx(GP.remaining_accuracy_gain(post, sims[i:i + 1], asked[i:i + 1], lp[i:i + 1])[0],
                                        abs=1e-12)
    assert len(set(np.round(rest, 9))) > n // 2  # the images differ, so a copied chunk would show


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
def _gaussian_run(backend, budget=None, prior=None):
    from engine.core.adaptive import StopRule
    from engine.core.sources import ArraySource
    from engine.run.engines import classify

    post, sims, system = gaussian_images(30)
    res = classify(ArraySource(sims, system), system, "accuracy_per_prompt", engine=backend, prior=prior,
                   stop=StopRule(tau=0.97, budget=budget), logit_scale=100.0, answer_model=post, trace=True)
    return post, sims, system, res


def test_in_the_loop_it_asks_the_group_of_most_gain_per_prompt_under_the_gaussians_own_predictive():
    """Replays every path: at each step, the asked set before it, the posterior the loop held, the Gaussian's gain;
    the group asked is the best per prompt among the affordable ones (ties: lowest index)."""
    prior = np.random.default_rng(5).dirichlet(np.ones(4) * 0.5, size=30)  # a caller's prior, per image
    post, sims, system, res = _gaussian_run("numpy", budget=6, prior=prior)
    sizes = np.asarray(system.option_counts)

    def rate(lp, asked, i):
        lp = log_softmax(lp + np.log(prior[i]))  # the loop's posterior carries the prior
        return GP.expected_accuracy_gain(post, sims[i:i + 1], asked[None], lp)[0] / sizes

    checked = assert_greedy_paths(res, system, post, sims, 6, rate, tol=1e-12)
    assert checked > 30
    _, _, _, plain = _gaussian_run("numpy", budget=6)
    assert [[s.group for s in r.steps] for r in plain] != [[s.group for s in r.steps] for r in res]  # it matters


def test_the_torch_loop_asks_what_the_numpy_loop_asks():
    pytest.importorskip("torch")
    _, _, _, want = _gaussian_run("numpy")
    _, _, _, got = _gaussian_run("torch")
    assert [[s.group for s in r.steps] for r in got] == [[s.group for s in r.steps] for r in want]
    assert [r.label for r in got] == [r.label for r in want]


def test_the_gain_is_computed_only_for_a_policy_that_reads_it():
    """The Gaussian's gain costs ~100× the channel EIG: the loop hands it only to reads_gain policies."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from policies import Policy, get_policy

    seen = []

    class Spy(Policy):
        name = "spy"
        reads_gain = False

        def select(self, state):
            seen.append(state.gain)
            return get_policy("fixed").select(state)

    class GainSpy(Spy):
        reads_gain = True

    post, sims, system = gaussian_images(5)
    for cls, want in ((Spy, False), (GainSpy, True)):
        seen.clear()
        classify_batch(ArraySource(sims, system), system, cls(), stop=StopRule(tau=0.99), answer_model=post)
        assert seen and all((g is not None) == want for g in seen)


def test_a_nearly_singular_covariance_still_gives_finite_gains_and_bounds():
    """Σ with one column copied into another group (a hand-made or damaged file with almost no ridge): its
    Schur complements fail Cholesky in floats; pd_cholesky adds the least jitter that works."""
    rng = np.random.default_rng(0)
    S = np.outer(np.ones(3), np.ones(3)) + 1e-18 * np.eye(3)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(S - 1e-9 * np.eye(3))
    L = GP.pd_cholesky(S - 1e-9 * np.eye(3))
    assert np.isfinite(L).all() and np.allclose(L @ L.T, S, atol=1e-5)
    sizes = np.array([2, 2, 2])
    a = rng.normal(0, 1, (6, 6))
    cov = a @ a.T / 6
    cov[:, 3] = cov[:, 0]
    cov[3, :] = cov[0, :]
    cov[3, 3] = cov[0, 0]  # column 3 is column 0: singular
    cov = cov + 1e-13 * np.eye(6)
    post = GP.GaussianPosterior(mean=np.zeros(6), scale=np.ones(6), means=rng.normal(0, 1, (3, 6)), cov=cov,
                                log_prior_c=log_softmax(np.zeros(3)), temperature=0.5, shrink=0.0, sizes=sizes,
                                n_dev=np.ones(3, dtype=np.int64))
    sims = rng.normal(0, 1, (4, 6))
    asked = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)
    lp = post.log_posterior(sims, asked)
    assert np.isfinite(lp).all()
    assert np.isfinite(GP.expected_accuracy_gain(post, sims, asked, lp)).all()
    assert np.isfinite(GP.settled_probability(post, sims, asked, lp)).all()
