"""The calibration file: fitted on dev images, saved, loaded, checked, used (issue 16, items 2 and 3).

Most tests use a simulated encoder (:class:`SimEncoder`): its images are small noise PNGs, each mapped by
its pixels to a row of simulator similarities with per-group reliabilities (engine/core/simulate.py), and
its prompts are one-hot vectors, so the engine sees exactly the simulator's similarities (up to each
image's norm) through the real pipeline. No shared data and no real model are needed; the CLI
refusals use the tiny random CLIP folders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support.calibration import N_IMAGES, calibrated
from tests.support.data import five_group_system, noise_image, write_labelled_noise  # noqa: F401
from tests.support.encoders import SimEncoder, tiny_model_dir  # noqa: F401

from engine.cli.app import main
from engine.core.adaptive import StopRule, classify_batch
from engine.core.channel_fit import choose_tau
from engine.core.sources import ArraySource
from engine.run.calibration_file import (
    SCHEMA, CalibrationError, CalibrationMismatch, exclude_dev, fit_calibration,
    image_sha256, load_calibration, save_calibration,
)
from engine.run.classifier import Classifier
from engine.run.config import EncoderSpec, RunConfig
from engine.run.datasets import DataSpec
from engine.run.evaluation import evaluate_classifier, evaluate_configs
from engine.run.pipeline import Job
from engine.run.store import fingerprint


# --------------------------------------------------------------------------- the fit and the file
def test_calibrate_fits_on_the_dev_half_only_and_learns_which_groups_are_answered_well(world):
    cal = world["cal"]
    assert cal.dev["n_images"] == N_IMAGES // 2 and cal.dev["rows"] == N_IMAGES
    assert len(cal.dev["image_sha256"]) == N_IMAGES // 2
    assert cal.model_id == "sim@1" and cal.system_name == "pokemon15"
    # colour and key trait (5% and 10% wrong) answer their true option more often than form and body shape (60%)
    # (a group no dev image's class has a rule in is not fitted: confusion None)
    diag = [np.nan if m is None else float(np.mean(np.diag(m))) for m in cal.channels.confusions]
    assert min(diag[0], diag[2]) > max(diag[1], diag[3]), diag
    m = cal.metrics["full"]
    assert m["after"]["nll"] < m["before"]["nll"]
    assert set(cal.paths) >= {"eig", "eig_per_prompt", "fixed", "random", "top2"}


def test_round_trip_keeps_everything_and_records_the_file_hash(world, tmp_path):
    cal = save_calibration(world["cal"], tmp_path / "cal.json")
    back = load_calibration(tmp_path / "cal.json")
    assert back.sha256 == hashlib.sha256((tmp_path / "cal.json").read_bytes()).hexdigest() == cal.sha256
    assert json.loads((tmp_path / "cal.json").read_text())["format"] == SCHEMA
    a, b = world["cal"].channels, back.channels
    assert np.allclose(a.lams, b.lams) and np.array_equal(a.n_dev, b.n_dev) and a.eps == b.eps
    assert np.allclose(a.reliability, b.reliability, equal_nan=True)
    for x, y in zip(a.confusions, b.confusions):
        assert (x is None and y is None) or np.allclose(x, y)
    for name, p in world["cal"].paths.items():
        q = back.paths[name]
        assert np.array_equal(np.isnan(p.conf), np.isnan(q.conf)) and np.allclose(p.conf, q.conf, equal_nan=True)
        assert np.array_equal(p.correct, q.correct) and np.array_equal(p.q, q.q)
    t1, t2 = world["cal"].tau_for("eig", 0.8), back.tau_for("eig", 0.8)
    assert (t1.tau, t1.n_stopped, t1.n_right) == (t2.tau, t2.n_stopped, t2.n_right)
    assert back.provenance()["path"] == str(tmp_path / "cal.json")


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(format="other"), "not a twentyq calibration"),
    (lambda d: d["channels"]["groups"][0].update(confusion=[[1.0]]), "damaged"),
    (lambda d: d["channels"]["groups"][1].update(lam=-3), "damaged"),
    (lambda d: d.pop("model"), "damaged"),
    (lambda d: d["channels"].update(eps=5), "damaged"),
])
def test_a_damaged_file_is_one_line_naming_it(world, tmp_path, edit, needle):
    d = world["cal"].to_dict()
    edit(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError) as e:
        load_calibration(p)
    assert needle in str(e.value) and "bad.json" in str(e.value) and "\n" not in str(e.value)


def test_a_calibration_for_another_system_or_model_is_refused(world):
    other = five_group_system()
    with pytest.raises(CalibrationMismatch, match="system 'pokemon15'.*not system 'five'"):
        Classifier(EncoderSpec(model="sim"), other, encoder=world["encoder"], calibration=world["cal"])
    enc2 = SimEncoder(world["system"], world["encoder"].rows, model_id="sim@2")
    with pytest.raises(CalibrationMismatch, match=r"model 'sim' \(id sim@1\), not 'sim' \(id sim@2\)"):
        Classifier(EncoderSpec(model="sim"), world["system"], encoder=enc2, calibration=world["cal"])


# --------------------------------------------------------------------------- it is used
def test_the_classifier_scores_with_the_fitted_lambdas_and_channel(world):
    """Results equal classify_batch with the calibration's λ_g and channel, and differ from no calibration."""
    system, cal = world["system"], world["cal"]
    imgs = world["paths"][:60]
    config = RunConfig(policy="eig", tau=0.9)
    got = calibrated(world).classify(imgs, config)
    plain = world["clf"].classify(imgs, config)
    emb = world["encoder"].encode_images(imgs).numpy().astype(np.float64)
    ref_sims = emb @ np.eye(system.q_total)  # one-hot prompts: the cosines are the embedding's coordinates
    ref = classify_batch(ArraySource(ref_sims, system), system, "eig", stop=StopRule(tau=0.9), logit_scale=cal.lams,
                         channel=cal.channel(system), top_k=5)
    assert [(r.label, r.q_spent, [s.group for s in r.steps]) for r in got] == \
        [(r.label, r.q_spent, [s.group for s in r.steps]) for r in ref]
    assert np.allclose([r.confidence for r in got], [r.confidence for r in ref], atol=1e-5)
    assert [(r.q_spent, round(r.confidence, 6)) for r in got] != [(r.q_spent, round(r.confidence, 6)) for r in plain]


