"""Labelled image datasets: a CSV (``path,label[,split,...]``), an ImageFolder directory, or a
Hugging Face ``datasets`` image dataset.

From a CSV or a folder only paths and labels are read here; images are opened lazily, a
batch at a time, by the encoder. A Hugging Face dataset (a ``save_to_disk`` folder, or
``hf:NAME[:CONFIG][:SPLIT]`` loaded from the local cache) gives each row's encoded image
bytes (``Item.data``), named by the file name stored with the image (else ``row N``); the
``datasets`` library is the optional extra ``twentyq[datasets]``, imported only then.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.common.errors import UserInputError
from engine.common.files import IMAGE_FILE_LIMIT, open_guarded, read_bytes_capped

#: what a dataset CSV may weigh (a million rows of path,label is ~60 MB)
DATA_FILE_LIMIT = 256 * 1024 * 1024


class DatasetError(UserInputError):
    """A dataset that cannot be read as asked (the message names the cause and the fix)."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """The dataset path does not exist."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Item:
    """One input image: a file, or encoded bytes that ``path`` only names; its label when known."""

    path: str  # absolute or relative to the current directory
    label: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other CSV columns (split, source, style, ...)
    data: bytes | None = None  # the encoded image, when it does not come from the file at ``path``

    @property
    def source(self):
        """What the image loader reads: the bytes when given, else the path."""
        return self.data if self.data is not None else self.path


@dataclass(frozen=True)
class DataSpec:
    """Which labelled images to read: the only carrier of data settings.

    source : a CSV (``path,label[,split,...]``) or an ImageFolder directory.
    split : keep only rows whose ``split`` column equals this.
    limit : a seeded random sample of at most this many rows (order kept).
    seed : the sample's seed (also the bootstrap's).
    allow_missing : drop rows whose label is not a class of the system, instead of refusing.
    by : a data column to break accuracy down by (e.g. ``source``).
    image_column, label_column : Hugging Face datasets only: the columns holding the image and
        the label (None: the first Image feature; ``label``, else the first ClassLabel feature).
    """

    source: str
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    allow_missing: bool = False
    by: str | None = None
    image_column: str | None = None
    label_column: str | None = None

    def __post_init__(self):
        given = [f"--{n.replace('_', '-')}" for n in ("image_column", "label_column") if getattr(self, n)]
        if given and not is_hf_source(self.source):
            raise DatasetError(f"{', '.join(given)}: only for a Hugging Face dataset (a save_to_disk folder or "
                               f"hf:NAME), not {self.source!r}; drop the flag or point --data at one")

    def load(self, classes) -> "Dataset":
        """The dataset, its labels checked against ``classes`` and ``by`` against its columns.

        With ``allow_missing`` the rows of other labels are dropped *before* the ``limit`` sample, so
        ``--limit 60 --allow-missing`` gives 60 rows of the system's classes (when there are that many)."""
        only = frozenset(classes) if self.allow_missing else None
        ds = load_dataset(self.source, split=self.split, limit=self.limit, seed=self.seed,
                          image_column=self.image_column, label_column=self.label_column, only_labels=only)
        ds = check_labels(ds, classes, allow_missing=self.allow_missing)[0]
        if self.by is not None and ds.items and self.by not in ds.items[0].extra:
            cols = sorted(ds.items[0].extra)
            raise DatasetError(f"--by {self.by!r}: the data has no such column (its other columns: {cols or 'none'}); "
                               "name one of them, or leave --by out")
        return ds


@dataclass(frozen=True)
class Dataset:
    name: str
    items: tuple[Item, ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]


def _from_csv(path: Path) -> list[Item]:
    root = path.parent
    try:
        with io.TextIOWrapper(open_guarded(path, DATA_FILE_LIMIT, what="data file"), newline="",
                              encoding="utf-8-sig") as f:  # the guarded reader: no FIFO or device
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in ("path", "label") if c not in cols]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; a dataset CSV needs 'path,label[,split]' "
                                 f"columns, found {cols}")
            items = []
            for row in reader:
                p = (row.get("path") or "").strip()
                lab = (row.get("label") or "").strip()
                if not p or not lab:
                    raise DatasetError(f"{path}: line {reader.line_num}: empty path or label")
                full = p if os.path.isabs(p) else str(root / p)
                extra = {k: v for k, v in row.items() if k not in ("path", "label") and k is not None}
                items.append(Item(full, lab, extra))
            return items
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as UTF-8 (a CSV with path,label columns)") from None


def _from_folder(root: Path) -> list[Item]:
    """DIR/label/*.jpg; hidden folders and files (``.git``, ``.DS_Store``, ``._x.jpg``) are not data."""
    items = []
    for d in sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()):
        for f in sorted(d.iterdir()):
            if not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(str(f), d.name))
    if not items:
        raise DatasetError(f"{root}: no images found; an ImageFolder directory holds DIR/label/*.jpg")
    return items


