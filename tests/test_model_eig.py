"""The Gaussian posterior's own information (engine.core.gaussian: the pairwise-distance bounds), the registered
policy that reads it (``model_eig_per_prompt``, through the loop's ``reads_model_eig``), and bench.gaussian_eig's
variants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.special import log_softmax, logsumexp

from bench.gaussian_eig import GaussianEIGPolicy
from engine.core.gaussian import PairwiseDistances, information_bound, pairwise_information
from tests.support.policies import assert_greedy_paths, walk_paths
from tests.test_gaussian_posterior import gaussian_images, random_gaussian


def conditional(post, asked, g):
    """(m (C, K_g), S (K_g, K_g)): class c's group-g similarities given the asked groups' are N(m_c + shift, S),
    by the textbook formulas with explicit inverses (engine.core.gaussian whitens by a Cholesky factor instead)."""
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


def textbook_information(post, lp, asked, kind="bhattacharyya"):
    """(G,) the bound of every unasked group for one image, from the explicit-inverse distances."""
    C = post.n_classes
    score = np.full(len(post.sizes), -np.inf)
    for g in np.nonzero(~asked)[0]:
        m, S = conditional(post, asked, g)
        Sinv = np.linalg.inv(S)
        D = np.array([[(m[a] - m[b]) @ Sinv @ (m[a] - m[b]) for b in range(C)] for a in range(C)])
        score[g] = pairwise_information(lp, D, post.temperature, kind)[0]
    return score


def _run(policy, backend="numpy", budget=6, prior=None, delta=0.0):
    from engine.core.adaptive import StopRule
    from engine.core.sources import ArraySource
    from engine.run.engines import classify

    post, sims, system = gaussian_images(40)
    if policy == "bench":
        policy = GaussianEIGPolicy(post, len(sims))
    res = classify(ArraySource(sims, system), system, policy, engine=backend, prior=prior,
                   stop=StopRule(budget=budget, delta=delta), logit_scale=100.0, answer_model=post)
    return post, sims, system, res


@pytest.mark.parametrize("policy", ["model_eig_per_prompt", "bench"])
def test_in_the_loop_it_asks_the_group_of_most_own_information_per_prompt_given_what_each_image_has_seen(policy):
    """Replays each image's path: at every step, the asked set before it, the posterior the loop held (with a
    caller's prior for the registered policy), and the bound by the textbook formulas; the group asked must be the
    best per prompt among those still affordable, and the step records the information it was chosen by."""
    prior = np.random.default_rng(5).dirichlet(np.ones(4) * 0.5, size=40) if policy != "bench" else None
    post, sims, system, res = _run(policy, prior=prior)
    sizes = np.asarray(system.option_counts)

    def rate(lp, asked, i):
        if prior is not None:
            lp = log_softmax(lp + np.log(prior[i]))  # the loop's posterior carries the prior
        return textbook_information(post, lp, asked) / sizes

    checked = assert_greedy_paths(res, system, post, sims, 6, rate)
    assert checked > 40  # most images ask more than one group within the budget
    if policy != "bench":
        for i, step, g, asked, lp in walk_paths(res[:10], system, post, sims):
            lp = log_softmax(lp + np.log(prior[i]))
            assert step.eig == pytest.approx(textbook_information(post, lp, asked)[g], rel=1e-7, abs=1e-10)
        _, _, _, channel = _run("eig_per_prompt", prior=prior)
        assert [[s.group for s in r.steps] for r in channel] != [[s.group for s in r.steps] for r in res]  # it matters


def test_the_torch_loop_asks_what_the_numpy_loop_asks():
    pytest.importorskip("torch")
    _, _, _, want = _run("model_eig_per_prompt", budget=None)
    _, _, _, got = _run("model_eig_per_prompt", "torch", budget=None)
    assert [[s.group for s in r.steps] for r in got] == [[s.group for s in r.steps] for r in want]
    assert [r.label for r in got] == [r.label for r in want]


def test_delta_stops_on_the_models_own_information_under_this_policy():
    """δ reads the EIG the policy reads: an image stops (no_gain) once no affordable group's own bound reaches δ,
    and never while one does."""
    post, sims, system, res = _run("model_eig_per_prompt", budget=None, delta=0.05)
    for _, _, _, asked, lp in walk_paths(res, system, post, sims):
        assert textbook_information(post, lp, asked).max() >= 0.05 - 1e-9  # it went on: one group reached δ
    names = [g.name for g in system.groups]
    stopped = [i for i, r in enumerate(res) if r.stop == "no_gain"]
    for i in stopped:
        asked = np.isin(names, [s.group for s in res[i].steps])
        assert textbook_information(post, post.log_posterior(sims[i:i + 1], asked[None]), asked)[~asked].max() < 0.05
    assert 0 < len(stopped) < len(res)


def test_without_a_model_of_its_own_it_is_eig_per_prompt():
    from engine.core.adaptive import StopRule
    from engine.core.sources import ArraySource
    from engine.run.engines import classify

    _, sims, system = gaussian_images(40)
    runs = [classify(ArraySource(sims, system), system, p, stop=StopRule(budget=6), logit_scale=100.0)
            for p in ("model_eig_per_prompt", "eig_per_prompt")]
    assert [[(s.group, s.eig) for s in r.steps] for r in runs[0]] == [[(s.group, s.eig) for s in r.steps]
                                                                       for r in runs[1]]


def test_asked_groups_have_no_information_and_a_certain_image_none_anywhere():
    post = random_gaussian(np.array([2, 1, 3]), 4, 7)
    asked = np.array([[True, False, False], [False, False, False]])
    lp = np.log(np.array([[0.4, 0.3, 0.2, 0.1], [1.0, 1e-300, 1e-300, 1e-300]]))
    info = information_bound(post, asked, lp)
    assert info[0, 0] == 0.0 and (info[0, 1:] > 0).all()
    np.testing.assert_allclose(info[1], 0.0, atol=1e-12)


def test_a_coverage_outside_0_1_is_refused_before_anything_loads(capsys):
    import pytest

    from bench.gaussian_eig import main

    for bad in ("1.5", "0", "1"):
        with pytest.raises(SystemExit) as e:
            main(["--ci", bad, "--probe", "/nonexistent"])
        assert e.value.code == 2
        assert "--ci" in capsys.readouterr().err


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=36, max_size=36),
       st.lists(st.booleans(), min_size=3, max_size=3))
def test_over_more_classes_than_it_keeps_the_bound_does_not_depend_on_how_classes_are_numbered(seed, w, asked):
    """Equal probabilities at the cut (every first question under a prior of equal dev counts) must not let the
    class numbering pick which classes are summed over: renumbering the model's classes and the posterior's
    together leaves every group's bound where it was."""
    from dataclasses import replace

    post = random_gaussian(np.array([2, 1, 3]), 36, seed)
    lp = log_softmax(np.array(w))[None]
    asked = np.array(asked)[None]
    asked[0, 0] = False  # one group at least is unasked
    perm = np.random.default_rng(seed).permutation(36)
    moved = replace(post, means=post.means[perm], log_prior_c=post.log_prior_c[perm], n_dev=post.n_dev[perm])
    np.testing.assert_allclose(information_bound(moved, asked, lp[:, perm]), information_bound(post, asked, lp),
                               rtol=1e-9, atol=1e-12)


