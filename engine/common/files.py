"""Files, done once for the whole project: atomic writes, bounded reads and the shared data.

This is the bottom layer (it imports only the standard library and numpy), so the
system format, the engine, the CLI and the benchmarks all use the same helpers:

- :func:`atomic_write` (and ``_text`` / ``_json``): temp file in the same folder, fsync,
  rename. Readers see the old file or the new one, never half of one; a failure leaves
  no file behind.
- :func:`open_guarded`, the one guarded reader every input file goes through (and
  :func:`read_bytes_capped` / :func:`read_text_capped` / :func:`read_json_capped` /
  :func:`hash_file` on top of it): ``stat`` first (a FIFO or device is never opened), then
  an ``O_NONBLOCK`` open and ``fstat`` of what was opened (a file swapped for a FIFO or a
  symlink to ``/dev/zero`` in between is refused too), then a size cap per kind of input
  (:data:`TEXT_INPUT_LIMIT`, :data:`SYSTEM_FILE_LIMIT`, :data:`SECRET_FILE_LIMIT`, :data:`IMAGE_FILE_LIMIT`), checked
  on the opened file's size and again while reading. A refusal is an :class:`UnreadableInput`
  (a :class:`~engine.common.errors.UserInputError`: exit 2, one line) or, for a missing file or a
  folder, FileNotFoundError / IsADirectoryError.
- :func:`shared_data_path`: the one resolver of ``shared/data`` (``$TWENTYQ_DATA`` first).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.common.errors import UserInputError

#: what a text input may weigh when read: drafts, tables, class and label lists, systems, templates,
#: descriptor and calibration files (text written by people, LLMs or twentyq; the largest real one,
#: a 10,000-class system, is a few MB)
TEXT_INPUT_LIMIT = 16 * 1024 * 1024
#: a system file: a 100,000-class system with 20 groups is ~22 MB, with 200 groups ~200 MB
SYSTEM_FILE_LIMIT = 256 * 1024 * 1024
#: an API key file: a secret is a line, not megabytes
SECRET_FILE_LIMIT = 64 * 1024
#: an image file read whole or hashed (Pillow itself streams; the pixel limit guards decoding)
IMAGE_FILE_LIMIT = 1024 * 1024 * 1024


def json_safe(x: Any) -> Any:
    """``x`` as plain JSON values: NaN/inf floats become null, numpy values and paths plain ones.

    The result dumps as strict JSON (no NaN tokens).
    """
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any] | bytes, *, mode: int = 0o644) -> int:
    """Write a file atomically and durably; return its size in bytes.

    ``write`` is the content (bytes) or a callable that writes the file at the temp
    path it is given (e.g. ``lambda tmp: pq.write_table(t, tmp)``). The temp file
    lives in the target's folder, is fsynced, given ``mode`` (not mkstemp's 0600) and
    renamed over ``path``; on any failure it is removed and the old file is kept.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if isinstance(write, (bytes, bytearray)):
            with os.fdopen(fd, "wb") as f:
                f.write(write)
        else:
            os.close(fd)
            write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
        return size
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (:func:`atomic_write`); returns the path."""
    atomic_write(path, text.encode("utf-8"))
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as strict JSON (NaN/inf as null) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(json_safe(data), ensure_ascii=False, indent=2, allow_nan=False) + "\n")


class UnreadableInput(UserInputError):
    """An input file refused before it is read: not a regular file (a FIFO, socket or device), or over its cap.

    ``cause`` is the reason alone, in words (for callers that wrap it in their own message).
    """

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(message)
        self.cause = message if cause is None else cause


class InputTooLarge(UnreadableInput):
    """An input over its size cap."""


def _too_large(path, what: str, limit: int) -> InputTooLarge:
    return InputTooLarge(f"{what} {str(path)!r} is larger than {limit:,} bytes; pass a smaller file",
                         f"larger than {limit:,} bytes, the limit for this kind of file")


def open_guarded(path: str | os.PathLike, limit: int | None = TEXT_INPUT_LIMIT, *, what: str = "input"):
    """A binary file object open on ``path``, which is a regular file of at most ``limit`` bytes.

    The one guarded reader: every input file the program reads is opened here. ``stat`` first (a
    FIFO or device is never opened: opening some devices has effects), then an ``O_NONBLOCK``
    open (a FIFO swapped in meanwhile cannot block it) and ``fstat`` of the opened file, which
    decides: a FIFO, socket, device (a symlink to ``/dev/zero`` included) or folder is refused
    (:func:`check_regular_file`'s errors), as is a file over ``limit`` (InputTooLarge). Callers
    that read it whole still read at most ``limit + 1`` bytes (a file can grow after the check).
    """
    check_regular_file(path, what=what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:
        raise _stat_error(path, e, what) from None
    try:
        st = os.fstat(fd)
        _check_mode(path, st, what)
        if limit is not None and st.st_size > limit:
            raise _too_large(path, what, limit)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes_capped(path: str | os.PathLike, limit: int = TEXT_INPUT_LIMIT, *, what: str = "input") -> bytes:
    """The bytes of a regular file (:func:`open_guarded`), or of stdin for ``-``, refusing more than ``limit``.

    Raises FileNotFoundError, IsADirectoryError or UnreadableInput with a one-line message naming
    the file and the fix.
    """
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open_guarded(path, limit, what=what) as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise _too_large(path, what, limit)
    return data


def hash_file(path: str | os.PathLike, limit: int | None = IMAGE_FILE_LIMIT, *, what: str = "file") -> str:
    """sha256 hex of a regular file's bytes, read through :func:`open_guarded` (same errors), in 1 MiB blocks."""
    h = hashlib.sha256()
    n = 0
    with open_guarded(path, limit, what=what) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += len(block)
            if limit is not None and n > limit:
                raise _too_large(path, what, limit)
            h.update(block)
    return h.hexdigest()


def read_text_capped(path: str | os.PathLike, limit: int = TEXT_INPUT_LIMIT, *, what: str = "input") -> str:
    """UTF-8 text (a BOM is dropped) of a regular file or stdin, capped as :func:`read_bytes_capped`."""
    data = read_bytes_capped(path, limit, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserInputError(f"{what} {str(path)!r} is not UTF-8 text; save it as UTF-8") from None


def stat_problem(e: BaseException) -> str:
    """A short cause, in words, for an error ``os.stat``/``open`` raised on a path."""
    code = getattr(e, "errno", None)
    if isinstance(e, ValueError):  # "embedded null byte"
        return f"not a usable path ({e})"
    if code == errno.ENOENT:
        return "no such file"
    if code == errno.ELOOP:
        return "a symlink loop (the link points, directly or not, back at itself); fix or remove the link"
    if code == errno.ENAMETOOLONG:
        return "the file name is too long for the file system"
    if code == errno.EACCES or isinstance(e, PermissionError):
        return "permission denied; the file or a folder above it is not readable by this user"
    if code == errno.ENOTDIR:
        return "no such file (a part of the path is a file, not a folder)"
    return f"cannot be opened ({getattr(e, 'strerror', None) or e})"


def read_json_capped(path: str | os.PathLike, *, what: str, shape: str, error: type[Exception] = UserInputError,
                     limit: int = TEXT_INPUT_LIMIT) -> Any:
    """Parse a small JSON input file (capped, :func:`read_text_capped`); a JSON error is ``error`` with
    one line naming the file, line and column, and the shape expected (e.g. 'a JSON list of strings').
    JSON nested too deeply for Python's parser (``[`` × 100,000) is the same error, not a RecursionError."""
    return parse_json_text(read_text_capped(path, limit, what=what), path, what=what, shape=shape, error=error)


def parse_json_text(text: str, path: str | os.PathLike, *, what: str, shape: str,
                    error: type[Exception] = UserInputError) -> Any:
    """``json.loads(text)`` of the input ``path`` with :func:`read_json_capped`'s one-line errors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {str(path)!r} line {e.lineno} column {e.colno}: {e.msg}; it must be {shape}") from None
    except RecursionError:
        raise error(f"{what} {str(path)!r}: JSON nested too deeply to parse; it must be {shape}") from None


def check_regular_file(path: str | os.PathLike, *, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file (links followed); a one-line error otherwise.

    Raises FileNotFoundError (missing, a symlink loop, a name too long ...),
    IsADirectoryError, or UnreadableInput (a UserInputError) for a FIFO, socket or
    device, each naming the path. Every one carries ``.cause``: the reason alone, in
    words (for callers that wrap it in their own message). Nothing is opened: to read
    the file, use :func:`open_guarded`, which also checks what it opened.
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ENOENT, ELOOP, ENAMETOOLONG, EACCES ..., or a NUL byte in the name
        raise _stat_error(path, e, what) from None
    _check_mode(path, st, what)
    return st


def _stat_error(path, e: BaseException, what: str) -> Exception:
    cause = stat_problem(e)
    err: Exception = FileNotFoundError(
        f"{what} {str(path)!r} not found" if cause == "no such file" else f"{what} {str(path)!r}: {cause}")
    err.cause = cause  # type: ignore[attr-defined]
    return err


def _check_mode(path, st: os.stat_result, what: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        err = IsADirectoryError(f"{what} {str(path)!r} is a folder, not a file")
        err.cause = "is a directory, not a file"  # type: ignore[attr-defined]
        raise err
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableInput(f"{what} {str(path)!r} is not a regular file (a FIFO, socket or device); pass a file",
                              "not a regular file (a FIFO, socket or device), so it is not read")


def shared_data_root() -> Path:
    """The shared data folder: ``$TWENTYQ_DATA`` if set, else the first ``shared/data`` found beside
    the working directory or beside this checkout. The one place that finds it.

    Always a path; callers check ``.exists()`` (when nothing is found it is where the
    checkout expects it, ``../shared/data``, so messages can name it).
    """
    env = os.environ.get("TWENTYQ_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]
    candidates = [base / "shared" / "data" for base in (Path.cwd().parent, here.parent, Path.cwd())]
    return next((c for c in candidates if c.is_dir()), here.parent / "shared" / "data")


def shared_data_path(rel: str | os.PathLike) -> Path | None:
    """``<shared data>/<rel>`` when it exists (see :func:`shared_data_root`), else None."""
    root = shared_data_root()
    if (root / rel).exists():
        return root / rel
    return None
