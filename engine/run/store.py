"""Where results go: one sharded, resumable store for every executor, ending in one table.

The store writes :class:`engine.core.results.Result` s and reads them back: a result *record*, the
row of every file, is ``Result.to_dict(top_records=True)`` (what ``twentyq classify --json`` prints,
with ``top`` as ``{label, prob}`` records), ``true_label`` last when the input had labels. Each
format writes a record straight from its Result (Parquet from an Arrow table a Ray actor already
built, as it is), and reads it back as one. A run's ``--out RUN`` names the result **table**, a
file whose extension is its format (a plug-in in :data:`FORMATS`: ``.jsonl``, ``.parquet`` or
``.csv``). While the run works, and afterwards for ``--resume`` and ``twentyq report``, its
pieces live in the **run folder** ``RUN.d`` beside it (:func:`run_dir`)::

    run.csv                 the table: every record, one row each, in input order; written
                            (atomically, from the shards) when the last shard is done, so
                            pd.read_csv("run.csv") / pd.read_json("run.jsonl", lines=True) /
                            pd.read_parquet("run.parquet") read a finished run in one call
    run.csv.d/
      _manifest.json        what the run is: store format, settings fingerprint and the settings
                            themselves, rows, shard size, number of shards
      _lock                 held (flock) by the one process writing the run
      shard-00012.csv       the records of input rows [12*S, 13*S), in input order
      _shard-00012.done     written after the shard file: {"rows": n, "bytes": size, "errors": bad images}
      _summary.json         eval's summary (written by the caller, not by the store)

Every file is written atomically (:func:`engine.common.files.atomic_write`), so a process
killed at any moment leaves each shard either finished (file and marker) or absent, and
the table either absent or whole; ``resume=True`` skips the finished shards, and refuses a
run written with other settings (naming what differs). Names starting with ``_`` or ``.``
are skipped by Parquet readers, so ``pandas.read_parquet("run.parquet.d")`` reads the shards
finished so far. A folder ``RUN`` that itself holds ``_manifest.json`` (the layout before the
table existed) is still read as a run (:func:`read_run`, ``report``), not written.

One shape in every file: ``top`` is a list of ``{"label", "prob"}`` records (as are the
``top`` lists inside ``asked`` steps of a traced run). Arrow form (Parquet, Ray batches):
``label`` string, ``confidence`` double, ``top`` list<struct<label: string, prob: double>>,
``q_spent`` int64, ``stop`` string, ``image`` string, ``error`` string, ``asked``
list<struct<group, eig, answer, answer_prob, confidence_after>>, optional ``true_label``
string. JSON lines hold the same objects (``pyarrow.json.read_json`` infers that schema).
CSV holds one row per record, ``top`` and ``asked`` as JSON strings of those lists, and
neutralises spreadsheet formulas (:func:`csv_cell`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.common.errors import UserInputError
from engine.common.files import atomic_write, open_guarded, read_text_capped
from engine.core.results import Result, Step

MANIFEST, LOCK, SUMMARY = "_manifest.json", "_lock", "_summary.json"
STORE_FORMAT = "twentyq-shards-v3"  # v3: the table beside the run folder; top as {label, prob} in every file
#: the run folder of ``--out RUN`` is ``RUN`` + this
RUN_DIR_SUFFIX = ".d"


def run_dir(out: str | os.PathLike) -> Path:
    """The run folder of the result table ``out`` (``out`` + ``.d``); ``out`` itself when it is a folder
    holding a run (the earlier layout, or the run folder named directly)."""
    table = Path(out)
    if table.is_dir() and (table / MANIFEST).is_file():
        return table
    return table.with_name(table.name + RUN_DIR_SUFFIX)


def summary_path(out: str | os.PathLike) -> Path:
    """Where eval writes (and report reads) the summary of the run ``out``."""
    return run_dir(out) / SUMMARY


class StoreError(UserInputError):
    """An output folder that cannot be used as asked (the message names the cause and the fix)."""


# --------------------------------------------------------------------------- records
def result_schema(labels: bool = False, extra: Sequence[Any] = ()):
    """The Arrow schema of record rows (``true_label`` when ``labels``; ``extra`` pa.fields appended)."""
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


def results_to_arrow(results: Sequence[Result], extra: dict[str, Any] | None = None, labels: bool | None = None):
    """An Arrow table of results (n rows), built straight from them; ``extra`` is {name: pa.Array of n}
    appended as columns.

    ``true_label`` is a column when ``labels`` (default: when the results have one; all or none do).
    """
    import pyarrow as pa

    if labels is None:
        labels = bool(results) and results[0].true_label is not None
    cols: dict[str, list] = {
        "label": [r.label for r in results], "confidence": [float(r.confidence) for r in results],
        "top": [[{"label": lab, "prob": float(p)} for lab, p in r.top] for r in results],
        "q_spent": [int(r.q_spent) for r in results], "stop": [r.stop for r in results],
        "image": [r.image for r in results], "error": [r.error for r in results],
        "asked": [[{"group": s.group, "eig": s.eig, "answer": s.answer, "answer_prob": s.answer_prob,
                    "confidence_after": s.confidence_after} for s in r.steps] for r in results],
    }
    if labels:
        cols["true_label"] = [r.true_label for r in results]
    extra = dict(extra or {})
    schema = result_schema(labels, [pa.field(k, v.type) for k, v in extra.items()])
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema if f.name in cols]
                                + list(extra.values()), schema=schema)


def results_from_arrow(table) -> list[Result]:
    """The rows of a result table as Results (columns starting with ``_`` are ignored)."""
    cols = [c for c in table.column_names if not c.startswith("_")]
    has_truth = "true_label" in cols
    out = []
    for row in table.select(cols).to_pylist():
        out.append(Result(label=row["label"], confidence=row["confidence"],
                          top=[(t["label"], t["prob"]) for t in row["top"] or []],
                          steps=[Step(**s) for s in row["asked"] or []], q_spent=row["q_spent"], stop=row["stop"],
                          image=row["image"], error=row["error"],
                          true_label=row["true_label"] if has_truth else None))
    return out


def result_columns(table):
    """``table`` without the columns starting with ``_`` (an executor's bookkeeping): the result table as stored."""
    return table.select([c for c in table.column_names if not c.startswith("_")])


#: first characters that make a spreadsheet read a cell as a formula (OWASP "CSV Injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell made safe for spreadsheets, the way OWASP recommends: a cell starting with ``= + - @``,
    tab or CR gets a leading single quote, so Excel, LibreOffice and Sheets show it as text and never
    evaluate it (the writer quotes every text cell too). A cell already starting with ``'`` gets one more,
    so :func:`csv_uncell` strips exactly one and every cell reads back as written. Numbers are not text
    cells: ``-0.5`` stays a number."""
    return "'" + text if text[:1] in FORMULA_STARTS or text[:1] == "'" else text


def csv_uncell(text: str) -> str:
    """The inverse of :func:`csv_cell`."""
    return text[1:] if text[:1] == "'" else text


# --------------------------------------------------------------------------- shard formats (plug-ins)
class ShardFormat(Protocol):
    """How one shard file is written and read, and how finished shards become the run's table.
    Register a new one in :data:`FORMATS`."""

    suffix: str

    def write(self, path: Path, results: Sequence[Result], table: Any = None) -> int:
        """Write the results atomically; return the file's size in bytes. ``table`` is the same results
        as an Arrow table when the executor made one (a Ray actor's), for a format that can use it."""

    def read(self, path: Path) -> list[Result]:
        """The results of a shard file, in order."""

    def merge(self, shards: Sequence[Path], table: Path) -> int:
        """Write the shard files, in order, as one table file (atomically); return its size in bytes."""


def _concatenate(shards: Sequence[Path], table: Path, header: bytes = b"") -> int:
    """``table`` = ``header`` + each shard file, less its first line when there is a header (atomically)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            out.write(header)
            for path in shards:
                with open_guarded(path, None, what="result shard") as f:
                    if header:
                        f.readline()
                    shutil.copyfileobj(f, out, 1 << 20)

    return atomic_write(table, write)


class JsonlFormat:
    suffix = ".jsonl"

    def write(self, path: Path, results: Sequence[Result], table: Any = None) -> int:
        text = "".join(json.dumps(r.to_dict(top_records=True), ensure_ascii=False) + "\n" for r in results)
        return atomic_write(path, text.encode("utf-8"))

    def read(self, path: Path) -> list[Result]:
        with io.TextIOWrapper(open_guarded(path, None, what="result shard"), encoding="utf-8") as f:
            return [Result.from_dict(json.loads(line)) for line in f]

    def merge(self, shards: Sequence[Path], table: Path) -> int:
        return _concatenate(shards, table)


class ParquetFormat:
    suffix = ".parquet"

    def write(self, path: Path, results: Sequence[Result], table: Any = None) -> int:
        import pyarrow.parquet as pq

        table = results_to_arrow(results) if table is None else result_columns(table)
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    def read(self, path: Path) -> list[Result]:
        import pyarrow.parquet as pq

        with open_guarded(path, None, what="result shard") as f:
            return results_from_arrow(pq.read_table(f))

    def merge(self, shards: Sequence[Path], table: Path) -> int:
        import pyarrow.parquet as pq

        def write(tmp: str) -> None:  # one shard in memory at a time
            if not shards:
                pq.write_table(results_to_arrow([]), tmp)
                return
            writer = None
            try:
                for path in shards:
                    with open_guarded(path, None, what="result shard") as f:
                        part = pq.read_table(f)
                    writer = writer or pq.ParquetWriter(tmp, part.schema)
                    writer.write_table(part)
            finally:
                if writer is not None:
                    writer.close()

        return atomic_write(table, write)


class CsvFormat:
    """Flat CSV shards for spreadsheets: one row per record, a header row of
    :data:`CSV_COLUMNS` (``true_label`` last, when the run had labels). ``top`` and ``asked``
    are JSON strings; a missing value (``label``/``stop`` of a bad image, ``error`` of a good
    one) is an empty cell. Every text cell is quoted and made formula-safe (:func:`csv_cell`);
    ``confidence`` and ``q_spent`` are bare numbers, floats in Python's shortest round-trip
    form, so a shard reads back as the very records written."""

    suffix = ".csv"
    NULLABLE = ("label", "stop", "error", "true_label")
    NUMBERS = {"confidence": float, "q_spent": int}

    def header(self, labels: bool) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerow(
            CSV_COLUMNS + (("true_label",) if labels else ()))
        return buf.getvalue().encode("utf-8")

    def write(self, path: Path, results: Sequence[Result], table: Any = None) -> int:
        labels = bool(results) and results[0].true_label is not None
        cols = CSV_COLUMNS + (("true_label",) if labels else ())
        buf = io.StringIO()
        w = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        buf.write(self.header(labels).decode("utf-8"))
        for r in (r.to_dict(top_records=True) for r in results):
            row = {**r, "top": json.dumps(r["top"], ensure_ascii=False),
                   "asked": json.dumps(r["asked"], ensure_ascii=False)}
            w.writerow([self.NUMBERS[c](row[c]) if c in self.NUMBERS else None if row[c] is None else
                        csv_cell(str(row[c])) for c in cols])
        return atomic_write(path, buf.getvalue().encode("utf-8"))

    def read(self, path: Path) -> list[Result]:
        with io.TextIOWrapper(open_guarded(path, None, what="result shard"), encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        out = []
        for row in rows:
            d: dict[str, Any] = {c: row[c] if c in self.NUMBERS else csv_uncell(row[c]) or None if c in self.NULLABLE
                                 else csv_uncell(row[c]) for c in row}
            d["confidence"] = float(d["confidence"])
            d["q_spent"] = int(d["q_spent"])
            d["top"] = json.loads(d["top"])
            d["asked"] = json.loads(d["asked"])
            out.append(Result.from_dict(d))
        return out

    def merge(self, shards: Sequence[Path], table: Path) -> int:
        if not shards:
            return atomic_write(table, self.header(False))
        with open_guarded(shards[0], None, what="result shard") as f:
            header = f.readline()
        return _concatenate(shards, table, header)


#: the CSV shard columns, in record order (``true_label`` follows when present)
CSV_COLUMNS = ("label", "confidence", "top", "q_spent", "stop", "image", "error", "asked")

FORMATS: dict[str, ShardFormat] = {".jsonl": JsonlFormat(), ".parquet": ParquetFormat(), ".csv": CsvFormat()}
NEEDS_PYARROW = {".parquet"}


def format_of(out: str | os.PathLike) -> ShardFormat:
    """The format named by OUT's extension; StoreError naming the fix otherwise."""
    suffix = Path(out).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise StoreError(f"--out {str(out)!r}: --out names the result table, a file whose name ends in "
                         f"{' or '.join(FORMATS)} (the format), e.g. --out run.jsonl; its shards and eval's summary "
                         f"go in the folder beside it (run.jsonl{RUN_DIR_SUFFIX})")
    if suffix in NEEDS_PYARROW:
        try:
            import pyarrow  # noqa: F401  (only checking it is there)
        except ImportError:
            raise StoreError(f"--out {str(out)!r}: Parquet output needs pyarrow: pip install pyarrow "
                             "(or 'twentyq[ray]'), or write JSON lines with --out NAME.jsonl") from None
    return fmt


def check_out(out: str | os.PathLike) -> ShardFormat:
    """The cheap checks of an output, done before any model loads and creating nothing: its format,
    that the table is not a folder and its run folder not a file, that their folder exists, and that
    the run folder is not someone else's. Returns the format; StoreError otherwise."""
    table = Path(out)
    fmt = format_of(table)
    root = table.with_name(table.name + RUN_DIR_SUFFIX)
    if table.is_dir():
        old = " (a run in the layout before result tables; read it with 'twentyq report')" \
            if (table / MANIFEST).is_file() else ""
        raise StoreError(f"--out {str(table)!r} is a folder{old}; --out names the result table file, and its "
                         f"shards go in {root.name} beside it: pass a new name")
    if not table.parent.is_dir():
        what = "is a file, not a folder" if table.parent.exists() else "does not exist"
        raise StoreError(f"--out {str(table)!r}: the folder {str(table.parent)!r} {what}; "
                         + ("write elsewhere" if table.parent.exists() else "create it first"))
    if root.exists() and not root.is_dir():
        raise StoreError(f"--out {str(table)!r}: {str(root)!r} (where its shards go) is a file; move it, or pass a "
                         "new --out")
    if root.is_dir() and not (root / MANIFEST).is_file() and any(p.name != LOCK for p in root.iterdir()):
        raise StoreError(f"--out {str(table)!r}: {str(root)!r} (where its shards go) is a folder that is not empty "
                         "and holds no twentyq run; choose a new --out")
    if table.exists() and not (root / MANIFEST).is_file():
        raise StoreError(f"--out {str(table)!r} exists and is not a twentyq result table (no {root.name} beside "
                         "it); choose a new --out")
    return fmt


# --------------------------------------------------------------------------- fingerprints
def fingerprint(settings: dict[str, Any], names: Iterable[str], labels: Iterable[str | None] | None = None) -> str:
    """sha256 over the settings that change results and the input rows (names, labels)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in names:
        h.update(name.encode("utf-8", "surrogatepass") + b"\0")
    for lab in labels or ():
        h.update((lab or "").encode("utf-8", "surrogatepass") + b"\1")
    return h.hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two settings dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# --------------------------------------------------------------------------- the folder
class ResultStore:
    """The shards of one run, in its run folder, and the table they become (see the module docstring).

    Use :meth:`open` (a context manager that holds the run folder's lock); then
    ``pending()`` lists the shards to do, ``write(k, results)`` finishes shard k,
    ``read_all()`` returns every result in input order, ``finish()`` writes the table.
    ``root`` is the run folder, ``table`` the result table beside it.
    """

    def __init__(self, root: Path, fmt: ShardFormat, n_rows: int, shard_size: int, table: Path | None = None):
        self.root, self.format, self.n_rows, self.shard_size = root, fmt, n_rows, shard_size
        self.table = table
        self.n_shards = -(-n_rows // shard_size) if n_rows else 0
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, out: str | os.PathLike, *, n_rows: int, shard_size: int, settings: dict[str, Any],
             fingerprint: str, resume: bool, inputs: Iterable[str | os.PathLike] = ()) -> "ResultStore":
        """Create OUT's run folder and lock it, or reopen and lock it with ``resume``.

        out : the result table (``run.jsonl``); the run folder is ``run.jsonl.d`` beside it.
        settings : what the run's results depend on (shown when a resume is refused).
        fingerprint : hash of the settings and the input rows; a resume must match it.
        inputs : files the run reads; OUT may be none of them.
        Raises StoreError: OUT is an input, a folder, a file of another program, or another run's
        table; its run folder is foreign or being written by another process. A refusal leaves
        nothing behind that was not there.
        """
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise StoreError(f"shard size == {shard_size!r}, must be a whole number >= 1")
        table = Path(out)
        _refuse_inputs(table, inputs)
        fmt = check_out(table)
        root = table.with_name(table.name + RUN_DIR_SUFFIX)
        _refuse_inputs(root, inputs)
        store = cls(root, fmt, n_rows, shard_size, table)
        manifest = {"format": STORE_FORMAT, "fingerprint": fingerprint, "rows": n_rows, "shard_size": shard_size,
                    "shards": store.n_shards, "suffix": fmt.suffix, "table": table.name, "settings": settings}
        path = root / MANIFEST
        made_root = not root.exists()
        made_lock = not (root / LOCK).exists()
        root.mkdir(exist_ok=True)
        try:
            store._lock()
        except BaseException:
            _tidy(root, made_root, made_lock)
            raise
        try:
            if path.is_file():
                try:
                    old = json.loads(read_text_capped(path, what="run manifest"))
                except (OSError, ValueError):
                    old = {}
                if not resume:
                    raise StoreError(f"{table} already holds a run ({len(store.done())} of {store.n_shards} "
                                     f"shard(s) done in {root.name}); pass --resume to finish it, or choose a new --out")
                if old != manifest:
                    diff = _differences(old.get("settings") or {}, settings)
                    for key in ("rows", "shard_size"):
                        if old.get(key) != manifest[key]:
                            diff.append(f"{key}: {old.get(key)!r} -> {manifest[key]!r}")
                    if old.get("fingerprint") != fingerprint and not diff:
                        diff = ["the input rows (image paths or labels)"]
                    raise StoreError(f"{table} was written with other settings ({'; '.join(diff[:4]) or 'format'}); "
                                     "rerun with the same ones to resume it, or choose a new --out")
            elif any(p.name != LOCK for p in root.iterdir()):  # filled since check_out looked
                raise StoreError(f"--out {str(table)!r}: {str(root)!r} is a folder that is not empty and holds no "
                                 "twentyq run; choose a new --out")
            else:
                atomic_write(path, (json.dumps(manifest, indent=2, default=str) + "\n").encode("utf-8"))
                made_root = made_lock = False  # a run now: its folder and lock stay
        except BaseException:
            store.close()
            _tidy(root, made_root, made_lock)
            raise
        return store

    # -- the lock -------------------------------------------------------------------------
    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.root} is being written by another twentyq run; wait for it to finish, "
                             "or choose another --out") from None
        self._lock_fd = fd

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- naming ---------------------------------------------------------------------------
    def shard_path(self, k: int) -> Path:
        return self.root / f"shard-{k:05d}{self.format.suffix}"

    def marker_path(self, k: int) -> Path:
        return self.root / f"_shard-{k:05d}.done"

    def rows_of(self, k: int) -> range:
        """The input rows of shard k."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n_rows))

    # -- state ----------------------------------------------------------------------------
    def _marker(self, k: int) -> dict[str, Any] | None:
        """Shard k's marker when its file and marker are both there and agree (rows and size)."""
        try:
            mark = json.loads(read_text_capped(self.marker_path(k), what="shard marker"))
            if mark.get("rows") == len(self.rows_of(k)) and mark.get("bytes") == self.shard_path(k).stat().st_size:
                return mark
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def done(self) -> set[int]:
        """Finished shards."""
        return {k for k in range(self.n_shards) if self._marker(k) is not None}

    def pending(self) -> list[int]:
        done = self.done()
        return [k for k in range(self.n_shards) if k not in done]

    def errors(self) -> int:
        """Error rows (bad images) in the finished shards, from their markers."""
        return sum(int(m.get("errors", 0)) for m in map(self._marker, range(self.n_shards)) if m)

    # -- writing and reading ----------------------------------------------------------------
    def write(self, k: int, results: Sequence[Result], table: Any = None) -> None:
        """Finish shard k from its results (in input order); ``table``: the same as an Arrow table, when the
        executor made one (written as it is by a format that can)."""
        if len(results) != len(self.rows_of(k)):
            raise ValueError(f"shard {k}: {len(results)} result rows for {len(self.rows_of(k))} input rows")
        size = self.format.write(self.shard_path(k), results, table)
        errors = sum(r.error is not None for r in results)
        mark = json.dumps({"rows": len(results), "bytes": size, "errors": errors}) + "\n"
        atomic_write(self.marker_path(k), mark.encode("utf-8"))

    def read(self, k: int) -> list[Result]:
        """Shard k's results."""
        return self.format.read(self.shard_path(k))

    def read_all(self, shards: Iterable[int] | None = None) -> list[Result]:
        """The results of the given shards (default: all), in input order."""
        return [rec for k in (range(self.n_shards) if shards is None else sorted(shards)) for rec in self.read(k)]

    def finish(self) -> Path:
        """Write the result table from every shard, in input order (atomically); return its path.
        ValueError (a bug) when a shard is not finished."""
        if self.table is None:
            raise ValueError("this store was not opened with a table (ResultStore.open)")
        missing = self.pending()
        if missing:
            raise ValueError(f"cannot write {self.table}: shard(s) {missing[:5]} not finished")
        self.format.merge([self.shard_path(k) for k in range(self.n_shards)], self.table)
        return self.table


def _refuse_inputs(root: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """StoreError when OUT is (or would overwrite) one of the run's input files."""
    try:
        target = root.resolve()
    except OSError:
        return
    for p in inputs:
        try:
            if Path(p).resolve() == target:
                raise StoreError(f"--out {str(root)!r} is an input of this run ({str(p)!r}); writing there would "
                                 "destroy it: choose another --out")
        except OSError:
            continue


def _tidy(root: Path, made_root: bool, made_lock: bool) -> None:
    """Undo what a refused :meth:`ResultStore.open` created: the lock file, the run folder."""
    if made_lock:
        (root / LOCK).unlink(missing_ok=True)
    if made_root:
        try:
            root.rmdir()
        except OSError:
            pass


def read_run(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The records (``Result.to_dict()``, with ``true_label``) of every finished shard of the run OUT (its
    table's path, or its run folder), in input order (read only: no lock taken, nothing written).
    StoreError when OUT holds no twentyq run."""
    root = run_dir(out)
    try:
        manifest = json.loads(read_text_capped(root / MANIFEST, what="run manifest"))
        fmt = FORMATS[manifest["suffix"]]
        store = ResultStore(root, fmt, int(manifest["rows"]), int(manifest["shard_size"]))
    except (OSError, ValueError, KeyError, TypeError, OverflowError, ZeroDivisionError) as e:  # rows 1e999, size 0
        raise StoreError(f"{str(out)!r} holds no readable twentyq run ({type(e).__name__}: {e}); pass the --out "
                         "of a run") from None
    return [r.to_dict() for r in store.read_all(sorted(store.done()))]


def shard_progress(out: str | os.PathLike) -> tuple[int, int | None, Path]:
    """(finished shards, shards in all, the run folder) of the run ``out``, read only; total None when
    it holds no run (nothing was written)."""
    root = run_dir(out)
    try:
        manifest = json.loads(read_text_capped(root / MANIFEST, what="run manifest"))
        store = ResultStore(root, FORMATS[manifest["suffix"]], int(manifest["rows"]), int(manifest["shard_size"]))
    except (OSError, ValueError, KeyError, TypeError, OverflowError, ZeroDivisionError):
        return 0, None, root
    return len(store.done()), store.n_shards, root


__all__ = ["read_run", "run_dir", "summary_path", "csv_cell", "FORMATS", "ResultStore", "StoreError", "fingerprint",
           "format_of", "result_columns", "results_from_arrow", "results_to_arrow"]
