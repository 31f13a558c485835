"""The lookahead policy, the simulator's heterogeneous reliabilities, and bench.channels (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.adaptive import StopRule, classify_batch
from engine.core.channel_fit import fit_answer_channels
from engine.core.scoring import build_channel, expected_information_gain
from engine.core.simulate import SimulatedSource, heterogeneous_wrong_rates, sample_classes
from engine.core.sources import ArraySource
from policies import get_policy
from policies.builtin import _next_eig
from systems import load_system
from tests.strategies import EPS, confusion_sets, make_system, posteriors, systems
from tests.support.policies import distinct_policies, policy_state


def _state(ch, post, available=None, budget_left=None):
    return policy_state(ch, post, available=available, budget_left=budget_left)


# --------------------------------------------------------------------------- the lookahead's pieces
@given(st.data(), systems(), EPS)
@settings(max_examples=40, deadline=None)
def test_next_eig_is_the_eig_of_each_answers_posterior(data, system, eps):
    """eig_next[:, k, :] is expected_information_gain of π_k ∝ π·P(k|·), formed explicitly, and P(k) sums to 1;
    with fitted confusions too."""
    ch = build_channel(system.rule_matrix, system.option_counts, eps, confusions=data.draw(confusion_sets(system)))
    post = data.draw(posteriors(system.n_classes, 3))
    g = data.draw(st.integers(0, system.n_groups - 1))
    pk, eig2 = _next_eig(post, ch, g)
    Pg = ch.P[:, ch.cols(g)]
    np.testing.assert_allclose(pk, post @ Pg, atol=1e-12)
    np.testing.assert_allclose(pk.sum(axis=1), 1.0, atol=1e-9)
    for k in range(Pg.shape[1]):
        joint = post * Pg[:, k][None, :]
        ok = joint.sum(axis=1) > 1e-12
        if ok.any():
            post_k = joint[ok] / joint[ok].sum(axis=1, keepdims=True)
            np.testing.assert_allclose(eig2[ok, k], expected_information_gain(post_k, ch), atol=1e-8)


@given(st.data(), EPS, st.one_of(st.none(), st.integers(0, 16)))
@settings(max_examples=60, deadline=None)
def test_lookahead_choice_matches_the_reference_formula(data, eps, budget):
    """V(g) and the group chosen are the reference's (tests/reference.py, written class by class), for random
    posteriors, systems, availability and budgets."""
    from tests import reference as ref
    from tests.strategies import rule_tables

    rules, sizes = data.draw(rule_tables(max_classes=6, max_groups=5))
    s = make_system(rules, sizes)
    ch = build_channel(s.rule_matrix, s.option_counts, eps)
    post = data.draw(posteriors(s.n_classes, 3))
    bl = np.full(3, np.inf if budget is None else float(budget))
    avail = data.draw(st.lists(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)), min_size=3,
                               max_size=3).map(np.array)) & (s.option_counts[None, :] <= bl[:, None])
    avail[~avail.any(axis=1), int(np.argmin(s.option_counts))] = True
    bl = np.maximum(bl, s.option_counts.min())
    st_ = _state(ch, post, avail, bl)
    got = get_policy("lookahead").select(st_)
    value, cand = get_policy("lookahead").values(st_)
    for i in range(3):
        av = [int(g) for g in np.nonzero(avail[i])[0]]
        assert cand[i].tolist() == avail[i].tolist()  # G ≤ 8 candidates: every available group
        for g in av:
            assert value[i, g] == pytest.approx(ref.lookahead_value(list(post[i]), rules, [int(k) for k in sizes],
                                                                    eps, g, av, float(bl[i])), rel=1e-7, abs=1e-10)
        try:
            want = ref.choose("lookahead", list(post[i]), list(st_.eig[i]), av, rules, [int(k) for k in sizes], eps,
                              i, budget_left=float(bl[i]))
        except ref.Fragile:
            continue
        assert got[i] == want


def test_lookahead_with_one_candidate_or_no_room_for_a_second_question_is_eig_per_prompt():
    s = load_system("pokemon15")
    ch = build_channel(s.rule_matrix, s.option_counts, 0.05)
    post = np.random.default_rng(0).dirichlet(np.ones(s.n_classes) * 0.3, size=40)
    want = get_policy("eig_per_prompt").select(_state(ch, post))
    np.testing.assert_array_equal(get_policy("lookahead", candidates=1).select(_state(ch, post)), want)
    # a budget that pays for any one group but never a second: V(g) = EIG_g / K_g
    k = s.option_counts
    bl = np.full(40, float(k.max()))
    tight = _state(ch, post, available=np.broadcast_to(k <= bl[0], (40, s.n_groups)).copy(), budget_left=bl)
    assert (k.min() + np.sort(k)[1] > k.max())  # no two groups fit together
    np.testing.assert_array_equal(get_policy("lookahead").select(tight), get_policy("eig_per_prompt").select(tight))
    with pytest.raises(ValueError, match="candidates"):
        get_policy("lookahead", candidates=0)


def test_lookahead_puts_off_a_question_the_channel_says_is_answered_badly():
    """Group 0 (K=4) would split four classes completely if answered well; group 1 (K=2) halves them. Under the ε
    channel the lookahead asks group 0 first; with group 0's confusion near uniform (fitted: its answers are
    nearly noise), it asks group 1."""
    rules = tuple((frozenset([c]), frozenset([c % 2])) for c in range(4))
    s = make_system(rules, np.array([4, 2]))
    post = np.full((1, 4), 0.25)
    eps_ch = build_channel(s.rule_matrix, s.option_counts, 0.05)
    assert get_policy("lookahead").select(_state(eps_ch, post))[0] == 0
    noisy = 0.1 * np.eye(4) + 0.9 / 4
    cal = build_channel(s.rule_matrix, s.option_counts, 0.05, confusions=[noisy, None])
    assert get_policy("lookahead").select(_state(cal, post))[0] == 1


# --------------------------------------------------------------------------- the simulator's reliabilities
def test_heterogeneous_wrong_rates_are_seeded_and_spread():
    a = heterogeneous_wrong_rates(5, low=0.1, high=0.5, seed=3)
    np.testing.assert_allclose(np.sort(a), np.linspace(0.1, 0.5, 5))
    np.testing.assert_array_equal(a, heterogeneous_wrong_rates(5, low=0.1, high=0.5, seed=3))
    assert any(not np.array_equal(a, heterogeneous_wrong_rates(5, low=0.1, high=0.5, seed=s)) for s in range(4, 9))
    assert heterogeneous_wrong_rates(1, low=0.2, high=0.4).tolist() == [0.2]
    with pytest.raises(ValueError, match="low"):
        heterogeneous_wrong_rates(3, low=0.5, high=0.2)


def _answer_accuracy(system, truth, sims):
    """(G,) how often each group's top option is acceptable for the true class (images it applies to)."""
    out = []
    for g in range(system.n_groups):
        o, k = int(system.offsets[g]), int(system.option_counts[g])
        acc = system.rule_matrix[truth, o:o + k]
        top = sims[:, o:o + k].argmax(axis=1)
        ok = acc.any(axis=1)
        out.append(acc[np.arange(len(truth)), top][ok].mean() if ok.any() else np.nan)
    return np.array(out)


