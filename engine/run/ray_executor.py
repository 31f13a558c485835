"""Classify a Ray Dataset of images, one :class:`engine.run.classifier.Classifier` per actor.

Needs the ``twentyq[ray]`` extra (``pip install 'twentyq[ray]'``); this is the only
module of the package that imports Ray, and only when it is used.

    >>> import ray, ray.data                                          # doctest: +SKIP
    >>> ds = ray.data.from_items([{"path": "a.png"}, {"path": "b.png"}])  # doctest: +SKIP
    >>> out = classify_dataset(ds, model="offline", system="pokemon15",  # doctest: +SKIP
    ...                        config=RunConfig(policy="eig", tau=0.9), workers=2)
    >>> out.take(1)[0]["label"]                                       # doctest: +SKIP

Input rows: ``path`` (str, a file each actor opens; relative paths are resolved from
``cwd``), or ``bytes`` (the encoded image; ``path``, if there, only names it) — e.g.
``ray.data.read_binary_files(..., include_paths=True)``; optional ``label`` (str).
Output rows: the Arrow form of ``twentyq classify --json``'s records
(:func:`engine.run.shards.result_schema`; ``true_label`` when the input had ``label``),
plus the input columns named in ``keep``. A bad image becomes a row with ``error``
set and ``label`` null, with the same message as in a single process; the rest of
its batch is classified as usual.

Each actor loads the model once and keeps its own lazy text cache (a group's
prompts are embedded the first time one of its images asks it). With
``precompute_text=True`` one task, with an actor's resources, embeds every prompt
of the system once and the actors read them from the object store instead.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from engine.run.classifier import RunConfig
from engine.run.shards import results_to_arrow
from engine.encoders.text_cache import TextCache

RAY_MISSING = "Ray is not installed: pip install 'twentyq[ray]' (it brings ray[data] and pyarrow)"
SHARD, INDEX = "_shard", "_index"
TEXT_ENCODES, TEXT_HITS, STARTED, BUSY = "_text_encodes", "_text_hits", "_started", "_busy_s"


class RayMissing(ImportError):
    """``twentyq[ray]`` is not installed."""


class RayStartError(RuntimeError):
    """Ray could not be started here or joined; the message names the cause and the fix."""


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
    import socket

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


# --------------------------------------------------------------------------- images as bytes
def open_image_bytes(name: str, data: bytes):
    """A decoded PIL image from encoded bytes; ImageLoadError naming ``name`` (as a file would) if bad."""
    from PIL import Image, UnidentifiedImageError

    from engine.encoders.images import MAX_IMAGE_PIXELS, ImageLoadError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageLoadError(name, f"{w}x{h} = {w * h:,} pixels is over the limit of {MAX_IMAGE_PIXELS:,} "
                                           "(a possible decompression bomb); refusing to decode it")
            im.load()
            return im
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image Pillow can read (unknown format or not an image file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(name, f"too large to decode safely, a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(name, f"corrupt or truncated image data ({msg})") from None


# --------------------------------------------------------------------------- text embeddings
def system_prompt_groups(system: Any, mode: str) -> list[list[str]]:
    """The prompt list of every group the mode can ask, as the engine asks them (one list per group)."""
    from systems import baseline_system, load_system

    system = load_system(system)
    if mode == "baseline":
        system = baseline_system(system)
    return [list(g.prompts()) for g in system.groups]


def _embed_prompts(model_kwargs: dict, system: Any, mode: str) -> dict[str, Any]:
    """{prompt: (D,) float32 numpy} for every prompt, embedded group by group (as lazily)."""
    from engine.run.classifier import Classifier

    clf = Classifier(system=system, **model_kwargs)
    table = {}
    for prompts in system_prompt_groups(clf.system, mode):
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

    ``__call__(batch: pyarrow.Table) -> pyarrow.Table``: n input rows in, n result rows
    out, in the same order.
    """

    def __init__(self, model_kwargs: dict, system: Any, config: dict, keep: Sequence[str] = (),
                 text_ref: Any = None, cwd: str | None = None, stats: bool = False):
        if cwd and os.path.isdir(cwd):  # relative paths mean what they meant to the driver
            os.chdir(cwd)
        from transformers.utils import logging as hf_logging

        from engine.run.classifier import Classifier

        hf_logging.disable_progress_bar()  # Ray forwards every actor's stderr to the driver
        self.clf = Classifier(system=system, **model_kwargs)
        if text_ref is not None:
            ray = require_ray()
            self.clf.text_cache = PrecomputedTextCache(self.clf.encoder, ray.get(text_ref))
        self.config = RunConfig(**config)
        self.keep, self.stats = tuple(keep), stats
        self._seen: dict[str, int] = {}

    def __call__(self, batch):
        import pyarrow as pa

        started, t0 = time.time(), time.perf_counter()

        from engine.encoders.images import ImageLoadError
        from engine.core.results import Result

        cols = batch.column_names
        n = batch.num_rows
        if n == 0:
            return self._empty(batch)
        paths = batch.column("path").to_pylist() if "path" in cols else [None] * n
        data = batch.column("bytes").to_pylist() if "bytes" in cols else None
        names = [p if p is not None else "<bytes>" for p in paths]
        inputs, pre_bad = [], {}
        for i in range(n):
            if data is None:
                inputs.append(paths[i])
                continue
            try:
                inputs.append(open_image_bytes(names[i], data[i]))
            except ImageLoadError as e:
                pre_bad[i] = str(e)
                inputs.append(None)
        good = [i for i in range(n) if i not in pre_bad]
        results: list[Any] = [None] * n
        if good:
            it = self.clf.iter_classify([inputs[i] for i in good], self.config, chunk_size=len(good),
                                        names=[names[i] for i in good])
            for i, r in zip(good, it):
                results[i] = r
        for i, msg in pre_bad.items():
            results[i] = Result.failed(msg, image=names[i])
        extra = {c: batch.column(c).combine_chunks() for c in self.keep}
        if self.stats:  # on the batch's first row (0 elsewhere), so that a column's sum is the run's total
            cache = self.clf.text_cache
            for col, now in ((TEXT_ENCODES, cache.text_encodes), (TEXT_HITS, cache.hits)):
                extra[col] = pa.array([now - self._seen.get(col, 0)] + [0] * (n - 1), type=pa.int64())
                self._seen[col] = now
            extra[STARTED] = pa.array([started] + [0.0] * (n - 1), type=pa.float64())
            extra[BUSY] = pa.array([time.perf_counter() - t0] + [0.0] * (n - 1), type=pa.float64())
        labels = batch.column("label").to_pylist() if "label" in cols else None
        return results_to_arrow(results, labels, extra)

    def _empty(self, batch):
        import pyarrow as pa

        extra = {c: batch.column(c).combine_chunks() for c in self.keep}
        if self.stats:
            extra.update({TEXT_ENCODES: pa.array([], pa.int64()), TEXT_HITS: pa.array([], pa.int64()),
                          STARTED: pa.array([], pa.float64()), BUSY: pa.array([], pa.float64())})
        return results_to_arrow([], [] if "label" in batch.column_names else None, extra)