def test_baseline_stays_uncalibrated_and_full_mode_uses_it(world):
    imgs = world["paths"][:20]
    clf = calibrated(world)
    base = [r.confidence for r in clf.classify(imgs, mode="baseline")]
    assert base == [r.confidence for r in world["clf"].classify(imgs, mode="baseline")]
    assert [r.confidence for r in clf.classify(imgs, mode="full")] != \
        [r.confidence for r in world["clf"].classify(imgs, mode="full")]
    with pytest.raises(ValueError, match="drop logit_scale"):
        clf.classify(imgs, mode="full", logit_scale=10.0)


def test_eval_leaves_out_the_dev_images_and_says_how_many(world, tmp_path):
    rep = evaluate_classifier(calibrated(world), world["csv"], policy="eig", tau=0.9, output=str(tmp_path / "r.jsonl"))
    n_dev = N_IMAGES // 2
    assert rep.n == N_IMAGES - n_dev
    assert rep.calibration["excluded_dev_images"] == n_dev and rep.calibration["applied"] is True
    assert rep.calibration["model_id"] == "sim@1"
    dev = set(world["cal"].dev["image_sha256"])
    recs = [json.loads(line) for f in sorted((tmp_path / "r.jsonl.d").glob("shard-*")) for line in f.open()]
    assert len(recs) == rep.n and not any(image_sha256(r["image"]) in dev for r in recs)
    summary = json.loads((tmp_path / "r.jsonl.d" / "_summary.json").read_text())
    assert summary["calibration"]["excluded_dev_images"] == n_dev
    assert summary["settings"]["calibration"]["sha256"] == world["cal"].identity()["sha256"]
    # compare (several modes, one embedding pass) leaves out the same images
    reps = evaluate_configs(calibrated(world), DataSpec(world["csv"]),
                            [RunConfig(mode="baseline"), RunConfig(mode="full")])
    assert [r.n for r in reps] == [N_IMAGES - n_dev] * 2
    assert [r.calibration["applied"] for r in reps] == [False, True]
    assert rep.calibration is not None and evaluate_classifier(world["clf"], world["csv"], limit=5).calibration is None