@given(seed=st.integers(0, 10_000), spread=st.floats(0.5, 0.9))
@settings(max_examples=8, deadline=None)
def test_heterogeneous_reliabilities_are_seen_in_answers_and_recovered_by_the_fit(seed, spread):
    """With per-group wrong rates spread over [0, spread], a group answered more reliably is right more often,
    and the fitted channel (fit_answer_channels on those images) ranks the groups the same way: its
    probability of answering the true option falls with the wrong rate (for groups whose rates differ by a
    quarter or more)."""
    s = load_system("pokemon15")
    wr = heterogeneous_wrong_rates(s.n_groups, low=0.0, high=spread, seed=seed)
    truth = sample_classes(600, s.n_classes, seed)
    src = SimulatedSource(s, truth, wrong_rate=wr, seed=seed)
    sims = np.concatenate([src.similarities(np.arange(600), g) for g in range(s.n_groups)], axis=1)
    acc = _answer_accuracy(s, truth, sims)
    fit = fit_answer_channels(sims, truth, s.rule_matrix, s.option_counts, lam0=100.0, fit_reliability=False)
    ch = fit.channel(s.rule_matrix, s.option_counts)
    # P(answer acceptable | true class), averaged over the images: the fitted channel's answer accuracy
    fitted = np.array([(ch.P[truth][:, ch.cols(g)] * s.rule_matrix[truth][:, ch.cols(g)]).sum(1).mean()
                       for g in range(s.n_groups)])
    applies = s.rule_matrix.reshape(s.n_classes, -1).any(axis=0)  # (Q,)
    used = [g for g in range(s.n_groups) if applies[ch.cols(g)].any()]  # background_scene applies to no class
    assert len(used) >= 3
    for a in used:
        for b in used:
            if wr[b] - wr[a] >= 0.25:
                assert acc[a] > acc[b]
                assert fitted[a] > fitted[b]


