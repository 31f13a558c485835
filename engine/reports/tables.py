"""Eval results merged into one table: find the runs and summaries under the paths given, one row per run
(model, system, templates, descriptors, calibration, accuracy with its exact 95% interval), as markdown
and CSV. ``twentyq report`` (engine/cli/report_cmd.py) and ``compare`` print and write these.

A path is an eval run (its ``--out`` table, or its run folder ``RUN.d`` holding ``_summary.json``),
a summary JSON file, the JSON list ``compare --out X.json`` writes (one row per mode), or a
folder searched recursively for all of those, as ``clip_benchmark build`` merges a sweep:
outputs found there that are not eval results (a classify run, other JSON) are skipped with
a notice. What the user can fix is a :class:`UserInputError` naming the path.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from engine.common.errors import UserInputError
from engine.common.printable import printable

log = logging.getLogger("twentyq")


def warn(msg: str) -> None:
    log.warning(msg)


#: the merged table's columns, in order
COLUMNS = ("run", "mode", "policy", "tau", "n", "accuracy", "ci95_lo", "ci95_hi", "acc5", "mean_per_class_recall",
           "mean_q", "median_q", "text_encodes", "model", "system", "templates", "descriptors", "calibration", "data")


def _summaries(src: Path) -> list[dict[str, Any]]:
    """The eval summaries of a summary / compare JSON file; UserInputError naming what is wrong."""
    from engine.common.files import read_text_capped

    try:
        data = json.loads(read_text_capped(src, what="run summary"))
    except json.JSONDecodeError as e:
        raise UserInputError(f"{src}: not JSON ({e.msg} at line {e.lineno}); pass an eval run, a summary / compare "
                         "JSON file or a folder of them") from None
    except RecursionError:
        raise UserInputError(f"{src}: JSON nested too deeply to parse; pass an eval run, a summary / compare JSON file "
                         "or a folder of them") from None
    reports = data if isinstance(data, list) else [data]
    for i, rep in enumerate(reports):
        if not isinstance(rep, dict) or "accuracy" not in rep or "mean_q" not in rep:
            raise UserInputError(f"{src}: entry {i} is not an eval summary (no accuracy / mean_q); pass an eval run, a "
                             "summary / compare JSON file or a folder of them")
    return reports


def run_of(path: Path) -> tuple[Path, Path] | None:
    """(the run's --out path, its run folder) when ``path`` is a run's table or run folder, else None."""
    from engine.run.store import FORMATS, MANIFEST, RUN_DIR_SUFFIX, run_dir

    if path.is_dir() and (path / MANIFEST).is_file():  # a run folder named directly (or the earlier layout)
        legacy = not (path.name.endswith(RUN_DIR_SUFFIX) and Path(path.name[:-len(RUN_DIR_SUFFIX)]).suffix in FORMATS)
        return (path if legacy else path.with_name(path.name[:-len(RUN_DIR_SUFFIX)])), path
    if path.suffix.lower() in FORMATS and (run_dir(path) / MANIFEST).is_file():
        return path, run_dir(path)
    return None


def _entries(name: str, src: Path, out: Path | None) -> list[tuple[str, dict[str, Any], Path | None]]:
    reports = _summaries(src)
    return [(name if len(reports) == 1 else f"{name}:{rep.get('mode', i)}", rep, out) for i, rep in enumerate(reports)]


def _search(root: Path) -> list[tuple[str, dict[str, Any], Path | None]]:
    """Every eval run and summary / compare JSON file under ``root`` (sorted by path), skipping the rest
    with a notice; UserInputError when there is none."""
    from engine.run.store import SUMMARY

    found, skipped = [], []
    run_folders = sorted(p.parent for p in root.rglob("_manifest.json"))
    inside = tuple(run_folders)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(path == f or f in path.parents for f in inside):
            if path in inside:
                out, folder = run_of(path)
                name = str(out.relative_to(root))
                if (folder / SUMMARY).is_file():
                    found += _entries(name, folder / SUMMARY, out)
                else:
                    skipped.append(f"{name} (a run with no {SUMMARY}: classify writes none)")
            continue
        if path.is_file() and path.suffix.lower() == ".json":
            try:
                found += _entries(str(rel), path, None)
            except (UserInputError, OSError, ValueError) as e:
                skipped.append(f"{rel} ({str(e).split(';')[0].removeprefix(str(path) + ': ')})")
    for what in skipped:
        warn(f"report: skipped {what}: not an eval result")
    if not found:
        raise UserInputError(f"{root}: no eval runs (no {SUMMARY}) and no summary JSON files in this folder or below; "
                         "pass folders written by 'twentyq eval --out' or compare --out JSON files")
    return found


def load_runs(paths: list[str]) -> list[tuple[str, dict[str, Any], Path | None]]:
    """(name, summary, the run's --out path or None) for every report the paths hold, in order.

    A path is a run (its table or run folder), a summary / compare JSON file, or a folder searched
    recursively (:func:`_search`).
    """
    from engine.run.store import SUMMARY

    out = []
    for p in paths:
        path = Path(p)
        run = run_of(path)
        if run is not None:
            table, folder = run
            if not (folder / SUMMARY).is_file():
                raise UserInputError(f"{p}: no {SUMMARY} in {folder}; pass an eval run ('twentyq eval --out'; classify "
                                 "writes no summary) or a compare --out JSON file")
            out += _entries(table.name, folder / SUMMARY, table)
        elif path.is_dir():
            out += _search(path)
        else:
            out += _entries(path.name, path, None)
    return out


def _templates(config: dict[str, Any], source: Any = None) -> str | None:
    """The template set a run used: a shipped set's name when it is one, else the file it came from
    (``source``, as given to --templates), else the count and the first."""
    templates = config.get("templates")
    if not templates:
        return None
    try:
        from systems.templates import list_template_sets, load_templates

        for name in list_template_sets():
            if list(load_templates(name)) == list(templates):
                return f"{name} ({len(templates)})"
    except Exception:  # noqa: BLE001 - naming is a nicety; the count below is still true
        pass
    if isinstance(source, str) and source:
        return f"{Path(source).name} ({len(templates)})"
    first = str(templates[0])
    return f"{len(templates)}: {first if len(first) <= 30 else first[:29] + '…'}" + (", …" if len(templates) > 1 else "")


def _descriptors(settings: dict[str, Any]) -> str | None:
    d = (settings.get("config") or {}).get("descriptors")
    if not d:
        return None
    source = (settings.get("sources") or {}).get("descriptors")
    what = f"{d.get('classes')} classes, {d.get('prompts')} prompts, sha256 {str(d.get('sha256'))[:8]}"
    return f"{Path(str(source)).name} ({what})" if source else what


def _calibration(rep: dict[str, Any]) -> str | None:
    cal = rep.get("calibration")
    if not cal:
        return None
    name = Path(str(cal.get("path") or "?")).name
    return f"{name} (sha256 {str(cal.get('sha256'))[:8]})" + ("" if cal.get("applied", True) else " not applied")


def accuracy_interval(rep: dict[str, Any]) -> tuple[Any, Any]:
    """The exact (Clopper–Pearson) 95% interval of a summary's accuracy, from its n and accuracy (so summaries
    written with the earlier bootstrap interval read the same); the recorded ci95 when n is not there."""
    from engine.core.metrics import exact_ci

    n, acc = rep.get("n"), rep.get("accuracy")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0 and isinstance(acc, (int, float)) \
            and math.isfinite(acc) and 0 <= acc <= 1:
        return exact_ci(int(round(acc * n)), n)
    ci = rep.get("ci95") or [None, None]
    return ci[0], ci[1]


def row_of(name: str, rep: dict[str, Any]) -> dict[str, Any]:
    lo, hi = accuracy_interval(rep)
    settings = rep.get("settings") or {}
    system = rep.get("system")
    sha = (settings.get("system") or {}).get("sha256")
    return {"run": name, "mode": rep.get("mode"), "policy": rep.get("policy"), "tau": rep.get("tau"),
            "n": rep.get("n"), "accuracy": rep.get("accuracy"), "ci95_lo": lo, "ci95_hi": hi,
            "acc5": rep.get("acc5"), "mean_per_class_recall": rep.get("mean_per_class_recall"),
            "mean_q": rep.get("mean_q"), "median_q": rep.get("median_q"), "text_encodes": rep.get("text_encodes"),
            "model": settings.get("model_label") or rep.get("model"),
            "system": f"{system} ({sha[:8]})" if system and sha else system,
            "templates": _templates(settings.get("config") or {}, (settings.get("sources") or {}).get("templates")),
            "descriptors": _descriptors(settings),
            "calibration": _calibration(rep), "data": rep.get("data")}


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    return printable(v).replace("|", "\\|")  # a name from a summary cannot drive the terminal or split a row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    from engine.common.files import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write_text(path, buf.getvalue())
