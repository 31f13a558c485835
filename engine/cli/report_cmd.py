"""``twentyq report RUN [RUN...]``: merge eval summaries into one table, as markdown and CSV, and plot them.

A RUN is an eval run (its ``--out`` table, or its run folder ``RUN.d`` holding ``_summary.json``),
a summary JSON file, the JSON list ``compare --out X.json`` writes (one row per mode), or a
folder searched recursively for all of those, as ``clip_benchmark build`` merges a sweep:
outputs found there that are not eval results (a classify run, other JSON) are skipped with
a notice. The table says what each run used: model, system, templates, descriptors and
calibration, and gives accuracy with its exact (Clopper–Pearson) 95% interval.
``--plots DIR`` draws accuracy against mean Q (one point per run) and the confusion matrix
of one run (from its records, so it needs a run, not a summary file) as PNGs; matplotlib is
the optional extra ``twentyq[report]``, imported only there.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from engine.cli.options import EXIT_OK, UsageError, settings_errors, warn

EXAMPLES = """examples:
  twentyq report base.jsonl eig.jsonl                      # one markdown table on stdout
  twentyq report runs/                                     # every eval run under runs/ (an eval sweep)
  twentyq report base.jsonl eig.csv compare.json --csv all.csv --plots plots/
  twentyq report eig.jsonl --plots plots/ --confusion eig.jsonl
