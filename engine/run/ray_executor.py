"""The Ray executor: the run pipeline's shards classified on Ray Data actors.

Needs the ``twentyq[ray]`` extra (``pip install 'twentyq[ray]'``); this is the only
module of the package that imports Ray, and only when it is used.

    >>> from engine.run.pipeline import Job, run                            # doctest: +SKIP
    >>> records = list(run(items, job, executor=RayExecutor(RayOptions(workers=2))))  # doctest: +SKIP

Each actor (:class:`ClassifyBatch`) loads a :class:`engine.run.classifier.Classifier` from the
job once and calls :meth:`Classifier.iter_classify` on its rows: the very path of one
process, so results are the same. Rows are ``path`` (a file each actor opens; relative
paths are resolved from the driver's ``cwd``) or ``bytes`` (the encoded image, named by
``path``), plus an optional ``label``. Results come back as Arrow result tables, built once
from the actor's Results (:func:`engine.run.store.results_to_arrow`); the driver writes them
to a Parquet store as they are and reads each row as a Result once
(:func:`engine.run.store.results_from_arrow`, in :func:`engine.run.pipeline.run`). A bad image
becomes a row with ``error`` set; the rest of its batch is classified as usual.

Each actor keeps its own lazy text cache (a group's prompts are embedded the first time
that actor asks it). ``precompute_text`` embeds every prompt once in one task and
broadcasts it instead, which pays off only for CPU actors with large systems.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from engine.common.errors import UserInputError
from engine.encoders.text_cache import TextCache
from engine.run.pipeline import DEFAULT_CHUNK, Job, Progress, Shard
from engine.run.prompts import pooled_groups
from engine.run.store import results_to_arrow
from systems import baseline_system, load_system

RAY_MISSING = "Ray is not installed: pip install 'twentyq[ray]' (it brings ray[data] and pyarrow)"
SHARD, INDEX = "_shard", "_index"
TEXT_ENCODES, TEXT_HITS, STARTED, BUSY = "_text_encodes", "_text_hits", "_started", "_busy_s"


class RayMissing(UserInputError, ImportError):
    """``twentyq[ray]`` is not installed."""


class RayStartError(UserInputError, RuntimeError):
    """Ray could not be started here or joined; the message names the cause and the fix."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is: the executor's only settings.

    address : None starts Ray on this machine; "HOST:PORT", "ray://HOST:PORT" or "auto" joins a cluster.
    workers : actors, one model each (None: the cluster's GPUs / gpus_per_worker, or CPUs / cpus_per_worker).
    gpus_per_worker : GPUs per actor (None: 1 when the cluster has GPUs and the device allows, else 0).
    cpus_per_worker : CPUs per actor (None: 1).
    batch_size : images per actor call (one embedding chunk, as a single process's).
    precompute_text : embed every prompt once, in one task, and broadcast it to the actors.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    batch_size: int = DEFAULT_CHUNK
    precompute_text: bool = False

    def __post_init__(self):
        for name in ("workers", "batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"--{name.replace('_', '-')} {v!r}: must be a whole number >= 1")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"--{name.replace('_', '-')} {v}: must be >= 0")

    def sizing(self, resources: dict[str, float], device: str) -> tuple[int, float, float]:
        """(workers, gpus per worker, cpus per worker) from these options and the cluster's resources."""
        cpus = self.cpus_per_worker if self.cpus_per_worker is not None else 1.0
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 and device in ("auto", "cuda") else 0.0
        if self.workers is not None:
            return self.workers, gpus, cpus
        by_gpu = int(resources.get("GPU", 0) // gpus) if gpus > 0 else None
        by_cpu = int(resources.get("CPU", 1) // cpus) if cpus > 0 else None
        workers = min(x for x in (by_gpu, by_cpu) if x is not None) if (by_gpu, by_cpu) != (None, None) else 1
        return max(1, workers), gpus, cpus


def require_ray():
    """The ``ray`` module with Ray Data loaded; RayMissing (one line naming the fix) when absent."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayMissing(RAY_MISSING) from None
    return ray


@contextmanager
def ray_session(address: str | None = None):
    """Ray, started on this machine (``address`` None) or joined (HOST:PORT, ray://HOST:PORT, auto).

    Reuses a Ray this process already runs; shuts down on exit only a Ray it started.
    Ray Data's own progress bars and INFO logs are turned off. Yields the ``ray`` module.
    """
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        if address and address != "auto":
            _check_reachable(address)
        logging.getLogger("ray").setLevel(logging.WARNING)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"join the Ray cluster at {address!r}" if address else "start Ray on this machine"
            fix = ("check the address (`ray status` on the head node prints it), or give none to start Ray here"
                   if address else "see Ray's logs under /tmp/ray")
            raise RayStartError(f"could not {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                                f"{fix}") from None
        started = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """RayStartError unless something accepts a TCP connection at HOST:PORT (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise RayStartError(f"could not join the Ray cluster at {address!r}: nothing answers there "
                            f"({e.strerror or e}); check the address (`ray status` on the head node prints it), "
                            "or give none to start Ray here") from None


def is_ray_error(e: BaseException) -> bool:
    """Whether ``e`` came from Ray (a task, actor or executor failure) rather than from this process."""
    import ray.exceptions

    return isinstance(e, ray.exceptions.RayError) or type(e).__module__.startswith("ray.")


# --------------------------------------------------------------------------- text embeddings
def system_prompt_groups(system: Any, mode: str, config: Any = None) -> list[list[str]]:
    """The prompt list of every group the mode can ask, as the engine asks them (one list per group);
    with ``config``, a template ensemble's or the descriptors' pooled prompts in place of their group's."""
    system = load_system(system)
    if mode in ("baseline", "descriptors"):
        system = baseline_system(system)
    pooled = {p.group: p.flat()[0] for p in pooled_groups(system, config)} if config is not None else {}
    return [pooled.get(i, list(g.prompts())) for i, g in enumerate(system.groups)]


def _embed_prompts(job: Job) -> dict[str, Any]:
    """{prompt: (D,) float32 numpy} for every prompt of the job, embedded group by group (as lazily)."""
    clf = job.classifier(eager_prompts="lazy", decode_workers=0)  # embeds below, group by group, images never
    table = {}
    for prompts in system_prompt_groups(clf.system, job.config.mode, job.config):
        for p, row in zip(prompts, clf.text_cache.embed(prompts)):
            table[p] = row.detach().float().cpu().numpy()
    return table


class PrecomputedTextCache(TextCache):
    """A TextCache that serves prompts from a broadcast table {prompt: (D,) numpy} and embeds any other lazily.

    Served prompts count as ``hits``, never as ``text_encodes``.
    """

    def __init__(self, encoder, table: dict[str, Any]):
        super().__init__(encoder)
        self.table = table
        self._served: dict[tuple[str, ...], torch.Tensor] = {}

    def embed(self, prompts):
        key = tuple(prompts)
        if not key or not all(p in self.table for p in key):
            return super().embed(prompts)
        got = self._served.get(key)
        if got is None:
            got = torch.stack([torch.tensor(self.table[p]) for p in key]).to(self.encoder.device)
            self._served[key] = got
        self.hits += len(key)
        return got


# --------------------------------------------------------------------------- the actor
class ClassifyBatch:
    """The callable class of ``map_batches``: one Classifier per actor, loaded once.

    ``__call__(batch: pyarrow.Table) -> pyarrow.Table``: n input rows in, n record rows
    out, in the same order, plus the input columns named in ``keep``.
    """

    def __init__(self, job: Job, keep: Sequence[str] = (), text_ref: Any = None, cwd: str | None = None,
                 stats: bool = False):
        if cwd and os.path.isdir(cwd):  # relative paths mean what they meant to the driver
            os.chdir(cwd)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # Ray forwards every actor's stderr to the driver
        # every prompt comes precomputed: embedding them eagerly here would be waste; and one actor per CPU
        # (or GPU) is Ray's parallelism: decode in the actor unless decode workers were asked for
        speed = {"eager_prompts": "lazy"} if text_ref is not None else {}
        if job.encoder.decode_workers is None:
            speed["decode_workers"] = 0
        self.clf = job.classifier(**speed)
        if text_ref is not None:
            ray = require_ray()
            self.clf.text_cache = PrecomputedTextCache(self.clf.encoder, ray.get(text_ref))
        self.config = job.config
        self.keep, self.stats = tuple(keep), stats
        self._seen: dict[str, int] = {}

    def __call__(self, batch):
        import pyarrow as pa

        started, t0 = time.time(), time.perf_counter()
        cols, n = batch.column_names, batch.num_rows
        paths = batch.column("path").to_pylist() if "path" in cols else [None] * n
        data = batch.column("bytes").to_pylist() if "bytes" in cols else [None] * n
        labels = batch.column("label").to_pylist() if "label" in cols else [None] * n
        names = [p if p is not None else "<bytes>" for p in paths]
        # an image is its bytes when the row has them (``path`` then only names it), else the file at ``path``
        sources = [d if d is not None else p for p, d in zip(names, data)]
        results = list(self.clf.iter_classify(sources, self.config, chunk_size=max(1, n), names=names)) if n else []
        for r, lab in zip(results, labels):
            r.true_label = lab
        extra = {c: batch.column(c).combine_chunks() for c in self.keep}
        if self.stats:  # on the batch's first row (0 elsewhere), so that a column's sum is the run's total
            cache = self.clf.text_cache
            first = [1] + [0] * (n - 1) if n else []
            for col, now in ((TEXT_ENCODES, cache.text_encodes), (TEXT_HITS, cache.hits)):
                extra[col] = pa.array([(now - self._seen.get(col, 0)) * f for f in first], type=pa.int64())
                self._seen[col] = now if n else self._seen.get(col, 0)
            extra[STARTED] = pa.array([started * f for f in first], type=pa.float64())
            extra[BUSY] = pa.array([(time.perf_counter() - t0) * f for f in first], type=pa.float64())
        return results_to_arrow(results, extra, labels="label" in cols)


# --------------------------------------------------------------------------- the entry points
def classify_dataset(ds, job: Job, options: RayOptions | None = None, *, keep: Sequence[str] = (),
                     cwd: str | None = None, stats: bool = False):
    """A Ray Dataset of record rows for a Ray Dataset of images (see the module docstring).

    ds : ``ray.data.Dataset`` with ``path`` and/or ``bytes`` columns (+ optional ``label``).
    job : the encoder spec, system and run configuration each actor uses.
    options : workers and their resources (``workers`` defaults to 1 here; ``address`` is
        not used: the caller owns the Ray session).
    keep : input columns copied to the output unchanged.
    cwd : the folder relative ``path`` values are resolved from on each actor (default: the
        caller's working directory; ignored on a node where it does not exist).
    stats : add columns, set on the first row of each batch and 0 elsewhere (so a column's sum
        is the run's total): ``_text_encodes`` and ``_text_hits`` (int64, the actor's text-cache
        counts since its previous batch), ``_started`` (float64, the batch's start, Unix time)
        and ``_busy_s`` (float64, seconds the actor spent on the batch).

    The dataset is lazy: nothing runs until it is consumed (``iter_batches``, ``write_parquet``...).
    """
    ray = require_ray()
    options = options or RayOptions()
    workers = options.workers or 1
    gpus = options.gpus_per_worker or 0.0
    cpus = options.cpus_per_worker if options.cpus_per_worker is not None else 1.0
    cols = set(ds.columns() or ())
    if not cols & {"path", "bytes"}:
        raise ValueError(f"the dataset has columns {sorted(cols)}; it needs 'path' (image files) or 'bytes' "
                         "(encoded images, e.g. from ray.data.read_binary_files(..., include_paths=True))")
    missing = [c for c in keep if c not in cols]
    if missing:
        raise ValueError(f"keep names column(s) {missing} the dataset does not have ({sorted(cols)})")
    text_ref = None
    if options.precompute_text:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_embed_prompts)
        text_ref = task.remote(job)
        # Wait here, not in the actors: an actor blocked in its constructor keeps its CPU/GPU,
        # which the task may need. Only the ref's location comes back, not the embeddings.
        ray.wait([text_ref], fetch_local=False)
    return ds.map_batches(
        ClassifyBatch, batch_size=options.batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus,
        fn_constructor_kwargs=dict(job=job, keep=tuple(keep), text_ref=text_ref, cwd=cwd or os.getcwd(),
                                   stats=stats))


def classify_shards(rows, shards: Sequence[int], shard_size: int, job: Job, options: RayOptions
                    ) -> Iterator[tuple[int, Any]]:
    """Classify the given shards of an input table; yield (shard, record table) as each shard completes.

    rows : a pyarrow Table of input rows (``path``/``bytes``, optional ``label``); shard k
        is rows [k*shard_size, (k+1)*shard_size).
    Yields (k, pyarrow Table of shard k's records in input order, with the ``_`` stats
    columns). Shards come in the order they finish, not necessarily in k order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    ray = require_ray()
    blocks = []
    for k in shards:
        part = rows.slice(k * shard_size, shard_size)
        start = k * shard_size
        blocks.append(part.append_column(SHARD, pa.array([k] * part.num_rows, type=pa.int64()))
                      .append_column(INDEX, pa.array(range(start, start + part.num_rows), type=pa.int64())))
    if not blocks:
        return
    expected = {k: b.num_rows for k, b in zip(shards, blocks)}
    ds = ray.data.from_arrow(blocks)  # one block per shard
    out = classify_dataset(ds, job, options, keep=(SHARD, INDEX), stats=True)
    pending: dict[int, list] = {}
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        for k in pc.unique(batch.column(SHARD)).to_pylist():
            part = batch.filter(pc.equal(batch.column(SHARD), k))
            pending.setdefault(k, []).append(part)
            got = sum(p.num_rows for p in pending[k])
            if got == expected[k]:
                table = pa.concat_tables(pending.pop(k)).sort_by(INDEX)
                yield k, table.drop_columns([SHARD, INDEX])
    if pending:  # every row comes back exactly once, so this is a bug, never a user error
        raise RuntimeError(f"shards {sorted(pending)} came back incomplete from Ray")


class RayExecutor:
    """The pipeline's executor on Ray Data actors (see :class:`engine.run.pipeline.Executor`).

    Starts or joins Ray for the run (``options.address``), sizes the actor pool from the
    cluster, and yields each shard's records as it finishes. ``announce`` receives one line
    saying how the run is laid out (for the CLI's stderr).
    """

    def __init__(self, options: RayOptions | None = None, announce=None):
        self.options = options or RayOptions()
        self.announce = announce
        self.stats = {"text_encodes": 0, "text_hits": 0}

    def map_shards(self, job: Job, shards: Sequence[Shard], progress: Progress | None = None
                   ) -> Iterator[tuple[int, Any]]:
        """Yields (shard index, the shard's Arrow result table, with the ``_`` stats columns) as each finishes."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not shards:
            return
        items = [it for sh in shards for it in sh.items]
        # an Item's image is its bytes when it has them (a Hugging Face dataset's rows: ``path`` only names
        # them), else the file at ``path``: the actors get both, as ClassifyBatch reads them
        rows = pa.table({"path": [it.path for it in items],
                         **({"bytes": pa.array([it.data for it in items], type=pa.binary())}
                            if any(it.data is not None for it in items) else {}),
                         **({"label": [it.label for it in items]} if items[0].label is not None else {})})
        # the pipeline's shards are consecutive runs of rows; renumber them as blocks of this table
        size = max(len(sh.items) for sh in shards)
        if any(len(sh.items) != size for sh in shards[:-1]):
            raise RuntimeError("the Ray executor needs equal shards (all but the last)")
        with ray_session(self.options.address) as ray:
            workers, gpus, cpus = self.options.sizing(ray.cluster_resources(), job.encoder.device)
            workers = min(workers, len(shards))  # a shard is one block, worked by one actor at a time
            if self.announce:
                self.announce(f"Ray: {workers} worker(s), {gpus:g} GPU and {cpus:g} CPU each, {len(shards)} "
                              f"shard(s) of up to {size} image(s)")
            if self.options.precompute_text:
                self.stats["text_encodes"] += len({p for g in system_prompt_groups(job.system, job.config.mode,
                                                                                   job.config) for p in g})
            sized = dataclasses.replace(self.options, workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus)
            try:
                for j, table in classify_shards(rows, range(len(shards)), size, job, sized):
                    self.stats["text_encodes"] += int(pc.sum(table.column(TEXT_ENCODES)).as_py() or 0)
                    self.stats["text_hits"] += int(pc.sum(table.column(TEXT_HITS)).as_py() or 0)
                    if progress:
                        progress(table.num_rows)
                    yield shards[j].index, table
            except Exception as e:
                if not is_ray_error(e):
                    raise
                raise RayRunError(f"the Ray run failed: {root_cause(e)}") from None


class RayRunError(UserInputError, RuntimeError):
    """A Ray task or actor failed; the message is the innermost cause."""


def root_cause(e: BaseException) -> str:
    """The last line of the innermost error message that says something (Ray wraps tracebacks)."""
    while getattr(e, "cause", None) is not None and e.cause is not e:
        e = e.cause
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(("File ", "^"))]
    return lines[-1][:500] if lines else type(e).__name__
