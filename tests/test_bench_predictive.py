"""bench.channels --predictive: the confidence stop read off traced paths is the loop's, and the section runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import answer_models as AM
from engine.core import predictive as PR


def test_tau_stop_on_traced_paths_is_what_the_loop_does_with_that_tau():
    from bench.channels import tau_stop
    from engine import StopRule
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from engine.run.calibration_file import trace_paths
    from tests.strategies import make_system
    from tests.test_predictive import fitted_problem

    sims, truth, sizes, C = fitted_problem(seed=2, per=12)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    post = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    am = PR.PredictivePosterior(post, PR.fit_predictive(sims, truth, sizes, C, reg=0.1))
    paths = trace_paths(sims, truth, system, "eig_per_prompt", np.full(3, 10.0), None, am)
    for tau in (0.3, 0.6, 0.9, 0.99, 1.0):
        cor, q = tau_stop(paths, tau)
        res = classify_batch(ArraySource(sims, system), system, "eig_per_prompt", stop=StopRule(tau=tau),
                             logit_scale=10.0, top_k=1, answer_model=am)
        np.testing.assert_array_equal(q, [r.q_spent for r in res])
        np.testing.assert_array_equal(cor, [r.label == system.classes[t] for r, t in zip(res, truth)])


@pytest.mark.slow  # a quick simulated run of the section: about 10 s
def test_the_predictive_section_runs_and_reports_paired_differences(tmp_path):
    from bench.channels import main

    main(["--predictive", "--no-probe", "--quick", "--pred-curves", "predictive eig per prompt", "eig per prompt",
          "--stop-margin", "0.05", "--folds", "4", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "results.json").read_text())
    pair = res["pairs"]["simulator × pokemon15"]
    assert [r["label"] for r in pair["rows"]] == ["fixed", "eig per prompt", "predictive eig per prompt"]
    d = {(x["a"], x["b"]): x for x in pair["diffs"]}
    x = d[("predictive eig per prompt", "fixed")]
    assert x["ci95"][0] <= x["diff"] + 1e-12 and x["diff"] <= x["ci95"][1] + 1e-12
    assert [s["policy"] for s in pair["stops"]] == ["fixed", "eig per prompt", "predictive eig per prompt"]
    # some simulated images end on another label than the prior's, and most settle before their last question
    assert all(0.0 < s["hindsight_frac_q"] < 0.9 for s in pair["stops"])
    report = (tmp_path / "report.md").read_text()
    assert "predictive eig per prompt" in report and "hindsight bound (% of Q)" in report
    assert res["stop_margin"] == 0.05 and res["n_folds"] == 4
    assert "chosen on 4-fold cross-fitted dev paths" in report and "keeps ≥ 95% of dev images" in report
    assert all(0.9 <= s["dev_agreement"] <= 1.0 for s in pair["stops"])  # a share of dev labels kept
    # half the prompts: budget 28 joins the quick grid (0, 19, 37, 56), and its figures are that point's
    lr = pair["full"]["few-shot"]["accuracy"]
    assert pair["budgets"] == [0, 19, 28, 37, 56]
    for r in pair["rows"]:
        h = r["half_budget"]
        (point,) = [c for c in r["curve"] if c["budget"] == 28]
        assert h["budget"] == 28 and (h["accuracy"], h["mean_q"]) == (point["accuracy"], point["mean_q"])
        assert 0 < h["mean_q"] <= 28 and h["minus_lr"] == pytest.approx(h["accuracy"] - lr)
        assert h["minus_lr_ci95"][0] <= h["minus_lr"] + 1e-12 <= h["minus_lr_ci95"][1] + 2e-12
    fixed = pair["rows"][0]["half_budget"]
    assert fixed["minus_own_full"] == fixed["minus_lr"]  # fixed order runs the LR itself
    assert "At half the prompts (budget 28 of 56" in report

    main(["--predictive", "--no-probe", "--quick", "--pred-curves", "eig per prompt", "--stop-rule", "accuracy",
          "--out", str(tmp_path / "acc")])
    res = json.loads((tmp_path / "acc" / "results.json").read_text())
    report = (tmp_path / "acc" / "report.md").read_text()
    assert res["stop_rule"] == "accuracy" and "dev accuracy − without the stop" in report
    assert "keeps the dev accuracy no more than 1 point(s) below the accuracy without the stop" in report
    stops = res["pairs"]["simulator × pokemon15"]["stops"]
    assert all(-0.01 - 1e-12 <= s["dev_agreement"] <= 0.5 for s in stops)  # an accuracy difference, not a share


def test_the_predictive_section_refuses_a_margin_or_folds_it_cannot_use(capsys):
    from bench.channels import main

    for bad in (["--stop-margin", "1"], ["--stop-margin", "-0.1"], ["--folds", "1"]):
        with pytest.raises(SystemExit) as e:
            main(["--predictive", "--no-probe", *bad])
        assert e.value.code == 2
        assert "--stop-margin must be in [0, 1) and --folds at least 2" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**16), st.sampled_from([0.0, 0.01, 0.1]))
def test_the_accuracy_rule_takes_the_smallest_threshold_from_which_every_one_keeps_the_accuracy(B, S, seed, margin):
    """Brute force, path by path, for --stop-rule accuracy: every grid threshold from the chosen one up keeps the
    share right within margin of the share right without the stop, the one below does not; 1 when the chosen
    one saves no prompt."""
    from bench.channels import choose_on_accuracy

    rng = np.random.default_rng(seed)
    grid = (0.5, 0.7, 0.9)
    stat = rng.choice([0.3, 0.6, 0.8, 0.95], size=(B, S))
    length = rng.integers(1, S + 1, size=B)
    correct = rng.random((B, S)) < 0.6
    q = np.cumsum(rng.integers(1, 4, size=(B, S)), axis=1).astype(float)
    for i, n in enumerate(length):
        stat[i, n:], correct[i, n:] = np.nan, False

    def stop_at(i, t):
        return next((j for j in range(length[i]) if t < 1 and stat[i, j] >= t), length[i] - 1)

    def acc(t):
        return np.mean([correct[i, stop_at(i, t)] for i in range(B)])

    def mean_q(t):
        return np.mean([q[i, stop_at(i, t)] for i in range(B)])

    ts = list(grid) + [1.0]
    ok = [acc(t) >= acc(1.0) - margin - 1e-12 for t in ts]
    j = len(ts) - 1
    while j > 0 and ok[j - 1]:
        j -= 1
    if mean_q(ts[j]) >= mean_q(1.0):
        j = len(ts) - 1
    got = choose_on_accuracy(stat, correct, q, grid=grid, margin=margin)
    assert got["tau"] == ts[j]
    assert got["dev_agreement"] == pytest.approx(acc(ts[j]) - acc(1.0))
    assert got["dev_mean_q"] == pytest.approx(mean_q(ts[j]))


def test_variant_paths_rebuilt_from_the_trace_stop_where_the_loop_does():
    """bench.predictive_variants rebuilds each state's posterior from the traced groups; cut at a confidence τ,
    those states give the loop's own q and label with that τ (the full-system head included)."""
    from bench.predictive_variants import first_stop, stability_paths, step_states
    from engine import StopRule
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from tests.strategies import make_system
    from tests.test_predictive import fitted_problem

    sims, truth, sizes, C = fitted_problem(seed=3, per=12)
    rules = [tuple(frozenset([k]) for k in row) for row in ((0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 0, 0))]
    system = make_system(rules, sizes)
    post = AM.fit_few_shot_posterior(sims, truth, sizes, C, regs=(0.1,)).posterior
    terms = PR.fit_predictive(sims, truth, sizes, C, reg=0.1)
    am = PR.PredictivePosterior(post, terms)
    fitted = {"lams": np.full(3, 10.0), "channel": None}
    L, asked, q = step_states(sims, system, "eig", fitted, am, post)
    assert asked[:, 0].sum() == 0 and asked[:, -1].all()
    correct = L.argmax(axis=2) == truth[:, None]
    for tau in (0.3, 0.6, 0.9, 0.99):
        cor, qq = first_stop(np.exp(L.max(axis=2)) >= tau - 1e-12, correct, q)
        res = classify_batch(ArraySource(sims, system), system, "eig", stop=StopRule(tau=tau), logit_scale=10.0,
                             top_k=1, answer_model=am)
        np.testing.assert_array_equal(qq, [r.q_spent for r in res])
        np.testing.assert_array_equal(cor, [r.label == system.classes[t] for r, t in zip(res, truth)])
    st = stability_paths(L, asked, terms)
    assert st.shape == L.shape[:2] and (st[:, -1] == 1.0).all()


