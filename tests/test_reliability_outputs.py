"""Issue 14, the output side: runs that cannot destroy data or mix settings, and the warnings a
user needs before a run starts. The store's own rules are in test_store.py."""

from __future__ import annotations

import json

import pytest

from engine.cli.app import main

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder


@pytest.fixture
def colour(tmp_path, monkeypatch):
    import engine.encoders

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    solid("red").save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label,source\na.png,cherry,web\n")
    return tmp_path


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_eval_out_onto_the_data_is_refused_and_the_data_kept(colour, capsys):
    before = (colour / "d.csv").read_bytes()
    assert main(["eval", "--data", str(colour / "d.csv"), "--system", str(colour / "sys.json"),
                 "--out", str(colour / "d.csv")]) == 2
    assert len(_err(capsys)) == 1
    assert (colour / "d.csv").read_bytes() == before


def test_unknown_by_column_is_an_error_naming_the_columns(colour, capsys):
    assert main(["eval", "--data", str(colour / "d.csv"), "--system", str(colour / "sys.json"),
                 "--by", "nosuchcol", "--quiet"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--by 'nosuchcol'" in err[0] and "source" in err[0]
    assert main(["eval", "--data", str(colour / "d.csv"), "--system", str(colour / "sys.json"),
                 "--by", "source", "--quiet"]) == 0


def test_a_budget_below_the_cheapest_question_warns_at_start(colour, capsys):
    assert main(["classify", str(colour / "a.png"), "--system", str(colour / "sys.json"), "--budget", "1",
                 "--quiet", "--json"]) == 0
    err = capsys.readouterr().err
    assert "--budget 1 is below the cheapest question (2 prompts)" in err
    assert main(["classify", str(colour / "a.png"), "--system", str(colour / "sys.json"), "--budget", "2",
                 "--quiet", "--json"]) == 0
    assert "below the cheapest" not in capsys.readouterr().err


def test_a_newline_in_a_file_name_stays_on_one_table_row(colour, capsys):
    odd = colour / "two\nlines.png"
    solid("red").save(odd)
    assert main(["classify", str(odd), "--system", str(colour / "sys.json"), "--quiet"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and "two\\nlines.png" in rows[1] and "cherry" in rows[1]


def test_data_and_out_are_checked_before_the_model_loads(colour, capsys, monkeypatch):
    import engine.encoders

    def never(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(engine.encoders, "load_encoder", never)
    sysf = str(colour / "sys.json")
    assert main(["eval", "--data", str(colour / "missing.csv"), "--system", sysf]) == 2
    assert "dataset" in _err(capsys)[0]
    assert main(["eval", "--data", str(colour / "d.csv"), "--system", sysf, "--out",
                 str(colour / "no" / "such" / "r.jsonl")]) == 2
    assert "does not exist" in _err(capsys)[0]
    assert main(["eval", "--data", str(colour / "d.csv"), "--system", sysf, "--out", str(colour / "r.json")]) == 2
    assert "ends in .jsonl or .parquet" in _err(capsys)[0]


def test_an_unexpected_error_is_not_disguised_as_a_usage_error(colour, capsys, monkeypatch):
    import engine.core.adaptive as adaptive

    def broken(*a, **k):
        raise ValueError("a bug deep in the loop")

    monkeypatch.setattr(adaptive, "classify_batch", broken)
    monkeypatch.setattr("engine.run.classifier.classify", broken)  # the backend chooser the Classifier calls
    assert main(["classify", str(colour / "a.png"), "--system", str(colour / "sys.json"), "--quiet"]) == 3
    err = _err(capsys)
    assert len(err) == 1 and "internal error" in err[0] and "ValueError: a bug deep in the loop" in err[0]
    assert "test_reliability_outputs.py" in err[0]  # where it came from
    with pytest.raises(ValueError, match="a bug deep"):
        main(["--debug", "classify", str(colour / "a.png"), "--system", str(colour / "sys.json"), "--quiet"])