@given(data=st.data(), policy=st.sampled_from(distinct_policies()),
       budget=st.one_of(st.none(), st.integers(0, 40)))
@settings(max_examples=6, deadline=None)
def test_every_policy_on_fitted_heterogeneous_channels_stays_in_budget_and_asks_everything_without_one(
        data, policy, budget):
    """On simulated heterogeneous reliabilities with channels fitted from them: the budget is kept, and with
    τ = 1, δ = 0 and no budget every group is asked and the final posterior is the one of every group."""
    s = load_system("pokemon15")
    seed = data.draw(st.integers(0, 1000))
    truth = sample_classes(60, s.n_classes, seed)
    src = SimulatedSource(s, truth, wrong_rate=heterogeneous_wrong_rates(s.n_groups, high=0.7, seed=seed), seed=seed)
    sims = np.concatenate([src.similarities(np.arange(60), g) for g in range(s.n_groups)], axis=1)
    fit = fit_answer_channels(sims[:30], truth[:30], s.rule_matrix, s.option_counts, lam0=100.0)
    ch = fit.channel(s.rule_matrix, s.option_counts)
    res = classify_batch(ArraySource(sims[30:], s), s, policy, stop=StopRule(budget=budget), logit_scale=fit.lams,
                         channel=ch, top_k=s.n_classes)
    if budget is not None:
        assert all(r.q_spent <= budget for r in res)
    else:
        from engine.core.channel_fit import full_log_posterior

        want = np.exp(full_log_posterior(sims[30:], s.rule_matrix, s.option_counts, fit.lams, 0.0, channel=ch))
        for i, r in enumerate(res):
            assert sorted(st_.group for st_ in r.steps) == sorted(g.name for g in s.groups)
            got = np.array([dict(r.top)[c] for c in s.classes])
            np.testing.assert_allclose(got, want[i], atol=1e-7)


# --------------------------------------------------------------------------- bench.channels
def test_bench_channels_evaluates_a_small_simulated_pair():
    pytest.importorskip("matplotlib")
    from bench import channels

    prep = channels.simulator_prep(images=120, seed=1)
    res = channels.evaluate_pair(prep, seed=1, n_budgets=3, n_boot=50, random_seeds=(0,), log=lambda *_: None)
    assert res["n_dev"] + res["n_test"] == 120 and res["n_test"] == 60
    assert {(r["channel"], r["policy"]) for r in res["rows"]} == {(c, p) for c in channels.CHANNELS
                                                                  for p in channels.POLICIES}
    for r in res["rows"]:
        assert 0.0 <= r["auc"] <= 1.0 and r["auc_ci95"][0] <= r["auc"] + 1e-12 <= r["auc_ci95"][1] + 2e-12
        assert r["curve"][0]["mean_q"] == 0.0 and r["curve"][-1]["budget"] == res["q_full"]
    d = res["diffs"][0]
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1] and d["half_width"] > 0
    assert set(res["target_a"]) == {"vs_single", "vs_calibrated"}


def test_bench_channels_auc_and_bootstrap_weights():
    from bench import channels
    from bench.lib.harness import normalised_auc

    acc = np.array([[0.1, 0.5, 0.6, 0.7]])
    mq = np.array([[0.0, 3.0, 6.0, 9.5]])
    assert channels.auc_rows(acc, mq, 10.0)[0] == pytest.approx(normalised_auc(mq[0], acc[0], 10.0, 0.1))
    w = channels.resample_weights(7, 20, 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert ((w * 7) == np.round(w * 7)).all()
    dev, test = channels.split_by_image(np.arange(11) % 2, 0.5, 0)  # the one split helper (engine.core.channel_fit)
    assert len(dev) + len(test) == 11 and not set(dev) & set(test)


def test_bench_channels_skips_the_probe_clearly_when_absent(tmp_path):
    from bench import channels

    preps, why = channels.probe_preps(tmp_path / "no-probe", tmp_path, limit=10, seed=0)
    assert preps == {} and "no trained probe" in why


@pytest.mark.slow
def test_bench_channels_quick_run_writes_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import channels

    res = channels.main(["--quick", "--no-probe", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
    assert "Probe pairs skipped" in (tmp_path / "report.md").read_text()
    assert res["target_b"] == {"pair": "web150 × pokeapi-gen1", "evaluated": False}
