"""Files, done once for the whole project: atomic writes, bounded reads and the shared data.

This is the bottom layer (it imports only the standard library and numpy), so the
system format, the engine, the CLI and the benchmarks all use the same helpers:

- :func:`atomic_write` (and ``_text`` / ``_json``): temp file in the same folder, fsync,
  rename. Readers see the old file or the new one, never half of one; a failure leaves
  no file behind.
- :func:`read_bytes_capped` / :func:`read_text_capped`: read a regular file (or stdin)
  only up to a stated size, so ``/dev/zero`` or a FIFO cannot eat the memory or hang.
- :func:`shared_data_path`: the one resolver of ``shared/data`` (``$TWENTYQ_DATA`` first).
"""

from __future__ import annotations

import errno
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

#: what drafts, tables and class lists may weigh when read (they are text written by people or LLMs)
TEXT_INPUT_LIMIT = 16 * 1024 * 1024


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


class InputTooLarge(ValueError):
    """A text input over its size cap."""


def read_bytes_capped(path: str | os.PathLike, limit: int = TEXT_INPUT_LIMIT, *, what: str = "input") -> bytes:
    """The bytes of a regular file, or of stdin for ``-``, refusing more than ``limit`` bytes.

    A FIFO, device or folder is refused before it is opened (reading one could block
    forever or never end). Raises FileNotFoundError, IsADirectoryError or ValueError
    with a one-line message naming the file and the fix.
    """
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        check_regular_file(path, what=what)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(f"{what} {str(path)!r} is larger than {limit:,} bytes; pass a smaller file")
    return data


def read_text_capped(path: str | os.PathLike, limit: int = TEXT_INPUT_LIMIT, *, what: str = "input") -> str:
    """UTF-8 text (a BOM is dropped) of a regular file or stdin, capped as :func:`read_bytes_capped`."""
    data = read_bytes_capped(path, limit, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text; save it as UTF-8") from None


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


def read_json_capped(path: str | os.PathLike, *, what: str, shape: str, error: type[Exception] = ValueError) -> Any:
    """Parse a small JSON input file (capped, :func:`read_text_capped`); a JSON error is ``error`` with
    one line naming the file, line and column, and the shape expected (e.g. 'a JSON list of strings')."""
    text = read_text_capped(path, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {str(path)!r} line {e.lineno} column {e.colno}: {e.msg}; it must be {shape}") from None


def check_regular_file(path: str | os.PathLike, *, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file (links followed); a one-line error otherwise.

    Raises FileNotFoundError (missing, a symlink loop, a name too long ...),
    IsADirectoryError, or ValueError for a FIFO, socket or device, each naming
    the path. Every one carries ``.cause``: the reason alone, in words (for
    callers that wrap it in their own message).
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ENOENT, ELOOP, ENAMETOOLONG, EACCES ..., or a NUL byte in the name
        cause = stat_problem(e)
        err: Exception = FileNotFoundError(
            f"{what} {str(path)!r} not found" if cause == "no such file" else f"{what} {str(path)!r}: {cause}")
        err.cause = cause  # type: ignore[attr-defined]
        raise err from None
    if stat.S_ISDIR(st.st_mode):
        err = IsADirectoryError(f"{what} {str(path)!r} is a folder, not a file")
        err.cause = "is a directory, not a file"  # type: ignore[attr-defined]
        raise err
    if not stat.S_ISREG(st.st_mode):
        err = ValueError(f"{what} {str(path)!r} is not a regular file (a FIFO, socket or device); pass a file")
        err.cause = "not a regular file (a FIFO, socket or device), so it is not read"  # type: ignore[attr-defined]
        raise err
    return st


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
