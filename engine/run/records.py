"""Result records on disk: strict JSON summaries and the resumable JSON-lines stream.

``eval`` streams one JSON object per image to ``OUT.jsonl`` as results are
produced and writes the summary to ``OUT.json`` at the end; these helpers make
that safe to interrupt and to resume.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from systems.files import atomic_write_json, atomic_write_text, json_safe  # noqa: F401  (re-exported)

from engine.run.datasets import Dataset
from engine.core.results import Result


def read_streamed(path, warn=None) -> list[dict]:
    """The records of an OUT.jsonl stream, for ``--resume``.

    Every complete line that parses as a JSON object with an ``image`` is kept. A
    torn line (a process killed mid-write) or any other bad line is dropped, and
    the file is rewritten without it, so appending after it stays valid JSON lines.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records, lines, dropped = [], [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True):
        try:
            if not line.endswith("\n"):
                raise ValueError("torn line")
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                raise ValueError("not a record")
        except ValueError:
            dropped += 1
            continue
        records.append(rec)
        lines.append(line)
    if dropped:
        atomic_write_text(path, "".join(lines))
        if warn:
            warn(f"--resume: dropped {dropped} incomplete line(s) from {path}")
    return records


def split_done(ds, records):
    """Split a dataset into the (result, item) rows already streamed and the dataset still to do.

    Each record takes one item with the same path (so duplicates in the data are
    done as often as they are listed); records of images not in the data are ignored.
    """
    done = Counter(rec["image"] for rec in records)
    todo, matched = [], {}
    for it in ds.items:
        if done[it.path] > 0:
            done[it.path] -= 1
            matched.setdefault(it.path, []).append(it)
        else:
            todo.append(it)
    rows = []
    for rec in records:
        items = matched.get(rec["image"])
        if items:
            rec = {k: v for k, v in rec.items() if k != "true_label"}
            rows.append((Result.from_dict(rec), items.pop(0)))
    return rows, Dataset(ds.name, tuple(todo))
