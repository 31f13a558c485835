"""The twentyq CLI through its real entry point (subprocess) and in-process main()."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.app import main

from .support.data import COLOUR_SYSTEM, noise_image, solid
from .support.encoders import tiny_model_dir
from engine.common.files import shared_data_root

SHARED = shared_data_root()
KEYS = {"image", "label", "confidence", "top", "q_spent", "stop", "asked", "error"}


def twentyq(*args, cwd=None):
    """Run the installed console script (or the module) in a subprocess, offline."""
    exe = shutil.which("twentyq", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "engine.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for i in range(3):
        noise_image(i).save(d / f"n{i}.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return d


@pytest.fixture(scope="module")
def system_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sys") / "colours.json"
    p.write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    return p


@pytest.mark.slow
def test_classify_json_with_a_corrupt_image_in_the_batch(images, system_file):
    tiny = tiny_model_dir("clip")
    r = twentyq("classify", images / "n0.png", images / "corrupt.jpg", images / "n1.png", "--json",
                "--system", system_file, "--model", tiny, "--tau", "0.9", "--budget", "5", "--quiet")
    assert r.returncode == 1, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 3 and all(set(x) >= KEYS for x in lines)
    assert lines[1]["error"] and "corrupt.jpg" in lines[1]["error"] and lines[1]["label"] is None
    for x in (lines[0], lines[2]):
        assert x["error"] is None and x["label"] in COLOUR_SYSTEM["rules"] and x["q_spent"] <= 5
        assert all(set(a) == {"group", "eig", "answer", "answer_prob", "confidence_after"} for a in x["asked"])
    assert "Traceback" not in r.stderr and "1 of 3 image(s) could not be classified" in r.stderr


@pytest.mark.skipif(not (SHARED / "pokemon" / "jina15.csv").is_file(),
                    reason="../shared/data is absent: real-image CLI test skipped")
@pytest.mark.slow
def test_classify_real_images_from_shared_data(capsys):
    tiny = tiny_model_dir("clip")
    rows = (SHARED / "pokemon" / "jina15.csv").read_text().splitlines()[1:4]
    paths = [str(SHARED / "pokemon" / row.split(",")[0]) for row in rows]
    assert main(["classify", *paths, "--json", "--system", "pokemon15", "--model", str(tiny), "--quiet"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["image"] for o in out] == [str(p) for p in paths]
    assert all(o["error"] is None and o["stop"] in {"confident", "no_gain", "budget", "exhausted"} for o in out)


@pytest.mark.slow
def test_eval_writes_the_summary_and_streams_records(tmp_path, system_file):
    tiny = tiny_model_dir("clip")
    rows = ["path,label,split"]
    for i, (col, lab) in enumerate([("red", "cherry"), ("green", "leaf"), ("blue", "sea")] * 2):
        solid(col).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab},test")
    (tmp_path / "bad.png").write_bytes(b"")
    rows.append("bad.png,sea,test")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.jsonl"
    code = main(["eval", "--data", str(tmp_path / "d.csv"), "--system", str(system_file), "--model", str(tiny),
                 "--mode", "adaptive", "--policy", "eig", "--tau", "0.9", "--out", str(out), "--quiet"])
    assert code == 1  # one bad image, the rest processed
    rep = json.loads((tmp_path / "r.jsonl.d" / "_summary.json").read_text())
    for key in ("n", "accuracy", "ci95", "mean_q", "median_q", "text_encodes", "model", "system", "mode", "policy",
                "tau", "budget", "per_class", "confusion", "skipped", "stops"):
        assert key in rep, key
    assert rep["n"] == 6 and len(rep["skipped"]) == 1 and "bad.png" in rep["skipped"][0]["image"]
    assert rep["complete"] is True
    records = [json.loads(line) for line in out.read_text().splitlines()]  # the table, every row
    assert len(records) == 7 and [r["true_label"] for r in records] == [row.split(",")[1] for row in rows[1:]]


@pytest.mark.parametrize("argv, expect", [
    (["classify", "MISSING.png", "--system", "nope_system"], "system 'nope_system' not found"),
    (["eval", "--data", "MISSING.csv", "--system", "pokemon15"], "dataset 'MISSING.csv' not found"),
    (["system", "validate", "BAD"], "invalid system"),
    (["classify", "x.png", "--tau", "3"], "tau == 3.0"),
    (["classify", "x.png", "--settle", "2"], "settle == 2.0, must be in (0, 1]"),
])
def test_usage_errors_exit_2_with_one_line(argv, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_text(json.dumps({"groups": [], "rules": {}}))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("twentyq: error: ") and expect in err.splitlines()[0]
    assert "Traceback" not in err


@pytest.mark.slow
def test_missing_file_and_unknown_model(images, system_file, tmp_path, capsys):
    code = main(["classify", str(tmp_path / "missing.png"), str(images / "n0.png"), "--json", "--system",
                 str(system_file), "--model", str(tiny_model_dir("clip")), "--quiet"])
    assert code == 1
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "missing.png" in first["error"] and first["label"] is None
    code = main(["classify", str(images / "n0.png"), "--system", str(system_file), "--model",
                 str(tmp_path / "no-model-here")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("twentyq: error: ") and "no-model-here" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_label_missing_from_the_system(tmp_path, system_file, capsys):
    solid("red").save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label\na.png,plum\na.png,cherry\n")
    args = ["eval", "--data", str(tmp_path / "d.csv"), "--system", str(system_file), "--model",
            str(tiny_model_dir("clip")), "--quiet"]
    assert main(args) == 2
    assert "plum" in capsys.readouterr().err
    assert main(args + ["--allow-missing"]) == 0


def test_system_commands(capsys):
    assert main(["system", "analyze", "pokemon_jina16"]) == 0
    out = capsys.readouterr().out
    assert "Bulbasaur" in out and "minimal separating set" in out
    assert main(["system", "show", "pokemon15"]) == 0
    assert "not applicable in background_scene" in capsys.readouterr().out


@pytest.mark.slow
def test_models_lists_offline_and_remote_code():
    r = twentyq("models")
    assert r.returncode == 0
    assert "offline" in r.stdout and "NOT CLIP" in r.stdout
    jina = [x for x in r.stdout.splitlines() if x.startswith("jinaai/jina-clip-v1")]
    assert jina and "needs flag" in jina[0]
