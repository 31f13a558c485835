"""Issue 25 item 4 and issue 27 row 8: a finished run's --out reads as a table in one pandas or
pyarrow call, ``top`` has one shape in every format, CSV cells cannot run as formulas, and a
refused --out leaves nothing behind."""

from __future__ import annotations

import csv
import json

import pytest

from engine.cli.app import main
from engine.core.results import Result
from engine.run.store import (
    FORMATS, LOCK, ResultStore, StoreError, csv_cell, read_run, run_dir, summary_path,
)

from .support.data import write_colour_data
from .support.encoders import FakeEncoder

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")

TOP_TYPE = "list<item: struct<label: string, prob: double>>"


@pytest.fixture
def colour_data(tmp_path, monkeypatch):
    """Six solid-colour images labelled by the colour system, one row naming a missing file, and the fake encoder
    for every model string."""
    import engine.encoders

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    return write_colour_data(tmp_path, 6, missing=True)


def _eval(d, out, *extra):
    return main(["eval", "--data", str(d / "d.csv"), "--system", str(d / "sys.json"), "--out", str(out),
                 "--quiet", "--shard-size", "3", *extra])


@pytest.mark.slow
def test_a_finished_run_reads_in_one_pandas_call_in_every_format_with_one_top_shape(colour_data):
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    d = colour_data
    for suffix in FORMATS:
        assert _eval(d, d / f"run{suffix}") == 1  # one bad image, the rest classified
        assert (d / f"run{suffix}").is_file() and summary_path(d / f"run{suffix}").is_file()
        assert run_dir(d / f"run{suffix}") == d / f"run{suffix}.d"
    frames = {".csv": pd.read_csv(d / "run.csv"), ".jsonl": pd.read_json(d / "run.jsonl", lines=True),
              ".parquet": pd.read_parquet(d / "run.parquet")}
    want = ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "missing.png"]
    for suffix, df in frames.items():
        assert [p.rsplit("/", 1)[-1] for p in df["image"]] == want, suffix  # every row, in input order
        assert list(df["label"][:6]) == ["cherry", "leaf", "sea"] * 2 and df["confidence"].dtype == "float64"
        assert pd.isna(df["label"][6]) and "missing.png" in df["error"][6]
    # top: a list of {label, prob} everywhere (in CSV, that list as a JSON string)
    tops = {".csv": [json.loads(t) for t in frames[".csv"]["top"]], ".jsonl": list(frames[".jsonl"]["top"]),
            ".parquet": [list(t) for t in frames[".parquet"]["top"]]}
    for suffix, top in tops.items():
        first = [dict(t) for t in top[0]]
        assert [t["label"] for t in first] == ["cherry", "leaf", "sea"], suffix
        assert abs(sum(t["prob"] for t in first) - 1) < 1e-9 and list(first[0]) == ["label", "prob"], suffix
        assert list(top[6]) == []
    assert str(pj.read_json(d / "run.jsonl").schema.field("top").type) == TOP_TYPE
    assert str(pq.read_schema(d / "run.parquet").field("top").type) == TOP_TYPE.replace("item", "element")
    # the table and the shards hold the same records
    assert read_run(d / "run.jsonl") == read_run(d / "run.csv") == read_run(d / "run.parquet")
    assert len(list((d / "run.csv.d").glob("shard-*.csv"))) == 3


@pytest.mark.slow
def test_resume_rewrites_the_table_and_an_interrupted_run_has_none(colour_data):
    d = colour_data
    assert _eval(d, d / "r.csv") == 1
    first = (d / "r.csv").read_bytes()
    (d / "r.csv").unlink()
    assert _eval(d, d / "r.csv", "--resume") == 1  # every shard done: the table is written again, the same
    assert (d / "r.csv").read_bytes() == first
    assert _eval(d, d / "r.csv", "--tau", "0.5", "--resume") == 2  # other settings: refused, table kept
    assert (d / "r.csv").read_bytes() == first


def test_the_table_is_written_only_when_every_shard_is_done(tmp_path):
    recs = [Result("A", 0.5, [("A", 0.5), ("B", 0.5)], [], 1, "budget", image=f"i{i}", true_label="A") for i in range(5)]
    for suffix in FORMATS:
        out = tmp_path / f"t{suffix}"
        with ResultStore.open(out, n_rows=5, shard_size=2, settings={}, fingerprint="f", resume=False) as s:
            s.write(0, recs[:2])
            s.write(2, recs[4:])
            with pytest.raises(ValueError, match=r"shard\(s\) \[1\] not finished"):
                s.finish()
            assert not out.exists()
            s.write(1, recs[2:4])
            assert s.finish() == out
        assert read_run(out) == [r.to_dict() for r in recs]
        if suffix == ".csv":
            assert len(pd.read_csv(out)) == 5  # one header row, not one per shard
        elif suffix == ".jsonl":
            assert len(pd.read_json(out, lines=True)) == 5
        else:
            assert len(pd.read_parquet(out)) == 5


