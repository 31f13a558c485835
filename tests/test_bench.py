"""Smoke tests of the benchmarks: tiny simulated or fake-encoded inputs, every output file written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bench import all as bench_all  # noqa: E402
from bench import calibrate, policies, reproduce, speed  # noqa: E402
from bench.lib import harness as C  # noqa: E402
from engine import StopRule  # noqa: E402
from systems import load_system  # noqa: E402
from tests.support.data import COLOUR_SYSTEM, solid  # noqa: E402
from tests.support.encoders import FakeEncoder  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    return C.prepare_simulated(load_system("pokemon15"), images=90, seed=0, margin=0.05, name_margin=0.02,
                               noise=0.02, wrong_rate=0.05, logit_scale=100.0)


def _outputs(out, pngs):
    res = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for p in pngs:
        assert (out / p).stat().st_size > 1000, p
        assert p in report
    return res, report


def test_reproduce_on_simulator(sim, tmp_path):
    res = reproduce.run(sim, tmp_path, n_shuffle=3, command="test")
    r, report = _outputs(tmp_path, ["accuracy.png"])
    modes = [m["mode"] for m in r["modes"]]
    assert len(modes) == 6 and modes[0].startswith("baseline")
    assert r["modes"][0]["mean_q"] == 15 and r["modes"][0]["text_encodes"] == 15
    assert r["modes"][1]["mean_q"] == 56
    assert "simulator (no model)" in report and "CLIP" not in report
    assert len(r["mcnemar"]) == 4 and all(0 <= t["p"] <= 1 for t in r["mcnemar"])
    assert len(res["modes"][4]["accuracies"]) == 3


def test_policies_on_simulator(sim, tmp_path):
    r = policies.run(sim, tmp_path, taus=(0.5, 0.9, 1.0), n_budgets=3, random_seeds=(0, 1))
    _outputs(tmp_path, ["accuracy_vs_q.png"])
    names = [x["policy"] for x in r["summary"]]
    assert names == ["fixed", "random", "eig", "eig_per_prompt", "top2", "lookahead", "oracle"]
    for x in r["summary"]:
        assert 0 <= x["auc_tau"] <= 1 and 0 <= x["auc_budget"] <= 1
    # τ = 1 with no budget asks everything: every policy ends at the full system's accuracy
    for name, cv in r["curves"].items():
        assert cv["tau"][-1]["mean_q"] == 56
        assert cv["tau"][-1]["accuracy"] == pytest.approx(r["full"]["accuracy"])


@pytest.mark.slow
def test_calibrate_on_simulator(sim, tmp_path):
    r = calibrate.run(sim, tmp_path, taus=(0.5, 1.0))
    _outputs(tmp_path, ["reliability.png", "eig_curve.png"])
    assert r["fit"]["nll_dev"] <= r["fit"]["nll_dev_start"] + 1e-9
    assert r["meta"]["n_dev"] + r["meta"]["n_test"] == sim.n
    for w in ("before", "after"):
        assert 0 <= r[w]["test"]["ece"] <= 1


def test_speed_with_fake_encoder(tmp_path):
    system = load_system(COLOUR_SYSTEM)
    images = [solid(c) for c in ("red", "green", "blue") * 3]
    prep = C.Prepared("fake", "fake", "colours", system, np.array([0, 1, 2] * 3),
                      np.random.default_rng(0).uniform(0, 1, (9, system.q_total)),
                      np.random.default_rng(1).uniform(0, 1, (9, 3)), [{}] * 9, 50.0)
    r = speed.run(prep, tmp_path, encoder=FakeEncoder(), images=images, repeats=1, model_batches=(1, 4),
                  eig_n=(15,), eig_g=(5,))
    _outputs(tmp_path, ["speed.png"])
    assert set(r["engine"]) == {"full", "adaptive eig τ=0.9"}
    assert r["engine"]["full"]["model_ms_per_image"] > 0
    assert set(r["throughput_engine"]) == {1, 16, 256}
    assert r["memory"]["process_max_rss_mb"] > 0


def test_prepare_encoded_uses_the_image_cache(tmp_path):
    system = load_system(COLOUR_SYSTEM)
    rows = []
    for i, (c, lab) in enumerate([("red", "cherry"), ("green", "leaf"), ("blue", "sea")] * 2):
        p = tmp_path / f"im{i}.png"
        solid(c).save(p)
        rows.append({"path": p.name, "label": lab, "kind": "a" if i < 3 else "b"})
    data = tmp_path / "labels.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "kind"])
        w.writeheader()
        w.writerows(rows)
    enc = FakeEncoder()
    kw = dict(limit=None, seed=0, split=None, cache_dir=tmp_path / "cache")
    prep = C.prepare_encoded(enc, system, data, **kw)
    assert prep.sims.shape == (6, system.q_total) and prep.base_sims.shape == (6, 3)
    assert prep.meta["images_encoded"] == 3  # identical pixels are one cache entry
    again = C.prepare_encoded(FakeEncoder(), system, data, **kw)
    assert again.meta["images_encoded"] == 0  # from the disk cache
    np.testing.assert_allclose(again.sims, prep.sims, atol=1e-6)
    assert C.run_point(prep, scorer="bayes").accuracy > 0.5  # the fake encoder knows these colours (chance 1/3)
    r = reproduce.run(prep, tmp_path / "out", by="kind", n_shuffle=2)
    assert set(r["by"]["kind"]) == {"a", "b"}


def test_oracle_orders_rule_out_most_first():
    system = load_system("pokemon15")
    truth = np.arange(system.n_classes)
    orders = policies.oracle_orders(system, truth)
    assert orders.shape == (system.n_classes, system.n_groups)
    assert all(sorted(o) == list(range(system.n_groups)) for o in orders)
    # background_scene (index 4) rules nothing out, so it is never asked before a group that does
    assert (orders[:, -1] == 4).all()
    sim = C.prepare_simulated(system, images=30, seed=1, margin=0.05, name_margin=0.02, noise=0.02,
                              wrong_rate=0.0, logit_scale=100.0)
    pt = C.run_point(sim, policies.OraclePolicy(policies.oracle_orders(system, sim.truth)), StopRule(budget=20))
    assert (pt.q <= 20).all()


def test_auc_and_q_within():
    assert C.normalised_auc(np.array([10.0, 20.0]), np.array([1.0, 1.0]), 20, 1.0) == pytest.approx(1.0)
    assert C.normalised_auc(np.array([20.0]), np.array([1.0]), 20, 0.0) == pytest.approx(0.5)
    assert C.q_within(np.array([5.0, 10.0, 20.0]), np.array([0.5, 0.9, 0.95]), 0.9) == 10.0
    assert C.q_within(np.array([5.0]), np.array([0.5]), 0.9) is None


def test_model_labels_are_honest():
    assert "NOT CLIP" in C.model_label("offline")
    assert C.model_label("simulator") == "simulator (no model)"


@pytest.mark.slow
def test_bench_all_on_simulator(tmp_path):
    path = bench_all.main(["--model", "simulator", "--quick", "--sim-images", "60", "--out", str(tmp_path)])
    text = path.read_text()
    assert "## Findings" in text and "simulator (no model)" in text
    for png in ("reproduce/simulator/accuracy.png", "policies/simulator/accuracy_vs_q.png",
                "calibrate/simulator/reliability.png", "speed/speed.png"):
        assert (tmp_path / png).is_file() and png in text


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_target_accuracy_bench_on_the_simulator(tmp_path):
    """τ chosen on dev for target 0.8 gives confident stops whose test accuracy reaches 0.8 within its CI, at a mean Q
    below the full system's; the images that never reach τ are counted apart, with their own stop reasons."""
    from bench.target_accuracy import run

    res = run(tmp_path, targets=[0.8], probe=None, quick=True, log=lambda *a: None)
    (row,) = res["pairs"]["simulator × pokemon15"]["rows"]
    assert row["reached_on_dev"] and row["tau"] < 1.0
    assert row["confident_n"] > 0 and row["confident_ci95"][1] >= 0.8
    assert row["mean_q"] < row["full_q"]
    assert row["confident_n"] + row["others_n"] == row["test_n"]
    assert "confident" not in row["others_stops"] and sum(row["others_stops"].values()) == row["others_n"]
    assert (tmp_path / "report.md").is_file()


