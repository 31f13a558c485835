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
from pathlib import Path

from engine.cli.options import EXIT_OK, UsageError, settings_errors
from engine.reports.plots import plot_accuracy_vs_q, plot_confusion, pyplot
from engine.reports.tables import run_of, load_runs, markdown, row_of, write_csv


EXAMPLES = """examples:
  twentyq report base.jsonl eig.jsonl                      # one markdown table on stdout
  twentyq report runs/                                     # every eval run under runs/ (an eval sweep)
  twentyq report base.jsonl eig.csv compare.json --csv all.csv --plots plots/
  twentyq report eig.jsonl --plots plots/ --confusion eig.jsonl
"""


def report_cmd(args) -> int:
    from engine.run.store import read_run

    runs = load_runs(args.runs)
    rows = [row_of(name, rep) for name, rep, _ in runs]
    if args.plots:
        pyplot()  # the extra is checked before anything is written
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
            wanted = run_of(Path(args.confusion))
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
        from engine.reports.html import write_html_report

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
