"""Records keep their shape (issue 28 item 2): a Result is built once and written and printed as it is.

- ``Result.to_dict`` builds the record in one pass, in the order every file and the CLI have always
  had, ``true_label`` last; ``from_dict`` reads either form of ``top`` back to the same Result;
- an Arrow result table (a Ray actor's) round-trips to the same Results, and a Parquet store writes an
  executor's table as it is (its ``_`` columns dropped) while the pipeline yields Results;
- the Classifier keeps three entry points that classify or embed; a chunk never spans a shard.
"""

from __future__ import annotations

import json

import pytest

from engine.core.results import Result, Step
from engine.run.classifier import Classifier
from engine.run.config import RunConfig
from engine.run.datasets import Item
from engine.run.pipeline import Job, LocalExecutor, OutputSpec, open_store, run

from .support.data import COLOUR_SYSTEM, solid
from .support.encoders import FakeEncoder

ORDER = ["label", "confidence", "top", "q_spent", "stop", "image", "error", "asked"]


def _results(traced: bool = False) -> list[Result]:
    step = Step("color", 0.25, "red", 0.75, 0.5, top=[("cherry", 0.5), ("leaf", 0.3)] if traced else None,
                q_spent=3 if traced else None)
    return [Result("cherry", 0.5, [("cherry", 0.5), ("leaf", 0.3)], [step], 3, "confident", image="a.png",
                   true_label="leaf"),
            Result.failed("cannot load image 'b.png': missing", image="b.png")]


@pytest.mark.parametrize("traced", [False, True])
def test_a_record_has_its_fixed_shape_and_reads_back_as_the_same_result(traced):
    good, bad = _results(traced)
    d = good.to_dict()
    assert list(d) == ORDER + ["true_label"] and d["true_label"] == "leaf"
    assert list(bad.to_dict()) == ORDER  # no true label: no key (classify's records)
    assert d["top"] == [["cherry", 0.5], ["leaf", 0.3]]
    files = good.to_dict(top_records=True)
    assert files["top"] == [{"label": "cherry", "prob": 0.5}, {"label": "leaf", "prob": 0.3}]
    assert list(files["asked"][0]) == ["group", "eig", "answer", "answer_prob", "confidence_after"] + \
        (["top", "q_spent"] if traced else [])
    if traced:
        assert files["asked"][0]["top"] == [{"label": "cherry", "prob": 0.5}, {"label": "leaf", "prob": 0.3}]
        assert d["asked"][0]["top"] == [["cherry", 0.5], ["leaf", 0.3]]
    for r in (good, bad):
        assert Result.from_dict(r.to_dict()) == r
        assert Result.from_dict(json.loads(json.dumps(r.to_dict(top_records=True)))) == r


def test_an_arrow_result_table_round_trips():
    pa = pytest.importorskip("pyarrow")
    from engine.run.store import results_from_arrow, results_to_arrow

    rs = _results()
    rs[1].true_label = "sea"
    table = results_to_arrow(rs, {"_busy_s": pa.array([1.0, 0.0])})
    assert table.column_names[-2:] == ["true_label", "_busy_s"]
    assert results_from_arrow(table) == rs


class ArrowExecutor(LocalExecutor):
    """Yields each shard as an Arrow table with a bookkeeping column, as the Ray executor does."""

    def map_shards(self, job, shards, progress=None):
        import pyarrow as pa

        from engine.run.store import results_to_arrow

        for k, results in super().map_shards(job, shards, progress):
            yield k, results_to_arrow(results, {"_text_encodes": pa.array([7] * len(results), pa.int64())})


@pytest.fixture
def colour_items(tmp_path):
    for i, col in enumerate(["red", "green", "blue"] * 2):
        solid(col).save(tmp_path / f"{i}.png")
    return [Item(str(tmp_path / f"{i}.png"), lab) for i, lab in enumerate(["cherry", "leaf", "sea"] * 2)]


def test_an_executors_arrow_table_is_written_as_it_is_and_yielded_as_results(tmp_path, colour_items):
    pq = pytest.importorskip("pyarrow.parquet")
    clf = Classifier("fake", COLOUR_SYSTEM, encoder=FakeEncoder())
    job = Job(clf.spec, clf.system, RunConfig())
    direct = clf.classify([it.source for it in colour_items], job.config, names=[it.path for it in colour_items])
    for r, it in zip(direct, colour_items):
        r.true_label = it.label
    items = colour_items
    with open_store(OutputSpec(str(tmp_path / "o.parquet"), shard_size=4), job.settings(), items) as store:
        got = list(run(items, job, executor=ArrowExecutor(clf), store=store))
        assert all(isinstance(r, Result) for r in got)
        assert [(r.image, r.label, r.q_spent, r.true_label) for r in got] == \
            [(r.image, r.label, r.q_spent, r.true_label) for r in direct]
        assert store.read_all() == got
    shard = pq.read_table(tmp_path / "o.parquet.d" / "shard-00000.parquet")
    assert "_text_encodes" not in shard.column_names and shard.num_rows == 4
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 6


def test_the_classifier_has_three_entry_points_that_classify_or_embed():
    public = {n for n in dir(Classifier) if not n.startswith("_") and callable(getattr(Classifier, n))}
    assert {n for n in public if "classify" in n or "embed" in n} == {"classify", "iter_classify",
                                                                        "classify_embedded"}


def test_a_chunk_never_spans_a_cut(colour_items):
    clf = Classifier("fake", COLOUR_SYSTEM, encoder=FakeEncoder())
    chunks = [len(c) for c, _, _ in clf._chunks(range(10), None, 4, [3, 6])]
    assert chunks == [3, 3, 4]  # cut at 3 and 6, then chunks of 4
    assert [len(c) for c, _, _ in clf._chunks(range(10), None, 4, [])] == [4, 4, 2]
    sizes: list[int] = []
    clf.images.embed = (lambda embed: lambda ims, *a, **k: (sizes.append(len(ims)), embed(ims, *a, **k))[1])(
        clf.images.embed)
    out = list(clf.iter_classify([it.source for it in colour_items], RunConfig(), chunk_size=4, cut_at=[2]))
    assert sizes == [2, 4] and [r.label for r in out] == ["cherry", "leaf", "sea"] * 2
