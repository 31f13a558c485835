"""``twentyq report RUN [RUN...]``: merge eval summaries into one table, as markdown and CSV, and plot them.

A RUN is a result folder written by ``eval --out`` (its ``_summary.json``), a summary JSON
file, or the JSON list ``compare --out X.json`` writes (one row per mode). ``--plots DIR``
draws accuracy against mean Q (one point per run) and the confusion matrix of one run
(from its records, so it needs a result folder) as PNGs; matplotlib is the optional extra
``twentyq[report]``, imported only there.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from engine.cli.options import EXIT_OK, UsageError, settings_errors

EXAMPLES = """examples:
  twentyq report base.jsonl eig.jsonl                      # one markdown table on stdout
  twentyq report base.jsonl eig.csv compare.json --csv all.csv --plots plots/
  twentyq report eig.jsonl --plots plots/ --confusion eig.jsonl
"""

#: (column, how to get it from a summary): the merged table's columns, in order
COLUMNS = ("run", "mode", "policy", "tau", "n", "accuracy", "ci95_lo", "ci95_hi", "acc5", "mean_per_class_recall",
           "mean_q", "median_q", "text_encodes", "model", "system", "data")


def load_runs(paths: list[str]) -> list[tuple[str, dict[str, Any], Path | None]]:
    """(name, summary, result folder or None) for every report the paths hold, in order."""
    from systems.files import read_text_capped

    out = []
    for p in paths:
        path = Path(p)
        folder = path if path.is_dir() else None
        src = path / "_summary.json" if folder else path
        if folder and not src.is_file():
            raise UsageError(f"{p}: no _summary.json in this folder; pass a folder written by 'twentyq eval --out' "
                             "(classify writes no summary) or a compare --out JSON file")
        try:
            data = json.loads(read_text_capped(src, what="run summary"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{src}: not JSON ({e.msg} at line {e.lineno}); pass an eval result folder or a "
                             "summary / compare JSON file") from None
        except RecursionError:
            raise UsageError(f"{src}: JSON nested too deeply to parse; pass an eval result folder or a summary / "
                             "compare JSON file") from None
        reports = data if isinstance(data, list) else [data]
        for i, rep in enumerate(reports):
            if not isinstance(rep, dict) or "accuracy" not in rep or "mean_q" not in rep:
                raise UsageError(f"{src}: entry {i} is not an eval summary (no accuracy / mean_q); pass an eval "
                                 "result folder or a summary / compare JSON file")
            name = path.name if len(reports) == 1 else f"{path.name}:{rep.get('mode', i)}"
            out.append((name, rep, folder))
    return out


def row_of(name: str, rep: dict[str, Any]) -> dict[str, Any]:
    ci = rep.get("ci95") or [None, None]
    return {"run": name, "mode": rep.get("mode"), "policy": rep.get("policy"), "tau": rep.get("tau"),
            "n": rep.get("n"), "accuracy": rep.get("accuracy"), "ci95_lo": ci[0], "ci95_hi": ci[1],
            "acc5": rep.get("acc5"), "mean_per_class_recall": rep.get("mean_per_class_recall"),
            "mean_q": rep.get("mean_q"), "median_q": rep.get("median_q"), "text_encodes": rep.get("text_encodes"),
            "model": rep.get("model"), "system": rep.get("system"), "data": rep.get("data")}


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
            folders = [(name, folder) for name, folder in folders if Path(args.confusion).resolve() == folder.resolve()]
            if not folders:
                raise UsageError(f"--confusion {args.confusion!r} is not one of the result folders given")
        if folders:
            name, folder = folders[0]
            path = out / f"confusion_{name}.png"
            plot_confusion(name, read_run(folder), path)
            print(f"wrote {path}")
    if args.html:
        from engine.serve.report_html import write_html_report

        folders = [folder for _, _, folder in runs if folder is not None]
        if not folders:
            raise UsageError("--html needs result folders (eval --out RUN.jsonl), not summary files")
        with settings_errors():
            print(f"wrote {write_html_report(folders, args.html, samples=args.samples)}")
    return EXIT_OK


def add_report_parser(sub) -> None:
    rp = sub.add_parser("report", help="merge eval runs into one table (markdown, CSV) and plot them",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("runs", nargs="+", metavar="RUN",
                    help="eval result folders (their _summary.json), summary JSON files or compare --out JSON files")
    rp.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV here (default: none)")
    rp.add_argument("--plots", default=None, metavar="DIR",
                    help="draw accuracy_vs_q.png and confusion_RUN.png here (needs pip install 'twentyq[report]') "
                         "(default: no plots)")
    rp.add_argument("--confusion", default=None, metavar="RUN",
                    help="the result folder whose confusion matrix --plots draws (default: the first folder given)")
    rp.add_argument("--html", default=None, metavar="FILE",
                    help="also write one self-contained HTML page: accuracy against Q, per-class accuracy, the "
                         "confusion matrix, stop reasons and sample question paths with thumbnails (result folders "
                         "only) (default: none)")
    rp.add_argument("--samples", type=int, default=12,
                    help="question paths shown per run in --html (default: %(default)s)")
    rp.set_defaults(func=report_cmd)
