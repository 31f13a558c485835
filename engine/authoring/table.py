"""Build an attribute system from a table: one row per class, one group per chosen column.

- Each chosen column becomes a group; its distinct values become options.
- ``a|b`` in a cell is a multi-option rule; an empty cell means "not applicable".
- Numeric columns are binned into a few named options at quantiles of the
  table's own values.
- Values become readable text through a value-text mapping (built-in for the
  PokeAPI vocabulary, overridable per value or per column.value).

Everything here is plain Python over rows (``list[dict[str, str]]``); the
result goes through :func:`systems.validate.validate_system` like any other
system.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from engine.common.files import read_text_capped
from systems.format import PLACEHOLDER, AttributeSystem, Group
from systems.validate import SystemValidationError, validate_system

MULTI_SEP = "|"

# ----- readable text ----------------------------------------------------------------------------

#: Default prompt template per column name (lower-cased).
DEFAULT_TEMPLATES: dict[str, str] = {
    "color": "a picture of a creature that is mainly {} in color",
    "colour": "a picture of a creature that is mainly {} in color",
    "shape": "a picture of {}",
    "habitat": "a creature that lives {}",
    "type1": "a creature of the {} type",
    "type2": "a creature whose second type is {}",
    "type": "a creature of the {} type",
    "egg_groups": "a creature that looks like {}",
    "size": "a picture of a {} creature",
    "height": "a picture of a {} creature",
    "height_dm": "a picture of a {} creature",
    "weight": "a picture of a {} creature",
    "weight_hg": "a picture of a {} creature",
}

#: Readable text for raw table values (the PokeAPI vocabulary). Keys are values; a key
#: ``"column.value"`` applies to that column only and wins over the plain value.
VALUE_TEXT: dict[str, str] = {
    # shapes (pokemon_shapes.csv)
    "shape.ball": "a round ball-shaped body",
    "shape.squiggle": "a long snake-like body",
    "shape.fish": "a fish-like body with fins",
    "shape.arms": "a body with arms and no legs",
    "shape.blob": "a shapeless blob-like body",
    "shape.upright": "a creature standing upright on two legs with a tail",
    "shape.legs": "a body made of legs without arms",
    "shape.quadruped": "a four-legged creature",
    "shape.wings": "a creature with a pair of wings",
    "shape.tentacles": "a creature with tentacles",
    "shape.heads": "a creature with several heads",
    "shape.humanoid": "a human-like creature standing on two legs",
    "shape.bug-wings": "an insect with wings",
    "shape.armor": "an insect-like creature with a hard shell",
    # habitats (pokemon_habitats.csv)
    "habitat.cave": "in a dark cave",
    "habitat.forest": "in a forest",
    "habitat.grassland": "on a grassy meadow",
    "habitat.mountain": "on rocky mountains",
    "habitat.rare": "in rare and mysterious places",
    "habitat.rough-terrain": "on rough, rocky terrain",
    "habitat.sea": "in the sea",
    "habitat.urban": "in a town or city",
    "habitat.waters-edge": "at the water's edge",
    # egg groups (egg_groups.csv)
    "egg_groups.monster": "a monster or dinosaur",
    "egg_groups.water1": "an amphibian or sea creature",
    "egg_groups.bug": "an insect",
    "egg_groups.flying": "a bird",
    "egg_groups.ground": "a land mammal",
    "egg_groups.fairy": "a cute fairy",
    "egg_groups.plant": "a plant",
    "egg_groups.humanshape": "a person",
    "egg_groups.water3": "a shellfish or crustacean",
    "egg_groups.mineral": "a rock or mineral object",
    "egg_groups.indeterminate": "an amorphous ghost or slime",
    "egg_groups.water2": "a fish",
    "egg_groups.ditto": "a pink blob",
    "egg_groups.dragon": "a dragon or reptile",
    "egg_groups.no-eggs": "a legendary or baby creature",
}

#: Names of numeric bins by count (lowest first), and per column where a better word exists.
BIN_NAMES: dict[int, tuple[str, ...]] = {
    2: ("low", "high"),
    3: ("low", "medium", "high"),
    4: ("very low", "low", "high", "very high"),
    5: ("very low", "low", "medium", "high", "very high"),
}
COLUMN_BIN_NAMES: dict[str, dict[int, tuple[str, ...]]] = {
    "size": {2: ("small", "large"), 3: ("small", "medium-sized", "large"),
             4: ("tiny", "small", "large", "huge"), 5: ("tiny", "small", "medium-sized", "large", "huge")},
    "weight": {2: ("light", "heavy"), 3: ("light", "medium-weight", "heavy"),
               4: ("very light", "light", "heavy", "very heavy"),
               5: ("very light", "light", "medium-weight", "heavy", "very heavy")},
}
COLUMN_BIN_NAMES["height"] = COLUMN_BIN_NAMES["height_dm"] = COLUMN_BIN_NAMES["size"]
COLUMN_BIN_NAMES["weight_hg"] = COLUMN_BIN_NAMES["weight"]


def default_template(column: str) -> str:
    """The built-in template for a column name, or a generic one naming the column."""
    key = column.strip().lower()
    if key in DEFAULT_TEMPLATES:
        return DEFAULT_TEMPLATES[key]
    return f"a picture of something whose {key.replace('_', ' ')} is {PLACEHOLDER}"


def value_to_text(column: str, value: str, mapping: Mapping[str, str] | None = None) -> str:
    """Readable option text for a raw cell value.

    Lookup order: ``mapping["column.value"]``, ``mapping[value]``, then the same two keys
    in :data:`VALUE_TEXT`, then the value with ``-``/``_`` turned into spaces.
    """
    for table in (mapping or {}, VALUE_TEXT):
        for key in (f"{column}.{value}", value):
            if key in table:
                return table[key]
    return re.sub(r"[-_]+", " ", value).strip()


# ----- numeric binning --------------------------------------------------------------------------

def is_numeric(values: Iterable[str]) -> bool:
    """True when every non-empty value parses as a finite float (and there is at least one)."""
    seen = False
    for v in values:
        if v == "":
            continue
        try:
            x = float(v)
        except ValueError:
            return False
        if not math.isfinite(x):
            return False
        seen = True
    return seen


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges at the 1/n .. (n-1)/n quantiles, deduplicated.

    values : (M,) float array.  Returns a sorted (n_used - 1,) array: ties can merge bins,
    so fewer than ``n_bins`` bins may result (never an empty bin).
    """
    if n_bins < 2:
        raise ValueError(f"bins={n_bins}: numeric columns need at least 2 bins; pass bins >= 2")
    values = np.asarray(values, dtype=np.float64)
    kept: list[float] = []
    for e in np.unique(np.quantile(values, np.arange(1, n_bins) / n_bins)):
        lower = kept[-1] if kept else -np.inf
        # keep an edge only if its bin (lower, e] holds a value and something lies above it
        if ((values > lower) & (values <= e)).any() and (values > e).any():
            kept.append(float(e))
    return np.array(kept)


