"""Issue 25 item 6: eval sweeps data × models the way ``clip_benchmark eval --dataset a b --model x y``
does (one run each, each model loaded once), and ``report`` merges a folder of runs as
``clip_benchmark build`` does, naming what each run used."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from engine.cli.app import main

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder


@pytest.fixture
def two_datasets(tmp_path, monkeypatch):
    """Two labelled colour sets (fruit.csv, 3 images; more/sea.csv, 6; labels red, green, blue) and a fake
    encoder for any model, counting the loads per model string."""
    import engine.encoders

    loads = Counter()

    def load(model, *a, **k):
        loads[model] += 1
        return FakeEncoder()

    monkeypatch.setattr(engine.encoders, "load_encoder", load)
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    (tmp_path / "more").mkdir()
    for name, n in (("fruit.csv", 3), ("more/sea.csv", 6)):
        rows = ["path,label"]
        for i, (col, lab) in enumerate(([("red", "red"), ("green", "green"), ("blue", "blue")] * 2)[:n]):
            solid(col).save(tmp_path / f"{name[:-4]}{i}.png")
            rows.append(f"{tmp_path / f'{name[:-4]}{i}.png'},{lab}")
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    return tmp_path, loads


@pytest.mark.slow
def test_two_data_by_two_models_writes_four_runs_loading_each_model_once_and_report_merges_them(two_datasets, capsys):
    d, loads = two_datasets
    assert main(["eval", "--data", str(d / "fruit.csv"), str(d / "more" / "sea.csv"), "--model", "m1", "--model",
                 "m2", "--labels", "red,green,blue", "--out", str(d / "runs"), "--quiet", "--templates",
                 "photo"]) == 0
    assert loads == {"m1": 1, "m2": 1}  # each model loaded once for both datasets
    out = capsys.readouterr().out
    assert "wrote 4 of 4 run(s)" in out and f"twentyq report {d / 'runs'}" in out
    tables = sorted(p.name for p in (d / "runs").iterdir() if p.is_file())
    assert tables == ["fruit_m1.jsonl", "fruit_m2.jsonl", "sea_m1.jsonl", "sea_m2.jsonl"]
    sizes = {t: len((d / "runs" / t).read_text().splitlines()) for t in tables}
    assert sizes == {"fruit_m1.jsonl": 3, "fruit_m2.jsonl": 3, "sea_m1.jsonl": 6, "sea_m2.jsonl": 6}
    for t in tables:
        s = json.loads((d / "runs" / f"{t}.d" / "_summary.json").read_text())
        assert s["model"] == t.split("_")[1][:-len(".jsonl")] and s["accuracy"] == 1.0
    # a classify run and an unrelated JSON file in the folder are skipped with a notice
    assert main(["classify", str(d / "fruit0.png"), "--labels", "red,green,blue", "--out",
                 str(d / "runs" / "sub" / "c.jsonl"), "--quiet"]) == 2  # its folder must exist
    (d / "runs" / "sub").mkdir()
    assert main(["classify", str(d / "fruit0.png"), "--labels", "red,green,blue", "--out",
                 str(d / "runs" / "sub" / "c.jsonl"), "--quiet"]) == 0
    (d / "runs" / "sub" / "notes.json").write_text('{"a": 1}')
    capsys.readouterr()
    assert main(["report", str(d / "runs"), "--csv", str(d / "all.csv")]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert {"templates", "descriptors", "calibration", "system", "model"} <= set(header)
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]
    assert [r["run"] for r in rows] == ["fruit_m1.jsonl", "fruit_m2.jsonl", "sea_m1.jsonl", "sea_m2.jsonl"]
    assert all(r["templates"] == "photo (5)" and r["system"].startswith("labels (") for r in rows)
    assert [r["n"] for r in rows] == ["3", "3", "6", "6"] and all(r["calibration"] == "-" for r in rows)
    assert "skipped sub/c.jsonl (a run with no _summary.json" in err and "skipped sub/notes.json" in err


@pytest.mark.slow
def test_a_sweep_file_names_pairs_and_a_run_name_template_picks_the_format(two_datasets, capsys):
    d, loads = two_datasets
    (d / "sweep.json").write_text(json.dumps({"data": ["fruit.csv", "more/sea.csv"], "model": ["m1"]}))
    assert main(["eval", "--sweep", str(d / "sweep.json"), "--labels", "red,green,blue", "--out",
                 str(d / "runs"), "--run-name", "{model}-{data}-{mode}.csv", "--quiet"]) == 0
    assert sorted(p.name for p in (d / "runs").glob("*.csv")) == ["m1-fruit-baseline.csv", "m1-sea-baseline.csv"]
    assert loads == {"m1": 1}
    # the same again without --resume is refused before any model loads; with it, nothing is redone
    capsys.readouterr()
    assert main(["eval", "--sweep", str(d / "sweep.json"), "--labels", "red,green,blue", "--out",
                 str(d / "runs"), "--run-name", "{model}-{data}-{mode}.csv", "--quiet"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err and loads == {"m1": 1}
    assert main(["eval", "--sweep", str(d / "sweep.json"), "--labels", "red,green,blue", "--out",
                 str(d / "runs"), "--run-name", "{model}-{data}-{mode}.csv", "--quiet", "--resume"]) == 0
    assert "1 of 1 shard(s) already done" in capsys.readouterr().err


def test_sweep_inputs_are_checked_before_any_model_loads(two_datasets, capsys):
    d, loads = two_datasets
    base = ["eval", "--labels", "red,green,blue", "--quiet"]
    cases = [
        (["--data", str(d / "fruit.csv"), str(d / "nope.csv"), "--model", "m1"], "nope.csv"),
        (["--data", str(d / "fruit.csv"), str(d / "fruit.csv"), "--out", str(d / "o")], "gives 'fruit_offline.jsonl' for both"),
        (["--data", str(d / "fruit.csv"), "--model", "a", "b", "--out", str(d / "o"), "--run-name", "{nope}.jsonl"],
         "use the fields {data}"),
        (["--data", str(d / "fruit.csv"), "--model", "a", "b", "--out", str(d / "o"), "--run-name", "{data}.txt"],
         "gives 'fruit.txt' for both"),
        (["--data", str(d / "fruit.csv"), "--model", "a", "--model", "b", "--out", str(d / "o"), "--run-name",
          "{model}.txt"], "ends in .jsonl or .parquet or .csv"),
        (["--data", str(d / "fruit.csv"), "--run-name", "{data}.csv"], "--run-name names the runs of a sweep"),
        ([], "eval needs --data"),
        (["--sweep", str(d / "sys.json")], "expected {\"data\""),
        (["--sweep", str(d / "missing.json")], "missing.json"),
    ]
    for extra, expect in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert expect in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not loads and not (d / "o").exists()


def test_read_sweep_forms(tmp_path):
    from engine.cli.options import UsageError
    from engine.cli.run_cmds import read_sweep

    (tmp_path / "a.json").write_text(json.dumps({"data": ["x.csv", "/abs/y.csv", "hf:cifar10"], "model": ["m", "n"]}))
    pairs = read_sweep(str(tmp_path / "a.json"))
    assert pairs[:3] == [(str(tmp_path / "x.csv"), "m"), ("/abs/y.csv", "m"), ("hf:cifar10", "m")] and len(pairs) == 6
    (tmp_path / "b.json").write_text(json.dumps([{"data": "x.csv", "model": "m"}, {"data": "y.csv"}]))
    assert read_sweep(str(tmp_path / "b.json")) == [(str(tmp_path / "x.csv"), "m"), (str(tmp_path / "y.csv"), "offline")]
    for bad in ({"data": []}, {"data": ["x"], "models": ["m"]}, [{"data": 3}], {"data": ["x"], "model": "m"}, 7):
        (tmp_path / "c.json").write_text(json.dumps(bad))
        with pytest.raises(UsageError, match="--sweep"):
            read_sweep(str(tmp_path / "c.json"))


def test_report_names_descriptors_and_calibration_from_the_summary():
    from engine.reports.tables import row_of

    rep = {"mode": "descriptors", "accuracy": 0.5, "n": 10, "mean_q": 4.0, "system": "birds",
           "settings": {"system": {"sha256": "ab" * 32}, "model_label": "tiny CLIP",
                        "config": {"descriptors": {"classes": 3, "prompts": 12, "sha256": "cd" * 32},
                                   "templates": ["a {}.", "b {}."]},
                        "sources": {"descriptors": "/x/dclip_cub.json"}},
           "calibration": {"path": "/c/cal.json", "sha256": "ef" * 32, "applied": False}}
    row = row_of("r", rep)
    assert row["descriptors"] == "dclip_cub.json (3 classes, 12 prompts, sha256 cdcdcdcd)"
    assert row["calibration"] == "cal.json (sha256 efefefef) not applied"
    assert row["system"] == "birds (abababab)" and row["model"] == "tiny CLIP"
    assert row["templates"] == "2: a {}., …"
    rep["settings"]["sources"]["templates"] = "/t/mine.json"
    assert row_of("r", rep)["templates"] == "mine.json (2)"
