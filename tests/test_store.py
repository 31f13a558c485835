"""The result store (engine.run.store) and the run pipeline around it, with no Ray and no shared data.

- finished shards are kept and read back, unfinished or damaged ones redone;
- JSON lines and Parquet shards hold the same records;
- an --out that is an input is refused; a second writer is refused while the first holds the lock;
- a resume with other settings is refused, naming what differs;
- the pipeline yields records in input order whatever order the executor finishes shards in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli.app import main
from engine.core.results import Result
from engine.run.datasets import Item
from engine.run.pipeline import Job, LocalExecutor, OutputSpec, open_store, run, shards_of
from engine.run.store import ResultStore, StoreError

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder
from .support.runs import store_at

REPO = Path(__file__).resolve().parents[1]


def _records(n, err_at=()):
    rs = [Result.failed("bad", image=f"i{i}") if i in err_at else
          Result("A", 0.5, [("A", 0.5), ("B", 0.5)], [], 1, "budget", image=f"i{i}") for i in range(n)]
    for r in rs:
        r.true_label = "A"
    return rs


def test_store_resumes_only_finished_shards(tmp_path):
    out = tmp_path / "s.jsonl"
    with store_at(out) as store:
        assert store.n_shards == 3 and store.pending() == [0, 1, 2]
        store.write(0, _records(4, err_at={2}))
        store.write(2, _records(2))
    out = tmp_path / "s.jsonl.d"  # the run folder
    (out / ".shard-00001.jsonl.abc.tmp").write_text("torn")  # a killed writer's temp file: never read
    (out / "shard-00001.jsonl").write_text('{"image": "i4"}\n')  # a data file with no marker: not done
    with pytest.raises(StoreError, match="pass --resume"):
        store_at(tmp_path / "s.jsonl")
    with pytest.raises(StoreError, match=r"other settings \(m: 1 -> 2\)"):
        store_at(tmp_path / "s.jsonl", settings={"m": 2}, resume=True)
    with pytest.raises(StoreError, match=r"shard_size: 4 -> 5"):
        store_at(tmp_path / "s.jsonl", size=5, resume=True)
    with pytest.raises(StoreError, match="the input rows"):
        store_at(tmp_path / "s.jsonl", resume=True, fp="another input")
    with store_at(tmp_path / "s.jsonl", resume=True) as again:
        assert again.pending() == [1] and again.errors() == 1
        (out / "shard-00002.jsonl").write_text("")  # a shard file that no longer matches its marker
        assert again.pending() == [1, 2]
        with pytest.raises(ValueError, match="2 result rows for 4 input rows"):
            again.write(1, _records(2))
        again.write(1, _records(4))
        again.write(2, _records(2))
        recs = again.read_all()
    assert len(recs) == 10 and recs[0].top == [("A", 0.5), ("B", 0.5)] and recs[0].true_label == "A"


def test_parquet_and_jsonl_shards_hold_the_same_records(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    recs = _records(3, err_at={1})
    with store_at(tmp_path / "p.parquet", n=3, size=3) as a, store_at(tmp_path / "j.jsonl", n=3, size=3) as b:
        a.write(0, recs)
        b.write(0, recs)
        assert a.read(0) == b.read(0) == recs
    assert pq.read_table(tmp_path / "p.parquet.d").num_rows == 3  # _manifest.json / _shard-*.done are skipped


def test_out_that_is_an_input_is_refused_and_the_input_kept(tmp_path, capsys):
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    victim = tmp_path / "victim.jsonl"  # a data file whose name looks like an output
    victim.write_text("precious\n")
    with pytest.raises(StoreError, match="is an input of this run"):
        ResultStore.open(victim, n_rows=1, shard_size=1, settings={}, fingerprint="f", resume=False,
                         inputs=[str(victim)])
    assert victim.read_text() == "precious\n"
    (tmp_path / "d.csv").write_text("path,label\na.png,cherry\n")
    assert main(["eval", "--data", str(tmp_path / "d.csv"), "--system", str(tmp_path / "sys.json"),
                 "--out", str(tmp_path / "d.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # .csv is a result format since issue 18, so the data file is refused as a file, not by its suffix
    assert len(err) == 1 and f"--out {str(tmp_path / 'd.csv')!r} exists and is not a twentyq result table" in err[0]
    assert (tmp_path / "d.csv").read_text() == "path,label\na.png,cherry\n"
    (tmp_path / "d.txt").write_text("path,label\na.png,cherry\n")
    assert main(["eval", "--data", str(tmp_path / "d.txt"), "--system", str(tmp_path / "sys.json"),
                 "--out", str(tmp_path / "d.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ends in .jsonl or .parquet or .csv" in err[0]
    assert (tmp_path / "d.txt").read_text() == "path,label\na.png,cherry\n"


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "r.jsonl"
    holder = textwrap.dedent(f"""
        import sys, time
        from engine.run.store import ResultStore
        s = ResultStore.open({str(out)!r}, n_rows=2, shard_size=1, settings={{}}, fingerprint="f", resume=False)
        print("LOCKED", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "LOCKED"
        with pytest.raises(StoreError, match="being written by another twentyq run"):
            ResultStore.open(out, n_rows=2, shard_size=1, settings={}, fingerprint="f", resume=True)
    finally:
        proc.kill()
        proc.wait()
    with ResultStore.open(out, n_rows=2, shard_size=1, settings={}, fingerprint="f", resume=True) as s:
        assert s.pending() == [0, 1]  # the lock went with the process


def test_resume_with_other_settings_is_refused_naming_them(colour_run, capsys):
    d = colour_run
    base = ["eval", "--data", str(d / "d.csv"), "--system", str(d / "sys.json"), "--out", str(d / "r.jsonl"),
            "--quiet", "--shard-size", "5"]
    assert main(base + ["--tau", "0.9"]) == 0
    summary = json.loads((d / "r.jsonl.d" / "_summary.json").read_text())
    capsys.readouterr()
    assert main(base + ["--mode", "baseline", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config.mode: 'adaptive' -> 'baseline'" in err and "choose a new --out" in err
    assert json.loads((d / "r.jsonl.d" / "_summary.json").read_text()) == summary  # nothing touched
    assert main(base + ["--tau", "0.9", "--resume"]) == 0  # the same settings resume (all done)
    assert "3 of 3 shard(s) already done" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--tau"])


def test_classify_out_and_resume_without_ray(colour_run, capsys):
    d = colour_run
    imgs = [str(d / f"{i}.png") for i in range(12)]
    args = ["classify", *imgs, "--system", str(d / "sys.json"), "--out", str(d / "c.jsonl"), "--shard-size", "5",
            "--quiet"]
    assert main(args) == 0
    recs = [json.loads(line) for line in (d / "c.jsonl").read_text().splitlines()]  # the table
    assert [r["image"] for r in recs] == imgs and [r["label"] for r in recs] == ["cherry", "leaf", "sea"] * 4
    assert main(args) == 2 and "pass --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0


def _same(a, b):
    """Same records, floats to 1e-9 (EIG and confidences move in the last bits with the batch's size)."""
    key = lambda r: (r.image, r.label, r.q_spent, r.stop, r.error, r.true_label,  # noqa: E731
                     [s.group for s in r.steps])
    assert [key(r) for r in a] == [key(r) for r in b]
    for x, y in zip(a, b):
        assert x.confidence == pytest.approx(y.confidence, abs=1e-9)


class ShuffledExecutor(LocalExecutor):
    """Finishes shards in reverse order (as Ray may)."""

    def map_shards(self, job, shards, progress=None):
        yield from reversed(list(super().map_shards(job, shards, progress)))


def test_pipeline_yields_input_order_and_writes_every_shard_once(tmp_path):
    from engine.run.classifier import Classifier
    from engine.run.config import RunConfig

    clf = Classifier("fake", COLOUR_SYSTEM, encoder=FakeEncoder())
    for i, col in enumerate(["red", "green", "blue"] * 3):
        solid(col).save(tmp_path / f"{i}.png")
    items = [Item(str(tmp_path / f"{i}.png"), lab) for i, lab in enumerate(["cherry", "leaf", "sea"] * 3)]
    job = Job(clf.spec, clf.system, RunConfig())
    direct = clf.classify([it.source for it in items], job.config, names=[it.path for it in items])
    for r, it in zip(direct, items):
        r.true_label = it.label
    _same(list(run(items, job, executor=ShuffledExecutor(clf), shard_size=2)), direct)
    with open_store(OutputSpec(str(tmp_path / "o.jsonl"), shard_size=4), job.settings(), items) as store:
        got = list(run(items, job, executor=ShuffledExecutor(clf), store=store))
        _same(got, direct)
        assert store.read_all() == got and not store.pending()
    assert [len(s.items) for s in shards_of(items, 4)] == [4, 4, 1]
    assert [s.index for s in shards_of(items, 4, only=[2, 0])] == [2, 0]


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_run_folder_whose_files_are_not_files_is_refused_not_read(tmp_path, kind):
    """_manifest.json as a symlink to /dev/zero read until memory ran out; as a FIFO it hung (hostile pass)."""
    import os

    from engine.run.store import StoreError, read_run, shard_progress

    root = tmp_path / "r.jsonl.d"
    root.mkdir()
    if kind == "fifo":
        os.mkfifo(root / "_manifest.json")
    else:
        (root / "_manifest.json").symlink_to("/dev/zero")
    with pytest.raises(StoreError, match="holds no readable twentyq run"):
        read_run(tmp_path / "r.jsonl")
    assert shard_progress(tmp_path / "r.jsonl")[1] is None


def test_shards_markers_and_summaries_that_are_fifos_are_refused_not_waited_on(tmp_path):
    """Each read of a run folder goes through the guarded opener: a FIFO would block an open() forever."""
    import os
    import signal

    from engine.common.files import UnreadableInput
    from engine.run.evaluation import earlier_stats
    from engine.run.store import FORMATS, ResultStore

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("a read waited on a FIFO"))
    signal.alarm(20)
    try:
        for fmt in FORMATS.values():
            with pytest.raises(UnreadableInput):
                fmt.read(fifo)
        assert earlier_stats(fifo) == {}
        root = tmp_path / "r.jsonl.d"
        root.mkdir()
        store = ResultStore(root, FORMATS[".jsonl"], 4, 2)
        os.mkfifo(store.marker_path(0))
        assert store.done() == set()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("manifest", [{"suffix": ".jsonl", "rows": 1e999, "shard_size": 2},
                                      {"suffix": ".jsonl", "rows": 4, "shard_size": 0}])
def test_a_manifest_with_impossible_numbers_is_no_readable_run(tmp_path, manifest):
    """rows 1e999 (OverflowError) and shard_size 0 (ZeroDivisionError) escaped as internal errors, also from the
    Ctrl-C path's shard count."""
    from engine.run.store import StoreError, read_run, shard_progress

    root = tmp_path / "r.jsonl.d"
    root.mkdir()
    (root / "_manifest.json").write_text(json.dumps(manifest).replace("Infinity", "1e999"))
    with pytest.raises(StoreError, match="holds no readable twentyq run"):
        read_run(tmp_path / "r.jsonl")
    assert shard_progress(tmp_path / "r.jsonl")[1] is None
