"""The fast image input: decode and resize in worker processes (or on the GPU), batches of uint8 pixels.

    loader = ImageLoader(plan, workers=2, device=encoder.device)
    pending = loader.submit(images, names)      # returns at once; workers decode in the background
    ...                                         # the model and the engine work on the previous batch
    batch = pending.result()                    # DecodedBatch: (n_good, 3, h, w) uint8, good, errors

What happens to each image:

- a path or encoded bytes goes to a worker process (``workers`` of them, started on first use
  by :class:`engine.encoders.worker_pool.WorkerPool`: fresh interpreters that never import the
  caller's ``__main__``, so a script needs no ``if __name__ == "__main__":``; a worker imports
  Pillow and numpy, not torch), which loads it with
  :func:`engine.encoders.images.load_image` (every check there: regular file, decompression
  bomb, EXIF orientation, transparency on white, 16-bit, animated) and resizes and crops it
  with :func:`engine.encoders.pixels.resize_crop_pil`: the same Pillow calls as the model's
  processor, so the pixels are identical. A bad image comes back as its one-line error.
  A PIL image (already decoded) is resized in this process.
- with ``workers=0`` (or a batch smaller than :data:`MIN_POOL_BATCH`, or where no worker
  interpreter can be started: :func:`engine.encoders.worker_pool.can_start_workers`, e.g. a
  frozen application) all of that happens in this process, when ``result()`` is called, quietly.
- with a GPU decoder (:class:`TorchvisionDecoder`: CUDA and torchvision), each file's header
  is read here (Pillow, no pixels); a baseline JPEG or an 8-bit PNG without transparency or
  EXIF rotation, inside :data:`engine.encoders.images.MAX_SIDE`, is decoded on the device and
  resized and cropped there (:func:`engine.encoders.pixels.resize_crop_tensor`). Everything
  else, and any image the GPU decoder refuses, goes to the workers, one by one: none is lost.

Batches are gathered by one background thread per loader, into pinned memory when the
device is CUDA, and copied to the device without blocking on a side stream. At most
``max_pending`` batches are in flight (:meth:`ImageLoader.submit` waits for the oldest
beyond that): the bounded queue. A worker process that dies (a decoder crash) is replaced
and the images of its task are retried one per task; an image that kills a worker again is
that image's error.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from engine.encoders.images import IMAGE_FORMATS, MAX_SIDE, ImageLoadError, image_label, load_image
from engine.encoders.pixels import PixelPlan, resize_crop_pil, resize_crop_tensor
from engine.encoders.worker_pool import can_start_workers

#: below this many images a batch is decoded in this process (a pool costs a process start)
MIN_POOL_BATCH = 8
#: images per worker task: large enough to amortise the hand-off, small enough to spread the load
TASK_SIZE = 16


class DecodeWorkersUnavailable(UserWarning):
    """The decode worker processes could not start; images are decoded in this process."""


def default_workers(cpus: int | None = None) -> int:
    """Decode workers for ``cpus`` cores (default: those this process may use): one per core, at most 8;
    0 on a single core. One per core, not one fewer: the model and the engine wait on their chunk most
    of the time decoding is running, and on the 2-core machine 2 workers beat 1 (tiny CLIP, files to
    results: 1,721 against 1,265 images/s; the offline stand-in 47.3 against 45.4; bench.throughput)."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return 0 if cpus <= 1 else min(8, cpus)


def check_workers(workers: Any) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"decode_workers == {workers!r}, must be a whole number >= 0 (0: decode in this process)")
    return int(workers)


# --------------------------------------------------------------------------- what a worker does
def _label(source: Any, name: str | None) -> str:
    return name if name is not None else image_label(source)


def decode_one(source: Any, name: str | None, plan: PixelPlan) -> np.ndarray | str:
    """One image to (h, w, 3) uint8 by ``plan``, or its one-line error. Never raises for a bad image."""
    try:
        img = load_image(source, name=name)
        return resize_crop_pil(img, plan)
    except ImageLoadError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001  (load_image wraps decoding errors; this is for the rest)
        cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return f"cannot load image {_label(source, name)!r}: {type(e).__name__}: {cause}"


def decode_task(sources: list, names: list, plan: PixelPlan) -> list[np.ndarray | str]:
    """A worker task: :func:`decode_one` over a few images."""
    return [decode_one(s, n, plan) for s, n in zip(sources, names)]


