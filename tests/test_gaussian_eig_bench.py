"""bench.gaussian_eig: the pairwise-distance bounds on the Gaussian posterior's own information gain, and the
policy that reads them, run through the engine's loop."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.special import log_softmax, logsumexp

from bench.gaussian_eig import GaussianEIGPolicy, PairwiseDistances, pairwise_information
from tests.support.policies import assert_greedy_paths
from tests.test_gaussian_posterior import gaussian_images, random_gaussian


def conditional(post, asked, g):
    """(m (C, K_g), S (K_g, K_g)): class c's group-g similarities given the asked groups' are N(m_c + shift, S),
    by the textbook formulas with explicit inverses (the bench solves instead)."""
    cols = np.repeat(np.arange(len(post.sizes)), post.sizes)
    A, B = asked[cols], cols == g
    S, M = post.cov, post.means
    if not A.any():
        return M[:, B], S[np.ix_(B, B)]
    K = S[np.ix_(B, A)] @ np.linalg.inv(S[np.ix_(A, A)])
    return M[:, B] - M[:, A] @ K.T, S[np.ix_(B, B)] - K @ S[np.ix_(A, B)]


@st.composite
def problem(draw, one_prompt=False):
    G = draw(st.integers(2, 3))
    sizes = np.array(draw(st.lists(st.integers(1, 3), min_size=G, max_size=G)), dtype=np.int64)
    g = draw(st.integers(0, G - 1))
    if one_prompt:
        sizes[g] = 1
    asked = np.array(draw(st.lists(st.booleans(), min_size=G, max_size=G)), bool)
    asked[g] = False
    C = draw(st.integers(2, 4))
    p = log_softmax(np.array(draw(st.lists(st.floats(-4, 4), min_size=C, max_size=C))))
    return sizes, C, draw(st.integers(0, 2**16)), asked, g, p


@settings(max_examples=40, deadline=None)
@given(problem())
def test_the_distances_are_the_mahalanobis_distances_of_the_conditional_means(pb):
    sizes, C, seed, asked, g, _ = pb
    post = random_gaussian(sizes, C, seed)
    m, S = conditional(post, asked, g)
    Sinv = np.linalg.inv(S)
    want = np.array([[(m[i] - m[j]) @ Sinv @ (m[i] - m[j]) for j in range(C)] for i in range(C)])
    np.testing.assert_allclose(PairwiseDistances(post)(asked, g), want, rtol=1e-7, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(problem(one_prompt=True))
def test_the_two_estimators_bracket_the_exact_information_of_one_prompt(pb):
    """A one-prompt group: I(C; z_g | z_A) of the tempered model by quadrature of the mixture's entropy, against the
    Bhattacharyya (lower) and KL (upper) pairwise estimators (Kolchinsky & Tracey 2017)."""
    sizes, C, seed, asked, g, lp = pb
    post = random_gaussian(sizes, C, seed)
    m, S = conditional(post, asked, g)
    u, sd = m[:, 0] / np.sqrt(S[0, 0]), 1.0 / np.sqrt(post.temperature)  # whitened: N(u_c, 1/t)
    p = np.exp(lp)

    def minus_f_log_f(x):
        logs = lp - 0.5 * ((x - u) / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))
        lf = logsumexp(logs)
        return -np.exp(lf) * lf

    lo, hi = u.min() - 12 * sd, u.max() + 12 * sd
    h_mix = quad(minus_f_log_f, lo, hi, points=sorted(u), limit=400, epsabs=1e-11)[0]
    exact = h_mix - 0.5 * np.log(2 * np.pi * np.e * sd ** 2)
    assert 0.0 - 1e-7 <= exact <= -(p * np.log(p)).sum() + 1e-7
    D = PairwiseDistances(post)(asked, g)
    low = pairwise_information(lp[None], D, post.temperature, "bhattacharyya")[0]
    high = pairwise_information(lp[None], D, post.temperature, "kl")[0]
    assert low - 1e-6 <= exact <= high + 1e-6


def test_over_more_classes_than_it_keeps_it_sums_over_the_most_probable_renormalised():
    rng = np.random.default_rng(0)
    D = rng.uniform(0, 5, (6, 6))
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0)
    lp = log_softmax(rng.normal(0, 2, (3, 6)), axis=1)
    got = pairwise_information(lp, D, 0.7, top=3)
    for i in range(3):
        keep = np.argsort(-lp[i])[:3]
        want = pairwise_information(log_softmax(lp[i, keep])[None], D[np.ix_(keep, keep)], 0.7)[0]
        assert got[i] == np.float64(want) or abs(got[i] - want) < 1e-12
    assert not np.allclose(got, pairwise_information(lp, D, 0.7))  # the cut matters here


def test_the_policy_in_the_loop_asks_the_group_of_most_information_per_prompt_given_what_each_image_has_seen():
    """Replays each image's path: at every step, the asked set before it, the posterior the loop held, and the
    bounds by the textbook formulas; the group asked must be the best per prompt among those still affordable."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource

    post, sims, system = gaussian_images(40)
    sizes, C = np.asarray(system.option_counts), system.n_classes
    res = classify_batch(ArraySource(sims, system), system, GaussianEIGPolicy(post, len(sims)),
                         stop=StopRule(budget=6), logit_scale=100.0, answer_model=post)

    def rate(lp, asked, i):
        score = np.full(len(sizes), -np.inf)
        for g in np.nonzero(~asked)[0]:
            m, S = conditional(post, asked, g)
            Sinv = np.linalg.inv(S)
            D = np.array([[(m[a] - m[b]) @ Sinv @ (m[a] - m[b]) for b in range(C)] for a in range(C)])
            score[g] = pairwise_information(lp, D, post.temperature)[0] / sizes[g]
        return score

    checked = assert_greedy_paths(res, system, post, sims, 6, rate)
    assert checked > 40  # most images ask more than one group within the budget
