"""The adaptive loop, the policy contract and the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import ArraySource, SimulatedSource, StopRule, build_channel
from engine.core.results import STOP_REASONS
from engine.core.simulate import sample_classes
from policies import POLICIES, Policy, get_policy, list_policies
from systems import baseline_system

from .strategies import make_system
from .support.policies import FIXED_WITHOUT_CALIBRATION, policy_state


def sim(system, n=200, seed=0, **kw):
    truth = sample_classes(n, system.n_classes, seed)
    return SimulatedSource(system, truth, seed=seed, **kw), truth


def _same(a, b):
    """Same result up to float rounding (batched matmuls may round differently)."""
    return (a.label == b.label and a.q_spent == b.q_spent and a.stop == b.stop
            and [s.group for s in a.steps] == [s.group for s in b.steps]
            and a.confidence == pytest.approx(b.confidence, abs=1e-12))


# --------------------------------------------------------------------------- loop
def test_engine_asks_only_for_the_groups_it_records(classify, p15):
    src, _ = sim(p15, 60)
    res = classify(src, p15, "eig", stop=StopRule(tau=0.9))
    asked = {(g, int(i)) for g, imgs in src.asked for i in imgs}
    recorded = {(p15.group_index(s.group), i) for i, r in enumerate(res) for s in r.steps}
    assert asked == recorded
    # and never the same group twice for one image
    for r in res:
        names = [s.group for s in r.steps]
        assert len(names) == len(set(names))
        assert r.q_spent == sum(p15.groups[p15.group_index(n)].n_options for n in names)


def test_each_image_follows_its_own_path(classify, p15):
    src, _ = sim(p15, 100, margin=0.04)
    res = classify(src, p15, "eig", stop=StopRule(tau=0.95))
    paths = {tuple(s.group for s in r.steps) for r in res}
    assert len(paths) > 1


def test_stop_reasons_are_the_documented_ones(classify, p15):
    src, _ = sim(p15, 100)
    stops = {r.stop for r in classify(src, p15, "eig", stop=StopRule(tau=0.9, delta=0.05, budget=30))}
    assert stops <= set(STOP_REASONS)
    assert "confident" in stops


def test_confident_stop_fires_at_tau(classify, p15):
    src, _ = sim(p15, 100, margin=0.05)
    for r in classify(src, p15, "eig", stop=StopRule(tau=0.8)):
        if r.stop == "confident":
            assert r.steps[-1].confidence_after >= 0.8
            assert all(s.confidence_after < 0.8 for s in r.steps[:-1])


def test_confident_stop_fires_at_exactly_tau(classify):
    # prior (2, 1, 1): max π = 0.5 exactly, before any question
    system = make_system(tuple((frozenset([c % 2]),) for c in range(3)), np.array([2]))
    src = ArraySource(np.zeros((1, 2)), system)
    r = classify(src, system, "eig", stop=StopRule(tau=0.5), prior=np.array([2.0, 1.0, 1.0]))[0]
    assert (r.stop, r.q_spent, r.confidence) == ("confident", 0, 0.5)
    r = classify(src, system, "eig", stop=StopRule(tau=np.nextafter(0.5, 1)), prior=np.array([2.0, 1.0, 1.0]))[0]
    assert r.q_spent == 2


def test_budget_that_exactly_pays_for_a_group_asks_it(classify):
    system = make_system(tuple((frozenset([c % 3]), frozenset([c % 2])) for c in range(6)), np.array([3, 2]))
    src = ArraySource(np.zeros((1, 5)), system)
    for budget, q in ((2, 2), (3, 3), (4, 3), (5, 5)):
        r = classify(src, system, "fixed", stop=StopRule(budget=budget))[0]
        assert r.q_spent == q and r.stop == ("exhausted" if q == 5 else "budget")


def test_sum_scorer_in_the_loop_is_the_normalised_sum_of_option_probabilities(classify):
    # rules with multi-option and not-applicable entries; the loop's scores against the formula by hand
    rules = ((frozenset([0]), frozenset()), (frozenset([1, 2]), frozenset([1])), (frozenset([2]), frozenset([0])))
    system = make_system(rules, np.array([3, 2]))
    sims = np.array([[0.3, -0.1, 0.2, 0.5, -0.4], [0.0, 0.0, 0.9, -0.2, 0.1]])
    res = classify(ArraySource(sims, system), system, "fixed", scorer="sum", logit_scale=3.0, eps=0.2,
                         top_k=3)
    for r, row in zip(res, sims):
        p = [np.exp(3 * row[:3]) / np.exp(3 * row[:3]).sum(), np.exp(3 * row[3:]) / np.exp(3 * row[3:]).sum()]
        want = np.array([p[0][0] + 0.5, p[0][1] + p[0][2] + p[1][1], p[0][2] + p[1][0]])
        want /= want.sum()
        got = dict(r.top)
        np.testing.assert_allclose([got[c] for c in system.classes], want, rtol=1e-12)
        assert r.label == system.classes[int(np.argmax(want))] and r.confidence == pytest.approx(want.max())


def test_no_gain_stops_when_every_group_is_uninformative(classify, p15):
    # background_scene is not applicable to every class: its EIG is 0, so eig never asks it
    src, _ = sim(p15, 50)
    for r in classify(src, p15, "eig", stop=StopRule(delta=1e-9)):
        assert "background_scene" not in [s.group for s in r.steps]
        assert r.stop == "no_gain"


def test_budget_below_the_cheapest_group_answers_from_the_prior(classify, p15):
    src, _ = sim(p15, 5)
    prior = np.arange(1, p15.n_classes + 1, dtype=float)
    res = classify(src, p15, "eig", stop=StopRule(budget=3), prior=prior)
    for r in res:
        assert r.stop == "budget" and r.q_spent == 0 and r.steps == []
        assert r.label == p15.classes[-1]
        assert r.confidence == pytest.approx(prior[-1] / prior.sum())
    assert src.asked == []


def test_empty_batch_returns_empty_result(classify, p15):
    src = ArraySource(np.zeros((0, p15.q_total)), p15)
    assert classify(src, p15, "eig", stop=StopRule(tau=0.9)) == []


def test_duplicate_images_get_identical_results(classify, p15):
    src, _ = sim(p15, 10)
    sims = np.concatenate([src.similarities(np.arange(10), g) for g in range(p15.n_groups)], axis=1)
    both = ArraySource(np.concatenate([sims, sims]), p15)
    res = classify(both, p15, "eig", stop=StopRule(tau=0.9))
    for a, b in zip(res[:10], res[10:]):
        assert _same(a, b)


def test_non_finite_similarity_fails_one_image_only(classify, p15):
    src, _ = sim(p15, 6)
    sims = np.concatenate([src.similarities(np.arange(6), g) for g in range(p15.n_groups)], axis=1)
    good = classify(ArraySource(sims, p15), p15, "fixed")
    sims[2, :] = np.nan
    res = classify(ArraySource(sims, p15), p15, "fixed")
    assert res[2].error and "non-finite" in res[2].error and res[2].label is None
    for i in (0, 1, 3, 4, 5):
        assert _same(res[i], good[i])


@pytest.mark.parametrize("kw, match", [
    ({"tau": 0.0}, "tau == 0.0"), ({"tau": 1.5}, "tau == 1.5"), ({"delta": -1.0}, "delta == -1.0"),
    ({"budget": -2}, "budget == -2"), ({"budget": 2.5}, "budget == 2.5"),
])
def test_bad_stop_arguments_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        StopRule(**kw)


def test_bad_scorer_and_policy_names(classify, p15):
    src, _ = sim(p15, 2)
    with pytest.raises(ValueError, match="scorer == 'max'"):
        classify(src, p15, "eig", scorer="max")
    with pytest.raises(ValueError, match=r"unknown policy 'best'; choose one of \['accuracy_per_prompt', 'auto'"):
        classify(src, p15, "best")


def test_results_serialise_to_json(classify, p15):
    src, _ = sim(p15, 3)
    for r in classify(src, p15, "eig", stop=StopRule(tau=0.9)):
        d = json.loads(json.dumps(r.to_dict()))
        assert set(d) >= {"label", "confidence", "top", "q_spent", "stop", "asked", "error"}
        assert set(d["asked"][0]) == {"group", "eig", "answer", "answer_prob", "confidence_after"}


def test_full_system_and_baseline_are_the_same_loop(classify, p15):
    base = baseline_system(p15)
    src, truth = sim(base, 30, margin=0.05)
    res = classify(src, base, "fixed")
    assert all(r.q_spent == p15.n_classes and r.stop == "exhausted" for r in res)
    cos = src.similarities(np.arange(30), 0)  # the baseline: the cosine argmax over the class names
    for r, row in zip(res, cos):
        assert r.label == base.classes[int(np.argmax(row))] or row[base.class_index(r.label)] == row.max()
    assert np.mean([r.label == base.classes[c] for r, c in zip(res, truth)]) > 0.5  # margin 0.05 helps


# --------------------------------------------------------------------------- policy contract
def _state(system, post, asked=None, budget_left=None):
    ch = build_channel(system.rule_matrix, system.option_counts, 0.05)
    n = post.shape[0]
    asked = np.zeros((n, system.n_groups), bool) if asked is None else asked
    bl = np.full(n, np.inf) if budget_left is None else budget_left
    return policy_state(ch, post, available=~asked & (ch.sizes[None, :] <= bl[:, None]), budget_left=bl)


@pytest.mark.parametrize("name", list_policies())
def test_policy_contract(name, p15):
    pol = get_policy(name)
    rng = np.random.default_rng(0)
    C, G = p15.n_classes, p15.n_groups
    posts = [np.full((3, C), 1.0 / C), np.eye(C)[[0, 5, 9]], rng.dirichlet(np.ones(C), size=3)]
    for post in posts:
        asked = rng.random((3, G)) < 0.4
        asked[:, 0] = False
        st = _state(p15, post, asked)
        choice = pol.select(st)
        assert choice.shape == (3,) and np.issubdtype(choice.dtype, np.integer)
        assert st.available[np.arange(3), choice].all()
        np.testing.assert_array_equal(choice, get_policy(name).select(st))  # deterministic


@pytest.mark.parametrize("name", list_policies())
def test_policy_respects_the_budget(name, p15):
    st = _state(p15, np.full((2, p15.n_classes), 1 / p15.n_classes), budget_left=np.array([10.0, 12.0]))
    choice = get_policy(name).select(st)
    assert (p15.option_counts[choice] <= np.array([10, 12])).all()


def test_the_registry_lists_every_built_in_and_the_reference_has_a_chooser_for_each():
    """Every Policy subclass of policies/builtin.py is registered under its name, and tests/reference.py has a
    chooser for it (CHOOSERS: the one place a new built-in policy is added to the tests)."""
    import inspect

    import policies.builtin

    from . import reference

    built_in = {cls.name: cls for _, cls in inspect.getmembers(policies.builtin, inspect.isclass)
                if issubclass(cls, Policy) and cls.__module__ == policies.builtin.__name__}
    assert {"fixed", "random", "eig"} <= set(built_in)  # the classes are found at all
    assert all(POLICIES.get(name) is cls for name, cls in built_in.items()), "a built-in policy is not registered"
    assert set(POLICIES) == set(list_policies()) and list_policies() == sorted(list_policies())
    missing = sorted(set(built_in) - set(reference.CHOOSERS))
    assert not missing, f"tests/reference.py has no chooser for {missing}: add one to its CHOOSERS"


@pytest.mark.parametrize("name", sorted(FIXED_WITHOUT_CALIBRATION))
def test_a_calibrated_policy_without_its_calibration_asks_as_fixed(name, p15):
    """FIXED_WITHOUT_CALIBRATION (tests/support/policies.py) is true: those policies, with no fitted order or
    choice, pick what fixed picks (so tests that sweep policies skip them as duplicates)."""
    rng = np.random.default_rng(1)
    asked = rng.random((6, p15.n_groups)) < 0.5
    asked[:, -1] = False  # one group left at least
    st = _state(p15, rng.dirichlet(np.ones(p15.n_classes), size=6), asked)
    assert not (get_policy("fixed").select(st) == 0).all()  # asked groups make fixed's choice move
    np.testing.assert_array_equal(get_policy(name).select(st), get_policy("fixed").select(st))


def test_eig_policy_picks_the_max_and_ties_go_to_the_lowest_index():
    # groups 0 and 1 split the four classes identically; group 2 does not split them at all
    rules = tuple((frozenset([c % 2]), frozenset([c % 2]), frozenset([0])) for c in range(4))
    s = make_system(rules, np.array([2, 2, 2]))
    st = _state(s, np.full((1, 4), 0.25))
    assert get_policy("eig").select(st)[0] == 0
    assert get_policy("fixed").select(st)[0] == 0


def test_eig_per_prompt_prefers_the_cheaper_of_equal_questions():
    rules = tuple((frozenset([c % 2]), frozenset([c % 2])) for c in range(4))
    s = make_system(rules, np.array([4, 2]))
    st = _state(s, np.full((1, 4), 0.25))
    assert get_policy("eig_per_prompt").select(st)[0] == 1


def test_top2_separates_the_two_leaders():
    # classes 0 and 1 lead; only group 2 tells them apart, though group 0 has more EIG overall
    rules = (
        (frozenset([0]), frozenset([0]), frozenset([0])),
        (frozenset([0]), frozenset([0]), frozenset([1])),
        (frozenset([1]), frozenset([1]), frozenset([0])),
        (frozenset([2]), frozenset([1]), frozenset([0])),
    )
    s = make_system(rules, np.array([3, 2, 2]))
    post = np.array([[0.3, 0.3, 0.2, 0.2]])
    st = _state(s, post)
    assert get_policy("eig").select(st)[0] == 0
    assert get_policy("top2").select(st)[0] == 2


def test_random_policy_is_seeded_and_per_image(p15):
    st = _state(p15, np.full((50, p15.n_classes), 1 / p15.n_classes))
    a = get_policy("random", seed=1).select(st)
    assert (a == get_policy("random", seed=1).select(st)).all()
    assert (a != get_policy("random", seed=2).select(st)).any()
    assert len(set(a.tolist())) > 1


# --------------------------------------------------------------------------- simulator
def test_simulator_is_deterministic_and_order_free(p15):
    a, _ = sim(p15, 20, seed=3)
    b, _ = sim(p15, 20, seed=3)
    x = a.similarities(np.array([4, 7]), 2)
    b.similarities(np.arange(20), 0)
    np.testing.assert_array_equal(x, b.similarities(np.array([4, 7]), 2))


def test_simulator_margin_makes_the_true_option_win(p15):
    src, truth = sim(p15, 300, margin=1.0, noise=0.01)
    g = p15.group_index("primary_form")
    top = src.similarities(np.arange(300), g).argmax(axis=1)
    acc = p15.rule_matrix[truth, p15.offsets[g] + top]
    assert acc.all()


def test_simulator_wrong_rate_answers_wrongly(p15):
    src, truth = sim(p15, 400, margin=1.0, noise=0.01, wrong_rate=1.0)
    g = p15.group_index("primary_form")
    top = src.similarities(np.arange(400), g).argmax(axis=1)
    assert not p15.rule_matrix[truth, p15.offsets[g] + top].any()


def test_eig_skips_an_uninformative_first_question_that_fixed_pays_for(classify, p15):
    # pokemon15's background_scene applies to no class; put it first in system order
    order = [p15.group_index("background_scene")] + [g for g in range(p15.n_groups)
                                                     if p15.groups[g].name != "background_scene"]
    s = type(p15)(name="bg_first", classes=p15.classes, groups=tuple(p15.groups[g] for g in order),
                  rules=tuple(tuple(r[g] for g in order) for r in p15.rules))
    stop = StopRule(tau=0.9)
    e = classify(sim(s, 300, seed=5, margin=0.05)[0], s, "eig", stop=stop, eps=0.05)
    f = classify(sim(s, 300, seed=5, margin=0.05)[0], s, "fixed", stop=stop, eps=0.05)
    assert all(r.steps[0].group == "background_scene" for r in f)
    for r in e:  # eig asks it only when nothing informative is left
        names = [st.group for st in r.steps]
        assert "background_scene" not in names or (names[-1] == "background_scene" and len(names) == s.n_groups)
    q_e = np.mean([r.q_spent for r in e])
    q_f = np.mean([r.q_spent for r in f])
    assert q_e < q_f - 4
