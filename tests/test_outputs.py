"""Outputs (issue 18, part 2): CSV result shards and ``twentyq report``."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from engine.cli.app import main
from engine.core.results import Result, Step
from engine.run.store import FORMATS, read_run

from .support.runs import store_at


def _awkward():
    """Records with everything CSV makes hard: commas, quotes, newlines, unicode, None, tiny floats."""
    step = Step(group="co,lour", eig=0.1 + 0.2, answer='say "red"', answer_prob=1e-300, confidence_after=1 / 3)
    return [
        Result("Mr. Mime", 2 / 3, [("Mr. Mime", 2 / 3), ("Ho-Oh", 1 / 3)], [step], 7, "confident",
               image="dir/a, b\n\"c\".png", true_label="Mr. Mime"),
        Result(None, 0.0, [], [], 0, None, image="é.png", error="cannot read: 'x'\nsecond line", true_label="Ho-Oh"),
        Result("Ho-Oh", 1.0, [("Ho-Oh", 1.0)], [], 0, "budget", image="=1+2", true_label="Nidoran♀"),
    ]


def test_csv_shards_read_back_as_the_same_records(tmp_path):
    recs = _awkward()
    with store_at(tmp_path / "r.csv", n=3, size=3) as s:
        s.write(0, recs)
        assert s.read(0) == recs
    with (tmp_path / "r.csv.d" / "shard-00000.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["label", "confidence", "top", "q_spent", "stop", "image", "error", "asked",
                             "true_label"]
    assert json.loads(rows[0]["top"]) == [{"label": "Mr. Mime", "prob": 2 / 3}, {"label": "Ho-Oh", "prob": 1 / 3}]
    assert rows[1]["label"] == "" and rows[2]["image"] == "'=1+2"  # a formula is text
    assert read_run(tmp_path / "r.csv") == [r.to_dict() for r in recs]


@pytest.mark.slow
def test_the_same_eval_as_jsonl_parquet_and_csv_holds_the_same_records(colour_run):
    pytest.importorskip("pyarrow")
    d = colour_run
    got = {}
    for suffix in FORMATS:
        out = d / f"run{suffix}"
        assert main(["eval", "--data", str(d / "d.csv"), "--system", str(d / "sys.json"), "--out", str(out),
                     "--quiet", "--shard-size", "5"]) == 0
        got[suffix] = read_run(out)
        assert len(list((d / f"run{suffix}.d").glob(f"shard-*{suffix}"))) == 3
    assert {".jsonl", ".parquet", ".csv"} <= set(got)
    assert len(got[".jsonl"]) == 12 and got[".jsonl"] == got[".parquet"] == got[".csv"]


@pytest.mark.slow
def test_report_merges_runs_writes_csv_and_plots(colour_run, capsys):
    pytest.importorskip("matplotlib")
    d = colour_run
    base = ["eval", "--data", str(d / "d.csv"), "--system", str(d / "sys.json"), "--quiet"]
    assert main(base + ["--out", str(d / "eig.jsonl"), "--tau", "0.6"]) == 0
    assert main(base + ["--out", str(d / "base.csv"), "--mode", "baseline"]) == 0
    capsys.readouterr()
    assert main(["report", str(d / "eig.jsonl"), str(d / "base.csv"), "--csv", str(d / "t.csv"),
                 "--plots", str(d / "plots")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | mode | policy | tau | n | accuracy |")
    assert out[2].startswith("| eig.jsonl | adaptive | eig | 0.600 | 12 |")
    assert out[3].startswith("| base.csv | baseline | fixed | - | 12 |")
    rows = list(csv.DictReader((d / "t.csv").open()))
    assert [r["run"] for r in rows] == ["eig.jsonl", "base.csv"] and float(rows[1]["mean_q"]) == 3.0
    for png in ("accuracy_vs_q.png", "confusion_eig.jsonl.png"):
        assert (d / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_reads_compare_lists_and_names_bad_inputs(tmp_path, capsys):
    rep = {"mode": "baseline", "accuracy": 0.5, "ci95": [0.4, 0.6], "mean_q": 15.0, "n": 10}
    (tmp_path / "cmp.json").write_text(json.dumps([rep, {**rep, "mode": "full", "mean_q": 40.0}]))
    assert main(["report", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "| cmp.json:baseline | baseline |" in out and "| cmp.json:full | full |" in out
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.json").write_text('{"a": 1}')
    for bad, expect in (("empty", "no _summary.json"), ("junk.json", "not an eval summary"),
                        ("missing.json", "not found")):
        assert main(["report", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("twentyq: error: ") and expect in err and len(err.strip().splitlines()) == 1


def test_report_plots_without_matplotlib_name_the_extra(tmp_path, capsys, monkeypatch):
    rep = {"mode": "baseline", "accuracy": 0.5, "ci95": [0.4, 0.6], "mean_q": 15.0, "n": 10}
    (tmp_path / "s.json").write_text(json.dumps(rep))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["report", str(tmp_path / "s.json"), "--plots", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'twentyq[report]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()
