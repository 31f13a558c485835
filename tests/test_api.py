"""engine.run.classifier (Classifier) and engine.run.datasets with a fake encoder: fast, no model weights."""

from __future__ import annotations

import json

import pytest

from engine.run.classifier import Classifier, RunConfig
from engine.run.evaluation import evaluate_classifier
from engine.run.datasets import check_labels, load_dataset
from engine.core.metrics import bootstrap_ci, mcnemar_p

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder

TRUE = {"red": "cherry", "green": "leaf", "blue": "sea"}


@pytest.fixture
def clf():
    return Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder())


@pytest.fixture
def dataset(tmp_path):
    rows = ["path,label,split,source"]
    for i, (col, lab) in enumerate(TRUE.items()):
        for j in range(3):
            d = tmp_path / "img" / lab
            d.mkdir(parents=True, exist_ok=True)
            solid(col).save(d / f"{j}.png")
            rows.append(f"img/{lab}/{j}.png,{lab},{'test' if j else 'dev'},{'web' if j % 2 else 'sprite'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


def test_classify_pil_images_and_paths(clf, tmp_path):
    solid("blue").save(tmp_path / "b.png")
    res = clf.classify([solid("red"), str(tmp_path / "b.png"), solid("green")], policy="eig", tau=0.9)
    assert [r.label for r in res] == ["cherry", "sea", "leaf"]
    assert res[1].image.endswith("b.png")
    assert all(r.error is None and r.q_spent > 0 for r in res)


def test_bad_image_in_a_batch_is_reported_and_the_rest_go_on(clf, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    res = clf.classify([solid("red"), str(bad), str(tmp_path / "missing.png"), solid("blue")])
    assert res[0].label == "cherry" and res[3].label == "sea"
    assert res[1].error and res[1].label is None and "bad.jpg" in res[1].error
    assert res[2].error and "missing.png" in res[2].error


def test_lazy_text_embeddings_only_for_asked_groups(clf):
    clf.classify([solid("red")] * 4, policy="eig", budget=3)  # only the colour group fits
    assert clf.text_cache.text_encodes == 3
    assert all("color" in t for t in clf.encoder.texts_encoded)
    clf.classify([solid("green")], policy="eig", budget=3)
    assert clf.text_cache.text_encodes == 3 and clf.text_cache.hits >= 1


def test_modes_share_one_loop(clf):
    full = clf.classify([solid("red")], mode="full")[0]
    base = clf.classify([solid("red")], mode="baseline")[0]
    assert full.q_spent == 7 and [s.group for s in full.steps] == ["color", "texture", "glow"]
    assert base.q_spent == 3 and base.steps[0].group == "class_name"


def test_run_config_validates():
    with pytest.raises(ValueError, match="mode == 'fast'"):
        RunConfig(mode="fast")
    with pytest.raises(ValueError, match="tau == 2"):
        RunConfig(tau=2)


def test_evaluate_report_keys_and_breakdown(clf, dataset, tmp_path):
    rep = evaluate_classifier(clf, dataset / "labels.csv", mode="adaptive", tau=0.9, by="source",
                              output=str(tmp_path / "run.jsonl"))
    d = json.loads(json.dumps(rep.to_dict()))
    for key in ("n", "accuracy", "ci95", "acc5", "mean_per_class_recall", "mean_q", "median_q", "text_encodes",
                "model", "system", "mode", "policy", "tau", "delta", "budget", "shortlist", "per_class", "confusion",
                "skipped", "stops", "settings"):
        assert key in d
    seen = [json.loads(line) for line in (tmp_path / "run.jsonl.d" / "shard-00000.jsonl").read_text().splitlines()]
    assert d["n"] == 9 and d["accuracy"] == 1.0 and len(seen) == 9
    assert all(r["label"] == r["true_label"] for r in seen)
    assert json.loads((tmp_path / "run.jsonl.d" / "_summary.json").read_text())["n"] == 9
    # what reproduces the run: the model, the system's hash, every setting, the data and its hash
    s = d["settings"]
    assert s["encoder"]["model"] == clf.spec.model and len(s["system"]["sha256"]) == 64
    assert s["config"]["tau"] == 0.9 and s["data"]["by"] == "source" and len(s["data"]["sha256"]) == 64
    assert set(d["by"]["source"]) == {"web", "sprite"}
    assert d["per_class"]["leaf"] == {"n": 3, "accuracy": 1.0}


def test_evaluate_split_and_limit(clf, dataset):
    assert evaluate_classifier(clf, dataset / "labels.csv", split="test").n == 6
    assert evaluate_classifier(clf, dataset / "labels.csv", limit=4, seed=1).n == 4


def test_image_folder_dataset(dataset):
    ds = load_dataset(dataset / "img")
    assert len(ds) == 9 and set(ds.labels) == set(TRUE.values())


def test_missing_labels_error_lists_them(clf, dataset):
    csv = dataset / "labels.csv"
    csv.write_text(csv.read_text() + "img/cherry/0.png,plum\nimg/cherry/0.png,fig\n")
    with pytest.raises(ValueError, match=r"2 label\(s\) .*: fig, plum; .*--allow-missing"):
        evaluate_classifier(clf, csv)
    assert evaluate_classifier(clf, csv, allow_missing=True).n == 9
    ds, missing = check_labels(load_dataset(csv), ("cherry",), allow_missing=True)
    assert len(ds) == 3 and "leaf" in missing


def test_dataset_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass a CSV"):
        load_dataset(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("file,class\na.png,b\n")
    with pytest.raises(ValueError, match="missing column"):
        load_dataset(tmp_path / "x.csv")


def test_bootstrap_and_mcnemar():
    import numpy as np

    lo, hi = bootstrap_ci(np.array([1, 0] * 50))
    assert lo < 0.5 < hi and hi - lo < 0.25
    a = np.array([1] * 30 + [0] * 10, bool)
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p(a, ~a) == pytest.approx(0.0022214, rel=1e-4)  # 30 vs 10 discordant, exact binomial


def test_classifier_labels_keyword_points_to_system_or_zero_shot():
    with pytest.raises(TypeError, match=r"system=\[\.\.\.\].*zero_shot"):
        Classifier("offline", labels=["a", "b"])


def test_transformers_bars_only_while_stderr_is_a_terminal(monkeypatch):
    """A script's stderr got "Loading weights: 100%|███" from transformers; the CLI's rule now holds for the API."""
    import io
    import sys

    from transformers.utils import logging as hf_logging

    from engine.encoders import registry

    seen = []
    monkeypatch.setitem(registry.BACKENDS, "offline", lambda *a, **k: seen.append(hf_logging.is_progress_bar_enabled()))
    hf_logging.enable_progress_bar()

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream in (io.StringIO(), Tty()):
        monkeypatch.setattr(sys, "stderr", stream)
        registry.load_encoder("offline")
        assert hf_logging.is_progress_bar_enabled()  # put back
    assert seen == [False, True]
