"""The README's main job: `twentyq compare` with the shipped attribute probe (trained here on Gen 2–3
sprites; not CLIP), its shipped calibration, on Gen-1 sprites of pokemon15's 10 Gen-1 species.

Fast: the named system is pokemon15 restricted to its Gen-1 species, and the shipped calibration
belongs to the shipped probe and that system. Slow: the main job's code path on a few images prints
the table and writes the PNG (skipped when ../shared/data is absent).
"""

from __future__ import annotations

import csv
import json

import pytest

from engine.encoders.probe import MANIFEST_FILE, SHIPPED_DIR
from systems import load_system

MAIN_SYSTEM = "pokemon15_gen1"
MAIN_CALIBRATION = SHIPPED_DIR / "pokemon15_gen1.sprites.cal.json"
NOT_GEN1 = ("Absol", "Aggron", "Ampharos", "Azumarill", "Celebi")


def test_pokemon15_gen1_is_pokemon15_without_its_gen2_3_species():
    from bench.probe.evaluate import JINA_NOT_GEN1

    assert set(JINA_NOT_GEN1) == set(NOT_GEN1)
    full, sub = load_system("pokemon15"), load_system(MAIN_SYSTEM)
    want = full.subset([c for c in full.classes if c not in NOT_GEN1], name=MAIN_SYSTEM)
    assert sub.classes == want.classes and len(sub.classes) == 10
    assert sub.groups == want.groups and sub.rules == want.rules
    assert sub.baseline_template == want.baseline_template


def test_shipped_calibration_fits_the_shipped_probe_and_the_main_system():
    from engine.run.calibration_file import load_calibration

    cal = load_calibration(MAIN_CALIBRATION)
    manifest = json.loads((SHIPPED_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert cal.model_id.startswith(f"probe@{manifest['weights_sha256'][:16]}+")
    cal.check(load_system(MAIN_SYSTEM))  # the system hash matches (raises otherwise)
    with pytest.raises(ValueError, match="fitted for system"):
        cal.check(load_system("pokemon15"))
    d = json.loads(MAIN_CALIBRATION.read_text(encoding="utf-8"))["dev"]
    assert d["fraction"] == 0.5 and d["seed"] == 0 and d["n_images"] < d["rows"]  # the rest is the test half


def test_shipped_calibration_is_few_shot_and_records_why_on_held_out_dev_images():
    """The main job's calibration (issue 26): the Gaussian few-shot posterior, kept because it beat the rule
    channel on held-out (cross-fitted) dev images in accuracy and NLL, and the group-masked LR over the sets of
    questions the loop asks; the counts it rests on are in the file."""
    from engine.core.gaussian import GaussianPosterior
    from engine.run.calibration_file import SCHEMA, load_calibration

    cal = load_calibration(MAIN_CALIBRATION)
    d = json.loads(MAIN_CALIBRATION.read_text(encoding="utf-8"))
    assert d["format"] == SCHEMA and cal.setting == "few-shot" and cal.few_shot is not None
    held = cal.decision["heldout"]
    post, rule = held["few-shot posterior: Gaussian (LDA)"], held[f"rule channel, {cal.decision['rule_channel']}"]
    assert post["accuracy"] >= rule["accuracy"] and post["nll"] <= rule["nll"]
    any_set = cal.decision["gaussian"]["heldout_any_asked_set"]
    assert any_set["Gaussian"]["accuracy"] > any_set["LR"]["accuracy"] and any_set["Gaussian"]["nll"] < any_set["LR"]["nll"]
    # the answer model rests on every dev image; τ and auto on cross-fitted paths (3 folds, each on the others' fit)
    assert int(cal.few_shot.n_dev.sum()) == d["dev"]["n_images"] and (cal.few_shot.n_dev > 0).all()
    assert d["dev"]["crossfit"]["folds"] == len(cal.crossfit) == 3 and len(cal.select.truth) == d["dev"]["n_images"]
    assert isinstance(cal.few_shot.posterior, GaussianPosterior)  # exact for any set of questions asked
    system = load_system(MAIN_SYSTEM)
    am = cal.answer_model(system)  # the posterior itself: no per-group terms, so no predictive EIG
    assert am is cal.few_shot.posterior and cal.predictive is None
    assert cal.channel(system).P.shape == (system.n_classes, system.q_total)


def _sprites_csv():
    from bench.probe.data import SPRITES_CSV

    if not SPRITES_CSV.is_file():
        pytest.skip(f"../shared/data is absent ({SPRITES_CSV}); the main job needs the Gen-1 sprites")
    return SPRITES_CSV


@pytest.mark.slow
def test_main_job_prints_the_table_and_writes_the_curve(tmp_path, capsys):
    from engine.cli import main

    src = _sprites_csv()
    classes = set(load_system(MAIN_SYSTEM).classes)
    with open(src, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in classes]
    from engine.run.calibration_file import exclude_dev, load_calibration

    paths = [str(src.parent / r["path"]) for r in rows if r["style"] in ("official-artwork", "red-blue")]
    kept, _ = exclude_dev(paths, load_calibration(MAIN_CALIBRATION))  # test-half images: compare scores them all
    label = {str(src.parent / r["path"]): r["label"] for r in rows}
    rows = [{"path": p, "label": label[p]} for p in kept[:6]]
    assert len(rows) == 6
    data = tmp_path / "few.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([[r["path"], r["label"]] for r in rows])
    png, out = tmp_path / "curve.png", tmp_path / "compare.json"
    rc = main(["compare", "--data", str(data), "--system", MAIN_SYSTEM, "--model", "probe", "--calibration",
               str(MAIN_CALIBRATION), "--policy", "model_eig_per_prompt", "--settle", "auto", "--plot", str(png),
               "--out", str(out),
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "not CLIP" in text and "trained here" in text
    for mode in ("| baseline |", "| full |", "| adaptive (model_eig_per_prompt, τ=0.9, settle=0.8)"):
        assert mode in text
    assert ("settle auto (model_eig_per_prompt, τ=0.9, budget none): 0.8 chosen on the calibration's 100 "
            "cross-fitted dev") in text
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reports = json.loads(out.read_text(encoding="utf-8"))
    assert [r["mode"] for r in reports] == ["baseline", "full", "adaptive"]
    assert all(r["n"] == 6 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] for r in reports)
    assert [r["calibration"]["applied"] for r in reports] == [False, True, True]  # the shipped one, full+adaptive
    assert [r["settle"] for r in reports] == [None, None, 0.8]
