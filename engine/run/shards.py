"""Results as Arrow tables, and a resumable folder of result shards (used by the ``--ray`` runs).

No Ray here: this module needs only pyarrow (which ``twentyq[ray]`` brings), imported lazily.

Arrow form of a result
----------------------
One row per image with the keys of ``Result.to_dict()`` (what ``twentyq classify --json``
prints), plus ``true_label`` when the input had labels (as in ``eval``'s ``OUT.jsonl``):
``label`` string, ``confidence`` double, ``top`` list<struct<label, prob>>, ``q_spent`` int64,
``stop`` string, ``image`` string, ``error`` string, ``asked`` list<struct<group, eig, answer,
answer_prob, confidence_after>>. JSON writes ``top`` as ``[label, prob]`` pairs; Arrow lists
hold one type, so there each pair is a struct. :func:`records_from_arrow` turns rows back into
exactly the JSON dicts. (``Result.extra`` is not carried; the engine sets none.)

Shard folder
------------
``OUT`` (its name ends in ``.jsonl`` or ``.parquet``, which picks the format) holds::

    _manifest.json          what the run is: input fingerprint, shard size, number of shards, format
    shard-00012.jsonl       the results of input rows [12*S, 13*S), in input order
    _shard-00012.done       written after the shard file: {"rows": n, "bytes": size, "errors": bad images}

Both files are written to a temp name in the folder, fsynced and renamed, so a
process killed at any moment leaves each shard either finished (file and marker)
or not there; a rerun with ``resume=True`` skips the finished ones. Names starting
with ``_`` or ``.`` are skipped by Parquet readers, so ``pandas.read_parquet(OUT)``
reads the results alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.core.results import Result

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
MANIFEST = "_manifest.json"
STORE_FORMAT = "twentyq-shards-v1"


def result_schema(labels: bool = False, extra: Sequence[Any] = ()):
    """The Arrow schema of result rows (``true_label`` when ``labels``; ``extra`` pa.fields appended)."""
    import pyarrow as pa

    fields = [
        pa.field("label", pa.string()), pa.field("confidence", pa.float64()),
        pa.field("top", pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))),
        pa.field("q_spent", pa.int64()), pa.field("stop", pa.string()), pa.field("image", pa.string()),
        pa.field("error", pa.string()),
        pa.field("asked", pa.list_(pa.struct([("group", pa.string()), ("eig", pa.float64()),
                                               ("answer", pa.string()), ("answer_prob", pa.float64()),
                                               ("confidence_after", pa.float64())]))),
    ]
    if labels:
        fields.append(pa.field("true_label", pa.string()))
    return pa.schema(fields + list(extra))


def results_to_arrow(results: Sequence[Result], true_labels: Sequence[str] | None = None, extra=None):
    """An Arrow table of ``results`` (n rows); ``extra`` is {name: pa.Array of n} appended as columns."""
    import pyarrow as pa

    cols: dict[str, list] = {
        "label": [r.label for r in results], "confidence": [float(r.confidence) for r in results],
        "top": [[{"label": lab, "prob": float(p)} for lab, p in r.top] for r in results],
        "q_spent": [int(r.q_spent) for r in results], "stop": [r.stop for r in results],
        "image": [r.image for r in results], "error": [r.error for r in results],
        "asked": [[asdict(s) for s in r.steps] for r in results],
    }
    if true_labels is not None:
        cols["true_label"] = list(true_labels)
    extra = dict(extra or {})
    schema = result_schema(true_labels is not None, [pa.field(k, v.type) for k, v in extra.items()])
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema if f.name in cols]
                                + list(extra.values()), schema=schema)


def records_from_arrow(table) -> list[dict[str, Any]]:
    """The rows of a result table as ``Result.to_dict()`` dicts, keys in its order (+ ``true_label``).

    Built directly rather than through ``Result`` (five times faster; the driver writes every row).
    """
    cols = [c for c in table.column_names if not c.startswith("_")]
    has_truth = "true_label" in cols
    out = []
    for row in table.select(cols).to_pylist():
        d = {"label": row["label"], "confidence": row["confidence"],
             "top": [[t["label"], t["prob"]] for t in row["top"] or []], "q_spent": row["q_spent"],
             "stop": row["stop"], "image": row["image"], "error": row["error"], "asked": row["asked"] or []}
        if has_truth:
            d["true_label"] = row["true_label"]
        out.append(d)
    return out


def out_format(out: str | os.PathLike) -> str:
    """'jsonl' or 'parquet' from OUT's extension; ValueError naming the fix otherwise."""
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {str(out)!r}: with --ray, --out is a folder of result shards whose name ends in "
                         f".jsonl or .parquet (the format), e.g. --out run.jsonl")
    return fmt


