"""The write-up's table, done properly: baseline, full system (sum, Bayes), adaptive eig, shuffled control.

    python -m bench.reproduce --data jina15 --system pokemon15 --by source
    python -m bench.reproduce --data flowers17 --system flowers17 --by split
    python -m bench.reproduce --model simulator

Per mode: accuracy with a 95% exact (Clopper–Pearson) interval, mean Q and text encodes;
McNemar's exact paired p for full system against baseline and for adaptive
against full system. The shuffled-rules control gives class c the rules of
another class (a random derangement per seed, 10 seeds): the same prompts,
no meaning. Writes results.json, report.md and accuracy.png to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from engine import StopRule
from engine.core.metrics import accuracy_ci, mcnemar_p

from .lib import harness as C

N_SHUFFLE = 10
TAU = 0.9


def _row(name: str, pt: C.Point, seed: int) -> dict[str, Any]:
    return {"mode": name, "n": int(len(pt.correct)), "accuracy": pt.accuracy,
            "ci95": list(accuracy_ci(pt.correct)), "mean_q": pt.mean_q, "text_encodes": pt.text_encodes}


def _by(prep: C.Prepared, col: str, points: dict[str, C.Point], seed: int) -> dict[str, Any]:
    vals = np.array([e.get(col, "") for e in prep.extra])
    out = {}
    for v in sorted(set(vals.tolist())):
        m = vals == v
        out[v] = {name: {"n": int(m.sum()), "accuracy": float(pt.correct[m].mean()),
                         "ci95": list(accuracy_ci(pt.correct[m])), "mean_q": float(pt.q[m].mean())}
                  for name, pt in points.items()}
    return out


def run(prep: C.Prepared, out: Path, *, seed: int = 0, by: str | None = None, n_shuffle: int = N_SHUFFLE,
        tau: float = TAU, command: str = "") -> dict[str, Any]:
    """Run every mode on the prepared arrays and write the outputs; returns results.json's dict."""
    if by and prep.extra and by not in prep.extra[0]:
        raise ValueError(f"--by {by!r}: the data has no such column; columns are {sorted(prep.extra[0])}")
    pts = {
        "baseline (class names)": C.run_point(prep, baseline=True),
        "full system, sum scorer": C.run_point(prep, scorer="sum"),
        "full system, Bayes scorer": C.run_point(prep, scorer="bayes"),
        f"adaptive eig, τ={tau}": C.run_point(prep, "eig", StopRule(tau=tau)),
    }
    rows = [_row(k, p, seed) for k, p in pts.items()]
    rng = np.random.default_rng(seed)
    shuffles = {"sum": [], "bayes": []}
    for _ in range(n_shuffle):
        sysx = C.shuffled_system(prep.system, C.derangement(prep.system.n_classes, rng))
        for scorer in shuffles:
            shuffles[scorer].append(C.run_point(prep, scorer=scorer, system=sysx))
    for scorer, label in (("sum", "sum scorer"), ("bayes", "Bayes scorer")):
        accs = np.array([p.accuracy for p in shuffles[scorer]])
        rows.append({"mode": f"shuffled rules, {label} ({n_shuffle} seeds)", "n": prep.n,
                     "accuracy": float(accs.mean()), "accuracy_sd": float(accs.std(ddof=1)) if n_shuffle > 1 else 0.0,
                     "accuracies": accs.tolist(), "ci95": None,
                     "mean_q": float(np.mean([p.mean_q for p in shuffles[scorer]])),
                     "text_encodes": int(np.mean([p.text_encodes for p in shuffles[scorer]]))})
    names = list(pts)
    base, fsum, fbay, ada = (pts[k] for k in names)
    tests = [
        {"a": names[1], "b": names[0], "p": mcnemar_p(fsum.correct, base.correct),
         "a_only": int((fsum.correct & ~base.correct).sum()), "b_only": int((~fsum.correct & base.correct).sum())},
        {"a": names[2], "b": names[0], "p": mcnemar_p(fbay.correct, base.correct),
         "a_only": int((fbay.correct & ~base.correct).sum()), "b_only": int((~fbay.correct & base.correct).sum())},
        {"a": names[3], "b": names[2], "p": mcnemar_p(ada.correct, fbay.correct),
         "a_only": int((ada.correct & ~fbay.correct).sum()), "b_only": int((~ada.correct & fbay.correct).sum())},
        {"a": names[3], "b": names[1], "p": mcnemar_p(ada.correct, fsum.correct),
         "a_only": int((ada.correct & ~fsum.correct).sum()), "b_only": int((~ada.correct & fsum.correct).sum())},
    ]
    breakdown = {by: _by(prep, by, pts, seed)} if by else {}
    chance = float(np.bincount(prep.truth, minlength=prep.system.n_classes).max() / prep.n)
    results = {"benchmark": "reproduce", "meta": C.meta_block(prep, {"seed": seed, "tau": tau, "command": command,
                                                                        "n_shuffle": n_shuffle}),
               "modes": rows, "mcnemar": tests, "by": breakdown, "majority_class_rate": chance,
               "stops_adaptive": {s: int(sum(x == s for x in ada.stop)) for s in set(ada.stop)}}
    out.mkdir(parents=True, exist_ok=True)
    plot = _plot(prep, rows, breakdown, by, out / "accuracy.png")
    results["plots"] = [plot]
    C.write_outputs(out, results, _report(prep, results, command, plot))
    return results