# --------------------------------------------------------------------------- the entry point
def classify_dataset(ds, *, model: str = "offline", system: Any = "pokemon15", config: RunConfig | None = None,
                     device: str = "auto", dtype: str | None = None, encoder_batch_size: int | None = None,
                     cache_dir: str | None = None, trust_remote_code: bool = False, batch_size: int = 64,
                     workers: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0, precompute_text: bool = False,
                     keep: Sequence[str] = (), cwd: str | None = None, stats: bool = False):
    """A Ray Dataset of results for a Ray Dataset of images (see the module docstring).

    Parameters
    ----------
    ds : ``ray.data.Dataset`` with ``path`` and/or ``bytes`` columns (+ optional ``label``).
    model, system, device, dtype, encoder_batch_size, cache_dir, trust_remote_code : what
        each actor's ``Classifier`` loads (``encoder_batch_size`` is the model's own batch).
    config : the RunConfig (mode, policy, τ, budget, ...); default ``RunConfig()``.
    batch_size : rows per ``map_batches`` call (one image-embedding chunk, as ``chunk_size``
        in a single process).
    workers : actors in the pool; num_gpus, num_cpus : what each actor reserves.
    precompute_text : embed every prompt once in one task and broadcast it (see the module docstring).
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
    config = config or RunConfig()
    for name, v, lo in (("batch_size", batch_size, 1), ("workers", workers, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} == {v!r}, must be a whole number >= {lo}")
    if num_gpus < 0 or num_cpus < 0:
        raise ValueError(f"num_gpus == {num_gpus!r}, num_cpus == {num_cpus!r}: must be >= 0")
    cols = set(ds.columns() or ())
    if not cols & {"path", "bytes"}:
        raise ValueError(f"the dataset has columns {sorted(cols)}; it needs 'path' (image files) or 'bytes' "
                         "(encoded images, e.g. from ray.data.read_binary_files(..., include_paths=True))")
    missing = [c for c in keep if c not in cols]
    if missing:
        raise ValueError(f"keep names column(s) {missing} the dataset does not have ({sorted(cols)})")
    model_kwargs = dict(model=model, device=device, dtype=dtype, batch_size=encoder_batch_size, cache_dir=cache_dir,
                        trust_remote_code=trust_remote_code)
    text_ref = None
    if precompute_text:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_embed_prompts)
        text_ref = task.remote(model_kwargs, system, config.mode)
        # Wait here, not in the actors: an actor blocked in its constructor keeps its CPU/GPU,
        # which the task may need. Only the ref's location comes back, not the embeddings.
        ray.wait([text_ref], fetch_local=False)
    return ds.map_batches(
        ClassifyBatch, batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=num_cpus, num_gpus=num_gpus,
        fn_constructor_kwargs=dict(model_kwargs=model_kwargs, system=system, config=asdict(config), keep=tuple(keep),
                                   text_ref=text_ref, cwd=cwd or os.getcwd(), stats=stats))


def classify_shards(rows, shards: Sequence[int], shard_size: int, **kwargs) -> Iterator[tuple[int, Any]]:
    """Classify the given shards of an input table; yield (shard, results) as each shard completes.

    rows : a pyarrow Table of input rows (``path``/``bytes``, optional ``label``); shard k
        is rows [k*shard_size, (k+1)*shard_size).
    Yields (k, pyarrow Table of shard k's results in input order). Shards come in
    the order they finish, not necessarily in k order. ``kwargs`` go to
    :func:`classify_dataset` (``stats=True`` keeps its ``_`` columns).
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
    # a block goes to one actor at a time: more actors than shards would only load models
    kwargs["workers"] = min(kwargs.get("workers", 1), len(blocks))
    out = classify_dataset(ds, keep=(SHARD, INDEX), **kwargs)
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