# --------------------------------------------------------------------------- Hugging Face datasets
HF_PREFIX = "hf:"
HF_DISK_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_hf_source(data: str | os.PathLike) -> bool:
    """``hf:NAME...``, or a folder written by ``datasets``' ``save_to_disk``."""
    s = str(data)
    return s.startswith(HF_PREFIX) or (Path(s).is_dir() and any((Path(s) / f).is_file() for f in HF_DISK_FILES))


def _import_datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the local cache only; never the network
    try:
        import datasets
    except ImportError:
        raise DatasetError("reading a Hugging Face dataset needs the datasets library: pip install "
                           "'twentyq[datasets]' (or export it as a CSV / ImageFolder)") from None
    return datasets


def _pick_split(obj, split: str | None, where: str):
    """One split of a DatasetDict (or the Dataset itself)."""
    names = list(obj) if hasattr(obj, "keys") else None
    if names is None:
        return obj
    if split is None:
        if len(names) == 1:
            return obj[names[0]]
        raise DatasetError(f"{where} has splits {names}; choose one with --split")
    if split not in names:
        raise DatasetError(f"{where} has no split {split!r}; its splits are {names}")
    return obj[split]


def _open_hf(data: str, split: str | None):
    """(a datasets.Dataset of one split, a name for it)."""
    datasets = _import_datasets()
    if data.startswith(HF_PREFIX):
        parts = data[len(HF_PREFIX):].split(":")
        if not parts[0] or len(parts) > 3:
            raise DatasetError(f"--data {data!r}: write hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT")
        name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
        if len(parts) == 3:
            if split is not None and split != parts[2]:
                raise DatasetError(f"--data {data!r} names split {parts[2]!r} but --split is {split!r}; give one")
            split = parts[2]
        try:
            obj = datasets.load_dataset(name, config)
        except (OSError, ValueError, ConnectionError) as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise DatasetError(f"--data {data!r}: cannot load {name!r} from the local Hugging Face cache ({first}); "
                               "download it first, or pass a save_to_disk folder") from None
        return _pick_split(obj, split, data), f"{name}{':' + config if config else ''}:{split or ''}".rstrip(":")
    try:
        obj = datasets.load_from_disk(data)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{data}: not a readable save_to_disk folder ({str(e).splitlines()[0][:200]})") from None
    if not hasattr(obj, "keys") and split is not None:
        if "split" not in obj.column_names:
            raise DatasetError(f"{data} holds one split and no 'split' column; drop --split {split!r}")
        obj = obj.filter(lambda s: s == split, input_columns="split")
        if not len(obj):
            raise DatasetError(f"{data}: no rows with split {split!r}")
    return _pick_split(obj, split, data), Path(data).name


def _columns(ds, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str]:
    datasets = _import_datasets()
    feats = ds.features
    cols = list(feats)
    for flag, col in (("--image-column", image_column), ("--label-column", label_column)):
        if col is not None and col not in feats:
            raise DatasetError(f"{where}: {flag} {col!r} is not a column; its columns are {cols}")
    if image_column is None:
        image_column = next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise DatasetError(f"{where}: no Image column found among {cols}; name it with --image-column")
    elif not isinstance(feats[image_column], datasets.Image):
        raise DatasetError(f"{where}: column {image_column!r} is {type(feats[image_column]).__name__}, not an "
                           "Image; name the image column with --image-column")
    if label_column is None:
        label_column = "label" if "label" in feats else next(
            (c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_column is None:
            raise DatasetError(f"{where}: no 'label' or ClassLabel column among {cols}; name it with --label-column")
    return image_column, label_column


def _sample(n: int, limit: int | None, seed: int) -> list[int] | None:
    """Row indices of the seeded --limit sample (order kept), or None for every row."""
    if limit is None:
        return None
    if limit < 1:
        raise DatasetError(f"limit == {limit}, must be >= 1")
    if limit >= n:
        return None
    return [int(i) for i in np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))]


