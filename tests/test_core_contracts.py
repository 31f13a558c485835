"""The core's input contracts: every refusal names what was wrong, and a few exact values.

Mutation testing (docs/mutation.md) showed these were unasserted: a message replaced by None, or a
bad shape accepted, went unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine import ArraySource, StopRule, build_channel
from engine.core.channel_fit import (
    expected_calibration_error, fit_logit_scale_and_eps, full_log_posterior, reliability_bins, true_class_nll,
)
from engine.core.scoring import (
    bayes_loglik, group_log_probs, group_probs, log_prior, shortlist, shortlist_eig, shortlist_loglik,
)
from policies import POLICIES, Policy, get_policy
from systems.build import with_name_group

from .strategies import make_system

RULES = tuple((frozenset([c % 2]), frozenset([c % 3])) for c in range(4))


def _system():
    return make_system(RULES, np.array([2, 3]))


# --------------------------------------------------------------------------- scoring
def test_scoring_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"logit_scale == 0.0, must be a finite number > 0"):
        group_probs(np.zeros((1, 2)), 0.0)
    with pytest.raises(ValueError, match=r"eps == 1.0, must be in \[0, 1\)"):
        build_channel(np.ones((1, 2), bool), np.array([2]), 1.0)
    with pytest.raises(ValueError, match=r"sims should be 2-d \(B, K\), got shape \(3,\)"):
        group_log_probs(np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"sims should be 2-d \(B, K\), got shape \(3,\)"):
        group_probs(np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"rule_matrix should be \(C, 5\), got shape \(2, 4\)"):
        build_channel(np.zeros((2, 4), bool), np.array([2, 3]))
    with pytest.raises(ValueError, match=r"rule_matrix should be \(C, 2\), got shape \(2,\)"):
        build_channel(np.zeros(2, bool), np.array([2]))
    with pytest.raises(ValueError, match=r"every group needs at least one option, got sizes \[2, 0\]"):
        build_channel(np.zeros((2, 2), bool), np.array([2, 0]))
    for bad in (np.array([1.0, -1.0]), np.array([0.0, 0.0]), np.array([1.0, np.nan]), np.ones(3)):
        with pytest.raises(ValueError, match=r"prior should be non-negative with 2 entries per row"):
            log_prior(2, bad)
    with pytest.raises(ValueError, match=r"cand should be \(1, 2\), got shape \(1, 3\)"):
        shortlist_loglik(np.zeros((1, 2)), np.zeros((1, 3), int), 4, 0.1)
    with pytest.raises(ValueError, match="eps"):
        shortlist_loglik(np.zeros((1, 2)), np.array([[0, 1]]), 4, 1.0)
    with pytest.raises(ValueError, match="eps"):
        shortlist_eig(np.full((1, 4), 0.25), np.array([[0, 1]]), -0.1)


def test_channel_values_and_read_only_arrays():
    # multi-option, single-option and not-applicable rules, by hand
    rm = np.array([[True, True, False, False, False], [False, False, True, False, False]])
    ch = build_channel(rm, np.array([3, 2]), 0.3)
    np.testing.assert_allclose(ch.P[0], [0.35 + 0.1, 0.35 + 0.1, 0.1, 0.5, 0.5])
    np.testing.assert_allclose(ch.P[1], [0.1, 0.1, 0.8, 1 / 2 * 0.3 + 0.7 * 0, 0.5][:3] + [0.5, 0.5])
    np.testing.assert_allclose(ch.A, [[1, 1, 0, 0.5, 0.5], [0, 0, 1, 0.5, 0.5]])
    np.testing.assert_allclose(ch.H[0], [-(2 * 0.45 * np.log(0.45) + 0.1 * np.log(0.1)), np.log(2)])
    assert ch.offsets.tolist() == [0, 3] and ch.sizes.tolist() == [3, 2] and ch.eps == 0.3
    assert ch.n_classes == 2 and ch.n_groups == 2 and ch.cols(1) == slice(3, 5)
    for arr in (ch.P, ch.H, ch.A):
        assert not arr.flags.writeable


def test_log_prior_shapes_and_values():
    np.testing.assert_allclose(log_prior(4, None, 2), np.full((2, 4), -np.log(4)))
    lp = log_prior(3, np.array([2.0, 0.0, 6.0]), 2)
    assert lp.shape == (2, 3)
    np.testing.assert_allclose(np.exp(lp), [[0.25, 0.0, 0.75]] * 2)
    np.testing.assert_allclose(np.exp(log_prior(2, np.array([[1.0, 3.0], [1.0, 1.0]]), 2)), [[0.25, 0.75], [0.5, 0.5]])


def test_shortlist_order_and_ties_by_class_index():
    post = np.array([[0.1, 0.3, 0.3, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    np.testing.assert_array_equal(shortlist(post, 3), [[1, 2, 3], [0, 1, 2]])
    np.testing.assert_array_equal(shortlist(post, 9), [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(shortlist([[0.5, 0.5]], 1), [[0]])


def test_shortlist_loglik_values_by_hand():
    lp = np.log(np.array([[0.7, 0.3]]))
    got = shortlist_loglik(lp, np.array([[2, 0]]), 3, 0.2)
    np.testing.assert_allclose(np.exp(got), [[0.8 * 0.3 + 0.1, 0.5, 0.8 * 0.7 + 0.1]])
    got = shortlist_loglik(lp, np.array([[2, 0]]), 3, 0.0)
    np.testing.assert_allclose(np.exp(got), [[0.3, 0.5, 0.7]])
    # the EIG of naming two equally likely candidates, noise-free: log 2
    assert shortlist_eig(np.array([[0.5, 0.5, 0.0]]), np.array([[0, 1]]), 0.0)[0] == pytest.approx(np.log(2))
    assert shortlist_eig(np.array([[0.25, 0.25, 0.5]]), np.array([[0, 1]]), 0.0)[0] == pytest.approx(0.5 * np.log(2))


# --------------------------------------------------------------------------- the loop
class _BadShape(ArraySource):
    def similarities(self, images, group, options=None):
        return super().similarities(images, group, options)[:, :1]


def test_loop_refusals_name_the_problem(classify):
    s = _system()
    src = ArraySource(np.zeros((2, 5)), s)
    with pytest.raises(ValueError, match=r"channel shape \(4, 2\) does not match system 'gen'"):
        classify(src, s, "eig", channel=build_channel(np.ones((4, 2), bool), np.array([2])))
    with pytest.raises(ValueError, match=r"similarity source returned shape \(2, 1\) for group 'g0', expected \(2, 2\)"):
        classify(_BadShape(np.zeros((2, 5)), s), s, "fixed")
    with pytest.raises(ValueError, match=r"logit_scale == -1"):
        classify(src, s, "eig", logit_scale=-1.0)
    n = with_name_group(s)
    with pytest.raises(ValueError, match=r"similarity source returned shape \(1, 1\) for the class-name shortlist, "
                                         r"expected \(1, 2\)"):
        classify(_BadShape(np.zeros((1, n.q_total)), n), n, "fixed", shortlist_size=2,
                       prior=np.array([1.0, 1.0, 0.0, 0.0]))  # two candidates: the shortlist comes first
    with pytest.raises(ValueError, match=r"shortlist_size == True"):
        classify(ArraySource(np.zeros((1, n.q_total)), n), n, "eig", shortlist_size=True)
    with pytest.raises(ValueError, match=r"must list the class names in class order"):
        bad = type(n)(name="bad", classes=n.classes, groups=n.groups[:-1] + (type(n.groups[-1])(
            name="class_name", template="{}", options=tuple(reversed(n.classes))),), rules=n.rules)
        classify(ArraySource(np.zeros((1, n.q_total)), bad), bad, "eig", shortlist_size=2)


def test_the_loop_setup_carries_its_stop_rule_and_budget_and_the_stop_codes_are_the_reported_reasons():
    from engine.core.adaptive import REASONS, StopRule, loop_setup
    from engine.core.results import STOP_REASONS

    s = _system()
    src = ArraySource(np.zeros((2, 5)), s)
    kw = dict(scorer="bayes", logit_scale=100.0, eps=0.0, channel=None, shortlist_size=None)
    setup = loop_setup(src, s, "eig", stop=StopRule(tau=0.9, budget=7), **kw)
    assert (setup.budget, setup.stop.tau, setup.n_images) == (7.0, 0.9, 2)
    assert loop_setup(src, s, "eig", stop=StopRule(), **kw).budget == np.inf
    # the codes the loop keeps per image: still asking, the four reasons it reports, and an image's error
    assert REASONS[0] is None and REASONS[-1] == "error" and set(REASONS[1:-1]) == set(STOP_REASONS)


def test_a_policy_that_picks_an_asked_group_is_refused(classify):
    s = _system()

    class Stubborn(Policy):
        name = "stubborn"

        def select(self, state):
            return np.zeros(len(state.images), dtype=np.int64)  # g0, even once asked

    with pytest.raises(RuntimeError, match=r"policy Stubborn\(\) chose an unavailable group"):
        classify(ArraySource(np.zeros((1, 5)), s), s, Stubborn())


def test_non_finite_similarity_message_names_the_group(classify):
    s = _system()
    sims = np.zeros((2, 5))
    sims[1, 3] = np.inf
    res = classify(ArraySource(sims, s), s, "fixed")
    assert res[0].error is None and res[0].q_spent == 5
    assert res[1].error.startswith("non-finite similarity for group 'g1': the encoder returned NaN/inf")
    assert res[1].label is None and res[1].stop is None


def test_steps_record_the_answer_its_probability_and_the_confidence(classify):
    s = _system()
    sims = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    r = classify(ArraySource(sims, s), s, "fixed", logit_scale=2.0, top_k=2)[0]
    p0 = 1 / (1 + np.exp(-2.0))
    assert [st.group for st in r.steps] == ["g0", "g1"]
    assert r.steps[0].answer == "o0_0" and r.steps[0].answer_prob == pytest.approx(p0)
    assert r.steps[0].eig == pytest.approx(np.log(2))
    # after g0: classes 0 and 2 (option 0) have p0, classes 1 and 3 have 1 - p0
    assert r.steps[0].confidence_after == pytest.approx(p0 / 2)
    assert r.steps[1].answer == "o1_0" and r.steps[1].answer_prob == pytest.approx(1 / 3)
    assert len(r.top) == 2 and r.top[0][0] == r.label and r.q_spent == 5 and r.stop == "exhausted"


def test_top_k_and_the_prior_only_answer(classify):
    s = _system()
    r = classify(ArraySource(np.zeros((1, 5)), s), s, "eig", stop=StopRule(budget=1),
                       prior=np.array([1.0, 2.0, 3.0, 4.0]), top_k=3)[0]
    assert [lab for lab, _ in r.top] == ["c3", "c2", "c1"]
    np.testing.assert_allclose([p for _, p in r.top], [0.4, 0.3, 0.2])
    # the default top_k keeps 5
    r = classify(ArraySource(np.zeros((1, 5)), s), s, "eig", stop=StopRule(budget=1))[0]
    assert len(r.top) == 4


# --------------------------------------------------------------------------- policies
def test_registry_holds_the_classes_and_policies_print_their_parameters():
    for name, cls in POLICIES.items():
        assert isinstance(cls, type) and issubclass(cls, Policy) and cls.name == name
        assert isinstance(get_policy(name), cls)
    assert repr(get_policy("random", seed=3)) == "RandomPolicy(seed=3)"
    assert repr(get_policy("eig")) == "EIGPolicy()"
    p = get_policy("fixed")
    assert get_policy(p) is p


# --------------------------------------------------------------------------- calibration
def test_calibration_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"sims should be \(B, 5\), got shape \(2, 4\)"):
        full_log_posterior(np.zeros((2, 4)), np.zeros((1, 5), bool), np.array([2, 3]), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"truth should be \(2,\), got shape \(3,\)"):
        true_class_nll(np.zeros((2, 5)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=r"conf and correct should both be \(n,\), got shapes \(2,\) and \(1,\)"):
        expected_calibration_error(np.array([0.5, 0.5]), np.array([1]))
    for bad in ([1.5], [-0.1], [np.nan]):
        with pytest.raises(ValueError, match=r"conf must hold probabilities in \[0, 1\]"):
            reliability_bins(np.array(bad), np.array([1]))
    with pytest.raises(ValueError, match=r"n_bins == 0, must be >= 1"):
        reliability_bins(np.array([0.5]), np.array([1]), 0)
    with pytest.raises(ValueError, match="logit_scale"):
        fit_logit_scale_and_eps(np.zeros((1, 2)), np.array([0]), np.ones((1, 2), bool), np.array([2]), lam0=0.0)


def test_reliability_bins_edges_and_values_by_hand():
    conf = np.array([0.05, 0.1, 0.55, 0.95, 1.0, 0.0])
    correct = np.array([1, 0, 1, 1, 0, 0])
    b = reliability_bins(conf, correct)  # the default: 10 bins
    np.testing.assert_allclose(b["edges"], np.linspace(0, 1, 11))
    assert b["count"].tolist() == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]  # 0.1 on an inner edge goes up; 1.0 in the last
    np.testing.assert_allclose(b["confidence"][[0, 1, 5, 9]], [0.025, 0.1, 0.55, 0.975])
    np.testing.assert_allclose(b["accuracy"][[0, 1, 5, 9]], [0.5, 0.0, 1.0, 0.5])
    assert np.isnan(b["confidence"][2]) and np.isnan(b["accuracy"][2])
    b = reliability_bins(conf, correct, 2)
    assert b["count"].tolist() == [3, 3]
    # ECE by hand, default 10 bins: (2·|0.5−0.025| + 1·|0−0.1| + 1·|1−0.55| + 2·|0.5−0.975|) / 6
    want = (2 * 0.475 + 0.1 + 0.45 + 2 * 0.475) / 6
    assert expected_calibration_error(conf, correct) == pytest.approx(want)
    assert expected_calibration_error(conf, correct, 1) == pytest.approx(abs(0.5 - conf.mean()))
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0, 0])) == 1.0


def test_true_class_nll_value():
    lp = np.log(np.array([[0.5, 0.5], [0.2, 0.8]]))
    assert true_class_nll(lp, np.array([0, 1])) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)
    assert true_class_nll(np.array([[0.0, -np.inf]]), np.array([1])) == np.inf


def test_policy_repr_lists_every_parameter():
    class TwoKnobs(Policy):
        name = "two_knobs"

        def __init__(self, a=1, b="x"):
            self.a, self.b = a, b

        def select(self, state):
            return np.argmax(state.available, axis=1)

    assert repr(TwoKnobs()) == "TwoKnobs(a=1, b='x')"


def _ece_by_hand(conf, correct, n_bins):
    bins = {}
    for p, y in zip(conf, correct):
        b = min(int(np.floor(p * n_bins + 1e-12)), n_bins - 1)
        # an inner edge k/n belongs to the bin above it
        bins.setdefault(b, []).append((p, y))
    n = len(conf)
    return sum(len(v) / n * abs(np.mean([y for _, y in v]) - np.mean([p for p, _ in v])) for v in bins.values())


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.11, 0.19, 0.5, 0.93, 1.0]) | st.floats(0, 1), st.booleans()),
                min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_ece_default_bins_match_a_loop_by_hand(items):
    conf = np.array([p for p, _ in items])
    correct = np.array([y for _, y in items], dtype=float)
    # a confidence within rounding of an inner edge may land on either side of it in the loop above
    edges = np.linspace(0, 1, 11)[1:-1]
    assume(not any(0 < abs(p - e) < 1e-9 for p in conf for e in edges))
    assert expected_calibration_error(conf, correct) == pytest.approx(_ece_by_hand(conf, correct, 10), abs=1e-12)
    assert expected_calibration_error(conf, correct, 4) == pytest.approx(_ece_by_hand(conf, correct, 4), abs=1e-12)


def test_fit_defaults_are_the_documented_start():
    rng = np.random.default_rng(3)
    rm = np.zeros((4, 6), dtype=bool)
    for c in range(4):
        rm[c, rng.integers(3)] = rm[c, 3 + c % 3] = True
    sims = rng.normal(0, 0.05, (30, 6))
    y = rng.integers(0, 4, 30)
    a = fit_logit_scale_and_eps(sims, y, rm, np.array([3, 3]))
    b = fit_logit_scale_and_eps(sims, y, rm, np.array([3, 3]), lam0=100.0, eps0=0.05, fit_eps=True, n_grid=9)
    assert a == b
    assert a.nll_start == pytest.approx(true_class_nll(full_log_posterior(sims, rm, np.array([3, 3]), 100.0, 0.05), y))


def test_float32_inputs_are_computed_in_float64():
    """Every function documents float64 results: a float32 input (an encoder's native dtype) is converted
    first, so its result equals the result for the same values given as float64."""
    from engine.core.scoring import bayes_loglik, entropy

    rng = np.random.default_rng(5)
    s32 = rng.normal(0, 0.3, (3, 4)).astype(np.float32)
    s64 = s32.astype(np.float64)
    for f in (group_log_probs, group_probs):
        got = f(s32, 37.0)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, f(s64, 37.0))
    p32 = rng.dirichlet(np.ones(4), 3).astype(np.float32)
    p64 = p32.astype(np.float64)
    assert entropy(p32, axis=1).dtype == np.float64
    np.testing.assert_array_equal(entropy(p32, axis=1), entropy(p64, axis=1))
    lp32 = np.log(p32)
    P = rng.dirichlet(np.ones(4), 5)
    np.testing.assert_array_equal(bayes_loglik(lp32, P), bayes_loglik(lp32.astype(np.float64), P))
    cand = np.array([[0, 2], [1, 3], [3, 0]])
    np.testing.assert_array_equal(shortlist_loglik(lp32[:, :2], cand, 4, 0.1),
                                  shortlist_loglik(lp32[:, :2].astype(np.float64), cand, 4, 0.1))
    np.testing.assert_array_equal(shortlist_eig(p32, cand, 0.1), shortlist_eig(p64, cand, 0.1))
    np.testing.assert_array_equal(log_prior(4, p32[0], 2), log_prior(4, p64[0], 2))
    assert log_prior(4, p32[0], 2).dtype == np.float64
    assert true_class_nll(lp32, np.array([0, 1, 2])) == true_class_nll(lp32.astype(np.float64), np.array([0, 1, 2]))


def test_bad_confidences_and_mismatched_shapes_are_told_apart():
    """The two input errors of the calibration-error functions say which problem it is."""
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error(np.array([0.5, 1.5]), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"should both be \(n,\)"):
        reliability_bins(np.array([0.5, 0.5]), np.array([1]))


def test_a_policy_plugin_is_checked_before_it_is_registered():
    """A plug-in must be a Policy subclass and may not take a built-in's name (its own registration is fine)."""
    from policies.base import _check_plugin

    class Mine(Policy):
        name = "mine_for_the_check"

        def select(self, state):
            return np.zeros(len(state.images), dtype=np.int64)

    assert _check_plugin("mine_for_the_check", Mine) is None
    assert _check_plugin("eig", POLICIES["eig"]) is None  # the built-in itself, seen again
    assert "taken by a built-in" in _check_plugin("eig", Mine)
    assert "'eig'" in _check_plugin("eig", Mine)
    for bad, kind in ((lambda s: s, "function"), (int, "type"), (Mine(), "Mine")):
        msg = _check_plugin("x_not_registered", bad)
        assert msg == f"it is a {kind}, not a policies.Policy subclass"
    assert "mine_for_the_check" not in POLICIES


def test_classify_batch_defaults_are_the_documented_ones(classify):
    """policy "eig", λ = 100 and top_k = 5 when not given (docs: the uncalibrated setting)."""
    from engine import SimulatedSource
    from engine.core.simulate import sample_classes
    from systems import load_system

    system = load_system("pokemon15")
    truth = sample_classes(6, system.n_classes, 0)
    src = SimulatedSource(system, truth, seed=0)
    plain = classify(src, system, stop=StopRule(tau=0.9))
    given_ = classify(src, system, "eig", stop=StopRule(tau=0.9), logit_scale=100.0, top_k=5)
    assert [r.top for r in plain] == [r.top for r in given_]
    assert [[s.group for s in r.steps] for r in plain] == [[s.group for s in r.steps] for r in given_]
    assert all(len(r.top) == 5 for r in plain)


def test_shortlist_size_must_be_a_whole_number(classify):
    n = with_name_group(_system())
    for bad in (3.0, 2.5, np.float64(4)):
        with pytest.raises(ValueError, match=r"shortlist_size =="):
            classify(ArraySource(np.zeros((1, n.q_total)), n), n, "eig", shortlist_size=bad)
    assert len(classify(ArraySource(np.zeros((1, n.q_total)), n), n, "eig", shortlist_size=np.int64(2))) == 1


@given(st.floats(-6, 6), st.integers(2, 6), st.integers(0, 2**16))
def test_near_max_tolerance_is_relative_to_the_best(log10_scale, G, seed):
    """Within TIE_ATOL + TIE_RTOL·|best| of the best is a tie, twice that is not, at any scale of the scores."""
    from policies.base import TIE_ATOL, TIE_RTOL, near_max

    rng = np.random.default_rng(seed)
    best = rng.choice([-1.0, 1.0]) * 10.0 ** log10_scale
    tol = TIE_ATOL + TIE_RTOL * abs(best)
    score = np.full((1, G), best - 4 * tol - abs(best))
    score[0, 0] = best
    score[0, 1] = best - 0.5 * tol
    if G > 2:
        score[0, 2] = best - 2 * tol
    got = near_max(score, np.ones((1, G), bool))
    assert got[0, 0] and got[0, 1]
    assert not got[0, 2:].any()


class _ByParity(Policy):
    """Even images ask g1 (K=3) first, odd ones g0 (K=2); then the first available group. Records budget_left."""

    name = "by_parity_for_tests"

    def __init__(self):
        self.seen = []

    def select(self, state):
        self.seen.append((state.images.copy(), np.asarray(state.budget_left).copy()))
        first = np.argmax(state.available, axis=1)
        want1 = (state.images % 2 == 0) & state.available[:, 1]
        return np.where(want1, 1, first)


def test_budget_stops_each_image_on_its_own_and_the_policy_sees_what_is_left(classify):
    """Budget 4, groups K = 2, 3, 2: image 0 spends 3 on g1 and can afford nothing more (stop "budget") while
    image 1, after g0 (2 prompts), can still afford g2 and asks it; the policy is told each image's prompts left."""
    rules = tuple((frozenset([c % 2]), frozenset([c % 3]), frozenset([(c // 2) % 2])) for c in range(4))
    s = make_system(rules, np.array([2, 3, 2]))
    pol = _ByParity()
    r0, r1 = classify(ArraySource(np.zeros((2, 7)), s), s, pol, stop=StopRule(budget=4))
    assert (r0.stop, r0.q_spent, [st_.group for st_ in r0.steps]) == ("budget", 3, ["g1"])
    assert (r1.stop, r1.q_spent, [st_.group for st_ in r1.steps]) == ("budget", 4, ["g0", "g2"])
    (imgs1, left1), (imgs2, left2) = pol.seen
    assert imgs1.tolist() == [0, 1] and left1.tolist() == [4, 4]
    assert imgs2.tolist() == [1] and left2.tolist() == [2]


def test_the_shortlist_is_asked_when_exactly_m_prompts_are_left(classify):
    """Two candidates, m = 2 and a budget of 2: the names question fits the budget exactly, so it is asked."""
    n = with_name_group(_system())
    (r,) = classify(ArraySource(np.zeros((1, n.q_total)), n), n, "eig", stop=StopRule(budget=2),
                          shortlist_size=2, prior=np.array([1.0, 1.0, 0.0, 0.0]))
    assert [st_.group for st_ in r.steps] == ["class_name"] and r.q_spent == 2 and r.stop == "budget"


def test_log_prior_shapes_and_a_zero_row_is_refused():
    """Uniform (1, C) by default; a (B, C) prior is checked row by row: one all-zero row is refused."""
    from engine.core.scoring import log_prior

    np.testing.assert_allclose(log_prior(3), np.full((1, 3), -np.log(3)))
    with np.errstate(divide="ignore"):
        want = np.log([[0.25, 0.25, 0.5], [0.0, 0.75, 0.25]])
    np.testing.assert_allclose(log_prior(3, np.array([[1.0, 1.0, 2.0], [0.0, 3.0, 1.0]]), 2), want)
    with pytest.raises(ValueError, match="positive sum"):
        log_prior(3, np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), 2)


@given(st.lists(st.floats(-1, 1), min_size=2, max_size=5), st.floats(1e10, 1e300), st.floats(0.01, 1e4))
def test_each_images_option_probabilities_ignore_the_rest_of_the_batch(row, big, lam):
    """log p_g of an image is the same alone or batched with an image of huge similarities."""
    a = np.array([row])
    batch = np.vstack([a, np.full_like(a, big)])
    batch[1, 0] = big / 2
    alone = group_log_probs(a, lam)
    np.testing.assert_allclose(group_log_probs(batch, lam)[:1], alone, rtol=1e-12, atol=1e-12)
    P = np.eye(a.shape[1])
    np.testing.assert_allclose(bayes_loglik(np.vstack([alone, group_log_probs(batch, lam)[1:]]), P)[:1],
                               bayes_loglik(alone, P), rtol=1e-12, atol=1e-12)


@given(st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=17, max_size=60))
def test_top_breaks_ties_by_class_index(classify, weights):
    """With nothing asked (budget 0) the result is the prior; tied classes are listed in class order."""
    C = len(weights)
    s = make_system(tuple((frozenset([c % 2]),) for c in range(C)), np.array([2]))
    prior = np.array(weights)
    (r,) = classify(ArraySource(np.zeros((1, 2)), s), s, "eig", stop=StopRule(budget=0), prior=prior)
    want = sorted(range(C), key=lambda c: (-prior[c], c))[:5]
    assert [label for label, _ in r.top] == [s.classes[c] for c in want] and r.q_spent == 0
