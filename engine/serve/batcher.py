"""The dynamic batcher: concurrent requests share one model batch, each keeps its own settings.

One worker thread owns the model (torch releases the GIL while it computes, so the
event loop keeps answering). Callers ``await submit(...)``; the worker takes the
first waiting request, then gathers more for up to ``max_wait_s`` while the batch
holds at most ``max_batch`` images (a request is never split: one larger than
``max_batch`` runs alone), and then

1. embeds every image of the gathered requests in ONE ``Classifier.images.embed`` call;
2. groups the requests by (system, RunConfig) and runs ``Classifier.classify_embedded``
   once per group on that group's rows, so each request keeps its own budget, τ, policy
   and stop rule;
3. hands each caller its own results, in its own image order, through its asyncio future.

``max_batch=1`` turns batching off (one request per model call). This is an executor
over the two seam calls, not a second classification path.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core.results import Result
from engine.run.config import RunConfig


_STOP = object()


@dataclass
class Answer:
    """What a caller gets back: one Result per image (in its order) and the batch's timings."""

    results: list[Result]
    timings: dict[str, Any]


@dataclass(eq=False)
class _Job:
    images: list[Any]
    system: str
    config: RunConfig
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    t_submit: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # the caller gave up (timeout, disconnect): skip it if not started
    taken: bool = False  # the worker has put it in a batch (its images are in use until that batch ends)
    trace: bool = False  # keep the top-k after each step (the page replays the path)


class Batcher:
    """Gathers requests into model batches on one worker thread.

    classifiers : {system name: Classifier}, all sharing one encoder (one model in memory).
    max_batch : images per model batch (>= 1; 1 means no batching across requests).
    max_wait_s : how long the first request of a batch waits for others (0: only those already queued).
    """

    def __init__(self, classifiers: Mapping[str, Any], *, max_batch: int, max_wait_s: float):
        if not classifiers:
            raise ValueError("the batcher needs at least one classifier")
        encoders = {id(c.encoder) for c in classifiers.values()}
        if len(encoders) != 1:
            raise ValueError("every system's Classifier must share one encoder (one model in memory)")
        self.classifiers = dict(classifiers)
        self.max_batch, self.max_wait_s = int(max_batch), float(max_wait_s)
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Job | None = None  # a request that did not fit the last batch: first of the next
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.pending = 0  # requests submitted and not yet answered (touched on the event loop only)
        self.batches_run = 0
        self.batch_sizes: list[int] = []  # images per model batch, for tests and the bench (last 1000)

    # ------------------------------------------------------------------ caller side (event loop)
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="twentyq-batcher", daemon=True)
                self._thread.start()

    async def submit(self, images: Sequence[Any], system: str, config: RunConfig, *, trace: bool = False) -> Answer:
        """Classify ``images`` (decoded PIL images) under ``config`` with ``system``'s classifier
        (``trace``: each step also carries the top-k after it)."""
        if system not in self.classifiers:
            raise KeyError(system)
        self.start()
        loop = asyncio.get_running_loop()
        job = _Job(list(images), system, config, loop, loop.create_future(), trace=bool(trace))
        self.pending += 1
        self._queue.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._lock:
                job.cancelled = True
                if not job.taken:  # still queued: its decoded images need not wait for the worker to see it
                    job.images = []
            raise
        finally:
            self.pending -= 1

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker after the requests already queued (uvicorn has drained the connections by now)."""
        self._queue.put(_STOP)
        t = self._thread
        if t is not None:
            t.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _next_batch(self) -> list[_Job] | None:
        """The next batch of live jobs, or None once stopped."""
        first = self._carry
        self._carry = None
        while first is None or not self._take(first):
            first = self._queue.get()
            if first is _STOP:
                return None
        batch, n = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while n < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)  # after this batch
                break
            if job.cancelled:
                continue
            if n + len(job.images) > self.max_batch:
                self._carry = job
                break
            if not self._take(job):
                continue
            batch.append(job)
            n += len(job.images)
        return batch

    def _take(self, job: _Job) -> bool:
        """Mark ``job`` as in a batch, unless its caller gave up (then it is dropped)."""
        with self._lock:
            if job.cancelled:
                return False
            job.taken = True
            return True

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                answers = self._classify(batch)
            except Exception as e:  # noqa: BLE001  (the shared embedding failed: each caller gets it, a 500)
                answers = [e] * len(batch)
            for job, answer in zip(batch, answers):  # an exception: that request's settings group failed
                failed = isinstance(answer, BaseException)
                job.loop.call_soon_threadsafe(_settle, job.future, None if failed else answer,
                                              answer if failed else None)
            for job in batch:  # the decoded images are done with: not kept alive while the worker waits
                job.images = []
            del batch, answers

    def _classify(self, batch: list[_Job]) -> list[Answer | BaseException]:
        """One embedding call for the batch, then one classify call per (system, settings, trace) group: a group
        that raises fails its own requests only (the exception in their places), not the others'."""
        t_start = time.perf_counter()
        images = [im for job in batch for im in job.images]
        # any classifier embeds: they share the encoder; the one image call of this batch
        emb, good, bad = next(iter(self.classifiers.values())).images.embed(images)
        t_embedded = time.perf_counter()
        row_of = {int(g): r for r, g in enumerate(good)}
        offsets, off = [], 0
        for job in batch:
            offsets.append(off)
            off += len(job.images)
        results: list[list[Result | None]] = [[None] * len(job.images) for job in batch]
        classify_ms: list[float] = [0.0] * len(batch)
        groups: dict[tuple[str, RunConfig, bool], list[int]] = {}
        for k, job in enumerate(batch):
            groups.setdefault((job.system, job.config, job.trace), []).append(k)
        failed: dict[int, BaseException] = {}
        for (system, config, trace), ks in groups.items():
            t0 = time.perf_counter()
            slots = [(k, i) for k in ks for i in range(len(batch[k].images)) if offsets[k] + i in row_of]
            if slots:
                rows = [row_of[offsets[k] + i] for k, i in slots]
                try:
                    out = self.classifiers[system].classify_embedded(emb[rows], config, trace=trace)
                except Exception as e:  # noqa: BLE001  (its callers get it, a 500; the other groups go on)
                    failed.update((k, e) for k in ks)
                    continue
                for (k, i), r in zip(slots, out):
                    results[k][i] = r
            ms = (time.perf_counter() - t0) * 1e3
            for k in ks:
                classify_ms[k] = ms
        for j, msg in bad.items():  # an image whose embedding came back NaN/inf/zero
            k = max(kk for kk, o in enumerate(offsets) if o <= j)
            results[k][j - offsets[k]] = Result.failed(msg)
        self.batches_run += 1
        self.batch_sizes = (self.batch_sizes + [len(images)])[-1000:]
        embed_ms = (t_embedded - t_start) * 1e3
        return [failed[k] if k in failed else
                Answer(results=results[k],
                       timings={"queue_ms": (t_start - job.t_submit) * 1e3, "embed_ms": embed_ms,
                                "classify_ms": classify_ms[k], "batch_images": len(images),
                                "batch_requests": len(batch)})
                for k, job in enumerate(batch)]


def _settle(future: asyncio.Future, answer: Answer | None, error: BaseException | None) -> None:
    if future.done():  # the caller gave up meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer)