def bin_index(x: float, edges: np.ndarray) -> int:
    """Bin of ``x``: values equal to an edge go to the lower bin."""
    return int(np.searchsorted(edges, x, side="left"))


def bin_names(column: str, n: int) -> tuple[str, ...]:
    names = COLUMN_BIN_NAMES.get(column.lower(), {}).get(n) or BIN_NAMES.get(n)
    return names or tuple(f"bin {i + 1} of {n}" for i in range(n))


# ----- the builder ------------------------------------------------------------------------------

@dataclass
class BuildReport:
    """What the builder did, for printing: one line per decision."""

    rows_used: int = 0
    rows_skipped: int = 0
    numeric: dict[str, list[float]] = field(default_factory=dict)  # column -> inner bin edges
    options: dict[str, int] = field(default_factory=dict)  # group -> K
    not_applicable: dict[str, int] = field(default_factory=dict)  # group -> classes with an empty cell
    skipped: dict[str, str] = field(default_factory=dict)  # column -> why it did not become a group

    def lines(self) -> list[str]:
        out = [f"rows used: {self.rows_used}" + (f" (skipped by filter: {self.rows_skipped})" if self.rows_skipped else "")]
        for col, why in self.skipped.items():
            out.append(f"skipped column {col}: {why}")
        for g, k in self.options.items():
            extra = f", bins at {', '.join(f'{e:g}' for e in self.numeric[g])}" if g in self.numeric else ""
            na = self.not_applicable.get(g, 0)
            out.append(f"group {g}: {k} options{extra}" + (f"; not applicable for {na} classes" if na else ""))
        return out


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, every value stripped of surrounding whitespace.

    Read only if it is a regular file of at most ``engine.common.files.TEXT_INPUT_LIMIT``
    bytes; a row with more or fewer values than the header is refused with its line.
    """
    p = Path(path)
    try:
        text = read_text_capped(p, what="table")
    except FileNotFoundError as e:
        if getattr(e, "cause", None) == "no such file":
            raise FileNotFoundError(f"table {p} not found; pass a CSV file with a header row") from None
        raise
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise ValueError(f"table {p} is empty; it needs a header row and one row per class")
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):  # DictReader's restkey / restval
            n = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
            raise ValueError(f"table {p}: line {reader.line_num} has {n} values for {len(reader.fieldnames)} "
                             "columns; give every row one value per header column (quote values with commas)")
        rows.append({k.strip(): v.strip() for k, v in row.items()})
    return rows


def _parse_groups(groups: Any, columns: list[str], class_column: str) -> dict[str, str]:
    """groups -> {group name: column}. Accepts None (all but the class column), a list of
    columns, ``"col"`` or ``"name=col"`` strings, or a {name: column} mapping."""
    if groups is None:
        spec = {c: c for c in columns if c != class_column}
    elif isinstance(groups, Mapping):
        spec = dict(groups)
    else:
        spec = {}
        for item in groups:
            name, _, col = str(item).partition("=")
            spec[name.strip()] = (col or name).strip()
    missing = [c for c in spec.values() if c not in columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the table; available: {columns}")
    if not spec:
        raise ValueError("no groups chosen; pass --group COLUMN (one per group)")
    return spec


_ID_COLUMN = re.compile(r"(^|[_\s-])id$", re.IGNORECASE)


def _useless_column(col: str, cells: list[str], numeric: bool) -> str | None:
    """Why a column cannot make a useful group, or None.

    Constant: at most one distinct value over the rows (an empty cell is no value). An id: a
    categorical column with a different single value on every row, or a column named ``id`` /
    ``*_id`` whose values never repeat (a numeric measure may well be unique per row; an id is not
    an attribute).
    """
    values = sorted({v.strip() for c in cells for v in c.split(MULTI_SEP) if v.strip()})
    if len(values) <= 1:
        shown = f"the one value {values[0]!r}" if values else "no values"
        return f"{shown} on every row used, so it cannot tell classes apart"
    filled = [c for c in cells if c != ""]
    if len(cells) >= 3 and len(set(filled)) == len(filled):
        if _ID_COLUMN.search(col.strip()):
            return "an id column (its values never repeat), not an attribute; name it with --group to use it anyway"
        if not numeric and len(filled) == len(cells) and all(MULTI_SEP not in c for c in cells):
            return ("a different value on every row (an id or a name, not an attribute); "
                    "name it with --group to use it anyway")
    return None


def from_table(
    table: str | os.PathLike | list[dict[str, str]],
    class_column: str,
    groups: Any = None,
    *,
    templates: Mapping[str, str] | None = None,
    value_text: Mapping[str, str] | None = None,
    numeric: Iterable[str] | None = None,
    bins: int = 3,
    where: Mapping[str, Iterable[str]] | None = None,
    name: str = "table",
    description: str = "",
    baseline_template: str = PLACEHOLDER,
    report: BuildReport | None = None,
) -> AttributeSystem:
    """An attribute system with one class per table row and one group per chosen column.

    Parameters
    ----------
    table : CSV path or list of row dicts
    class_column : column holding the class names (unique, non-empty)
    templates : {group name or column: template with one ``{}``}; defaults per column name
    value_text : {value or "column.value": readable text}; see :func:`value_to_text`
    groups : None, list of columns (``"name=column"`` renames), or {group name: column}. With None,
        columns that cannot make a useful group are skipped and listed in ``report.skipped``:
        constant columns (one value on every row kept) and id columns (see ``_useless_column``).
        A constant column chosen by name is an error that names it.
    numeric : columns to bin; by default every chosen column whose values all parse as numbers
    bins : number of quantile bins for numeric columns (ties may merge bins)
    where : {column: accepted values}; other rows are dropped before anything else
    report : a :class:`BuildReport` to fill in

    Option order is by how many classes use the option (most first), then by text, so
    the result is deterministic.
    """
    rows = read_table(table) if isinstance(table, (str, os.PathLike)) else [dict(r) for r in table]
    if not rows:
        raise ValueError("table has no rows; it needs one row per class")
    columns = list(rows[0].keys())
    if class_column not in columns:
        raise ValueError(f"class column {class_column!r} not in the table; available: {columns}")
    report = report if report is not None else BuildReport()
    if where:
        for col in where:
            if col not in columns:
                raise ValueError(f"filter column {col!r} not in the table; available: {columns}")
        keep = [r for r in rows if all(r.get(c, "") in {str(v) for v in vals} for c, vals in where.items())]
        report.rows_skipped = len(rows) - len(keep)
        rows = keep
        if not rows:
            raise ValueError(f"no rows match the filter {dict(where)}; check the column values")
    report.rows_used = len(rows)

    classes = [r[class_column] for r in rows]
    blank = [i + 2 for i, c in enumerate(classes) if not c]
    if blank:
        raise ValueError(f"empty class name on table line(s) {blank[:5]}; every row needs a {class_column}")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise ValueError(f"class(es) {dupes[:5]} appear on more than one row; give one row per class")

    spec = _parse_groups(groups, columns, class_column)
    templates = dict(templates or {})
    numeric = set(numeric) if numeric is not None else None

    built: list[Group] = []
    used: list[tuple[str, str]] = []  # (group, column) of each group built
    rule_cols: list[list[frozenset[int]]] = []
    kept_by = " ".join(c + "=" + ",".join(map(str, v)) for c, v in (where or {}).items())
    after = f" (after --where {kept_by})" if where else ""
    for gname, col in spec.items():
        cells = [r.get(col, "") for r in rows]
        template = templates.get(gname) or templates.get(col) or default_template(gname if gname != col else col)
        as_numeric = col in numeric if numeric is not None else is_numeric(cells)
        useless = _useless_column(col, cells, as_numeric)
        if useless and groups is None:
            report.skipped[col] = useless.replace(" on every row used", f" on every row used{after}")
            continue
        if useless and useless.startswith(("the one value", "no values")):
            raise ValueError(f"column {col!r} has {useless}{after}; leave it out of --group")
        if as_numeric:
            if not is_numeric(cells):
                raise ValueError(f"column {col!r} was asked to be numeric but has non-numeric values")
            vals = np.array([float(v) for v in cells if v != ""])
            edges = quantile_edges(vals, bins)
            names = bin_names(gname, len(edges) + 1)
            options = list(names)
            rules = [frozenset() if v == "" else frozenset([bin_index(float(v), edges)]) for v in cells]
            report.numeric[gname] = [float(e) for e in edges]
        else:
            parsed = [[v.strip() for v in cell.split(MULTI_SEP) if v.strip()] for cell in cells]
            counts: dict[str, int] = {}
            for vals in parsed:
                for v in set(vals):
                    counts[v] = counts.get(v, 0) + 1
            raw = sorted(counts, key=lambda v: (-counts[v], v))
            texts = [value_to_text(col, v, value_text) for v in raw]
            if len(set(texts)) != len(texts):
                clash = sorted({t for t in texts if texts.count(t) > 1})
                raise ValueError(f"group {gname!r}: values map to the same text {clash}; fix the value-text mapping")
            index = {v: k for k, v in enumerate(raw)}
            options = texts
            rules = [frozenset(index[v] for v in vals) for vals in parsed]
        built.append(Group(name=gname, template=template, options=tuple(options)))
        used.append((gname, col))
        rule_cols.append(rules)
        report.options[gname] = len(options)
        report.not_applicable[gname] = sum(1 for r in rules if not r)

    if not built:
        raise ValueError(f"no column of the table can make a group: {report.skipped}; "
                         "choose columns with --group COLUMN")
    system = AttributeSystem(
        name=name,
        classes=tuple(classes),
        groups=tuple(built),
        rules=tuple(tuple(col[c] for col in rule_cols) for c in range(len(classes))),
        baseline_template=baseline_template,
        description=description or f"built from a table: {len(classes)} classes, groups {list(spec)}",
    )
    try:
        return validate_system(system, source=f"table {name}")
    except SystemValidationError as err:  # word it for the table and the build flags, not a system file
        def named(m: re.Match) -> str:
            gname, col = used[int(m.group(1))]
            return f"group {gname!r} (column {col!r})"

        problems = [re.sub(r"groups\[(\d+)\]", named, p) for p in err.problems]
        raise ValueError(f"the table does not make a valid system: {len(problems)} problem(s); change the columns "
                         "(--group), the rows (--where) or the bins (--bins):\n"
                         + "\n".join(f"  - {p}" for p in problems)) from None