# --------------------------------------------------------------------------- the GPU decoder
def gpu_candidate(source: Any) -> bytes | None:
    """The encoded bytes of ``source`` when the GPU decoder may take it, else None (the workers do).

    Taken: a path or bytes whose header (read with Pillow, no pixels decoded) says JPEG in RGB or L,
    or an 8-bit PNG in RGB or L without transparency; no EXIF rotation; not animated; within
    MAX_SIDE on its long side (larger images are downscaled by the workers' rules) and not empty.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            from engine.common.files import read_bytes_capped

            data = read_bytes_capped(str(source), 64 * 1024 * 1024, what="image")  # the guarded reader
        else:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a DecompressionBombWarning: the workers refuse it, with their message
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            w, h = im.size
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or getattr(im, "n_frames", 1) > 1:
                return None
            if im.format == "JPEG":
                if im.mode not in ("RGB", "L") or im.info.get("progressive") or im.info.get("progression"):
                    return None
            elif im.format == "PNG":
                if im.mode not in ("RGB", "L") or "transparency" in im.info:
                    return None
            else:
                return None
            if im.getexif().get(0x0112, 1) not in (1, None):  # EXIF orientation: the workers apply it
                return None
        return data
    except Exception:  # noqa: BLE001  (anything odd: the workers decide, with their messages)
        return None


class TorchvisionDecoder:
    """JPEG on the GPU (``torchvision.io.decode_jpeg(device=...)``, nvjpeg), PNG with torchvision on the
    CPU then moved; each image (3, H, W) uint8 on ``device``, or the exception that refused it."""

    def __init__(self, device: Any):
        from torchvision.io import ImageReadMode, decode_jpeg, decode_png

        self.device = device
        self._jpeg, self._png, self._rgb = decode_jpeg, decode_png, ImageReadMode.RGB

    def decode(self, datas: list[bytes]) -> list[Any]:
        import torch

        out: list[Any] = [None] * len(datas)
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        jpeg = [i for i, d in enumerate(datas) if d[:2] == b"\xff\xd8"]
        if jpeg:
            try:
                got = self._jpeg([tensors[i] for i in jpeg], mode=self._rgb, device=self.device)
                for i, t in zip(jpeg, got):
                    out[i] = t
            except Exception:  # noqa: BLE001  (one bad file fails the batch call: retry one by one)
                for i in jpeg:
                    try:
                        out[i] = self._jpeg(tensors[i], mode=self._rgb, device=self.device)
                    except Exception as e:  # noqa: BLE001
                        out[i] = e
        for i, d in enumerate(datas):
            if out[i] is None:
                try:
                    out[i] = self._png(tensors[i], mode=self._rgb).to(self.device, non_blocking=True)
                except Exception as e:  # noqa: BLE001
                    out[i] = e
        return out


def gpu_decoder_for(device: Any) -> TorchvisionDecoder | None:
    """A :class:`TorchvisionDecoder` when ``device`` is CUDA and torchvision imports, else None."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    try:
        return TorchvisionDecoder(device)
    except Exception:  # noqa: BLE001  (torchvision missing or built for another torch/CUDA)
        return None


# --------------------------------------------------------------------------- the loader
@dataclass
class DecodedBatch:
    """A decoded batch: ``pixels`` (n_good, 3, h, w) uint8 torch tensor (on the device, or on the host,
    pinned on CUDA); ``good`` (n_good,) int64 input indices in order; ``errors`` {index: one-line message};
    ``gpu_decoded`` how many of the good ones the GPU decoder took."""

    pixels: Any
    good: np.ndarray
    errors: dict[int, str]
    gpu_decoded: int = 0
    ready: Any = field(default=None, repr=False)  # a CUDA event the copy records, or None


class Pending:
    """A submitted batch; :meth:`result` waits for it."""

    def __init__(self, future: Future | None, thunk: Callable[[], DecodedBatch] | None = None):
        self._future, self._thunk, self._value = future, thunk, None

    def result(self) -> DecodedBatch:
        if self._value is None:
            self._value = self._future.result() if self._future is not None else self._thunk()
            ev = self._value.ready
            if ev is not None:  # the side-stream copy: the consumer's stream waits for it, not the host
                import torch

                stream = torch.cuda.current_stream(self._value.pixels.device)
                stream.wait_event(ev)
                self._value.pixels.record_stream(stream)  # allocated on the side stream, used on this one
        return self._value

    def done(self) -> bool:
        return self._value is not None or (self._future is not None and self._future.done())


