"""Regression tests for the edge cases of issue 15: each failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ArraySource, StopRule, build_channel
from engine.core.channel_fit import fit_logit_scale_and_eps, full_log_posterior, true_class_nll
from engine.core.scoring import group_log_probs, group_probs
from policies import get_policy, list_policies
from policies.base import masked_argmax
from systems.build import with_name_group

from .strategies import EPS, LOGIT_SCALES, make_system, rule_tables, similarity_arrays

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _path(r):
    return [s.group for s in r.steps]


# --------------------------------------------------------------------------- 1. a path never depends on the batch
# Two groups with the same partition of 12 classes (rules c % 3 and 2 - c % 3): their EIGs are equal, but
# the batched matmul rounds them differently from the single-row one. This prior puts both EIGs on a
# 10-decimal rounding boundary (found by bisection on this machine's BLAS), where rounding to 10 decimals
# asked g0 alone and g1 in the batch.
_PRIOR = [0.019476945486925384, 0.03772167361562684, 0.090313982257021, 0.020093148868694108,
          0.057668254163301735, 0.023037614409522532, 0.18490958770832056, 0.4114855396602964,
          0.012475729118503087, 0.05472056242616955, 0.07809230245300867, 0.01000465983261009]
_OTHERS_SEED = 1


def _twin_partition_system():
    rules = tuple((frozenset([c % 3]), frozenset([2 - c % 3])) for c in range(12))
    return make_system(rules, np.array([3, 3]))


def test_equal_eigs_on_a_rounding_boundary_give_the_same_path_alone_and_in_a_batch(classify):
    system = _twin_partition_system()
    others = np.random.default_rng(_OTHERS_SEED).dirichlet(np.ones(12), size=5)
    prior = np.vstack([others, _PRIOR])
    sims = np.zeros((6, system.q_total))
    stop = StopRule(budget=3)
    alone = classify(ArraySource(sims[:1], system), system, "eig", eps=0.05, prior=prior[-1:], stop=stop)
    batch = classify(ArraySource(sims, system), system, "eig", eps=0.05, prior=prior, stop=stop)
    assert _path(alone[0]) == _path(batch[-1]) == ["g0"]  # equal EIGs: the lower index


def test_masked_argmax_treats_last_bit_differences_as_ties():
    # a score on a 10-decimal rounding boundary and its neighbour one ulp up are one value
    a = 0.12345678905
    b = np.nextafter(np.nextafter(a, 1.0), 1.0)
    for x, y in ((a, b), (b, a)):
        assert masked_argmax(np.array([[x, y]]), np.array([[True, True]]))[0] == 0
    assert masked_argmax(np.array([[a, a + 1e-6]]), np.array([[True, True]]))[0] == 1  # a real difference
    assert masked_argmax(np.array([[0.0, 1e-18]]), np.array([[True, True]]))[0] == 0  # both nothing
    assert masked_argmax(np.array([[a, b]]), np.array([[False, True]]))[0] == 1


@SETTINGS
@given(data=st.data(), policy=st.sampled_from(list_policies()), eps=EPS, lam=LOGIT_SCALES)
def test_an_image_alone_follows_its_path_in_any_batch(classify, data, policy, eps, lam):
    rules, sizes = data.draw(rule_tables(min_k=2))
    system = make_system(rules, sizes)
    m = data.draw(st.none() | st.integers(2, 4))  # with the names shortlist, whose candidates are ranked too
    if m is not None:
        system = with_name_group(system)
    B = data.draw(st.integers(2, 6))
    sims = data.draw(similarity_arrays(B, system.q_total))
    stop = StopRule(tau=data.draw(st.sampled_from([0.6, 0.9, 1.0])),
                    delta=data.draw(st.sampled_from([0.0, 0.05, 0.3])),
                    budget=data.draw(st.one_of(st.none(), st.integers(0, 12))))
    kw = dict(stop=stop, eps=eps, logit_scale=lam, top_k=system.n_classes, shortlist_size=m)
    batch = classify(ArraySource(sims, system), system, policy, **kw)
    for i in range(B):
        pol = get_policy(policy)
        alone = classify(ArraySource(sims[i:i + 1], system), system, pol, **kw)[0]
        if policy == "random":  # the random order is keyed by the image's index in its batch
            continue
        assert _path(alone) == _path(batch[i])
        assert alone.q_spent == batch[i].q_spent and alone.stop == batch[i].stop
        assert alone.confidence == pytest.approx(batch[i].confidence, abs=1e-9)


# --------------------------------------------------------------------------- 2. δ looks at affordable groups
def test_delta_ignores_groups_the_budget_cannot_pay_for(classify):
    # g0 (K=2) splits 4 classes 1:3, EIG 0.562; g1 (K=5) splits them into singletons, EIG log 4 = 1.386,
    # but costs 5 > budget 4. Asking g0 would buy 0.562 < δ = 0.6 nats: not worth it, so stop (see the
    # StopRule docstring and docs/method-notes.md).
    rules = tuple((frozenset([int(c == 0)]), frozenset([c])) for c in range(4))
    system = make_system(rules, np.array([2, 5]))
    ch = build_channel(system.rule_matrix, system.option_counts, 0.0)
    from engine.core.scoring import expected_information_gain
    eig = expected_information_gain(np.full((1, 4), 0.25), ch)[0]
    assert eig[0] == pytest.approx(0.562, abs=1e-3) and eig[1] == pytest.approx(1.386, abs=1e-3)
    src = ArraySource(np.zeros((1, system.q_total)), system)
    for policy in list_policies():
        r = classify(src, system, policy, stop=StopRule(delta=0.6, budget=4))[0]
        assert (r.stop, r.q_spent, r.steps) == ("no_gain", 0, [])
        # with the budget to pay for g1 the image goes on
        r = classify(src, system, policy, stop=StopRule(delta=0.6, budget=7))[0]
        assert r.q_spent > 0


# --------------------------------------------------------------------------- 3. the shortlist trigger
@pytest.mark.parametrize("n", range(2, 21))
def test_shortlist_is_asked_first_when_the_uniform_prior_has_exactly_m_candidates(classify, n):
    # exp(H(uniform over n)) is n + 1 ulp for some n; perplexity ≤ m must still hold at m = n
    rules = tuple((frozenset([c % 2]),) for c in range(n))
    system = with_name_group(make_system(rules, np.array([2])))
    src = ArraySource(np.zeros((1, system.q_total)), system)
    r = classify(src, system, "eig", eps=0.05, shortlist_size=n, stop=StopRule(tau=0.99))[0]
    assert r.steps[0].group == "class_name"


# --------------------------------------------------------------------------- 4. huge finite similarities
@pytest.mark.parametrize("sims", [[[1e305, 0.0]], [[-1e305, 0.0]], [[1e308, -1e308]], [[1e305, 1e305]]])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 1e4])
def test_huge_finite_similarities_give_no_nan(classify, sims, lam):
    sims = np.array(sims)
    p = group_probs(sims, lam)
    lp = group_log_probs(sims, lam)
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0) and not np.isnan(lp).any()
    np.testing.assert_allclose(np.exp(lp), p, atol=1e-12)
    if sims[0, 0] != sims[0, 1] and float(np.abs(sims).max()) * lam > 1e4:  # a margin far past exp's range
        assert p[0, int(np.argmax(sims[0]))] == 1.0
    rules = (frozenset([0]),), (frozenset([1]),)
    system = make_system(rules, np.array([2]))
    for scorer in ("bayes", "sum"):
        r = classify(ArraySource(sims, system), system, "fixed", logit_scale=lam, scorer=scorer)[0]
        assert r.error is None and np.isfinite(r.confidence) and 0.5 <= r.confidence <= 1.0


# --------------------------------------------------------------------------- 5. a fixed ε is used as given
def _small_dev_set():
    rng = np.random.default_rng(0)
    C, G, K = 5, 3, 4
    sizes = np.full(G, K)
    rm = np.zeros((C, G * K), dtype=bool)
    for c in range(C):
        for g in range(G):
            rm[c, g * K + rng.integers(K)] = True
    sims = rng.normal(0, 0.1, (40, G * K))
    truth = rng.integers(0, C, 40)
    return sims, truth, rm, sizes


@pytest.mark.parametrize("eps0", [0.0, 1e-9, 0.995])
def test_fixed_eps_is_used_as_given_and_start_nll_is_at_the_start(eps0):
    sims, truth, rm, sizes = _small_dev_set()
    fit = fit_logit_scale_and_eps(sims, truth, rm, sizes, lam0=100.0, eps0=eps0, fit_eps=False)
    assert fit.eps == eps0
    want = true_class_nll(full_log_posterior(sims, rm, sizes, 100.0, eps0), truth)
    assert fit.nll_start == pytest.approx(want, rel=1e-12)
    assert fit.nll == pytest.approx(true_class_nll(full_log_posterior(sims, rm, sizes, fit.lam, eps0), truth),
                                    rel=1e-9)
    assert fit.nll <= fit.nll_start


def test_start_nll_is_at_the_start_values_when_eps_is_fitted():
    sims, truth, rm, sizes = _small_dev_set()
    for lam0, eps0 in ((100.0, 0.0), (1e-3, 0.5), (3e4, 0.05)):
        fit = fit_logit_scale_and_eps(sims, truth, rm, sizes, lam0=lam0, eps0=eps0)
        want = true_class_nll(full_log_posterior(sims, rm, sizes, lam0, eps0), truth)
        assert fit.nll_start == pytest.approx(want, rel=1e-12)
        assert fit.nll <= fit.nll_start
        assert fit.nll == pytest.approx(true_class_nll(full_log_posterior(sims, rm, sizes, fit.lam, fit.eps), truth),
                                        rel=1e-9)


def test_a_start_outside_the_bounds_that_beats_them_is_returned():
    # separable data: the NLL falls with λ all the way, so λ0 = 3e4 > LAM_BOUNDS beats every fit inside them
    C = 3
    rm = np.eye(C, dtype=bool)
    truth = np.arange(30) % C
    sims = np.zeros((30, C))
    sims[np.arange(30), truth] = 1e-3
    for fit_eps in (False, True):
        fit = fit_logit_scale_and_eps(sims, truth, rm, np.array([C]), lam0=3e4, eps0=0.0, fit_eps=fit_eps)
        assert (fit.lam, fit.eps) == (3e4, 0.0)
        assert fit.nll == fit.nll_start == pytest.approx(true_class_nll(
            full_log_posterior(sims, rm, np.array([C]), 3e4, 0.0), truth), rel=1e-12)
    # from inside the bounds, the fit runs to the upper bound and says it converged
    fit = fit_logit_scale_and_eps(sims, truth, rm, np.array([C]), lam0=100.0, eps0=0.0, fit_eps=False)
    assert fit.lam == pytest.approx(1e4) and fit.nll < fit.nll_start and fit.success is True
