"""Stopping at a target accuracy, measured on test images: τ chosen on dev, accuracy of the confident stops on test.

    python -m bench.target_accuracy                      # simulator + the probe's Gen-1 pairs, target 0.8
    python -m bench.target_accuracy --targets 0.6 0.8 --no-probe

For each pair (the simulator with unequally reliable groups, and the attribute probe's Gen-1 pairs of
:mod:`bench.channels`; the probe is trained here, not CLIP) the images are split 50/50 by image. On the dev
half, :func:`engine.run.calibration_file.fit_calibration` does what ``twentyq calibrate`` does: the per-group
channels are fitted on its fit part and the policy's τ=1 paths traced on its select part; then for the target
A, :func:`engine.run.calibration_file.target_choice` picks τ (learn-then-test, 90% confidence; what
``--target-accuracy A`` does). On the test half, the adaptive loop runs with that τ and the fitted channel;
reported: how many images stop on confidence and their accuracy with a 95% Clopper–Pearson CI, the others
(their own stop reasons) and their accuracy, overall accuracy, and mean Q against the full system's Q.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.adaptive import StopRule, classify_batch
from engine.core.channel_fit import split_by_image
from engine.core.sources import ArraySource
from engine.run.calibration_file import fit_calibration, target_choice
from engine.run.config import RunConfig
from engine.run.evaluation import exact_ci

from .channels import DEFAULT_PROBE, gen1_preps
from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "target_accuracy"


def evaluate(prep: C.Prepared, targets: list[float], *, policy: str = "eig", seed: int = 0) -> dict[str, Any]:
    """Fit on the dev half, choose τ per target, measure on the test half. Returns a dict of rows."""
    dev, test = split_by_image(prep.truth, 0.5, seed)
    s = prep.system
    cal = fit_calibration(prep.sims[dev], prep.truth[dev], s, lam0=prep.logit_scale, eps=prep.eps,
                          model=prep.model, model_id=prep.model, policies=[policy])
    channel = cal.channel(s)
    truth = prep.truth[test]
    rows = []
    for target in targets:
        choice = target_choice(cal, RunConfig(mode="adaptive", policy=policy, target_accuracy=target))
        res = classify_batch(ArraySource(prep.sims[test], s), s, policy, stop=StopRule(tau=choice.tau),
                             logit_scale=cal.lams, channel=channel, top_k=1)
        right = np.array([r.label == s.classes[t] for r, t in zip(res, truth)])
        conf = np.array([r.stop == "confident" for r in res])
        k, n = int(right[conf].sum()), int(conf.sum())
        others = {}
        for r in res:
            if r.stop != "confident":
                others[r.stop] = others.get(r.stop, 0) + 1
        rows.append({
            "target": target, "tau": choice.tau, "reached_on_dev": choice.reached,
            "dev_stopped": choice.n_stopped, "dev_right": choice.n_right, "dev_lower_bound_90": choice.lower_bound,
            "test_n": len(test), "confident_n": n, "confident_accuracy": k / n if n else None,
            "confident_ci95": exact_ci(k, n), "others_n": len(test) - n, "others_stops": others,
            "others_accuracy": float(right[~conf].mean()) if (~conf).any() else None,
            "accuracy": float(right.mean()), "mean_q": float(np.mean([r.q_spent for r in res])),
            "full_q": int(s.q_total),
        })
    return {"pair": prep.data, "model": prep.model_label, "system": s.name, "n_classes": s.n_classes,
            "policy": policy, "dev_n": len(dev), "rows": rows}


def report(results: dict[str, Any]) -> str:
    L = ["# Stopping at a target accuracy (τ chosen on dev, measured on test)", "",
         f"`{results['command']}`; {results['machine']}; {results['seconds']:.0f} s.", "",
         "Images that never reach τ keep their own stop reason and are not counted as confident.", ""]
    for key, p in results["pairs"].items():
        L += [f"## {key}", "", f"model: {p['model']}; policy {p['policy']}; dev {p['dev_n']} images, "
              f"test {p['rows'][0]['test_n'] if p['rows'] else 0}", ""]
        table = []
        for r in p["rows"]:
            ci = r["confident_ci95"]
            acc = "-" if r["confident_accuracy"] is None else f"{r['confident_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
            met = ("-" if r["confident_accuracy"] is None
                   else "yes" if ci[1] >= r["target"] else f"no (upper CI {ci[1]:.3f})")
            table.append([r["target"], f"{r['tau']:.4g}" + ("" if r["reached_on_dev"] else " (not reachable on dev)"),
                          f"{r['dev_stopped']}/{r['dev_right']}", r["confident_n"], acc, met,
                          ", ".join(f"{k} {v}" for k, v in r["others_stops"].items()) or "-",
                          "-" if r["others_accuracy"] is None else f"{r['others_accuracy']:.3f}",
                          f"{r['accuracy']:.3f}", f"{r['mean_q']:.1f} / {r['full_q']}"])
        L += [C.md_table(["target", "τ", "dev stopped/right", "test confident", "their accuracy [95% CI]",
                          "target within CI", "others' stops", "others' accuracy", "overall", "mean Q / full Q"],
                         table), ""]
    if results.get("probe_skipped"):
        L += [f"Probe pairs skipped: {results['probe_skipped']}", ""]
    return "\n".join(L) + "\n"


def run(out: Path, *, targets: list[float], seed: int = 0, probe: Path | None = DEFAULT_PROBE,
        cache_dir: Path = C.DEFAULT_CACHE, quick: bool = False, policy: str = "eig", command: str = "",
        log=print) -> dict[str, Any]:
    t0 = time.perf_counter()
    preps, skipped = gen1_preps(probe, cache_dir, sim_images=4000, quick=quick, seed=seed, log=log)
    pairs = {}
    for key, prep in preps.items():
        log(f"[target_accuracy] {key}: {prep.n} images")
        pairs[key] = evaluate(prep, targets, policy=policy, seed=seed)
    results = {"benchmark": "target_accuracy", "command": command, "targets": targets, "seed": seed,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "probe_skipped": skipped,
               "pairs": pairs, "seconds": time.perf_counter() - t0}
    C.write_outputs(Path(out), results, report(results))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8])
    ap.add_argument("--policy", default="eig")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="400 simulated images, ≤200 per probe pair")
    ap.add_argument("--probe", default=str(DEFAULT_PROBE), help="a trained probe folder (default: the shipped one)")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache")
    args = ap.parse_args(argv)
    res = run(Path(args.out), targets=args.targets, seed=args.seed, probe=None if args.no_probe else Path(args.probe),
              cache_dir=Path(args.cache_dir), quick=args.quick, policy=args.policy,
              command=C.command_line("bench.target_accuracy", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
