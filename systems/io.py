"""Loading and saving systems: files, shipped names, mappings."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from engine.common.files import SYSTEM_FILE_LIMIT, atomic_write_text, read_bytes_capped
from systems.format import AttributeSystem
from systems.validate import SystemValidationError, parse_system

SHIPPED_DIR = Path(__file__).resolve().parent
SystemLike = Union[AttributeSystem, Mapping, str, os.PathLike]


def list_systems() -> list[str]:
    """Names of the systems shipped in this package (loadable by name)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook: a JSON object that repeats a key is an error, not a silent overwrite."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}; every group, class and key must be unique")
        out[k] = v
    return out


def read_json(path: Path) -> Any:
    """Parse a JSON file strictly: UTF-8, no comments, no duplicate keys.

    Read through the guarded reader (:func:`engine.common.files.read_bytes_capped`): a FIFO, a device or a
    file over 256 MiB is refused unread (``UnreadableInput``, exit 2)."""
    source = str(path)
    try:
        raw = read_bytes_capped(path, SYSTEM_FILE_LIMIT, what="system file")
    except OSError as e:
        raise SystemValidationError(source, [f"cannot read the file: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SystemValidationError(source, [f"byte {e.start}: not UTF-8; re-save the file as UTF-8"]) from None
    try:
        return json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as e:
        hint = " (comments are not JSON; remove them)" if text[e.pos:e.pos + 2] in ("//", "/*") or \
            text[e.pos:e.pos + 1] == "#" else ""
        raise SystemValidationError(source, [f"line {e.lineno} column {e.colno}: {e.msg}{hint}"]) from None
    except ValueError as e:  # duplicate keys: the hook's message already says what must be unique
        raise SystemValidationError(source, [str(e)]) from None
    except RecursionError:
        raise SystemValidationError(source, ["JSON nested too deeply to be a system"]) from None


def load_system(spec: SystemLike) -> AttributeSystem:
    """A system from an object, a mapping, a JSON path or a shipped name (``"pokemon15"``).

    Raises
    ------
    SystemValidationError
        when the data is not a valid system (every problem listed).
    FileNotFoundError
        when ``spec`` is neither an existing file nor a shipped name.
    """
    if isinstance(spec, AttributeSystem):
        return spec
    if isinstance(spec, Mapping):
        return parse_system(spec)
    path = Path(spec)
    if not path.is_file() and not (path.exists() and not path.is_dir()):  # a FIFO or device: read_json refuses it
        shipped = SHIPPED_DIR / f"{spec}.json"
        if isinstance(spec, str) and os.sep not in spec and shipped.is_file():
            path = shipped
        elif path.is_dir():
            raise FileNotFoundError(f"system {str(spec)!r} is a directory; pass a system JSON file")
        else:
            raise FileNotFoundError(
                f"system {str(spec)!r} not found: pass a JSON file or a shipped name ({', '.join(list_systems())})")
    data = read_json(path)
    if isinstance(data, dict) and "name" not in data:
        data = {"name": path.stem, **data}
    return parse_system(data, source=str(path))


def save_system(system: AttributeSystem, path: str | os.PathLike) -> Path:
    """Write the canonical JSON atomically (temp file + rename)."""
    return atomic_write_text(path, json.dumps(system.to_dict(), ensure_ascii=False, indent=2) + "\n")
