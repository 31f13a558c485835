"""The server's settings: the model it loads, the systems it serves and its limits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.common.files import SECRET_FILE_LIMIT, UnreadableInput, read_text_capped
from engine.run.config import EncoderSpec

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # a request body: a few phone photos, base64 included
DEFAULT_MAX_IMAGES = 16  # images in one request
DEFAULT_MAX_PIXELS = 40_000_000  # one image, read from its header before decoding (~120 MB as RGB)
DEFAULT_MAX_BATCH = 32  # images per model batch gathered across requests
DEFAULT_MAX_WAIT_MS = 10.0  # how long the first request of a batch waits for company
DEFAULT_TIMEOUT_S = 60.0  # one request, from its body read to its answer
# Decoding uploads: at most this many bytes at once (engine/serve/memory.py estimates each image's peak
# from its header). Sized for a 2-core, 24 GiB machine: the offline model's server idles at ~0.5 GB, so
# 768 MiB keeps it under ~1.5 GB, and 2 cores decode no faster with more images in flight. One image
# whose estimate is larger than the whole budget (a 40 MP RGBA PNG: ~1 GB) still runs, alone.
DEFAULT_MAX_DECODE_MEMORY = 768 * 1024 * 1024
DEFAULT_DECODE_WAIT_S = 10.0  # how long a request may wait for decode memory before a 503 + Retry-After
DEFAULT_READ_TIMEOUT_S = 30.0  # a request's headers, and then its body, must arrive within this


def _whole(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} == {v!r}, must be a whole number >= {lo}")


def _number(name: str, v, lo: float, *, open_lo: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or \
            (open_lo and v == lo):
        raise ValueError(f"{name} == {v!r}, must be a finite number {'>' if open_lo else '>='} {lo}")


@dataclass(frozen=True)
class ServeSettings:
    """What ``twentyq serve`` was started with; checked when built (ValueError naming the flag).

    encoder : the model to load (remote code only if its ``trust_remote_code`` is set, at start-up).
    systems : system names or JSON paths; the first is the default, requests pick one by its name.
    calibrations : calibration files or shipped names (``twentyq calibrate``), each used by the served system it
        was made for (its recorded system name); at most one per system.
    max_batch : images per model batch, gathered across concurrent requests (1: no batching).
    max_wait_ms : how long the first request of a batch waits for others to join it.
    max_images, max_bytes, max_pixels : per request, per request body, per image (read from the header).
    timeout_s : per request, from the end of its upload to its answer (504 past it).
    max_decode_memory : bytes all requests together may use to decode images at once (see memory.py).
    decode_wait_s : how long a request waits for decode memory before it is answered 503 + Retry-After.
    read_timeout_s : a request's headers, then its body, must arrive within this many seconds.
    api_key : if set, everything but ``/v1/health`` (reduced to status and version) and the page
        (``/``, ``/static/*``) needs it (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), compared
        as UTF-8 bytes.
    """

    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    systems: tuple[str, ...] = ("pokemon15",)
    calibrations: tuple[str, ...] = ()
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_images: int = DEFAULT_MAX_IMAGES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_decode_memory: int = DEFAULT_MAX_DECODE_MEMORY
    decode_wait_s: float = DEFAULT_DECODE_WAIT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self):
        from engine.encoders.images import MAX_IMAGE_PIXELS  # (imports torch: not at parser-build time)

        if not self.systems or not all(isinstance(s, str) and s.strip() for s in self.systems):
            raise ValueError(f"--system {list(self.systems)!r}: name at least one system (a shipped name or a "
                             "JSON file; `twentyq system list` lists the shipped ones)")
        if not all(isinstance(c, str) and c.strip() for c in self.calibrations):
            raise ValueError(f"--calibration {list(self.calibrations)!r}: give a file made by 'twentyq calibrate' or "
                             "the name of a shipped calibration")
        if "-" in (c.strip() for c in self.calibrations):
            raise ValueError("--calibration -: the server does not read a calibration from standard input; give its "
                             "file")
        _whole("--max-batch", self.max_batch, 1)
        _number("--max-wait-ms", self.max_wait_ms, 0)
        _whole("--max-images", self.max_images, 1)
        _whole("--max-bytes", self.max_bytes, 1024)
        _whole("--max-pixels", self.max_pixels, 1)
        if self.max_pixels > MAX_IMAGE_PIXELS:
            raise ValueError(f"--max-pixels == {self.max_pixels:,} is over the engine's own limit of "
                             f"{MAX_IMAGE_PIXELS:,} pixels per image; pass at most that")
        _number("--timeout-s", self.timeout_s, 0, open_lo=True)
        _whole("--max-decode-memory", self.max_decode_memory, 1024 * 1024)
        _number("--decode-wait-s", self.decode_wait_s, 0)
        _number("--read-timeout-s", self.read_timeout_s, 0, open_lo=True)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()
                                         or any(c.isspace() for c in self.api_key.strip())):
            raise ValueError("the API key must be one non-empty word (no spaces); check --api-key-file")


def read_api_key(path: str) -> str:
    """The key in ``path`` (surrounding whitespace and a final newline dropped); ValueError if unusable."""
    try:  # the guarded reader: a FIFO, /dev/zero or a file over 64 KiB is refused unread
        text = read_text_capped(path, SECRET_FILE_LIMIT, what="--api-key-file")
    except FileNotFoundError:
        raise ValueError(f"--api-key-file {path!r}: no such file; write the key into it (one line)") from None
    except UnreadableInput:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"--api-key-file {path!r}: cannot read it ({e})") from None
    key = text.strip()
    if not key:
        raise ValueError(f"--api-key-file {path!r} is empty; write the key into it (one line)")
    if any(c.isspace() for c in key):
        raise ValueError(f"--api-key-file {path!r}: the key must be one line with no spaces")
    return key