def test_out_refusals_leave_nothing_behind(tmp_path):
    """Issue 27: refusing a non-run folder as --out left an empty _lock in it."""
    foreign = tmp_path / "mine.jsonl.d"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds no twentyq run"):
        ResultStore.open(tmp_path / "mine.jsonl", n_rows=1, shard_size=1, settings={}, fingerprint="f", resume=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # no _lock
    (tmp_path / "folder.csv").mkdir()  # a folder where the table goes (the layout before tables)
    (tmp_path / "folder.csv" / "x").write_text("x")
    with pytest.raises(StoreError, match="is a folder"):
        ResultStore.open(tmp_path / "folder.csv", n_rows=1, shard_size=1, settings={}, fingerprint="f", resume=False)
    assert sorted(p.name for p in (tmp_path / "folder.csv").iterdir()) == ["x"]
    (tmp_path / "theirs.csv").write_text("a,b\n1,2\n")  # somebody's CSV, no run folder beside it
    with pytest.raises(StoreError, match="is not a twentyq result table"):
        ResultStore.open(tmp_path / "theirs.csv", n_rows=1, shard_size=1, settings={}, fingerprint="f", resume=False)
    assert (tmp_path / "theirs.csv").read_text() == "a,b\n1,2\n" and not (tmp_path / "theirs.csv.d").exists()
    # a run folder that was there (with its lock) keeps its lock; a refused resume creates nothing
    with ResultStore.open(tmp_path / "ok.jsonl", n_rows=1, shard_size=1, settings={}, fingerprint="f", resume=False):
        pass
    with pytest.raises(StoreError, match="other settings"):
        ResultStore.open(tmp_path / "ok.jsonl", n_rows=1, shard_size=1, settings={"x": 1}, fingerprint="g",
                         resume=True)
    assert (tmp_path / "ok.jsonl.d" / LOCK).exists()


# --------------------------------------------------------------------------- spreadsheet injection (issue 27 row 8)
FORMULAS = ['=HYPERLINK("http://evil.example/?red","click red")', "+green+1", "-2+3 blue", "@SUM(1) red",
            "'quoted red"]


def test_csv_cell_escapes_formula_starts_the_owasp_way_and_reads_back():
    from engine.run.store import csv_uncell

    for text in FORMULAS + ["\tred", "\rred"]:
        safe = csv_cell(text)
        assert safe == "'" + text and csv_uncell(safe) == text
    for text in ["red", "", "a=b", "Mr. Mime", "0.5"]:
        assert csv_cell(text) == text and csv_uncell(text) == text


@pytest.mark.slow
def test_formula_labels_are_text_in_the_csv_and_numbers_stay_numbers(colour_data):
    d = colour_data
    (d / "classes.txt").write_text("\n".join(FORMULAS[:4]) + "\n")
    with (d / "f.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, lab in zip([0, 1, 2, 0], FORMULAS[:4]):
            w.writerow([f"{i}.png", lab])
    assert main(["eval", "--data", str(d / "f.csv"), "--labels-file", str(d / "classes.txt"), "--out",
                 str(d / "f_run.csv"), "--quiet"]) == 0
    with (d / "f_run.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for row in rows:
        for c in row:
            assert c[:1] not in ("=", "+", "-", "@", "\t", "\r"), c  # no cell a spreadsheet would evaluate
    text = (d / "f_run.csv").read_text(encoding="utf-8")
    assert '"\'=HYPERLINK(""http://evil.example/?red"",""click red"")"' in text  # quoted and prefixed
    df = pd.read_csv(d / "f_run.csv")
    assert df["confidence"].dtype == "float64" and df["q_spent"].dtype == "int64"
    assert list(df["true_label"]) == ["'" + x for x in FORMULAS[:4]]
    assert [r["true_label"] for r in read_run(d / "f_run.csv")] == FORMULAS[:4]  # the store reads the labels back


def test_a_negative_number_is_not_escaped(tmp_path):
    rec = Result("-2+3 blue", -0.5, [("-2+3 blue", 1.0)], [], -1, "budget", image="-x.png", true_label="-2+3 blue")
    with ResultStore.open(tmp_path / "n.csv", n_rows=1, shard_size=1, settings={}, fingerprint="f", resume=False) as s:
        s.write(0, [rec])
        s.finish()
    line = (tmp_path / "n.csv").read_text().splitlines()[1]
    assert line.startswith('"\'-2+3 blue",-0.5,') and ",-1," in line
    assert read_run(tmp_path / "n.csv") == [rec.to_dict()]


@pytest.mark.slow
def test_a_run_folder_in_the_earlier_layout_is_still_read_and_never_written(colour_data, capsys):
    """Runs written before the table existed were a folder named like the table: report reads them."""
    d = colour_data
    assert _eval(d, d / "new.jsonl") == 1
    import shutil

    shutil.copytree(d / "new.jsonl.d", d / "old.jsonl")  # the earlier layout: the folder is the run
    assert read_run(d / "old.jsonl") == read_run(d / "new.jsonl")
    capsys.readouterr()
    assert main(["report", str(d / "old.jsonl"), str(d / "new.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| old.jsonl | adaptive |" in out and "| new.jsonl | adaptive |" in out
    assert _eval(d, d / "old.jsonl", "--resume") == 2
    assert "is a folder (a run in the layout before result tables" in capsys.readouterr().err
