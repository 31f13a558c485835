"""Labelled image datasets: a CSV (``path,label[,split,...]``) or an ImageFolder directory.

Only paths and labels are read here; images are opened lazily, a batch at a
time, by the encoder.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from systems.errors import UserInputError


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
    """

    source: str
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    allow_missing: bool = False
    by: str | None = None

    def load(self, classes) -> "Dataset":
        """The dataset, its labels checked against ``classes`` and ``by`` against its columns."""
        ds = load_dataset(self.source, split=self.split, limit=self.limit, seed=self.seed)
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
        with path.open(newline="", encoding="utf-8-sig") as f:
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
        raise DatasetError(f"{path}: not UTF-8 text; pass a CSV with path,label columns") from None


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


def load_dataset(data: str | os.PathLike, *, split: str | None = None, limit: int | None = None,
                 seed: int = 0) -> Dataset:
    """Read a dataset's paths and labels.

    Parameters
    ----------
    data : a CSV with columns ``path,label[,split]`` (paths relative to the CSV's
        folder), or an ImageFolder-style directory ``DIR/label/*.jpg``.
    split : keep only rows whose ``split`` column equals this.
    limit : keep a seeded random sample of at most this many items (order kept).
    """
    path = Path(data)
    try:
        kind = "folder" if path.is_dir() else "file" if path.is_file() else None
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
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"limit == {limit}, must be >= 1")
        if limit < len(items):
            keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
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