class ImageLoader:
    """Decodes batches of images to ``plan``'s (h, w) in worker processes (see the module docstring).

    plan : the model's :class:`PixelPlan`.
    workers : decode processes (0: in this process, at ``result()``).
    device : where the pixels go (the encoder's device); CUDA gets pinned host batches, copied on a side stream.
    gpu_decoder : an object with ``decode(list[bytes]) -> list[tensor | Exception]`` (default: a
        :class:`TorchvisionDecoder` on CUDA when torchvision imports; pass False for none).
    max_pending : batches submitted and not yet collected before ``submit`` waits (the bounded queue).
    """

    def __init__(self, plan: PixelPlan, workers: int = 0, *, device: Any = "cpu", gpu_decoder: Any = None,
                 max_pending: int = 2):
        import torch

        self.plan, self.workers = plan, check_workers(workers)
        if self.workers and not can_start_workers():
            self.workers = 0  # nowhere to start a worker interpreter: decode here, quietly
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.gpu_decoder = (gpu_decoder_for(self.device) if gpu_decoder is None else gpu_decoder) or None
        self.max_pending = max(1, int(max_pending))
        self._pool = None
        self._worked = False  # a worker task has come back (the workers can start here)
        self._gather: ThreadPoolExecutor | None = None
        self._inflight: deque[Pending] = deque()
        self._lock = threading.Lock()
        self._stream = torch.cuda.Stream(self.device) if self.cuda and self.gpu_decoder is None else None
        self.stats = {"pool": 0, "inline": 0, "gpu": 0, "gpu_refused": 0, "worker_restarts": 0}

    # -- public ----------------------------------------------------------------
    def submit(self, images: Sequence[Any], names: Sequence[str] | None = None) -> Pending:
        """Start decoding ``images`` (paths, encoded bytes or PIL images); ``names`` label their errors."""
        images = list(images)
        names = [None] * len(images) if names is None else [str(n) for n in names]
        if len(names) != len(images):
            raise ValueError(f"names has {len(names)} entries for {len(images)} images")
        use_pool = self.workers > 0 and len(images) >= MIN_POOL_BATCH
        if not use_pool and self.gpu_decoder is None:
            return Pending(None, lambda: self._collect(images, names, None))
        while len(self._inflight) >= self.max_pending:  # the bounded queue: wait for the oldest
            self._inflight.popleft().result()
        tasks = self._start_tasks(images, names) if use_pool else None
        if self._gather is None:
            self._gather = ThreadPoolExecutor(1, thread_name_prefix="twentyq-gather")
        p = Pending(self._gather.submit(self._collect, images, names, tasks))
        self._inflight.append(p)
        return p

    def load(self, images: Sequence[Any], names: Sequence[str] | None = None) -> DecodedBatch:
        """:meth:`submit` and wait."""
        return self.submit(images, names).result()

    def close(self) -> None:
        """Stop the worker processes and the gathering thread (a later submit starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._gather is not None:
            self._gather.shutdown(wait=False)
            self._gather = None
        self._inflight.clear()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- internals -------------------------------------------------------------
    def _executor(self):
        with self._lock:
            if self._pool is None:
                from engine.encoders.worker_pool import WorkerPool

                self._pool = WorkerPool(self.workers)
            return self._pool

    def _start_tasks(self, images: list, names: list, only: list[int] | None = None) -> list:
        """Worker tasks for the images worth sending (paths and bytes; PIL images stay here)."""
        idx = [i for i in (range(len(images)) if only is None else only) if not isinstance(images[i], Image.Image)]
        size = max(1, min(TASK_SIZE, -(-len(idx) // max(1, self.workers))))
        pool = self._executor()
        tasks = []
        for k in range(0, len(idx), size):
            part = idx[k:k + size]
            tasks.append((part, pool.submit(decode_task, [images[i] for i in part], [names[i] for i in part],
                                            self.plan)))
        return tasks

    def _pool_results(self, images: list, names: list, tasks: list) -> dict[int, np.ndarray | str]:
        """{index: array or error} from the worker tasks.

        A task whose worker died: if no task has ever come back from this loader's workers, they
        cannot run here (the interpreter refuses to start, or cannot import this package), so a
        warning says so, with the workers' last words, and this loader decodes in this process
        from now on. Otherwise the pool is restarted and the task's images are retried
        one per task; an image that kills a worker again is that image's error.
        """
        out: dict[int, np.ndarray | str] = {}
        retry: list[int] = []
        why = ""
        for part, fut in tasks:
            try:
                for i, r in zip(part, fut.result()):
                    out[i] = r
                self._worked = True
            except BrokenProcessPool as e:
                retry += part
                why = why or str(e)
        if retry and not self._worked:
            self._restart()
            self.workers = 0
            warnings.warn(f"decode worker processes could not start ({why or 'no reason given'}); decoding images "
                          "in this process instead (decode_workers=0 / --decode-workers 0 says so up front)",
                          DecodeWorkersUnavailable, stacklevel=2)
            return out  # the caller decodes the rest in this process
        if retry:
            self._restart()
            for i in retry:
                try:
                    out[i] = self._executor().submit(decode_task, [images[i]], [names[i]], self.plan).result()[0]
                except BrokenProcessPool:
                    self._restart()
                    out[i] = (f"cannot load image {_label(images[i], names[i])!r}: the decoder process died "
                              "while decoding it (a crash in the image library); the file is likely malformed")
        return out

    def _restart(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.stats["worker_restarts"] += 1

    def _gpu_decode(self, images: list, names: list) -> tuple[dict[int, Any], list[int]]:
        """({index: (3, h, w) uint8 on the device}, indices the GPU decoder did not take)."""
        cands = {i: gpu_candidate(im) for i, im in enumerate(images)}
        take = [i for i, d in cands.items() if d is not None]
        rest = [i for i, d in cands.items() if d is None]
        got: dict[int, Any] = {}
        if take:
            try:
                decoded = self.gpu_decoder.decode([cands[i] for i in take])
            except Exception as e:  # noqa: BLE001  (the decoder as a whole failed: every image to the workers)
                decoded = [e] * len(take)
            for i, t in zip(take, decoded):
                if isinstance(t, BaseException) or t is None or getattr(t, "ndim", 0) != 3 or t.shape[0] != 3 \
                        or min(t.shape[1:]) < 1:
                    rest.append(i)
                    self.stats["gpu_refused"] += 1
                    continue
                try:
                    got[i] = resize_crop_tensor_on(t, self.plan)
                except Exception:  # noqa: BLE001  (a refusal after decoding: the workers try it)
                    rest.append(i)
                    self.stats["gpu_refused"] += 1
        return got, sorted(rest)

    def _collect(self, images: list, names: list, tasks: list | None) -> DecodedBatch:
        import torch

        gpu: dict[int, Any] = {}
        if self.gpu_decoder is not None:
            gpu, rest = self._gpu_decode(images, names)
            self.stats["gpu"] += len(gpu)
            if rest and self.workers > 0 and len(images) >= MIN_POOL_BATCH:
                tasks = self._start_tasks(images, names, rest)
            else:
                tasks = None
        else:
            rest = list(range(len(images)))
        host = self._pool_results(images, names, tasks) if tasks else {}
        if tasks:
            self.stats["pool"] += len(host)
        for i in rest:  # PIL images, and everything when no pool is used
            if i not in host:
                host[i] = decode_one(images[i], names[i], self.plan)
                self.stats["inline"] += 1
        errors = {i: r for i, r in host.items() if isinstance(r, str)}
        good = np.array(sorted([i for i, r in host.items() if not isinstance(r, str)] + list(gpu)), dtype=np.int64)
        h, w = self.plan.out_hw
        host_rows = [i for i in good if i not in gpu]
        pixels = torch.empty((len(host_rows), h, w, 3), dtype=torch.uint8, pin_memory=self.cuda)
        view = pixels.numpy()
        for j, i in enumerate(host_rows):
            view[j] = host[i]  # a copy into the (pinned) batch
        # (n, 3, h, w) as a view of the (n, h, w, 3) rows: channels-last memory, which is what CPU
        # convolutions run fastest on (the offline model ~30% faster than on NCHW); kept that way
        pixels = pixels.permute(0, 3, 1, 2)
        ready = None
        if self.cuda:
            stream = self._stream if self._stream is not None else torch.cuda.current_stream(self.device)
            with torch.cuda.stream(stream):
                dev = pixels.to(self.device, non_blocking=True)
                if gpu:
                    order = {i: j for j, i in enumerate(host_rows)}
                    rows = [gpu[i] if i in gpu else dev[order[i]] for i in good]
                    dev = torch.stack(rows) if rows else dev
                ready = torch.cuda.Event()
                ready.record(stream)
            pixels = dev
        elif gpu:  # a fake GPU decoder in tests: tensors on the host
            order = {i: j for j, i in enumerate(host_rows)}
            pixels = torch.stack([gpu[i].cpu() if i in gpu else pixels[order[i]] for i in good]) \
                if len(good) else pixels
        return DecodedBatch(pixels.contiguous(memory_format=torch.channels_last), good, errors, len(gpu), ready)


def resize_crop_tensor_on(t: Any, plan: PixelPlan) -> Any:
    """:func:`engine.encoders.pixels.resize_crop_tensor`, named here so tests can see the GPU path's step."""
    return resize_crop_tensor(t, plan)