def test_exclude_dev_matches_by_content_not_by_name(world, tmp_path):
    from engine.run.datasets import Item

    dev_path = next(p for p in world["paths"] if image_sha256(p) in set(world["cal"].dev["image_sha256"]))
    copy = tmp_path / "renamed.png"
    copy.write_bytes(Path(dev_path).read_bytes())
    kept, n = exclude_dev([Item(str(copy), "x"), Item(str(tmp_path / "missing.png"), "y"),
                           Item("<bytes>", "z", data=Path(dev_path).read_bytes())], world["cal"])
    assert n == 2 and [it.path for it in kept] == [str(tmp_path / "missing.png")]


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_the_resume_fingerprint_changes_with_the_calibration(world):
    spec, system, config = EncoderSpec(model="sim"), world["system"], RunConfig()
    other = fit_calibration(world["sims"][:100], world["truth"][:100], system, lam0=200.0, eps=0.05, model="sim",
                            model_id="sim@1", policies=["fixed"])
    prints = {fingerprint(Job(spec, system, config, c).settings(), ["a"]) for c in (None, world["cal"], other)}
    assert len(prints) == 3
    moved = replace(world["cal"], path="/elsewhere/cal.json")  # the same file elsewhere: the same results
    assert Job(spec, system, config, moved).settings() == Job(spec, system, config, world["cal"]).settings()
    assert "calibration" not in Job(spec, system, config).settings()  # runs without one keep their fingerprints


# --------------------------------------------------------------------------- target accuracy
@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_target_accuracy_reports_confident_stops_apart_from_the_others(world):
    clf = calibrated(world)
    config = RunConfig(policy="eig", target_accuracy=0.9)
    choice = clf.calibration_use.target_choice(config)
    assert choice.reached and choice.lower_bound >= 0.9 and choice.tau < 1.0
    assert choice.tau == choose_tau(world["cal"].paths["eig"].conf, world["cal"].paths["eig"].correct, 0.9).tau
    rep = evaluate_classifier(clf, world["csv"], config)
    assert rep.tau == choice.tau and rep.target["tau"] == choice.tau and rep.target["reached"]
    assert rep.target["dev_stopped"] == choice.n_stopped and rep.target["dev_lower_bound"] == choice.lower_bound
    c, o = rep.confident, rep.not_confident
    assert c["n"] == rep.stops["confident"] > 0 and c["n"] + o["n"] == rep.n
    assert o["n"] > 0 and set(o["stops"]) <= {"exhausted", "budget", "no_gain"}  # never counted as confident
    # the confident share's own accuracy, from the records themselves
    res = clf.classify(world["paths"], config)
    test = [(r, world["system"].classes[t]) for r, t, p in zip(res, world["truth"], world["paths"])
            if image_sha256(p) not in set(world["cal"].dev["image_sha256"])]
    conf = [r.label == y for r, y in test if r.stop == "confident"]
    assert c["n"] == len(conf) and c["accuracy"] == pytest.approx(np.mean(conf))
    assert c["ci95"][0] <= c["accuracy"] <= c["ci95"][1]
    overall = np.mean([r.label == y for r, y in test])
    assert rep.accuracy == pytest.approx(overall)
    assert c["accuracy"] > rep.accuracy  # stopping on a calibrated posterior picks the easier images


