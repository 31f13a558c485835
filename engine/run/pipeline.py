"""The run pipeline: items in, Results out, by one code path for every executor and store.

    run(items, job, executor=..., store=...) -> Iterator[Result]

- A :class:`Job` is what to do: the encoder to load (:class:`EncoderSpec`), the system, and
  how to classify (:class:`RunConfig`). It is picklable and sent whole to remote workers.
- Items are cut into :class:`Shard` s of consecutive input rows. An *executor* classifies
  shards and yields each shard's Results as it finishes: :class:`LocalExecutor` in this
  process, ``engine.run.ray_executor.RayExecutor`` on Ray Data actors. Both call
  :meth:`Classifier.iter_classify` (decode, embed, ask, stop) on their share, so their
  Results are the same (the Ray actors send them back as Arrow tables). A prefetching executor
  or a server's request batcher plugs in here by implementing :class:`Executor`.
- A *store* (:class:`engine.run.store.ResultStore`) keeps finished shards on disk; with
  one, finished shards are read back instead of redone (``--resume``), and fresh ones are
  written as they finish, so a killed run loses at most the shards in flight. Once every
  shard is done, the store's table (``--out``) is written from them.

Results come out in input order whatever order the executor finishes shards in, each built once
(by the loop, or from a Ray actor's Arrow table) and never converted back and forth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, islice
from typing import Any, Protocol

from engine.core.results import Result
from engine.run.classifier import Classifier
from engine.run.config import EncoderSpec, RunConfig
from engine.run.datasets import Item
from engine.run.prompts import spec_for_run
from engine.run.provenance import package_version, system_hash
from engine.run.store import ResultStore, fingerprint, results_from_arrow
from systems.format import AttributeSystem

Progress = Callable[[int], None]

#: images per encoder call in one process (and per Ray actor call)
DEFAULT_CHUNK = 64
#: images per result shard, the unit --resume skips
DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class Job:
    """What a run does: the encoder, the system, the run configuration and the calibration (or None)."""

    encoder: EncoderSpec
    system: AttributeSystem
    config: RunConfig
    calibration: Any = None  # an engine.run.calibration_file.Calibration, travelling with the job to Ray actors

    def settings(self) -> dict[str, Any]:
        """What the results depend on (for fingerprints and summaries): model identity, the
        system's name and content hash, every run setting, the calibration's content hash (when
        there is one; not its path), the package version."""
        d = {"encoder": self.encoder.identity(),
             "system": {"name": self.system.name, "sha256": system_hash(self.system)},
             "config": self.config.to_dict(), "twentyq": package_version()}
        if self.calibration is not None:
            d["calibration"] = self.calibration.identity()
        return d

    def classifier(self, **encoder_settings) -> Classifier:
        """A Classifier for this job (the model loaded, the calibration checked against it).

        encoder_settings : EncoderSpec fields that change how fast, not what, overriding the job's:
        ``eager_prompts="lazy"`` where every prompt comes precomputed, ``decode_workers=0`` in a Ray actor.
        Prompts are lazy anyway for runs that do not ask the system's own prompts (:func:`spec_for_run`).
        """
        spec = replace(spec_for_run(self.encoder, self.config), **encoder_settings)
        return Classifier(spec, self.system, calibration=self.calibration)


@dataclass(frozen=True)
class OutputSpec:
    """Where a run's records go: the only carrier of output settings.

    path : the result table ``NAME.jsonl``, ``NAME.parquet`` or ``NAME.csv``; its shards go in the
        run folder ``NAME.jsonl.d`` beside it (see :mod:`engine.run.store`).
    resume : finish the run already in ``path`` (refused when its settings or rows differ).
    shard_size : images per shard, the unit ``resume`` skips (None: :data:`DEFAULT_SHARD_SIZE`).
    """

    path: str
    resume: bool = False
    shard_size: int | None = None


def open_store(output: OutputSpec, settings: dict[str, Any], items: Sequence[Item], inputs: Sequence[str] = (),
               announce: Callable[[str], None] | None = None) -> ResultStore:
    """The locked result folder for a run of ``items`` with ``settings`` (its fingerprint covers both).

    inputs : the files the run reads (the folder may be none of them). ``announce`` is told how
    much of a resumed run is already done.
    """
    store = ResultStore.open(output.path, n_rows=len(items), shard_size=output.shard_size or DEFAULT_SHARD_SIZE,
                             settings=settings, resume=output.resume, inputs=inputs,
                             fingerprint=fingerprint(settings, [it.path for it in items], [it.label for it in items]))
    if output.resume and announce:
        pending = store.pending()
        announce(f"--resume: {store.n_shards - len(pending)} of {store.n_shards} shard(s) already done in "
                 f"{output.path}, {len(pending)} to go")
    return store


@dataclass(frozen=True)
class Shard:
    """Consecutive input rows: shard ``index`` holds rows [index*S, index*S + len(items)) for shard size S."""

    index: int
    items: tuple[Item, ...]


def shards_of(items: Sequence[Item], shard_size: int, only: Sequence[int] | None = None) -> list[Shard]:
    """Cut items into shards of ``shard_size`` rows (all of them, or those numbered in ``only``)."""
    n = -(-len(items) // shard_size) if items else 0
    keep = range(n) if only is None else only
    return [Shard(k, tuple(items[k * shard_size:(k + 1) * shard_size])) for k in keep]


class Executor(Protocol):
    """Where the work runs. ``map_shards`` classifies every shard and yields ``(shard index, part)`` as
    each finishes (in any order); ``part`` is the shard's Results in input order (``true_label`` set from
    the items), or the same as an Arrow result table (:func:`engine.run.store.results_to_arrow`'s
    columns; others starting with ``_`` are ignored), which a Parquet store writes as it is.

    ``stats`` counts ``text_encodes`` and ``text_hits`` over the run (what was really embedded; the
    prompts an eager classifier embedded when it loaded count in the first run that uses it).
    """

    stats: dict[str, int]

    def map_shards(self, job: Job, shards: Sequence[Shard], progress: Progress | None = None
                   ) -> Iterator[tuple[int, Any]]:
        ...


class LocalExecutor:
    """Shards classified one after another in this process, ``chunk_size`` images per encoder call;
    the next chunk (across shard boundaries) decodes in the classifier's decode workers while this
    one is classified; a chunk never spans two shards (:meth:`Classifier.iter_classify`'s ``cut_at``).

    classifier : the Classifier to use (default: one loaded from the job, once, on first use).
    """

    def __init__(self, classifier: Classifier | None = None, chunk_size: int = DEFAULT_CHUNK):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size == {chunk_size!r}, must be a whole number >= 1")
        self.classifier, self.chunk_size = classifier, chunk_size
        self.stats = {"text_encodes": 0, "text_hits": 0}

    def map_shards(self, job: Job, shards: Sequence[Shard], progress: Progress | None = None
                   ) -> Iterator[tuple[int, list[Result]]]:
        if self.classifier is None:
            self.classifier = job.classifier()
        elif getattr(self.classifier, "calibration", None) is not job.calibration:
            raise ValueError("the executor's Classifier and the job have different calibrations; build the "
                             "Classifier with calibration=job.calibration")
        clf, cache = self.classifier, self.classifier.text_cache
        claim = getattr(clf, "claim_load_encodes", None)  # eager prompts, embedded when clf loaded
        self.stats["text_encodes"] += claim() if claim else 0
        items = [it for shard in shards for it in shard.items]
        ends = list(accumulate(len(shard.items) for shard in shards))
        stream = clf.iter_classify((it.source for it in items), job.config, chunk_size=self.chunk_size,
                                   names=(it.path for it in items), progress=progress, cut_at=ends)
        e0, h0 = cache.text_encodes, cache.hits
        for shard in shards:
            results = list(islice(stream, len(shard.items)))
            for r, it in zip(results, shard.items):
                r.true_label = it.label
            self.stats["text_encodes"] += cache.text_encodes - e0
            self.stats["text_hits"] += cache.hits - h0
            e0, h0 = cache.text_encodes, cache.hits
            yield shard.index, results


def run(items: Sequence[Item], job: Job, *, executor: Executor, store: ResultStore | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE, progress: Progress | None = None) -> Iterator[Result]:
    """Every item's Result (``true_label`` its item's label), in input order.

    With a ``store``, its shard size rules; shards it already holds are read back, the
    rest are classified by ``executor`` and written to it as they finish (an executor's Arrow table
    as it is), and once the last result has been taken the store's table is written
    (:meth:`ResultStore.finish`). ``progress`` is called with the number of images just classified
    (not those read back).
    """
    if store is not None:
        shard_size = store.shard_size
        if store.n_rows != len(items):
            raise ValueError(f"the store was opened for {store.n_rows} rows, the run has {len(items)}")
    todo = store.pending() if store is not None else None
    shards = shards_of(items, shard_size, todo)
    n_shards = -(-len(items) // shard_size) if items else 0
    fresh = executor.map_shards(job, shards, progress) if shards else iter(())
    ready: dict[int, list[Result]] = {}
    pending = {s.index for s in shards}
    try:
        for k in range(n_shards):
            if k not in pending:
                yield from store.read(k)  # finished by an earlier run
                continue
            while k not in ready:
                got = next(fresh, None)
                if got is None:  # every executor yields each shard once; this is a bug, not bad input
                    raise RuntimeError(f"the executor finished without shard {k}")
                j, part = got
                table = None if isinstance(part, list) else part
                results = part if table is None else results_from_arrow(table)
                if store is not None:
                    store.write(j, results, table)
                ready[j] = results
            yield from ready.pop(k)
        if store is not None:
            store.finish()
    finally:
        close = getattr(fresh, "close", None)
        if close:
            close()