def test_a_tie_at_the_cut_sums_over_every_class_and_no_tie_over_the_kept_ones():
    post = random_gaussian(np.array([2, 2]), 40, 3)
    asked = np.array([[True, False]] * 3)
    flat = np.full(40, -np.log(40))
    clear = log_softmax(np.r_[np.full(32, 1.0), np.zeros(8)])  # the 32 kept ones are above the other 8
    zeros = log_softmax(np.r_[np.full(5, 1.0), np.full(35, -np.inf)])  # the cut splits classes of probability 0
    got = information_bound(post, asked, np.stack([flat, clear, zeros]))[:, 1]
    D = PairwiseDistances(post)(asked[0], 1)
    assert got[0] == pytest.approx(pairwise_information(flat[None], D, post.temperature, top=40)[0], rel=1e-12)
    kept = np.arange(32)
    want = pairwise_information(log_softmax(clear[kept])[None], D[np.ix_(kept, kept)], post.temperature)[0]
    assert got[1] == pytest.approx(want, rel=1e-12)
    assert got[2] == pytest.approx(pairwise_information(zeros[None, :5], D[:5, :5], post.temperature)[0], rel=1e-12)


def test_rows_tied_at_the_cut_are_summed_over_every_class_in_chunks(monkeypatch):
    """More distinct tied rows than a chunk holds (INFO_CHUNK made 3 here): each still gets its own all-class value."""
    import engine.core.gaussian as G

    rng = np.random.default_rng(1)
    D = rng.uniform(0, 5, (6, 6))
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0)
    lp = log_softmax(np.c_[np.zeros((8, 3)), -1 - rng.exponential(1, (8, 3))], axis=1)  # a cut at 2 splits 3 ties
    lp = np.r_[lp, lp[:2]]  # and repeated rows
    monkeypatch.setattr(G, "INFO_CHUNK", 3)
    got = pairwise_information(lp, D, 0.7, top=2)
    np.testing.assert_allclose(got, pairwise_information(lp, D, 0.7, top=6), rtol=1e-12)


def test_auto_reads_the_model_eig_as_its_chosen_policy_does():
    from policies.builtin import AutoPolicy, ModelEIGPerPromptPolicy

    auto = AutoPolicy("eig")
    assert not auto.reads_model_eig
    auto.inner = ModelEIGPerPromptPolicy()  # no candidate reads it today; the delegation must still hold
    assert auto.reads_model_eig