def _plot(prep: C.Prepared, rows: list[dict], breakdown: dict, by: str | None, path: Path) -> str:
    plt = C.pyplot()
    groups = ["all"] + (sorted(breakdown[by]) if by else [])
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(groups) + 4), 4.6))
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        ys, lo, hi = [], [], []
        for gname in groups:
            if gname == "all":
                acc, ci = r["accuracy"], r["ci95"]
                sd = r.get("accuracy_sd")
            else:
                d = breakdown[by][gname].get(r["mode"])
                if d is None:  # shuffled rows: no per-group breakdown
                    ys.append(np.nan); lo.append(0); hi.append(0)
                    continue
                acc, ci, sd = d["accuracy"], d["ci95"], None
            ys.append(acc)
            if ci is not None:
                lo.append(acc - ci[0]); hi.append(ci[1] - acc)
            else:
                lo.append(sd or 0); hi.append(sd or 0)
        x = np.arange(len(groups)) + (j - (len(rows) - 1) / 2) * width
        ax.bar(x, ys, width, yerr=[lo, hi], capsize=2, label=r["mode"])
    ax.axhline(1 / prep.system.n_classes, color="k", ls=":", lw=1, label=f"chance 1/N = {1 / prep.system.n_classes:.3f}")
    labels = ["all"] + [f"{by}={g}" for g in groups[1:]]
    ax.set_xticks(np.arange(len(groups)), labels)
    ax.set_ylabel("top-1 accuracy (95% Clopper–Pearson CI; shuffled: ± sd over seeds)")
    ax.set_xlabel("images")
    ax.set_ylim(0, min(1.0, max(0.2, 1.25 * max(r["accuracy"] for r in rows) + 0.05)))
    ax.set_title(C.plot_title("Accuracy by mode", prep))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return C.save_fig(fig, path)


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    out = []
    for r in results["modes"]:
        if r.get("ci95"):
            acc = f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        else:
            acc = f"{r['accuracy']:.3f} ± {r['accuracy_sd']:.3f} (sd)"
        out.append([r["mode"], r["n"], acc, f"{r['mean_q']:.1f}", r["text_encodes"]])
    return out


def _report(prep: C.Prepared, res: dict[str, Any], command: str, plot: str) -> str:
    s = [C.report_header("bench.reproduce", prep, command)]
    s.append(f"Majority-class rate {res['majority_class_rate']:.3f}; chance 1/N = {1 / prep.system.n_classes:.3f}.\n")
    s.append(C.md_table(["mode", "n", "accuracy [95% CI]", "mean Q", "text encodes"], table_rows(res)))
    s.append("\n\nMcNemar (exact, paired):\n")
    s.append(C.md_table(["A", "B", "only A right", "only B right", "p"],
                        [[t["a"], t["b"], t["a_only"], t["b_only"], C.fmt_p(t["p"])] for t in res["mcnemar"]]))
    s.append(f"\n\nAdaptive stop reasons: {res['stops_adaptive']}\n")
    for col, d in res["by"].items():
        s.append(f"\n## By {col}\n")
        modes = [r["mode"] for r in res["modes"] if r.get("ci95")]
        rows = []
        for v, per in d.items():
            for m in modes:
                x = per[m]
                rows.append([f"{col}={v}", m, x["n"], f"{x['accuracy']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]",
                             f"{x['mean_q']:.1f}"])
        s.append(C.md_table([col, "mode", "n", "accuracy [95% CI]", "mean Q"], rows))
    s.append(f"\n\n![accuracy]({plot})\n")
    return "\n".join(s) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, out="reproduce")
    ap.add_argument("--by", default=None, help="break results down by this data column (e.g. source, split)")
    ap.add_argument("--n-shuffle", type=int, default=N_SHUFFLE)
    ap.add_argument("--tau", type=float, default=TAU)
    args = ap.parse_args(argv)
    prep = C.prepare_from_args(args)
    res = run(prep, Path(args.out), seed=args.seed, by=args.by, n_shuffle=args.n_shuffle, tau=args.tau,
              command=C.command_line("bench.reproduce", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