def _from_hf(data: str, split: str | None, limit: int | None, seed: int, image_column: str | None,
             label_column: str | None, only_labels: frozenset[str] | None = None) -> Dataset:
    datasets = _import_datasets()
    ds, name = _open_hf(data, split)
    img, lab = _columns(ds, image_column, label_column, data)
    rows = list(range(len(ds)))
    if only_labels is not None:  # the label column only (no image bytes read), then the sample
        feat = ds.features[lab]
        to_name = feat.int2str if isinstance(feat, datasets.ClassLabel) else str
        rows = [i for i, v in enumerate(ds[lab]) if v is not None and not (isinstance(feat, datasets.ClassLabel)
                                                                           and v < 0) and to_name(v) in only_labels]
        _no_rows_of(only_labels, rows, len(ds), data)
    keep = _sample(len(rows), limit, seed)
    if keep is not None:
        rows = [rows[i] for i in keep]
    if len(rows) != len(ds):
        ds = ds.select(rows)
    ds = ds.cast_column(img, datasets.Image(decode=False))
    label_feat = ds.features[lab]
    names = label_feat.int2str if isinstance(label_feat, datasets.ClassLabel) else None
    items = []
    for i, row in enumerate(ds):
        cell = row[img] or {}
        data_bytes, stored = cell.get("bytes"), cell.get("path")
        if data_bytes is None and stored:
            try:
                data_bytes = read_bytes_capped(stored, IMAGE_FILE_LIMIT, what="image")
            except (OSError, ValueError) as e:
                data_bytes = b""  # the loader reports it as this image's error
                stored = f"{stored} ({getattr(e, 'cause', None) or getattr(e, 'strerror', None) or e})"
        value = row[lab]
        if value is None or (names is not None and value < 0):
            raise DatasetError(f"{data}: row {i} has no label in column {lab!r}; drop unlabelled rows first")
        label = names(value) if names is not None else str(value)
        extra = {k: str(v) for k, v in row.items() if k not in (img, lab) and isinstance(v, (str, int, float, bool))}
        items.append(Item(stored or f"row {rows[i]}", label, extra, data=data_bytes or b""))
    if not items:
        raise DatasetError(f"{data}: the dataset has no rows")
    return Dataset(name=name, items=tuple(items))


def _no_rows_of(only_labels: frozenset[str], kept: list, n: int, data: object) -> None:
    """Refuse a label filter that keeps nothing: a data or system mismatch, not unreadable files."""
    if n and not kept:
        raise DatasetError(f"{data}: none of its {n} row(s) has a label that is a class of the system "
                           f"(--allow-missing dropped them all; the classes are e.g. {sorted(only_labels)[:3]}); "
                           "check --data against --system")


def load_dataset(data: str | os.PathLike, *, split: str | None = None, limit: int | None = None,
                 seed: int = 0, image_column: str | None = None, label_column: str | None = None,
                 only_labels: frozenset[str] | None = None) -> Dataset:
    """Read a dataset's paths and labels.

    Parameters
    ----------
    data : a CSV with columns ``path,label[,split]`` (paths relative to the CSV's
        folder), or an ImageFolder-style directory ``DIR/label/*.jpg``.
    split : keep only rows whose ``split`` column equals this.
    limit : keep a seeded random sample of at most this many items (order kept).
    only_labels : keep only the rows with these labels, before the ``limit`` sample (None: every row).
    image_column, label_column : for a Hugging Face dataset (a ``save_to_disk`` folder or
        ``hf:NAME[:CONFIG][:SPLIT]``), whose ``split`` names the split to read.
    """
    if is_hf_source(data):
        return _from_hf(str(data), split, limit, seed, image_column, label_column, only_labels)
    path = Path(data)
    try:
        kind = "folder" if path.is_dir() else "file" if path.exists() else None  # a FIFO: the reader refuses it
    except OSError as e:  # a name too long, a symlink loop ...: not a dataset
        raise DatasetNotFound(f"dataset {str(data)!r} cannot be opened ({e.strerror or e}); pass a CSV "
                              "(path,label[,split]) or an ImageFolder directory") from None
    if kind == "folder":
        items = _from_folder(path)
    elif kind == "file":
        items = _from_csv(path)
    else:
        raise DatasetNotFound(f"dataset {str(data)!r} not found: pass a CSV (path,label[,split]) or an "
                                "ImageFolder directory")
    if split is not None:
        if items and "split" not in items[0].extra:
            raise DatasetError(f"{path}: --split {split!r} given but the data has no 'split' column")
        items = [it for it in items if it.extra.get("split") == split]
        if not items:
            raise DatasetError(f"{path}: no rows with split {split!r}")
    if only_labels is not None:
        n = len(items)
        items = [it for it in items if it.label in only_labels]
        _no_rows_of(only_labels, items, n, path)
    keep = _sample(len(items), limit, seed)
    if keep is not None:
        items = [items[i] for i in keep]
    return Dataset(name=path.stem if path.is_file() else path.name, items=tuple(items))


def check_labels(dataset: Dataset, classes: tuple[str, ...] | list[str], *,
                 allow_missing: bool = False) -> tuple[Dataset, list[str]]:
    """Labels must be classes of the system.

    Returns the dataset (without the rows of missing labels when
    ``allow_missing``) and the sorted missing labels. Raises ValueError listing
    them otherwise.
    """
    known = set(classes)
    missing = sorted({lab for lab in dataset.labels if lab not in known})
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(f"{len(missing)} label(s) in the data are not classes of the system: {shown}; "
                         "fix the labels or the system, or pass --allow-missing to skip those rows")
    if missing:
        dataset = Dataset(dataset.name, tuple(it for it in dataset.items if it.label in known))
    return dataset, missing
