"""A zero-shot calibration moved to other classes with the same questions; an eval left with nothing to score;
save → load of a calibration is exact.

Simulated similarities only (engine/core/simulate.py) and noise PNGs mapped to them by the SimEncoder of
tests/support/encoders.py: no shared data and no real model.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.support.data import five_group_system, noise_image
from tests.strategies import systems
from tests.support.encoders import SimEncoder

from engine.core.channel_fit import AnswerChannels
from engine.core.simulate import SimulatedSource
from engine.run.calibration_file import (
    Calibration, CalibrationError, CalibrationMismatch, exclude_dev, fit_calibration, image_sha256, load_calibration,
    save_calibration,
)
from engine.run.classifier import Classifier
from engine.run.config import DEFAULT_EPS, EncoderSpec, RunConfig
from engine.run.datasets import DataSpec
from engine.run.evaluation import evaluate_classifier, evaluate_configs
from engine.run.provenance import groups_hash, system_hash
from systems import load_system
from engine.common.errors import UserInputError

GEN23 = ("Absol", "Aggron", "Ampharos", "Azumarill", "Celebi")  # pokemon15's classes that pokemon15_gen1 lacks


def simulated(system, truth, seed=3):
    """(B, Q) similarities: colour and key trait answered well, form and body shape mostly wrong, noisy enough
    that the uncalibrated channel (λ0 = 200 everywhere) over-counts the bad groups and a fitted one is kept."""
    src = SimulatedSource(system, np.asarray(truth), margin=np.array([0.12, 0.10, 0.12, 0.10, 0.05]),
                          wrong_rate=np.array([0.05, 0.8, 0.1, 0.8, 0.0]), noise=0.08, seed=seed)
    return np.concatenate([src.similarities(np.arange(len(truth)), g) for g in range(system.n_groups)], axis=1)


@pytest.fixture(scope="module")
def source():
    """A zero-shot calibration of pokemon15 fitted on images of its 5 Gen 2–3 classes only (150 images)."""
    system = load_system("pokemon15")
    truth = np.array([system.class_index(GEN23[i % 5]) for i in range(150)])
    sims = simulated(system, truth)
    cal = fit_calibration(sims, truth, system, lam0=200.0, eps=0.05, model="sim", model_id="sim@1",
                          policies=["fixed", "eig"], setting="zero-shot", auto=False, dev={"data": "gen23.csv",
                                                                                         "name": "gen23"})
    return {"system": system, "cal": cal, "sims": sims, "truth": truth}


@pytest.fixture(scope="module")
def gen1_world(tmp_path_factory):
    """pokemon15_gen1, 40 noise PNGs with simulated answers, their CSV and a SimEncoder."""
    d = tmp_path_factory.mktemp("gen1")
    system = load_system("pokemon15_gen1")
    truth = np.arange(40) % system.n_classes
    sims = simulated(system, truth, seed=5)
    rows, paths = {}, []
    for i in range(40):
        im = noise_image(5000 + i, size=(6, 5))
        p = d / f"g{i:02d}.png"
        im.save(p)
        rows[SimEncoder.key(im)] = sims[i]
        paths.append(str(p))
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([(p, system.classes[c]) for p, c in zip(paths, truth)])
    return {"dir": d, "system": system, "truth": truth, "sims": sims, "paths": paths, "csv": str(d / "labels.csv"),
            "encoder": SimEncoder(system, rows)}


# --------------------------------------------------------------------------- zero-shot transfer
def test_a_zero_shot_calibration_moves_to_a_system_with_the_same_questions(source, gen1_world):
    cal, gen1 = source["cal"], gen1_world["system"]
    assert cal.setting == "zero-shot" and cal.few_shot is None and cal.decision["rule_channel"] != "uncalibrated"
    assert cal.groups_sha256 == groups_hash(gen1) and cal.system_sha256 != system_hash(gen1)
    assert sorted(cal.source["classes"]) == sorted(GEN23) and cal.source["system"] == "pokemon15"
    clf = Classifier(EncoderSpec(model="sim"), gen1, encoder=gen1_world["encoder"], calibration=cal)
    moved = clf.calibration
    assert moved.moved_to == {"system": "pokemon15_gen1", "sha256": system_hash(gen1)}
    assert moved.paths == {} and moved.select is None and moved.dev_order is None and moved.auto == {}
    # the class-agnostic parts, applied through the target's own rules
    expect = cal.channels.channel(gen1.rule_matrix, gen1.option_counts)
    assert np.array_equal(clf.calibration_use.channel.P, expect.P) and np.array_equal(moved.lams, cal.lams)
    assert moved.provenance()["moved_to"] == "pokemon15_gen1"
    got = clf.classify(gen1_world["paths"][:10], RunConfig(policy="eig", tau=0.9))
    plain = Classifier(EncoderSpec(model="sim"), gen1, encoder=gen1_world["encoder"]).classify(
        gen1_world["paths"][:10], RunConfig(policy="eig", tau=0.9))
    assert [round(r.confidence, 6) for r in got] != [round(r.confidence, 6) for r in plain]
    assert moved.for_system(gen1) is moved  # moving twice is a no-op


@pytest.mark.parametrize("config, needle", [
    (RunConfig(policy="auto"), "auto policy choice"),
    (RunConfig(policy="dev-order"), "dev order"),
    (RunConfig(policy="eig", target_accuracy=0.8), "τ table"),
])
def test_what_was_fitted_on_the_source_classes_is_refused_by_name_after_a_move(source, gen1_world, config, needle):
    clf = Classifier(EncoderSpec(model="sim"), gen1_world["system"], encoder=gen1_world["encoder"],
                     calibration=source["cal"])
    with pytest.raises(CalibrationError) as e:
        clf.check_calibrated(config)
    msg = str(e.value)
    assert needle in msg and "moved to system 'pokemon15_gen1'" in msg and "pokemon15'" in msg and "\n" not in msg


def test_the_source_tau_table_is_refused_for_the_target_system_even_unmoved(source, gen1_world):
    with pytest.raises(CalibrationError, match="τ table"):
        source["cal"].tau_for("eig", 0.8, system=gen1_world["system"])
    source["cal"].tau_for("eig", 0.8, system=source["system"])  # on its own system it is served


def test_a_few_shot_calibration_does_not_move_to_other_classes(source, gen1_world):
    """A per-class answer channel (what a few-shot fit keeps when some classes lack dev images) is for its own
    classes: the file does not move, even though the questions are the same."""
    from engine.core.answer_models import FewShotModel

    system, cal = source["system"], source["cal"]
    P = cal.channel(system).P
    few = replace(cal, setting="few-shot", few_shot=FewShotModel(
        posterior=None, P=P, beta=np.ones(system.n_groups), alpha=5.0, n_dev=np.ones(system.n_classes, np.int64),
        sizes=np.asarray(system.option_counts)))
    with pytest.raises(CalibrationMismatch) as e:
        few.for_system(gen1_world["system"])
    assert "few-shot" in str(e.value) and "--setting zero-shot" in str(e.value) and "\n" not in str(e.value)
    few.for_system(system)  # its own system: fine


def test_other_questions_or_a_file_without_the_groups_hash_are_refused(source, tmp_path):
    cal = source["cal"]
    with pytest.raises(CalibrationMismatch, match="questions differ"):
        cal.for_system(five_group_system())
    with pytest.raises(CalibrationMismatch, match="questions differ"):
        cal.for_system(load_system("pokemon_jina16"))
    d = cal.to_dict()
    del d["system"]["groups_sha256"]
    p = tmp_path / "old.json"
    p.write_text(json.dumps(d))
    old = load_calibration(p)
    assert old.groups_sha256 is None
    with pytest.raises(CalibrationMismatch, match="records no hash of its questions"):
        old.for_system(load_system("pokemon15_gen1"))


def test_the_file_records_the_groups_hash_and_the_source(source, tmp_path):
    cal = save_calibration(source["cal"], tmp_path / "zs.json")
    d = json.loads((tmp_path / "zs.json").read_text())
    assert d["system"]["groups_sha256"] == groups_hash(source["system"])
    assert d["source"] == {"system": "pokemon15", "classes": sorted(GEN23, key=source["system"].class_index),
                           "data": "gen23.csv", "domain": "gen23"}
    back = load_calibration(tmp_path / "zs.json")
    assert back.groups_sha256 == cal.groups_sha256 and back.source == cal.source
    d["source"] = {"classes": [1, 2]}
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="source.classes"):
        load_calibration(tmp_path / "bad.json")


def test_the_cli_moves_the_calibration_it_reads(source, gen1_world, tmp_path):
    from engine.cli.options import calibration_arg

    save_calibration(source["cal"], tmp_path / "zs.json")
    args = SimpleNamespace(calibration=str(tmp_path / "zs.json"), target_accuracy=None, logit_scale=None,
                           eps=DEFAULT_EPS)
    assert calibration_arg(args, gen1_world["system"]).moved_to["system"] == "pokemon15_gen1"
    with pytest.raises(CalibrationMismatch, match="questions differ"):
        calibration_arg(args, five_group_system())


# --------------------------------------------------------------------------- nothing left to score
def test_eval_and_compare_on_dev_images_only_are_a_one_line_user_error(gen1_world, tmp_path):
    """Every image of the data is a dev image of the calibration: exit 2 naming cause and fix, not NaN accuracy."""
    system = gen1_world["system"]
    cal = fit_calibration(gen1_world["sims"], gen1_world["truth"], system, lam0=200.0, eps=0.05, model="sim",
                          model_id="sim@1", policies=["fixed"], auto=False,
                          dev={"image_sha256": sorted(image_sha256(p) for p in gen1_world["paths"])})
    clf = Classifier(EncoderSpec(model="sim"), system, encoder=gen1_world["encoder"], calibration=cal)
    for run in (lambda: evaluate_classifier(clf, gen1_world["csv"], policy="eig", tau=0.9),
                lambda: evaluate_configs(clf, DataSpec(gen1_world["csv"]), [RunConfig(mode="full")])):
        with pytest.raises(CalibrationError) as e:
            run()
        msg = str(e.value)
        assert "all 40 image(s)" in msg and "dev images" in msg and "drop --calibration" in msg and "\n" not in msg
        assert isinstance(e.value, UserInputError)  # exit 2 in the CLI
    some = gen1_world["paths"][:3] + ["elsewhere.png"]
    kept, n = exclude_dev(some, cal)  # some left: no error
    assert (kept, n) == (["elsewhere.png"], 3)


# --------------------------------------------------------------------------- exact round trip
@st.composite
def answer_channels(draw):
    system = draw(systems(max_classes=5, max_groups=4, min_k=2, max_k=5))
    sizes = [int(k) for k in system.option_counts]
    confs = []
    for k in sizes:
        if draw(st.booleans()):
            confs.append(None)
            continue
        raw = draw(arrays(np.float64, (k, k), elements=st.floats(1e-3, 10.0)))
        hat = raw / raw.sum(axis=1, keepdims=True)  # rows summing to 1 up to rounding, as the fit makes them
        w = draw(st.floats(0.0, 1.0))
        confs.append(w * hat + (1.0 - w) / k)
    lams = np.array(draw(st.lists(st.floats(1e-2, 1e4), min_size=len(sizes), max_size=len(sizes))))
    rel = np.array([np.nan if m is None else 0.5 for m in confs])
    ch = AnswerChannels(lams=lams, confusions=tuple(confs), reliability=rel, n_dev=np.zeros(len(sizes), np.int64),
                        eps=draw(st.floats(0.0, 0.5)))
    return system, ch


@settings(max_examples=60, deadline=None)
@given(answer_channels())
def test_save_then_load_gives_the_bit_identical_channel(drawn):
    """The loaded M_g, λ_g and the channel built from them equal the fitted ones bit for bit (the stored τ paths
    were traced with that channel); renormalising the rows on load changes their last digits."""
    system, ch = drawn
    cal = Calibration(channels=ch, model="m", model_id="m@1", system_name=system.name,
                      system_sha256=system_hash(system), sizes=tuple(int(k) for k in system.option_counts),
                      groups=tuple(g.name for g in system.groups), lam0=10.0)
    with tempfile.TemporaryDirectory() as d:
        back = load_calibration(save_calibration(cal, Path(d) / "c.json").path)
    for a, b in zip(ch.confusions, back.channels.confusions):
        assert (a is None and b is None) or (a.tobytes() == b.tobytes())
    assert ch.lams.tobytes() == back.channels.lams.tobytes() and ch.eps == back.channels.eps
    assert cal.channel(system).P.tobytes() == back.channel(system).P.tobytes()


def test_the_transfer_bench_pairs_its_differences_by_image():
    """bench.transfer's CI is of the per-image difference: identical runs give exactly 0, and a run right on
    one more image of 4 gives +0.25 with a CI inside [0, 1] around it (never negative: no image got worse)."""
    from bench.transfer import paired

    a = np.array([1, 0, 0, 1], bool)
    assert paired(a, a) == {"diff": 0.0, "ci95": [0.0, 0.0]}
    d = paired(a, np.array([1, 1, 0, 1], bool))
    assert d["diff"] == 0.25 and 0.0 == d["ci95"][0] < 0.25 < d["ci95"][1] <= 1.0


@pytest.mark.slow
def test_the_transfer_bench_runs_end_to_end_with_the_offline_stand_in(tmp_path):
    """python -m bench.transfer --model offline: calibrate on Gen 2–3 sprites, move to Gen 1, score with and
    without; its rows are paired (the same images) and the report names the model (needs ../shared/data)."""
    import bench.transfer as T
    from bench.lib import harness

    if not (harness.SHARED_DATA / T.SPRITES).is_file():
        pytest.skip(f"needs {harness.SHARED_DATA / T.SPRITES} (../shared/data)")
    res = T.run("offline", tmp_path, log=lambda *a: None)
    text = T.report(res)
    assert "offline" in text and "moved from Gen 2–3" in text and (tmp_path / "zero-shot.gen23.cal.json").is_file()