@pytest.mark.slow  # the simulator, small: about 30 s
def test_the_variants_benchmark_runs_and_reports_paired_differences(tmp_path):
    from bench.predictive_variants import main

    main(["--no-probe", "--quick", "--out", str(tmp_path)])
    pair = json.loads((tmp_path / "results.json").read_text())["pairs"]["simulator × pokemon15"]
    x = next(d for d in pair["diffs"] if d["a"] == "error reduction" and d["b"] == "fixed")
    assert x["ci95"][0] <= x["diff"] + 1e-12 <= x["ci95"][1] + 2e-12
    assert {(s["policy"], s["rule"]) for s in pair["stops"]} == {
        (p, r) for p in ("fixed", "predictive eig")
        for r in ("confidence, τ from dev", "stability, ε = 0.02", "stability, ε from dev")}
    assert "stability" in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------- bench.stop_variants
def test_a_temperature_per_asked_count_recovers_the_ones_the_rows_were_drawn_with():
    """step_temperatures fits each asked count's t on its own rows: rows drawn from softmax(t_j · logits) with a
    different t_j per count give back each t_j, not one t for all."""
    from bench.stop_variants import step_temperatures

    rng = np.random.default_rng(0)
    want = (None, 1.5, 0.8, 0.3)
    parts = []
    for _ in range(3):
        n = rng.integers(1, 4, 2000)
        ll = rng.normal(0, 3, (2000, 5))
        p = np.exp(np.array(want[1:])[n - 1][:, None] * ll)
        p /= p.sum(axis=1, keepdims=True)
        y = (p.cumsum(axis=1) > rng.random((2000, 1))).argmax(axis=1)
        parts.append((ll, y, n))
    got = step_temperatures(parts, 3)
    assert got[0] is None
    np.testing.assert_allclose(got[1:], want[1:], rtol=0.08)


