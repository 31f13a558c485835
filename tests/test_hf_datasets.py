"""Hugging Face image datasets as --data (issue 18, part 5): save_to_disk folders and hf:NAME."""

from __future__ import annotations

import json
import sys

import pytest

from engine.cli.app import main
from engine.run.datasets import DataSpec, DatasetError, load_dataset
from engine.run.store import read_run

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder

datasets = pytest.importorskip("datasets", reason="the datasets library is not installed: pip install "
                                                  "'twentyq[datasets]' to run the Hugging Face dataset tests")

ROWS = [("red", "cherry"), ("green", "leaf"), ("blue", "sea")] * 3


@pytest.fixture
def both(tmp_path, monkeypatch):
    """The same nine images as a CSV and as a save_to_disk dataset (ClassLabel labels, a 'source' column)."""
    import engine.encoders

    monkeypatch.setattr(engine.encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    rows = ["path,label,source"]
    for i, (col, lab) in enumerate(ROWS):
        solid(col).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab},{'web' if i % 2 else 'sprite'}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    names = ["cherry", "leaf", "sea"]
    ds = datasets.Dataset.from_dict({
        "img": [str(tmp_path / f"{i}.png") for i in range(len(ROWS))],
        "fine_label": [names.index(lab) for _, lab in ROWS],
        "source": ["web" if i % 2 else "sprite" for i in range(len(ROWS))],
    }).cast_column("img", datasets.Image()).cast_column("fine_label", datasets.ClassLabel(names=names))
    ds.save_to_disk(str(tmp_path / "hfds"))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet"))
    return tmp_path


def _without_image(recs):
    return [{k: v for k, v in r.items() if k != "image"} for r in recs]


@pytest.mark.slow
def test_a_saved_dataset_evaluates_like_the_same_images_as_a_csv(both, capsys):
    d = both
    base = ["eval", "--system", str(d / "sys.json"), "--quiet", "--by", "source", "--limit", "7"]
    assert main([*base, "--data", str(d / "d.csv"), "--out", str(d / "csv.jsonl")]) == 0
    assert main([*base, "--data", str(d / "hfds"), "--out", str(d / "hf.jsonl")]) == 0
    a, b = read_run(d / "csv.jsonl"), read_run(d / "hf.jsonl")
    assert len(a) == 7 and _without_image(a) == _without_image(b)  # the same seeded sample, the same records
    assert [r["image"].rsplit("/", 1)[-1] for r in a] == [r["image"] for r in b]  # named by the stored file name
    sa = json.loads((d / "csv.jsonl.d" / "_summary.json").read_text())
    sb = json.loads((d / "hf.jsonl.d" / "_summary.json").read_text())
    assert sa["accuracy"] == sb["accuracy"] and sa["by"] == sb["by"]


def test_hf_name_config_split_from_a_local_repo(both):
    d = both
    ds = load_dataset(f"hf:{d / 'repo'}", split="test")
    assert len(ds) == len(ROWS) and [it.label for it in ds.items] == [lab for _, lab in ROWS]
    assert ds.items[0].data[:8] == b"\x89PNG\r\n\x1a\n" and ds.items[0].extra == {"source": "sprite"}
    assert len(load_dataset(f"hf:{d / 'repo'}::test")) == len(ROWS)  # hf:NAME:CONFIG:SPLIT, no config


@pytest.mark.parametrize("kw, expect", [
    ({"image_column": "picture"}, "--image-column 'picture' is not a column; its columns are ['img', 'fine_label'"),
    ({"label_column": "coarse"}, "--label-column 'coarse' is not a column"),
    ({"image_column": "source"}, "is Value, not an Image"),
    ({"split": "train"}, "holds one split and no 'split' column; drop --split 'train'"),
])
def test_errors_name_the_missing_column_or_split(both, kw, expect):
    with pytest.raises(DatasetError) as e:
        DataSpec(str(both / "hfds"), **kw).load(("cherry", "leaf", "sea"))
    assert expect in str(e.value)


def test_unknown_split_of_a_repo_lists_the_splits(both):
    with pytest.raises(DatasetError, match=r"has no split 'train'; its splits are \['test'\]"):
        load_dataset(f"hf:{both / 'repo'}:default:train")


def test_columns_flags_need_a_hf_dataset(both, capsys):
    assert main(["eval", "--data", str(both / "d.csv"), "--image-column", "img", "--system",
                 str(both / "sys.json")]) == 2
    assert "--image-column: only for a Hugging Face dataset" in capsys.readouterr().err


def test_missing_datasets_library_names_the_extra(both, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match=r"pip install 'twentyq\[datasets\]'"):
        load_dataset(str(both / "hfds"))