"""

#: the merged table's columns, in order
COLUMNS = ("run", "mode", "policy", "tau", "n", "accuracy", "ci95_lo", "ci95_hi", "acc5", "mean_per_class_recall",
           "mean_q", "median_q", "text_encodes", "model", "system", "templates", "descriptors", "calibration", "data")


def _summaries(src: Path) -> list[dict[str, Any]]:
    """The eval summaries of a summary / compare JSON file; UsageError naming what is wrong."""
    from systems.files import read_text_capped

    try:
        data = json.loads(read_text_capped(src, what="run summary"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{src}: not JSON ({e.msg} at line {e.lineno}); pass an eval run, a summary / compare "
                         "JSON file or a folder of them") from None
    except RecursionError:
        raise UsageError(f"{src}: JSON nested too deeply to parse; pass an eval run, a summary / compare JSON file "
                         "or a folder of them") from None
    reports = data if isinstance(data, list) else [data]
    for i, rep in enumerate(reports):
        if not isinstance(rep, dict) or "accuracy" not in rep or "mean_q" not in rep:
            raise UsageError(f"{src}: entry {i} is not an eval summary (no accuracy / mean_q); pass an eval run, a "
                             "summary / compare JSON file or a folder of them")
    return reports


def _run_of(path: Path) -> tuple[Path, Path] | None:
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
    with a notice; UsageError when there is none."""
    from engine.run.store import SUMMARY

    found, skipped = [], []
    run_folders = sorted(p.parent for p in root.rglob("_manifest.json"))
    inside = tuple(run_folders)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(path == f or f in path.parents for f in inside):
            if path in inside:
                out, folder = _run_of(path)
                name = str(out.relative_to(root))
                if (folder / SUMMARY).is_file():
                    found += _entries(name, folder / SUMMARY, out)
                else:
                    skipped.append(f"{name} (a run with no {SUMMARY}: classify writes none)")
            continue
        if path.is_file() and path.suffix.lower() == ".json":
            try:
                found += _entries(str(rel), path, None)
            except (UsageError, OSError, ValueError) as e:
                skipped.append(f"{rel} ({str(e).split(';')[0].removeprefix(str(path) + ': ')})")
    for what in skipped:
        warn(f"report: skipped {what}: not an eval result")
    if not found:
        raise UsageError(f"{root}: no eval runs (no {SUMMARY}) and no summary JSON files in this folder or below; "
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
        run = _run_of(path)
        if run is not None:
            table, folder = run
            if not (folder / SUMMARY).is_file():
                raise UsageError(f"{p}: no {SUMMARY} in {folder}; pass an eval run ('twentyq eval --out'; classify "
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
    from systems.printable import printable

    return printable(v).replace("|", "\\|")  # a name from a summary cannot drive the terminal or split a row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    import csv
    import io

    from systems.files import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write_text(path, buf.getvalue())


def _pyplot(flag: str = "--plots"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"{flag} needs matplotlib: pip install 'twentyq[report]' (or drop {flag})") from None
    return plt


def plot_compare(points: list[dict[str, Any]], curve: list[dict[str, Any]], path: str | Path, *, title: str) -> None:
    """``twentyq compare --plot``: accuracy (95% CI) against mean Q.

    points : one row per compared mode (:func:`row_of` fields, ``run`` the legend text);
    curve : the adaptive policy at increasing budgets (same fields), drawn as a line with its CI band.
    """
    plt = _pyplot("--plot")
    fig, ax = plt.subplots(figsize=(7, 4.8))
    if curve:
        qs = [r["mean_q"] for r in curve]
        ax.plot(qs, [r["accuracy"] for r in curve], "-", color="tab:blue", label=curve[0]["run"])
        ax.fill_between(qs, [r["ci95_lo"] for r in curve], [r["ci95_hi"] for r in curve], color="tab:blue",
                        alpha=0.15, linewidth=0)
    style = iter(zip(["s", "D", "^", "o", "v", "P"], ["tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple",
                                                     "tab:brown"]))
    for r in points:
        err = [[max(r["accuracy"] - r["ci95_lo"], 0)], [max(r["ci95_hi"] - r["accuracy"], 0)]]
        m, c = next(style, ("o", None))
        ax.errorbar([r["mean_q"]], [r["accuracy"]], yerr=err, fmt=m, color=c, capsize=3, label=r["run"])
    ax.set_xlabel("mean Q (prompts per image)")
    ax.set_ylabel("accuracy (95% CI)")
    import textwrap

    ax.set_title("\n".join(textwrap.fill(t, 90) for t in title.splitlines()), fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_q(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (with its 95% CI) against mean Q, one point per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        if r["accuracy"] is None or r["mean_q"] is None:
            continue
        err = None
        if r["ci95_lo"] is not None and r["ci95_hi"] is not None:
            err = [[max(r["accuracy"] - r["ci95_lo"], 0)], [max(r["ci95_hi"] - r["accuracy"], 0)]]
        ax.errorbar([r["mean_q"]], [r["accuracy"]], yerr=err, fmt="o", capsize=3)
        ax.annotate(r["run"], (r["mean_q"], r["accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("mean Q (prompts per image)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy against mean Q")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def confusion_matrix(records: list[dict[str, Any]]) -> tuple[list[str], Any]:
    """(classes, counts[true, predicted]) over the records that have a label and no error."""
    import numpy as np

    ok = [r for r in records if r.get("error") is None and r.get("true_label") is not None]
    classes = sorted({r["true_label"] for r in ok} | {r["label"] for r in ok})
    pos = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for r in ok:
        m[pos[r["true_label"]], pos[r["label"]]] += 1
    return classes, m


def plot_confusion(name: str, records: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    classes, m = confusion_matrix(records)
    if not classes:
        raise UsageError(f"{name}: no labelled records to draw a confusion matrix from; pick an eval run "
                         "with --confusion")
    size = min(4 + 0.35 * len(classes), 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_cmd(args) -> int:
    from engine.run.store import read_run

    runs = load_runs(args.runs)
    rows = [row_of(name, rep) for name, rep, _ in runs]
    if args.plots:
        _pyplot()  # the extra is checked before anything is written
    print(markdown(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.plots:
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        plot_accuracy_vs_q(rows, out / "accuracy_vs_q.png")
        print(f"wrote {out / 'accuracy_vs_q.png'}")
        folders = [(name, folder) for name, _, folder in runs if folder is not None]
        if args.confusion:
            wanted = _run_of(Path(args.confusion))
            args.confusion = str(wanted[0]) if wanted else args.confusion
            folders = [(name, folder) for name, folder in folders if Path(args.confusion).resolve() == folder.resolve()]
            if not folders:
                raise UsageError(f"--confusion {args.confusion!r} is not one of the result folders given")
        if folders:
            name, folder = folders[0]
            path = out / f"confusion_{name.replace('/', '_')}.png"
            plot_confusion(name, read_run(folder), path)
            print(f"wrote {path}")
    if args.html:
        from engine.serve.report_html import write_html_report

        folders = [folder for _, _, folder in runs if folder is not None]
        if not folders:
            raise UsageError("--html needs eval runs (eval --out RUN.jsonl), not summary files")
        with settings_errors():
            print(f"wrote {write_html_report(folders, args.html, samples=args.samples)}")
    return EXIT_OK


def add_report_parser(sub) -> None:
    rp = sub.add_parser("report", help="merge eval runs into one table (markdown, CSV) and plot them",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("runs", nargs="+", metavar="RUN",
                    help="eval runs (the --out table, or its RUN.d folder holding _summary.json), summary JSON files, "
                         "compare --out JSON files, or folders searched recursively for them (other outputs there "
                         "are skipped with a notice)")
    rp.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV here (default: none)")
    rp.add_argument("--plots", default=None, metavar="DIR",
                    help="draw accuracy_vs_q.png and confusion_RUN.png here (needs pip install 'twentyq[report]') "
                         "(default: no plots)")
    rp.add_argument("--confusion", default=None, metavar="RUN",
                    help="the eval run whose confusion matrix --plots draws (default: the first run given)")
    rp.add_argument("--html", default=None, metavar="FILE",
                    help="also write one self-contained HTML page: accuracy against Q, per-class accuracy, the "
                         "confusion matrix, stop reasons and sample question paths with thumbnails (eval runs "
                         "only) (default: none)")
    rp.add_argument("--samples", type=int, default=12,
                    help="question paths shown per run in --html (default: %(default)s)")
    rp.set_defaults(func=report_cmd)