@pytest.mark.slow
def test_gpu_pipeline_runs_on_the_cpu_and_judges_every_target(tmp_path):
    """The GPU script's driver, smoke-run on the CPU with a tiny CLIP: every figure is there and every issue-17
    target gets a verdict computed from figures of the same run."""
    from bench.gpu_pipeline import TARGETS, measure, report

    r = measure("cpu", size="tiny", n=24, batch=8, repeats=1, engine_images=64, big_images=8, log=lambda *a: None)
    e2e = r["end_to_end"]
    assert e2e["images"] == 24 and e2e["failed"] == 0 and 0 < e2e["engine_share"] < 1
    assert e2e["share_of_ceiling"] == pytest.approx(e2e["images_s"] / r["ceiling_images_s"])
    assert {c["case"].split(",")[0] for c in r["engine"]["cases"]} == {"pokemon15", "N=1000 G=50 K=10"}
    v = r["targets"]
    assert v["engine_share_n15"]["target"] == TARGETS["engine_share_n15"]
    assert all("met" in x for x in v.values()) and {"warm_ask_ms", "first_ask_ms"} <= set(v)
    assert "JPEG files -> results" in report(r)


@pytest.mark.slow  # the simulator's 180-image fit, once each way: about 5 s
def test_fit_speed_times_both_ways_and_checks_they_fit_the_same(tmp_path):
    from bench.fit_speed import main

    res = main(["--no-probe", "--repeats", "1", "--out", str(tmp_path)])
    (row,) = res["pairs"].values()
    assert row["images"] == 180 and row["same_reg"] and row["max_abs_weight_diff"] < 1e-8
    assert row["ratio"] == pytest.approx(row["seconds"]["default threads"] / row["seconds"]["one thread (ships)"])
    assert "default / one" in (tmp_path / "report.md").read_text()
