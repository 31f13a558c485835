"""The server's decode memory: what an upload will cost before it is decoded, a budget requests reserve
it from, and handing freed memory back to the operating system.

Why (issue 27): small, highly compressible PNGs (6000×6000 in ~105 KB) made the server decode everything
at once, 4.5 GB for 10 concurrent requests, and glibc kept most of it afterwards.

- :func:`decode_cost` is the peak a decode of one image takes, from its header alone (size and mode):
  Pillow holds 1 byte per pixel for 1/L/P, 2 for 16-bit greyscale and 4 for everything else (RGB is
  stored as 4), and ``engine.encoders.images`` makes copies on the way to RGB (the EXIF transpose,
  the alpha composite on white, a float64 rescale for 16-bit and float images). The factors below
  are the copies alive at once, checked against measured peaks by ``bench.serve --memory``.
- :func:`kept_cost` is what a decoded image keeps until the model has embedded it: an RGB image of at
  most ``MAX_SIDE`` on its long side.
- :class:`MemoryBudget` is a byte budget on the event loop, handed out first come, first served: a
  request reserves all its kept images plus its largest decode at once (its images are decoded one
  after another), so no request holds part of the budget while waiting for the rest (no deadlock).
  A request whose need exceeds the whole budget takes the whole budget and runs alone.
- :func:`trim_malloc` (glibc only, a no-op elsewhere): once no request holds decode memory, the heap's
  free pages are given back to the system (``malloc_trim``). Measured by ``bench.serve --memory``: the
  after-load RSS is within a few percent of the baseline with it (glibc kept 3.96 GB of 4.5 GB before);
  fixing glibc's mmap threshold (``mallopt``) was not needed on top.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import math

from engine.encoders.images import MAX_SIDE

# bytes per pixel alive at once while one image of this mode is decoded and brought to RGB
_PEAK_BYTES_PER_PIXEL = {
    "1": 6, "L": 6, "P": 6,  # 1 decoded + 1 EXIF copy + 4 RGB
    "LA": 24, "La": 24, "PA": 24, "RGBA": 24, "RGBa": 24,  # 4 + 4 copy + RGBA, background, composite, RGB
    "RGB": 9, "RGBX": 9,  # 4 decoded + 4 EXIF copy (+1: decoder buffers; measured 8.0 + the resize below)
    "CMYK": 12, "YCbCr": 12, "LAB": 12, "HSV": 12,  # 4 + 4 copy + 4 RGB
    "I;16": 34, "I;16B": 34, "I;16L": 34, "I;16N": 34,  # 2 + 2 copy + 3 float64 arrays + L + RGB
    "I": 40, "F": 40,  # 4 + 4 copy + 3 float64 arrays + L + RGB
}
# a transparent colour (PNG tRNS, GIF) composites on white too: RGBA, background and composite
_TRANSPARENCY_EXTRA = {"1": 12, "L": 12, "P": 12, "RGB": 16}
_DEFAULT_PEAK = 40  # a mode not listed: assume the worst listed


def decode_cost(width: int, height: int, mode: str, transparency: bool = False, decoder_buffers: int = 0) -> int:
    """Peak bytes one image takes while it is decoded and converted, from its header (width, height,
    Pillow mode, whether it declares a transparent colour, the format decoder's own buffers:
    :func:`engine.encoders.images.decoder_buffers`); includes the downscaled copy it ends as."""
    w, h = int(width), int(height)
    per_pixel = _PEAK_BYTES_PER_PIXEL.get(mode, _DEFAULT_PEAK)
    per_pixel += _TRANSPARENCY_EXTRA.get(mode, 0) if transparency else 0
    return w * h * per_pixel + int(decoder_buffers) + _resize_cost(w, h) + kept_cost(w, h)


def _resize_cost(w: int, h: int) -> int:
    """The intermediate of a two-pass downscale to MAX_SIDE (one side reduced, the other not yet): RGB."""
    if max(w, h) <= MAX_SIDE:
        return 0
    r = MAX_SIDE / max(w, h)
    return 4 * max(math.ceil(w * r) * h, w * math.ceil(h * r))


def kept_cost(width: int, height: int) -> int:
    """Bytes a decoded image keeps until it is embedded: RGB (4 bytes a pixel in Pillow), long side at
    most MAX_SIDE."""
    w, h = int(width), int(height)
    r = min(1.0, MAX_SIDE / max(w, h, 1))
    return max(1, math.ceil(w * r)) * max(1, math.ceil(h * r)) * 4


def request_cost(headers: list[tuple[int, int, str, bool, int]]) -> int:
    """Bytes a request of these images (width, height, mode, transparency, decoder buffers: the
    :attr:`engine.serve.uploads.Header.cost` tuple) reserves: every kept image plus the largest decode (they
    are decoded one after another)."""
    if not headers:
        return 0
    kept = sum(kept_cost(h[0], h[1]) for h in headers)
    return kept + max(decode_cost(*h) - kept_cost(h[0], h[1]) for h in headers)


class BudgetTimeout(Exception):
    """No budget within the wait; ``retry_after_s`` is a hint for the client."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"no decode memory within the wait; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class _Expired(Exception):
    pass


def _expire(fut) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class MemoryBudget:
    """A byte budget shared by the requests of one event loop, first come, first served.

    capacity : bytes. ``acquire(n, timeout)`` waits until ``n`` (at most the capacity) fits and no
    earlier request is still waiting; it returns the bytes reserved, to be given back with
    ``release``. Only the event loop's thread may call it.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity == {capacity!r}, must be >= 1")
        self.capacity = int(capacity)
        self.used = 0
        self.peak = 0  # the most reserved at once
        self.refused = 0  # acquires that ran out of time
        self._waiters: collections.deque = collections.deque()  # (n, future), in arrival order

    @property
    def waiting(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())

    async def acquire(self, n: int, timeout: float) -> int:
        n = max(0, min(int(n), self.capacity))
        if not self._waiters and self.used + n <= self.capacity:
            self._take(n)
            return n
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # (not asyncio.wait_for: it swallows a cancellation that arrives just as the future is granted)
        timer = loop.call_later(max(0.0, timeout), _expire, fut)
        self._waiters.append((n, fut))
        try:
            await fut
        except _Expired:
            self._drop(fut)
            self._wake()  # this request may have been the head that others waited behind
            self.refused += 1
            raise BudgetTimeout(max(1, math.ceil(timeout))) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(n)  # granted just as the caller gave up: give it back
            else:
                self._drop(fut)
                self._wake()
            raise
        finally:
            timer.cancel()
        return n

    def release(self, n: int) -> None:
        self.used -= int(n)
        if self.used < 0:
            raise RuntimeError(f"released more decode memory than reserved ({self.used} bytes)")
        self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _drop(self, fut) -> None:
        self._waiters = collections.deque((n, f) for n, f in self._waiters if f is not fut)

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():  # cancelled or timed out
                self._waiters.popleft()
                continue
            if self.used + n > self.capacity:
                return
            self._waiters.popleft()
            self._take(n)
            fut.set_result(None)


# --------------------------------------------------------------------------- glibc
def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def trim_malloc() -> bool:
    """Give the heap's free memory back to the system (glibc ``malloc_trim``); True if it ran. Called when
    no request holds decode memory; it costs milliseconds (the next decode faults its pages in again)."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True