def test_target_accuracy_follows_the_budget_and_refuses_what_it_cannot_know(world):
    cal = world["cal"]
    ns = [cal.tau_for("fixed", 0.7, budget=b).n_stopped for b in (None, 40, 20)]
    assert ns[0] >= ns[1] >= ns[2] and ns[0] > ns[2]
    assert not cal.tau_for("fixed", 0.7, budget=0).reached  # nothing can be asked: no τ passes
    from policies import POLICIES, Policy

    class Plug(Policy):
        name = "plug_test_only"

        def select(self, state):
            return np.argmax(state.available, axis=1)

    POLICIES[Plug.name] = Plug
    try:
        with pytest.raises(CalibrationError, match="'plug_test_only' is a plug-in.*--tau instead"):
            cal.tau_for(Plug.name, 0.8)
    finally:
        del POLICIES[Plug.name]
    with pytest.raises(CalibrationError, match="needs a calibration"):
        world["clf"].calibration_use.target_choice(RunConfig(target_accuracy=0.8))
    # the random policy's dev paths are those of seed 0; another seed's order was never traced
    from engine.run.calibration_file import target_choice
    assert target_choice(cal, RunConfig(policy="random", target_accuracy=0.7)).target == 0.7
    with pytest.raises(CalibrationError, match="seed 0, not seed 3"):
        target_choice(cal, RunConfig(policy="random", seed=3, target_accuracy=0.7))
    clf = calibrated(world)  # the Classifier's τ memo must not answer seed 3 with seed 0's τ
    assert clf.calibration_use.target_choice(RunConfig(policy="random", target_accuracy=0.7)).target == 0.7
    with pytest.raises(CalibrationError, match="seed 0, not seed 3"):
        clf.calibration_use.target_choice(RunConfig(policy="random", seed=3, target_accuracy=0.7))


@pytest.mark.parametrize("kw, needle", [
    (dict(mode="full"), "mode 'full'"), (dict(scorer="sum"), "--scorer sum"), (dict(delta=0.1), "--delta"),
    (dict(target_accuracy=1.0), "in \\(0, 1\\)"), (dict(target_accuracy=True), "in \\(0, 1\\)"),
])
def test_runconfig_refuses_a_target_it_cannot_honour(kw, needle):
    with pytest.raises(ValueError, match=needle):
        RunConfig(**{"target_accuracy": 0.8, **kw})


def test_target_accuracy_enters_the_settings_only_when_given():
    assert "target_accuracy" not in RunConfig().to_dict()
    assert RunConfig(target_accuracy=0.8).to_dict()["target_accuracy"] == 0.8


