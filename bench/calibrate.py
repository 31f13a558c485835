"""Calibrate the Bayes scorer: fit λ and ε on a dev split, check the posterior on a test split.

    python -m bench.calibrate --model simulator
    python -m bench.calibrate --data jina15 --system pokemon15
    python -m bench.calibrate --data flowers17 --system flowers17

The images are split at random (seeded, stratified by class) into dev and test
halves. λ (logit scale) and ε (rule noise) are fitted on dev by maximum
likelihood of the true class under the full-system Bayes posterior
(:func:`engine.core.channel_fit.fit_logit_scale_and_eps`). Reported before (the
model's own λ, ε = 0.05) and after fitting, on dev and test: accuracy, mean
true-class NLL, ECE (10 bins), reliability diagrams, the ``eig`` accuracy-vs-Q
curve, and confidence at stop against accuracy at stop for each τ.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from engine import StopRule
from engine.core.channel_fit import (
    expected_calibration_error, fit_logit_scale_and_eps, full_log_posterior, reliability_bins, true_class_nll,
)

from engine.authoring.refine import split_by_image

from .lib import harness as C

TAUS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
N_BINS = 10


def _evaluate(prep: C.Prepared, lam: float, eps: float, taus) -> dict[str, Any]:
    s = prep.system
    lp = full_log_posterior(prep.sims, s.rule_matrix, s.option_counts, lam, eps)
    post = np.exp(lp)
    pred = post.argmax(axis=1)
    conf = post.max(axis=1)
    correct = pred == prep.truth
    bins = reliability_bins(conf, correct, N_BINS)
    curve = []
    for t in taus:
        pt = C.run_point(prep, "eig", StopRule(tau=t), logit_scale=lam, eps=eps)
        conf_stop = float(pt.conf.mean())
        curve.append({"tau": t, "accuracy": pt.accuracy, "mean_q": pt.mean_q, "mean_conf_at_stop": conf_stop,
                      "ece_at_stop": expected_calibration_error(pt.conf, pt.correct, N_BINS),
                      "frac_confident": float(np.mean([x == "confident" for x in pt.stop]))})
    return {"lam": lam, "eps": eps, "accuracy": float(correct.mean()), "nll": true_class_nll(lp, prep.truth),
            "ece": expected_calibration_error(conf, correct, N_BINS), "mean_conf": float(conf.mean()),
            "bins": {k: v.tolist() for k, v in bins.items()}, "eig_curve": curve}


def run(prep: C.Prepared, out: Path, *, seed: int = 0, dev_frac: float = 0.5, taus=TAUS, fit_eps: bool = True,
        command: str = "") -> dict[str, Any]:
    """Fit on dev, evaluate before/after on dev and test; write results.json, report.md and plots."""
    s = prep.system
    dev_idx, test_idx = split_by_image(prep.truth, dev_frac, seed)
    dev, test = prep.subset(dev_idx), prep.subset(test_idx)
    lam0, eps0 = prep.logit_scale, prep.eps
    fit = fit_logit_scale_and_eps(dev.sims, dev.truth, s.rule_matrix, s.option_counts, lam0=lam0, eps0=eps0,
                                  fit_eps=fit_eps)
    res = {"before": {"dev": _evaluate(dev, lam0, eps0, taus), "test": _evaluate(test, lam0, eps0, taus)},
           "after": {"dev": _evaluate(dev, fit.lam, fit.eps, taus), "test": _evaluate(test, fit.lam, fit.eps, taus)}}
    results = {"benchmark": "calibrate",
               "meta": C.meta_block(prep, {"seed": seed, "dev_frac": dev_frac, "n_dev": len(dev_idx),
                                           "n_test": len(test_idx), "n_bins": N_BINS, "command": command}),
               "fit": {"lam": fit.lam, "eps": fit.eps, "lam_start": lam0, "eps_start": eps0, "nll_dev": fit.nll,
                       "nll_dev_start": fit.nll_start, "converged": fit.success, "fit_eps": fit_eps},
               **res}
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = [_plot_reliability(prep, results, out / "reliability.png"),
                        _plot_curves(prep, results, out / "eig_curve.png")]
    C.write_outputs(out, results, _report(prep, results, command))
    return results


def _plot_reliability(prep: C.Prepared, res: dict[str, Any], path: Path) -> str:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, when in zip(axes, ("before", "after")):
        r = res[when]["test"]
        b = r["bins"]
        edges = np.array(b["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        acc = np.array(b["accuracy"], dtype=float)
        cnt = np.array(b["count"])
        ax.bar(centres, np.nan_to_num(acc), width=edges[1] - edges[0], edgecolor="k", alpha=0.7,
               label="accuracy in bin")
        mc = np.array(b["confidence"], dtype=float)
        ax.plot(mc[cnt > 0], acc[cnt > 0], "o", color="tab:orange", label="(mean confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        for x, n in zip(centres, cnt):
            if n:
                ax.text(x, 0.02, str(int(n)), ha="center", fontsize=7, rotation=90)
        ax.set_xlabel("confidence (max posterior, full system)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{when} fit: λ={r['lam']:.3g}, ε={r['eps']:.3g} — test ECE {r['ece']:.3f}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy (numbers: images per bin)")
    fig.suptitle(C.plot_title("Reliability diagram, test split", prep).replace("\n", " — "), fontsize=11)
    return C.save_fig(fig, path)


def _plot_curves(prep: C.Prepared, res: dict[str, Any], path: Path) -> str:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for when, col in (("before", "tab:gray"), ("after", "tab:blue")):
        cv = res[when]["test"]["eig_curve"]
        lam, eps = res[when]["test"]["lam"], res[when]["test"]["eps"]
        axes[0].plot([p["mean_q"] for p in cv], [p["accuracy"] for p in cv], "o-", color=col,
                     label=f"eig, {when} (λ={lam:.3g}, ε={eps:.3g})")
        axes[1].plot([p["mean_conf_at_stop"] for p in cv], [p["accuracy"] for p in cv], "o-", color=col,
                     label=f"{when} fit")
        for p in cv:
            axes[1].annotate(f"τ={p['tau']}", (p["mean_conf_at_stop"], p["accuracy"]), fontsize=6,
                             textcoords="offset points", xytext=(3, -8))
    axes[0].set_xlabel("mean Q (prompts spent per image)")
    axes[0].set_ylabel("top-1 accuracy (test split)")
    axes[0].set_title("eig accuracy against mean Q (τ sweep)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].plot([0, 1], [0, 1], "k--", lw=1, label="confidence = accuracy")
    axes[1].set_xlabel("mean confidence at stop")
    axes[1].set_ylabel("accuracy at stop")
    vals = [v for w in ("before", "after") for q in res[w]["test"]["eig_curve"]
            for v in (q["mean_conf_at_stop"], q["accuracy"])]
    lo = max(0.0, min(vals) - 0.05)
    axes[1].set_xlim(lo, 1)
    axes[1].set_ylim(lo, 1)
    axes[1].set_title("confidence at stop against accuracy at stop", fontsize=10)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(C.plot_title("Calibration and eig stopping, test split", prep).replace("\n", " — "), fontsize=11)
    return C.save_fig(fig, path)


def table_rows(res: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for when in ("before", "after"):
        for split in ("dev", "test"):
            r = res[when][split]
            rows.append([when, split, f"{r['lam']:.3g}", f"{r['eps']:.3g}", r["accuracy"], r["nll"], r["ece"],
                         r["mean_conf"]])
    return rows


def _report(prep: C.Prepared, res: dict[str, Any], command: str) -> str:
    f = res["fit"]
    m = res["meta"]
    out = [C.report_header("bench.calibrate", prep, command)]
    out.append(f"Dev {m['n_dev']} / test {m['n_test']} images (stratified, seed {m['seed']}). Fit by maximum "
               f"likelihood on dev: λ {f['lam_start']:g} → **{f['lam']:.4g}**, ε {f['eps_start']:g} → "
               f"**{f['eps']:.4g}**; dev NLL {f['nll_dev_start']:.3f} → {f['nll_dev']:.3f} "
               f"(L-BFGS-B converged: {f['converged']}).\n")
    out.append(C.md_table(["", "split", "λ", "ε", "accuracy (full, Bayes)", "NLL", "ECE", "mean confidence"],
                          table_rows(res)))
    out.append("\n## eig τ sweep on test: accuracy, mean Q, confidence at stop\n")
    rows = []
    for i, p in enumerate(res["before"]["test"]["eig_curve"]):
        a = res["after"]["test"]["eig_curve"][i]
        rows.append([p["tau"], f"{p['accuracy']:.3f} / {p['mean_q']:.1f} / {p['mean_conf_at_stop']:.3f}",
                     f"{a['accuracy']:.3f} / {a['mean_q']:.1f} / {a['mean_conf_at_stop']:.3f}",
                     f"{p['ece_at_stop']:.3f} → {a['ece_at_stop']:.3f}"])
    out.append(C.md_table(["τ", "before: acc / mean Q / conf at stop", "after: acc / mean Q / conf at stop",
                           "ECE at stop"], rows))
    out.append("".join(f"\n\n![{p}]({p})" for p in res["plots"]) + "\n")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, out="calibrate")
    ap.add_argument("--dev-frac", type=float, default=0.5)
    ap.add_argument("--no-fit-eps", action="store_true", help="fit λ only")
    args = ap.parse_args(argv)
    prep = C.prepare_from_args(args)
    res = run(prep, Path(args.out), seed=args.seed, dev_frac=args.dev_frac, fit_eps=not args.no_fit_eps,
              command=C.command_line("bench.calibrate", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
