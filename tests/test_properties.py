"""The properties of ../shared/docs/method.md, one test (or more) each, with hypothesis."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scipy.special import expit

from engine import ArraySource, StopRule, build_channel
from engine.core.scoring import (
    SHORTLIST_RTOL, bayes_loglik, baseline_probs, entropy, expected_information_gain, full_bayes_log_posterior,
    group_log_probs, group_probs, sum_scores,
)
from policies import list_policies
from systems import baseline_system
from systems.format import AttributeSystem

from . import reference
from .strategies import (
    EPS, LOGIT_SCALES, make_system, posteriors, rule_tables, similarity_arrays, systems,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-9


def _log_probs(sims, sizes, lam):
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [group_log_probs(sims[:, o:o + k], lam) for o, k in zip(offs, sizes)]


def _posterior_matrix(results, system):
    """(B, C) posteriors from results that kept every class in ``top``."""
    out = np.zeros((len(results), system.n_classes))
    for i, r in enumerate(results):
        for lab, p in r.top:
            out[i, system.class_index(lab)] = p
    return out


# --------------------------------------------------------------------------- 1. distributions, no NaN
@SETTINGS
@given(data=st.data(), lam=LOGIT_SCALES, eps=EPS)
def test_probabilities_and_posteriors_are_distributions(data, lam, eps):
    rules, sizes = data.draw(rule_tables())
    B = data.draw(st.integers(1, 3))
    sims = data.draw(similarity_arrays(B, int(sizes.sum())))
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, eps)
    lps = _log_probs(sims, sizes, lam)
    for lp in lps:
        p = np.exp(lp)
        assert np.isfinite(lp).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
        assert (p >= 0).all()
    post = np.exp(full_bayes_log_posterior(lps, ch))
    assert np.isfinite(post).all() and (post >= 0).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-9)
    probs = np.concatenate([np.exp(lp) for lp in lps], axis=1)
    assert np.isfinite(sum_scores(probs, ch.A)).all()
    # the channel itself: each group's segment of each row is a distribution
    seg = np.add.reduceat(ch.P, ch.offsets, axis=1)
    np.testing.assert_allclose(seg, 1.0, atol=1e-12)


@given(lam=st.sampled_from([1e-3, 1.0, 1e4]) | st.floats(1e-3, 1e4), s=st.floats(-1, 1), t=st.floats(-1, 1))
def test_group_probs_single_option_and_single_class(lam, s, t):
    np.testing.assert_array_equal(group_probs(np.array([[s]]), lam), [[1.0]])
    np.testing.assert_array_equal(group_log_probs(np.array([[s]]), lam), [[0.0]])
    # two options: p = (σ(λ(s−t)), σ(λ(t−s))), the softmax written out
    want = np.array([[expit(lam * (s - t)), expit(lam * (t - s))]])
    np.testing.assert_allclose(group_probs(np.array([[s, t]]), lam), want, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(np.exp(group_log_probs(np.array([[s, t]]), lam)), want, rtol=1e-12, atol=1e-300)
    # one class: its posterior is 1 whatever the answers, and its sum score is what its options got
    for eps in (0.0, 0.3):
        ch = build_channel(np.array([[True, False]]), np.array([2]), eps)
        lp = group_log_probs(np.array([[s, t]]), lam)
        np.testing.assert_array_equal(np.exp(full_bayes_log_posterior([lp], ch)), [[1.0]])
        np.testing.assert_allclose(sum_scores(np.exp(lp), ch.A), want[:, :1], rtol=1e-12, atol=1e-300)


def test_extreme_logit_scale_with_unused_winning_option_stays_finite():
    # Option 2 is nobody's: with λ=1e4 and ε=0 every class's likelihood underflows
    # in a plain matmul; the log-space fallback keeps the posterior finite.
    r = np.array([[True, False, False], [False, True, False]])
    ch = build_channel(r, np.array([3]), 0.0)
    lp = group_log_probs(np.array([[0.0, 0.1, 1.0]]), 1e4)
    post = np.exp(full_bayes_log_posterior([lp], ch))
    assert np.isfinite(post).all()
    np.testing.assert_allclose(post.sum(), 1.0)
    assert post[0, 1] > 0.99  # option 1 is far likelier than option 0


# --------------------------------------------------------------------------- 2. invariance
@SETTINGS
@given(data=st.data(), lam=LOGIT_SCALES, eps=EPS)
def test_permuting_options_with_rules_changes_no_score(data, lam, eps):
    rules, sizes = data.draw(rule_tables())
    sims = data.draw(similarity_arrays(2, int(sizes.sum())))
    g = data.draw(st.integers(0, len(sizes) - 1))
    perm = np.array(data.draw(st.permutations(range(int(sizes[g])))))  # new option j = old perm[j]
    inv = np.argsort(perm)
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cols = np.arange(sizes.sum())
    cols[offs[g]:offs[g] + sizes[g]] = offs[g] + perm
    sims2 = sims[:, cols]
    rules2 = tuple(tuple(frozenset(int(inv[k]) for k in r) if gi == g else r for gi, r in enumerate(row))
                   for row in rules)
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, eps)
    ch2 = build_channel(make_system(rules2, sizes).rule_matrix, sizes, eps)
    lp, lp2 = _log_probs(sims, sizes, lam), _log_probs(sims2, sizes, lam)
    np.testing.assert_allclose(np.exp(full_bayes_log_posterior(lp, ch)),
                               np.exp(full_bayes_log_posterior(lp2, ch2)), atol=1e-9)
    p = np.concatenate([np.exp(x) for x in lp], axis=1)
    p2 = np.concatenate([np.exp(x) for x in lp2], axis=1)
    np.testing.assert_allclose(sum_scores(p, ch.A), sum_scores(p2, ch2.A), atol=1e-9)
    post = data.draw(posteriors(len(rules), 2))
    np.testing.assert_allclose(expected_information_gain(post, ch), expected_information_gain(post, ch2),
                               atol=1e-9)


@SETTINGS
@given(data=st.data(), lam=LOGIT_SCALES, eps=EPS)
def test_permuting_groups_changes_neither_posterior_nor_sum_scores(data, lam, eps):
    rules, sizes = data.draw(rule_tables())
    sims = data.draw(similarity_arrays(2, int(sizes.sum())))
    perm = data.draw(st.permutations(range(len(sizes))))
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cols = np.concatenate([np.arange(offs[g], offs[g] + sizes[g]) for g in perm])
    sizes2 = sizes[list(perm)]
    rules2 = tuple(tuple(row[g] for g in perm) for row in rules)
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, eps)
    ch2 = build_channel(make_system(rules2, sizes2).rule_matrix, sizes2, eps)
    lp, lp2 = _log_probs(sims, sizes, lam), _log_probs(sims[:, cols], sizes2, lam)
    np.testing.assert_allclose(np.exp(full_bayes_log_posterior(lp, ch)),
                               np.exp(full_bayes_log_posterior(lp2, ch2)), atol=1e-9)
    p = np.concatenate([np.exp(x) for x in lp], axis=1)
    p2 = np.concatenate([np.exp(x) for x in lp2], axis=1)
    np.testing.assert_allclose(sum_scores(p, ch.A), sum_scores(p2, ch2.A), atol=1e-9)


@SETTINGS
@given(data=st.data(), lam=LOGIT_SCALES, eps=EPS)
def test_permuting_classes_permutes_outputs(data, lam, eps):
    rules, sizes = data.draw(rule_tables())
    perm = list(data.draw(st.permutations(range(len(rules)))))
    sims = data.draw(similarity_arrays(2, int(sizes.sum())))
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, eps)
    ch2 = build_channel(make_system([rules[c] for c in perm], sizes).rule_matrix, sizes, eps)
    lp = _log_probs(sims, sizes, lam)
    post = np.exp(full_bayes_log_posterior(lp, ch))
    np.testing.assert_allclose(np.exp(full_bayes_log_posterior(lp, ch2)), post[:, perm], atol=1e-9)
    p = np.concatenate([np.exp(x) for x in lp], axis=1)
    np.testing.assert_allclose(sum_scores(p, ch2.A), sum_scores(p, ch.A)[:, perm], atol=1e-9)
    pi = data.draw(posteriors(len(rules), 2))
    np.testing.assert_allclose(expected_information_gain(pi[:, perm], ch2),
                               expected_information_gain(pi, ch), atol=1e-9)


# top2 breaks ties between equally probable classes by class index, so on exact
# ties (identical signatures, equal answers) its path follows the class order.
EQUIVARIANT_POLICIES = [p for p in list_policies() if p != "top2"]


@SETTINGS
@given(system=systems(), data=st.data(), policy=st.sampled_from(EQUIVARIANT_POLICIES))
def test_renaming_and_permuting_classes_in_the_engine(classify, system, data, policy):
    perm = list(data.draw(st.permutations(range(system.n_classes))))
    renamed = AttributeSystem(name="renamed", classes=tuple(f"new{system.classes[c]}" for c in perm),
                              groups=system.groups, rules=tuple(system.rules[c] for c in perm))
    sims = data.draw(similarity_arrays(3, system.q_total))
    stop = StopRule(tau=data.draw(st.sampled_from([0.5, 0.9, 1.0])))
    a = classify(ArraySource(sims, system), system, policy, stop=stop, top_k=system.n_classes)
    b = classify(ArraySource(sims, renamed), renamed, policy, stop=stop, top_k=renamed.n_classes)
    for ra, rb in zip(a, b):
        assert [s.group for s in ra.steps] == [s.group for s in rb.steps]
        pa = {lab: p for lab, p in ra.top}
        pb = {lab[3:]: p for lab, p in rb.top}
        assert pa.keys() == pb.keys()
        for k in pa:
            assert abs(pa[k] - pb[k]) < 1e-9


# --------------------------------------------------------------------------- 3. reduction
# The label is the engine's top class, and the engine calls probabilities within SHORTLIST_RTOL (relative)
# of the best a tie, broken by class index; the baseline's own softmax may differ from the engine's
# posterior in the last bits, hence the few ulps on top.
LABEL_TIE_SLACK = 8 * np.finfo(np.float64).eps
TIE_FOUND = np.array([[-1.19e-07, 0.0], [0.0, -1.19e-07], [-1.19e-07, 0.0], [0.0, 0.0]])


@SETTINGS
@given(sims=st.integers(1, 12).flatmap(lambda n: similarity_arrays(4, n)), lam=LOGIT_SCALES,
       scorer=st.sampled_from(["bayes", "sum"]))
# hypothesis found this one: the two classes' probabilities differ by 4.6e-10 relative, a tie for the engine
@example(sims=TIE_FOUND, lam=0.0078125, scorer="bayes")
@example(sims=TIE_FOUND, lam=0.0078125, scorer="sum")
def test_one_group_of_class_names_reduces_to_the_baseline(classify, sims, lam, scorer):
    n = sims.shape[1]
    classes = [f"class {i}" for i in range(n)]
    system = baseline_system(classes)
    assert system.q_total == n
    res = classify(ArraySource(sims, system), system, "fixed", logit_scale=lam, scorer=scorer)
    base = baseline_probs(sims, lam)
    for r, row in zip(res, base):
        want = int(np.argmax(row))
        got = system.class_index(r.label)
        assert got == want or row[want] - row[got] <= (SHORTLIST_RTOL + LABEL_TIE_SLACK) * abs(row[want])
        assert r.q_spent == n


# --------------------------------------------------------------------------- 4. EIG bounds
def _brute_force_eig(post, rules, sizes, eps):
    """Mutual information by explicit enumeration over classes and answers."""
    out = np.zeros((post.shape[0], len(sizes)))
    for b in range(post.shape[0]):
        for g, K in enumerate(sizes):
            joint = np.zeros((len(rules), K))
            for c, row in enumerate(rules):
                for k in range(K):
                    r = row[g]
                    pk = (1 - eps) * (k in r) / len(r) + eps / K if r else 1.0 / K
                    joint[c, k] = post[b, c] * pk
            pk_marg = joint.sum(axis=0)
            mi = 0.0
            for c, k in itertools.product(range(len(rules)), range(K)):
                if joint[c, k] > 0:
                    mi += joint[c, k] * (np.log(joint[c, k]) - np.log(post[b, c]) - np.log(pk_marg[k]))
            out[b, g] = mi
    return out


@SETTINGS
@given(data=st.data(), eps=EPS)
def test_eig_matches_brute_force_and_stays_in_bounds(data, eps):
    rules, sizes = data.draw(rule_tables())
    post = data.draw(posteriors(len(rules), 3))
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, eps)
    eig = expected_information_gain(post, ch)
    np.testing.assert_allclose(eig, _brute_force_eig(post, rules, sizes, eps), atol=1e-9)
    h = entropy(post, axis=1)
    assert (eig >= 0).all()
    assert (eig <= np.minimum(h[:, None], np.log(sizes)[None, :]) + TOL).all()


@SETTINGS
@given(data=st.data(), eps=EPS)
def test_eig_is_zero_when_the_support_shares_one_option(data, eps):
    rules, sizes = data.draw(rule_tables())
    post = data.draw(posteriors(len(rules), 1))
    g = data.draw(st.integers(0, len(sizes) - 1))
    k = data.draw(st.integers(0, int(sizes[g]) - 1))
    support = np.nonzero(post[0] > 0)[0]
    rules = tuple(tuple(frozenset([k]) if (gi == g and c in support) else r for gi, r in enumerate(row))
                  for c, row in enumerate(rules))
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, eps)
    assert abs(expected_information_gain(post, ch)[0, g]) < TOL


@SETTINGS
@given(n=st.integers(1, 8), extra=st.integers(0, 3), data=st.data())
def test_eig_of_a_singleton_split_is_the_posterior_entropy(n, extra, data):
    K = n + extra
    perm = data.draw(st.permutations(range(K)))
    rules = tuple((frozenset([perm[c]]),) for c in range(n))
    sizes = np.array([K])
    post = data.draw(posteriors(n, 3))
    ch = build_channel(make_system(rules, sizes).rule_matrix, sizes, 0.0)
    np.testing.assert_allclose(expected_information_gain(post, ch)[:, 0], entropy(post, axis=1), atol=1e-9)


# --------------------------------------------------------------------------- 5. τ=1: every group, same posterior
@SETTINGS
@given(system=systems(), data=st.data(), policy=st.sampled_from(list_policies()), eps=EPS, lam=LOGIT_SCALES)
def test_no_stopping_asks_every_group_and_matches_fixed_order(classify, system, data, policy, eps, lam):
    sims = data.draw(similarity_arrays(3, system.q_total))
    src = ArraySource(sims, system)
    res = classify(src, system, policy, stop=StopRule(tau=1.0, delta=0.0, budget=None),
                         eps=eps, logit_scale=lam, top_k=system.n_classes)
    for r in res:
        assert sorted(s.group for s in r.steps) == sorted(g.name for g in system.groups)
        assert r.q_spent == system.q_total and r.stop == "exhausted"
    ch = build_channel(system.rule_matrix, system.option_counts, eps)
    want = np.exp(full_bayes_log_posterior(_log_probs(sims, system.option_counts, lam), ch))
    np.testing.assert_allclose(_posterior_matrix(res, system), want, atol=1e-7)
    # and the formula itself, from the independent reference (not the engine's channel code)
    sizes = [int(k) for k in system.option_counts]
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for b in range(3):
        lps = [reference.log_softmax(list(map(float, sims[b, o:o + k])), lam) for o, k in zip(offs, sizes)]
        np.testing.assert_allclose(want[b], np.exp(reference.full_log_posterior(lps, system.rules, sizes, eps)),
                                   atol=1e-9)


# --------------------------------------------------------------------------- 6. budget, monotone in τ
@SETTINGS
@given(system=systems(), data=st.data(), policy=st.sampled_from(list_policies()),
       budget=st.one_of(st.none(), st.integers(0, 20)))
def test_budget_is_never_exceeded_and_higher_tau_never_asks_less(classify, system, data, policy, budget):
    sims = data.draw(similarity_arrays(4, system.q_total))
    t1 = data.draw(st.floats(0.05, 1.0))
    t2 = data.draw(st.floats(t1, 1.0))
    r1 = classify(ArraySource(sims, system), system, policy, stop=StopRule(tau=t1, budget=budget))
    r2 = classify(ArraySource(sims, system), system, policy, stop=StopRule(tau=t2, budget=budget))
    for a, b in zip(r1, r2):
        if budget is not None:
            assert a.q_spent <= budget and b.q_spent <= budget
        assert len(b.steps) >= len(a.steps)
        assert b.q_spent >= a.q_spent


# --------------------------------------------------------------------------- 7. one-hot answers
@SETTINGS
@given(data=st.data(), eps=EPS, scorer=st.sampled_from(["bayes", "sum"]))
def test_one_hot_answers_on_a_unique_signature_win(classify, data, eps, scorer):
    rules, sizes = data.draw(rule_tables(min_k=2, multi=(scorer == "bayes")))
    c = data.draw(st.integers(0, len(rules) - 1))
    # c answers every group with one option (applicable everywhere), and its signature is unique
    row = tuple(frozenset([data.draw(st.integers(0, int(k) - 1))]) for k in sizes)
    rules = tuple(row if i == c else r for i, r in enumerate(rules))
    assume(sum(r == row for r in rules) == 1)
    system = make_system(rules, sizes)
    sims = np.zeros((1, system.q_total))
    for g, opts in enumerate(row):
        sims[0, system.offsets[g] + next(iter(opts))] = 1.0
    res = classify(ArraySource(sims, system), system, "fixed", eps=eps, logit_scale=1e4, scorer=scorer,
                         top_k=system.n_classes)
    assert res[0].label == system.classes[c]
    assert res[0].top[0][1] > res[0].top[1][1] if system.n_classes > 1 else True


def test_bayes_loglik_equals_log_of_plain_likelihood():
    rng = np.random.default_rng(0)
    lp = group_log_probs(rng.normal(size=(5, 4)), 3.0)
    P = rng.dirichlet(np.ones(4), size=6)
    np.testing.assert_allclose(bayes_loglik(lp, P), np.log(np.exp(lp) @ P.T), rtol=1e-12)


def test_sum_scorer_matches_a_naive_loop():
    rng = np.random.default_rng(1)
    rules = ((frozenset([0]), frozenset()), (frozenset([1, 2]), frozenset([1])), (frozenset([2]), frozenset([0])))
    sizes = np.array([3, 2])
    system = make_system(rules, sizes)
    ch = build_channel(system.rule_matrix, sizes, 0.0)
    probs = [rng.dirichlet(np.ones(k), size=4) for k in sizes]
    got = sum_scores(np.concatenate(probs, axis=1), ch.A)
    want = np.zeros((4, 3))
    for b in range(4):
        for c, row in enumerate(rules):
            for g, r in enumerate(row):
                want[b, c] += sum(probs[g][b, k] for k in r) if r else 1.0 / sizes[g]
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_logit_scale_is_refused(lam):
    with pytest.raises(ValueError, match="logit_scale"):
        group_probs(np.zeros((1, 2)), lam)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2.0])
def test_bad_eps_is_refused(eps):
    with pytest.raises(ValueError, match="eps"):
        build_channel(np.array([[True, False]]), np.array([2]), eps)