# --------------------------------------------------------------------------- the command line
def test_target_accuracy_without_a_calibration_is_a_one_line_usage_error(capsys, tmp_path):
    img = tmp_path / "a.png"
    noise_image(1).save(img)
    for cmd in (["classify", str(img)], ["eval", "--data", str(tmp_path)], ["compare", "--data", str(tmp_path)]):
        assert main([*cmd, "--target-accuracy", "0.8", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "--target-accuracy needs --calibration" in err and len(err.splitlines()) == 1


def test_logit_scale_with_a_calibration_is_refused(world, tmp_path, capsys):
    p = save_calibration(world["cal"], tmp_path / "cal.json").path
    assert main(["classify", world["paths"][0], "--calibration", p, "--logit-scale", "10", "--quiet"]) == 2
    assert "--logit-scale and --calibration" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_cal(tmp_path_factory):
    """`twentyq calibrate` with the tiny random CLIP on 24 noise images of the five-group system."""
    d = tmp_path_factory.mktemp("tinycal")
    system = five_group_system()
    (d / "five.json").write_text(json.dumps(system.to_dict()))
    write_labelled_noise(d, system, 24, prefix="n")
    rc = main(["calibrate", "--data", str(d / "labels.csv"), "--system", str(d / "five.json"), "--model",
               str(tiny_model_dir("clip")), "--device", "cpu", "--out", str(d / "cal.json"), "--quiet"])
    return {"rc": rc, "dir": d}


@pytest.mark.slow
def test_calibrate_command_writes_a_file_that_eval_uses(tiny_cal, capsys):
    d = tiny_cal["dir"]
    assert tiny_cal["rc"] == 0
    cal = load_calibration(d / "cal.json")
    assert cal.dev["n_images"] == 12 and cal.model == str(tiny_model_dir("clip"))
    rc = main(["eval", "--data", str(d / "labels.csv"), "--system", str(d / "five.json"), "--model",
               str(tiny_model_dir("clip")), "--device", "cpu", "--calibration", str(d / "cal.json"),
               "--out", str(d / "run.jsonl"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "12 of its dev image(s) left out" in out
    summary = json.loads((d / "run.jsonl.d" / "_summary.json").read_text())
    assert summary["n"] == 12 and summary["calibration"]["sha256"] == cal.sha256


@pytest.mark.slow
def test_fit_fraction_is_deprecated_in_one_line_and_changes_nothing(tiny_cal, capsys):
    """--fit-fraction (the old fit/select split) warns once and is ignored: the same calibration as without it."""
    d = tiny_cal["dir"]
    capsys.readouterr()
    rc = main(["calibrate", "--data", str(d / "labels.csv"), "--system", str(d / "five.json"), "--model",
               str(tiny_model_dir("clip")), "--device", "cpu", "--out", str(d / "cal_ff.json"), "--quiet",
               "--fit-fraction", "0.3"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 0 and len(err) == 1 and "--fit-fraction" in err[0] and "deprecated" in err[0]
    a, b = (json.loads((d / n).read_text()) for n in ("cal.json", "cal_ff.json"))
    assert a["policies"] == b["policies"] and a["select"] == b["select"] and a["dev"]["crossfit"] == b["dev"]["crossfit"]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model", "system"])
def test_a_mismatched_calibration_is_exit_2_in_one_line_naming_both(tiny_cal, capsys, which):
    d = tiny_cal["dir"]
    model = str(tiny_model_dir("siglip" if which == "model" else "clip"))
    system = str(d / "five.json") if which == "model" else "pokemon15"
    assert tiny_cal["rc"] == 0
    capsys.readouterr()
    rc = main(["classify", str(d / "n0.png"), "--system", system, "--model", model, "--device", "cpu",
               "--calibration", str(d / "cal.json"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "twentyq calibrate" in err
    assert ("tiny-clip" in err and "tiny-siglip" in err) if which == "model" else ("'five'" in err and
                                                                                   "'pokemon15'" in err)


def test_eps_with_a_calibration_is_refused_not_ignored(world, capsys):
    """The calibration's channels replace ε, so a --eps of its own would be silently ignored: refused, one line."""
    from engine.cli.app import main

    cal = world["dir"] / "c.json"
    save_calibration(world["cal"], cal)
    code = main(["eval", "--data", world["csv"], "--system", "pokemon15", "--model", "offline", "--calibration",
                 str(cal), "--eps", "0.2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--eps 0.2 and --calibration" in err[0]


# --------------------------------------------------------------------------- few-shot and zero-shot (issue 26)
@pytest.fixture(scope="module")
def relabelled(world):
    """The world's similarities with the classes relabelled by a fixed permutation: each class is now answered
    like another class's rules say, so the rules mislead and only a model of how each class is really answered
    (fitted on its own dev images) can classify. Dev: even rows; test: odd rows."""
    system = world["system"]
    perm = np.random.default_rng(0).permutation(system.n_classes)
    truth = perm[world["truth"]]
    dev, test = np.arange(0, N_IMAGES, 2), np.arange(1, N_IMAGES, 2)
    sims = world["sims"] / np.linalg.norm(world["sims"], axis=1, keepdims=True)  # the cosines the encoder gives
    cal = fit_calibration(sims[dev], truth[dev], system, lam0=200.0, eps=0.05, model="sim", model_id="sim@1",
                          policies=["fixed", "eig"])
    return {"truth": truth, "dev": dev, "test": test, "cal": cal, "sims": sims}


def test_few_shot_calibration_learns_how_each_class_is_answered_and_records_why(world, relabelled):
    cal, system = relabelled["cal"], world["system"]
    assert cal.setting == "few-shot" and cal.few_shot is not None
    dec = cal.decision
    held = dec["heldout"]
    lr = held["few-shot posterior"]
    assert lr["accuracy"] > held[f"rule channel, {dec['rule_channel']}"]["accuracy"] + 0.3
    # the answer model shipped is fitted on every dev image (τ and auto come from cross-fitted paths)
    assert cal.few_shot.n_dev.tolist() == np.bincount(relabelled["truth"][relabelled["dev"]],
                                                       minlength=system.n_classes).tolist()
    assert len(cal.crossfit) == 3 and cal.dev["crossfit"]["folds"] == 3
    for f, fm in enumerate(cal.crossfit):  # each fold's model rests on the other folds' images only
        out = cal.select.truth[cal.select.fold != f]
        assert fm.few_shot.n_dev.tolist() == np.bincount(out, minlength=system.n_classes).tolist()
    test = relabelled["test"]
    src = ArraySource(relabelled["sims"][test], system)
    truth = relabelled["truth"][test]

    def acc(**kw):
        res = classify_batch(src, system, "eig", logit_scale=cal.lams, top_k=1, **kw)
        return np.mean([r.label == system.classes[t] for r, t in zip(res, truth)])

    few = acc(channel=cal.channel(system), answer_model=cal.answer_model(system))
    rule = acc(channel=cal.channels.channel(system.rule_matrix, system.option_counts))
    assert few > 0.6 and few > rule + 0.4, (few, rule)


def test_few_shot_calibration_round_trips_and_runs_through_the_classifier(world, relabelled, tmp_path):
    system = world["system"]
    cal = save_calibration(relabelled["cal"], tmp_path / "few.json")
    d = json.loads((tmp_path / "few.json").read_text())
    assert d["format"] == SCHEMA and d["setting"] == "few-shot" and d["decision"]["posterior"].startswith("few-shot")
    back = load_calibration(tmp_path / "few.json")
    assert type(back.few_shot.posterior) is type(cal.few_shot.posterior)
    assert back.few_shot.posterior.to_dict() == cal.few_shot.posterior.to_dict()
    np.testing.assert_array_equal(back.channel(system).P, cal.channel(system).P)
    test = relabelled["test"][:60]
    clf = calibrated(world, back)
    res = clf.classify([world["paths"][i] for i in test], RunConfig(mode="adaptive", policy="eig", top_k=1))
    right = np.mean([r.label == system.classes[t] for r, t in zip(res, relabelled["truth"][test])])
    assert right > 0.6


def test_a_few_shot_calibration_with_the_sum_scorer_is_a_one_line_user_error(world, relabelled):
    clf = calibrated(world, relabelled["cal"])
    with pytest.raises(CalibrationError, match="few-shot.*bayes scorer"):
        clf.classify([world["paths"][1]], RunConfig(mode="full", scorer="sum"))


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_zero_shot_setting_fits_no_posterior_and_a_fit_worse_on_held_out_dev_is_not_kept(world, relabelled):
    system = world["system"]
    dev = relabelled["dev"]
    cal = fit_calibration(relabelled["sims"][dev], relabelled["truth"][dev], system, lam0=200.0, eps=0.05, model="sim",
                          model_id="sim@1", policies=["fixed"], setting="zero-shot")
    assert cal.few_shot is None and cal.answer_model(system) is None and cal.setting == "zero-shot"
    held = cal.decision["heldout"]
    kept = held[f"rule channel, {cal.decision['rule_channel']}"]
    base = held["rule channel, uncalibrated"]
    assert kept["accuracy"] >= base["accuracy"] and kept["nll"] <= base["nll"]
    if cal.decision["rule_channel"] == "uncalibrated":
        assert all(m is None for m in cal.channels.confusions) and (cal.lams == 200.0).all()


# the last three overflowed: an internal error (exit 3) instead of a damaged file
@pytest.mark.parametrize("key, value", [("W", float("nan")), ("b", "x"), ("scale", -1.0),
                                        pytest.param("mean", 10**400, id="mean-huge"), ("sizes", float("inf")),
                                        pytest.param("sizes", 10**300, id="sizes-huge")])
def test_a_damaged_few_shot_posterior_is_refused_naming_the_file(relabelled, tmp_path, key, value):
    d = relabelled["cal"].to_dict()
    post = d["few_shot"]["posterior"]
    if post.get("kind") == "gaussian":  # the Gaussian posterior's counterparts of the LR's weights and prior logits
        key = {"W": "means", "b": "log_prior"}.get(key, key)
    arr = np.asarray(post[key], dtype=object)
    arr.flat[0] = value
    post[key] = arr.tolist()
    p = tmp_path / "few.json"
    p.write_text(json.dumps(d))  # NaN is written as the NaN token, which Python's json reads back
    with pytest.raises(CalibrationError) as e:
        load_calibration(p)
    assert "few.json" in str(e.value) and "few-shot" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_few_shot_with_classes_missing_from_dev_falls_back_to_the_rule_channel_for_them(world, relabelled,
                                                                                         monkeypatch):
    import engine.core.answer_models as AM

    system = world["system"]
    keep = relabelled["truth"] < 10  # 5 of 15 classes have no dev image
    # whether the per-class channel wins on held-out dev depends on the draw; here it is made to, so that
    # what is kept for the classes without dev images is what this test checks
    monkeypatch.setattr(AM, "replaces", lambda *a, **k: True)
    cal = fit_calibration(relabelled["sims"][keep], relabelled["truth"][keep], system, lam0=200.0, eps=0.05,
                          model="sim", model_id="sim@1", policies=["fixed"], setting="few-shot")
    assert cal.few_shot is not None and cal.few_shot.posterior is None and cal.answer_model(system) is None
    rule_P = cal.channels.channel(system.rule_matrix, system.option_counts).P
    np.testing.assert_array_equal(cal.channel(system).P[10:], rule_P[10:])
    auto = fit_calibration(relabelled["sims"][keep], relabelled["truth"][keep], system, lam0=200.0, eps=0.05,
                           model="sim", model_id="sim@1", policies=["fixed"])
    assert auto.setting == "zero-shot" and auto.few_shot is None


def test_a_version_1_file_still_loads_and_an_unknown_version_is_refused_by_name(world, tmp_path):
    d = world["cal"].to_dict()
    for k in ("setting", "few_shot", "decision"):
        d.pop(k)
    d["format"] = "twentyq-calibration-v1"
    (tmp_path / "v1.json").write_text(json.dumps(d))
    v1 = load_calibration(tmp_path / "v1.json")
    assert v1.setting == "zero-shot" and v1.few_shot is None
    d["format"] = "twentyq-calibration-v9"
    (tmp_path / "v9.json").write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="twentyq-calibration-v9.*twentyq-calibration-v2"):
        load_calibration(tmp_path / "v9.json")


def test_a_calibration_too_large_to_read_back_is_not_written(world, tmp_path, monkeypatch):
    """The select part's similarities make a file grow with dev images × prompts; one over the reader's cap
    would be refused on load, so save refuses it and leaves nothing behind."""
    import engine.common.files

    cal = fit_calibration(world["sims"][:60], world["truth"][:60], world["system"], lam0=200.0, eps=0.05,
                          model="sim", model_id="sim@1", policies=["fixed"], auto=False)
    size = len(json.dumps(cal.to_dict(), indent=2))
    monkeypatch.setattr(engine.common.files, "TEXT_INPUT_LIMIT", size // 2)
    (tmp_path / "big.json").write_text("an earlier calibration")
    with pytest.raises(CalibrationError, match="nothing was written: calibrate on fewer dev images"):
        save_calibration(cal, tmp_path / "big.json")
    assert (tmp_path / "big.json").read_text() == "an earlier calibration"  # kept, not replaced or removed
    monkeypatch.setattr(engine.common.files, "TEXT_INPUT_LIMIT", size * 2)
    assert load_calibration(save_calibration(cal, tmp_path / "ok.json").path).model_id == "sim@1"


@pytest.mark.parametrize("bad", [-1, 99])
def test_a_damaged_select_part_is_refused_in_one_line(world, tmp_path, bad):
    cal = fit_calibration(world["sims"][:60], world["truth"][:60], world["system"], lam0=200.0, eps=0.05,
                          model="sim", model_id="sim@1", policies=["fixed"], auto=False)
    d = cal.to_dict()
    d["select"]["truth"][0] = bad
    p = tmp_path / "sel.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="select"):
        load_calibration(p).check(world["system"])


def test_a_damaged_cross_fit_part_is_refused_in_one_line(world, tmp_path):
    """The fold models and the fold of every dev image are what the τ tables are replayed with: a fold index
    out of range, or a fold model of other group sizes, is a damaged file (one line naming the field)."""
    cal = save_calibration(world["cal"], tmp_path / "c.json")
    d = json.loads((tmp_path / "c.json").read_text())
    assert len(d["crossfit"]) == 3 and len(d["select"]["fold"]) == len(d["select"]["truth"])
    bad = json.loads(json.dumps(d))
    bad["select"]["fold"][0] = 3
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match="select.fold") as e:
        load_calibration(tmp_path / "bad.json")
    assert "\n" not in str(e.value)
    bad = json.loads(json.dumps(d))
    bad["crossfit"][1]["channels"]["groups"] = bad["crossfit"][1]["channels"]["groups"][:-1]
    (tmp_path / "bad2.json").write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match=r"crossfit\[1\]"):
        load_calibration(tmp_path / "bad2.json")
    back = load_calibration(tmp_path / "c.json")
    assert [fm.dev_order for fm in back.crossfit] == [fm.dev_order for fm in cal.crossfit]


def test_calibrate_names_the_dev_images_it_could_not_read(tmp_path, capsys, monkeypatch):
    """It said only "2 dev image(s) could not be read"; the record keeps the first 20 messages, the command prints
    them."""
    import engine.encoders
    from engine.run.calibration_file import SKIPPED_KEPT
    from tests.support.data import COLOUR_SYSTEM, solid
    from tests.support.encoders import FakeEncoder

    rows = ["path,label"]
    for k, (cls, colour) in enumerate([("cherry", "red"), ("leaf", "green"), ("sea", "blue")] * 6):
        solid(colour).save(tmp_path / f"{k}.png")
        rows.append(f"{k}.png,{cls}")
    rows += [f"gone{k}.png,{cls}" for k, cls in enumerate(("cherry", "leaf", "sea") * 20)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    assert main(["calibrate", "--data", str(tmp_path / "d.csv"), "--system", str(tmp_path / "sys.json"),
                 "--out", str(tmp_path / "c.json"), "--quiet"]) == 0
    dev = json.loads((tmp_path / "c.json").read_text())["dev"]
    assert dev["bad_images"] > SKIPPED_KEPT == len(dev["skipped"]) and all("gone" in m for m in dev["skipped"])
    err = capsys.readouterr().err
    assert f"{dev['bad_images']} dev image(s) could not be read" in err
    assert sum("gone" in line for line in err.splitlines()) == SKIPPED_KEPT
