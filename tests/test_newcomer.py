"""What a newcomer met on the tour (issue 24, item 5): --limit with --allow-missing, an empty dev split,
a resume with nothing left, and the progress bar of a calibrated eval."""

from __future__ import annotations

import csv
import json

import pytest

from engine.cli.app import main
from engine.run.datasets import DataSpec, DatasetError
from engine.run.store import SUMMARY

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder

CLASSES = ("cherry", "leaf", "sea")


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "label"], *rows])
    return path


@pytest.fixture
def mixed(tmp_path):
    """A CSV of 60 rows, 6 of them (two per class) of the colour system's classes and 54 of other labels."""
    colour = {"cherry": "red", "leaf": "green", "sea": "blue"}
    rows = []
    for i in range(60):
        lab = CLASSES[i // 20] if i % 10 == 0 else f"other{i}"
        p = tmp_path / f"{i}.png"
        solid(colour.get(lab, "red")).save(p)
        rows.append([str(p), lab])
    return _csv(tmp_path / "mixed.csv", rows)


def test_limit_samples_after_allow_missing_drops_other_classes(mixed):
    ds = DataSpec(str(mixed), limit=4, allow_missing=True).load(CLASSES)
    assert len(ds) == 4 and set(ds.labels) <= set(CLASSES)
    assert len(DataSpec(str(mixed), limit=50, allow_missing=True).load(CLASSES)) == 6  # all there are
    assert DataSpec(str(mixed), limit=4, allow_missing=True).load(CLASSES).items == ds.items  # seeded: the same rows
    with pytest.raises(DatasetError, match="not classes of the system"):
        DataSpec(str(mixed), limit=4).load(CLASSES)  # without --allow-missing: refused, as before


def test_a_filter_that_keeps_no_row_says_so_not_unreadable_paths(tmp_path):
    data = _csv(tmp_path / "d.csv", [[str(tmp_path / "x.png"), "Pikachu"]])
    with pytest.raises(DatasetError, match="none of its 1 row.*class of the system.*--allow-missing"):
        DataSpec(str(data), allow_missing=True).load(CLASSES)


def test_hf_limit_samples_after_allow_missing(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed: "
                                                      "pip install 'twentyq[datasets]'")
    names = ["cherry", "leaf", "sea", "plum"]
    labels = [3] * 30 + [0, 1, 2] * 2
    for i in range(len(labels)):
        solid("red").save(tmp_path / f"{i}.png")
    ds = datasets.Dataset.from_dict({"img": [str(tmp_path / f"{i}.png") for i in range(len(labels))],
                                     "label": labels}) \
        .cast_column("img", datasets.Image()).cast_column("label", datasets.ClassLabel(names=names))
    ds.save_to_disk(str(tmp_path / "hfds"))
    got = DataSpec(str(tmp_path / "hfds"), limit=4, allow_missing=True).load(CLASSES)
    assert len(got) == 4 and set(got.labels) <= set(CLASSES)
    from pathlib import Path

    assert all(int(Path(it.path).stem) >= 30 for it in got.items)  # the kept rows are the classes' own files


def test_calibrate_on_too_few_images_per_class_names_the_cause(tmp_path, monkeypatch, capsys):
    import engine.encoders

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    rows = []
    for lab, col in zip(CLASSES, ("red", "green", "blue")):
        solid(col).save(tmp_path / f"{lab}.png")
        rows.append([str(tmp_path / f"{lab}.png"), lab])
    data = _csv(tmp_path / "one_each.csv", rows)
    rc = main(["calibrate", "--data", str(data), "--system", str(tmp_path / "sys.json"), "--out",
               str(tmp_path / "cal.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "dev split" in err and "is empty" in err and "more images per class" in err
    assert "could be read" not in err and "check the paths" not in err


@pytest.fixture
def colours(tmp_path, monkeypatch):
    import engine.encoders

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    rows = []
    for i in range(9):
        lab, col = [("cherry", "red"), ("leaf", "green"), ("sea", "blue")][i % 3]
        im = solid(col)
        im.putpixel((0, 0), (i, i, i))  # distinct files: the calibration's dev images are told apart by content
        im.save(tmp_path / f"{i}.png")
        rows.append([str(tmp_path / f"{i}.png"), lab])
    return tmp_path, _csv(tmp_path / "d.csv", rows)


def _summary_of(out):
    """The summary file of the run ``out`` (engine.run.store.summary_path where the store has it)."""
    from engine.run import store

    return store.summary_path(out) if hasattr(store, "summary_path") else out / SUMMARY


def test_a_resume_with_nothing_left_keeps_the_summary_counts(colours, capsys):
    d, data = colours
    args = ["eval", "--data", str(data), "--system", str(d / "sys.json"), "--out", str(d / "run.jsonl"), "--quiet"]
    assert main(args) == 0
    first = json.loads(_summary_of(d / "run.jsonl").read_text())
    assert first["text_encodes"] > 0
    assert main(args + ["--resume"]) == 0
    again = json.loads(_summary_of(d / "run.jsonl").read_text())
    assert again["settings"]["shards_resumed"] >= 1
    assert again["text_encodes"] == first["text_encodes"] and again["text_hits"] == first["text_hits"]
    assert again["accuracy"] == first["accuracy"] and again["n"] == first["n"]


def test_progress_counts_only_what_this_run_classifies(colours):
    """The bar's total (``planned``) leaves out the calibration's dev images and resumed rows, and the
    progress updates add up to it."""
    from engine.run import calibration_file
    from engine.run.classifier import Classifier
    from engine.run.config import RunConfig
    from engine.run.evaluation import evaluate
    from engine.run.pipeline import Job, LocalExecutor, OutputSpec
    from systems import load_system

    d, data = colours
    system = load_system(str(d / "sys.json"))
    clf = Classifier("fake", system, encoder=FakeEncoder())
    spec = DataSpec(str(data))
    cal = calibration_file.calibrate(clf, spec, dev_fraction=0.5, seed=0)
    clf = Classifier("fake", system, encoder=FakeEncoder(), calibration=cal)
    job = Job(clf.spec, system, RunConfig(), cal)
    planned, done = [], []
    rep = evaluate(job, spec, executor=LocalExecutor(clf), progress=done.append, planned=planned.append,
                   output=OutputSpec(str(d / "cal_run.jsonl"), shard_size=2))
    n_dev = cal.dev["n_images"]
    assert 0 < n_dev < 9 and rep.n == 9 - n_dev
    assert planned == [rep.n] and sum(done) == rep.n
    planned.clear(), done.clear()
    again = evaluate(job, spec, executor=LocalExecutor(clf), progress=done.append, planned=planned.append,
                     output=OutputSpec(str(d / "cal_run.jsonl"), shard_size=2, resume=True))
    assert planned == [0] and sum(done) == 0 and again.n == rep.n