def test_the_step_tempered_posterior_is_the_gaussian_one_at_each_rows_own_temperature():
    """Each row of StepTemperedGaussian.log_posterior is the GaussianPosterior's at t_j for that row's number j of
    asked groups (the single t with none asked), and the labels are the untempered ones."""
    from dataclasses import fields, replace

    from bench.stop_variants import StepTemperedGaussian
    from tests.test_gaussian_posterior import random_gaussian

    sizes = np.array([2, 3, 2])
    post = random_gaussian(sizes, 4, 1, temperature=0.6)
    step_t = (None, 1.7, 0.3, 1.1)
    stepped = StepTemperedGaussian(**{f.name: getattr(post, f.name) for f in fields(post)}, step_t=step_t)
    rng = np.random.default_rng(1)
    sims = rng.normal(0, 1, (60, sizes.sum())) * post.scale + post.mean
    asked = rng.random((60, 3)) < 0.5
    got = stepped.log_posterior(sims, asked)
    n = asked.sum(axis=1)
    assert set(n) == {0, 1, 2, 3}
    for j in range(4):
        at = replace(post, temperature=0.6 if j == 0 else step_t[j])
        np.testing.assert_allclose(got[n == j], at.log_posterior(sims[n == j], asked[n == j]), atol=1e-10)
    assert (got.argmax(axis=1) == post.log_posterior(sims, asked).argmax(axis=1)).all()


def test_the_step_temperatures_come_from_the_rows_the_single_one_was_fitted_on_each_fold_without_its_own():
    """heldout_rows are the rows fit_gaussian_posterior fitted its temperatures on (seed 2: neither 0 nor the
    row seed 1 that seed 0 would use): pooled over the asked counts they give back the shipped t and each fold
    model's t; and fold j's per-count temperatures are those of the other folds' rows. (The Gaussian fit alone,
    as bench.channels.fit_predictive_models makes it: the LR and predictive parts are not read here.)"""
    from types import SimpleNamespace

    from bench import channels as CH
    from bench.stop_variants import heldout_rows, step_temperatures, with_step_temperatures
    from engine.core.gaussian import _fit_temperature, fit_gaussian_posterior

    prep, seed = CH.simulator_prep(images=150, seed=0), 2
    gauss = fit_gaussian_posterior(prep.sims, prep.truth, prep.system.option_counts, prep.system.n_classes, seed=seed)
    fitted = {"terms": SimpleNamespace(folds=gauss.folds), "G": gauss.posterior, "G_folds": gauss.fold_posteriors}
    parts = heldout_rows(prep, fitted, seed)
    assert _fit_temperature([(ll, y) for ll, y, _ in parts]) == pytest.approx(fitted["G"].temperature, abs=1e-9)
    for j, fold in enumerate(fitted["G_folds"]):
        rest = parts[:j] + parts[j + 1:]
        assert _fit_temperature([(ll, y) for ll, y, _ in rest]) == pytest.approx(fold.temperature, abs=1e-9)
    out = with_step_temperatures(prep, fitted, seed)
    assert out["G"].step_t == step_temperatures(parts, prep.system.n_groups)
    for j, fold in enumerate(out["G_folds"]):
        assert fold.step_t == step_temperatures(parts[:j] + parts[j + 1:], prep.system.n_groups)
        assert fold.step_t != out["G"].step_t


@pytest.mark.slow  # the simulator, small: about 6 s
def test_the_stop_variants_benchmark_runs_both_variants_beside_what_ships(tmp_path):
    from bench.stop_variants import CURVES, VALUE_EPS, main

    main(["--no-probe", "--quick", "--out", str(tmp_path), "--boot", "50"])
    pair = json.loads((tmp_path / "results.json").read_text())["pairs"]["simulator × pokemon15"]
    assert len(pair["temperatures"]["t"]) == 5
    keys = [(s["policy"], s["stop"]) for s in pair["ships"]]
    assert keys == [(s["policy"], s["stop"]) for s in pair["step_temperature"]] and ("G fixed", "settled") in keys
    assert {(v["policy"], v["eps"]) for v in pair["value"]} == {(c, e) for c in CURVES for e in VALUE_EPS}
    for v in pair["value"]:
        assert v["predicted_gain"][-1] == 0.0 and v["minus_full_ci95"][0] <= v["minus_full"] <= v["minus_full_ci95"][1]
        assert 0 < v["frac_q"] <= 1 and v["accuracy"] == pytest.approx(v["full"] + v["minus_full"])
    assert "Value stop" in (tmp_path / "report.md").read_text()