def fingerprint(names: Iterable[str], labels: Iterable[str] | None, settings: dict[str, Any]) -> str:
    """sha256 over the input rows (names, labels) and the settings that change results."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in names:
        h.update(name.encode("utf-8", "surrogatepass") + b"\0")
    for lab in labels or ():
        h.update(lab.encode("utf-8", "surrogatepass") + b"\1")
    return h.hexdigest()


def _atomic_write_bytes(path: Path, write) -> int:
    """Call ``write(tmp_path)``, fsync, rename to ``path``; return the file's size."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
        return size
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardStore:
    """A folder of result shards for one run (see the module docstring).

    Use :meth:`open`; then ``pending()`` lists the shards to do, ``write(k, table)``
    finishes shard k, ``read_all()`` returns every record in input order.
    """

    def __init__(self, root: Path, fmt: str, n_rows: int, shard_size: int):
        self.root, self.format, self.n_rows, self.shard_size = root, fmt, n_rows, shard_size
        self.n_shards = -(-n_rows // shard_size) if n_rows else 0

    @classmethod
    def open(cls, out: str | os.PathLike, *, n_rows: int, shard_size: int, fingerprint: str,
             resume: bool) -> "ShardStore":
        """Create OUT, or reopen it with ``resume``; ValueError when OUT holds another run."""
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard size == {shard_size!r}, must be a whole number >= 1")
        root = Path(out)
        fmt = out_format(root)
        if root.exists() and not root.is_dir():
            raise ValueError(f"--out {str(root)!r} is a file; with --ray --out names a folder of shards: "
                             "pass a new name")
        store = cls(root, fmt, n_rows, shard_size)
        manifest = {"format": STORE_FORMAT, "fingerprint": fingerprint, "rows": n_rows, "shard_size": shard_size,
                    "shards": store.n_shards, "out_format": fmt}
        path = root / MANIFEST
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if not resume:
                raise ValueError(f"{root} already holds a run ({len(store.done())} of {store.n_shards} shard(s) "
                                 "done); pass --resume to finish it, or choose a new --out")
            if old != manifest:
                raise ValueError(f"{root} was written for a different input or settings (or shard size); "
                                 "rerun with the same ones to resume it, or choose a new --out")
        elif root.is_dir() and any(root.iterdir()):
            raise ValueError(f"--out {str(root)!r} is a folder that is not empty and holds no twentyq run; "
                             "choose a new --out")
        else:
            root.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n",
                                                                        encoding="utf-8"))
        return store

    # -- naming ---------------------------------------------------------------------------
    def shard_path(self, k: int) -> Path:
        return self.root / f"shard-{k:05d}.{self.format}"

    def marker_path(self, k: int) -> Path:
        return self.root / f"_shard-{k:05d}.done"

    def rows_of(self, k: int) -> range:
        """The input rows of shard k."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n_rows))

    # -- state ----------------------------------------------------------------------------
    def done(self) -> set[int]:
        """Shards whose file and marker are both there and agree (rows and size)."""
        out = set()
        for k in range(self.n_shards):
            try:
                mark = json.loads(self.marker_path(k).read_text(encoding="utf-8"))
                if (mark.get("rows") == len(self.rows_of(k))
                        and mark.get("bytes") == self.shard_path(k).stat().st_size):
                    out.add(k)
            except (OSError, ValueError, AttributeError):
                continue
        return out

    def errors(self) -> int:
        """Error rows (bad images) in the finished shards, from their markers."""
        total = 0
        for k in self.done():
            total += int(json.loads(self.marker_path(k).read_text(encoding="utf-8")).get("errors", 0))
        return total

    def pending(self) -> list[int]:
        done = self.done()
        return [k for k in range(self.n_shards) if k not in done]

    # -- writing and reading ----------------------------------------------------------------
    def write(self, k: int, table) -> None:
        """Finish shard k from its result table (rows in input order; ``_`` columns are dropped)."""
        table = table.select([c for c in table.column_names if not c.startswith("_")])
        if table.num_rows != len(self.rows_of(k)):
            raise ValueError(f"shard {k}: {table.num_rows} result rows for {len(self.rows_of(k))} input rows")
        if self.format == "parquet":
            import pyarrow.parquet as pq

            size = _atomic_write_bytes(self.shard_path(k), lambda tmp: pq.write_table(table, tmp))
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records_from_arrow(table))
            size = _atomic_write_bytes(self.shard_path(k), lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")))
        errors = table.num_rows - table.column("error").null_count
        mark = json.dumps({"rows": table.num_rows, "bytes": size, "errors": errors}) + "\n"
        _atomic_write_bytes(self.marker_path(k), lambda tmp: Path(tmp).write_text(mark, encoding="utf-8"))

    def read(self, k: int) -> list[dict[str, Any]]:
        """Shard k's records (``Result.to_dict()`` dicts, + ``true_label``)."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return records_from_arrow(pq.read_table(self.shard_path(k)))
        with self.shard_path(k).open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def read_all(self, shards: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The records of the given shards (default: all), in input order."""
        return [rec for k in (range(self.n_shards) if shards is None else sorted(shards)) for rec in self.read(k)]
