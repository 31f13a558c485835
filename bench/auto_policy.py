"""`--policy auto` against fixed order, on test images (issue 26, item 2).

    python -m bench.auto_policy                      # the simulator and the probe's pokemon15-gen1 pairs
    python -m bench.auto_policy --no-probe           # the simulator only

Each pair's images are split 50/50 by image, stratified by class (:func:`engine.core.channel_fit.split_by_image`,
seed 0). The dev half goes
through :func:`engine.run.calibration_file.fit_calibration`, exactly what ``twentyq calibrate`` does: channels
and the dev order on every dev image, the auto choice on cross-fitted paths (3 folds; normalised budget AUC of fixed,
dev-order, eig and lookahead, fixed unless clearly beaten). On the test half, with the fitted channel, every
candidate and auto itself are swept over the same budgets (τ = 1) and their normalised budget AUCs compared
with paired bootstrap CIs (1,000 resamples of the test images): auto − fixed is the figure the issue asks for
("above fixed in the simulator; not below it by more than its CI on the probe pairs").
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.channel_fit import split_by_image  # the one split helper: stratified by class
from engine.core.metrics import budget_aucs, budget_grid
from engine.run.calibration_file import fit_calibration
from policies.builtin import AUTO_CANDIDATES

from .lib import harness as C
from .channels import DEFAULT_PROBE, budget_curve, gen1_preps

DEFAULT_OUT = C.DEFAULT_OUT / "auto_policy"


def evaluate(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000) -> dict[str, Any]:
    s = prep.system
    dev_i, test_i = split_by_image(prep.truth, 0.5, seed)
    dev, test = prep.subset(dev_i), prep.subset(test_i)
    t0 = time.perf_counter()
    cal = fit_calibration(dev.sims, dev.truth, s, lam0=prep.logit_scale, eps=prep.eps, model=prep.model,
                          model_id=prep.model, policies=["fixed"])
    t_cal = time.perf_counter() - t0
    ch = cal.channel(s)
    budgets = budget_grid(int(s.q_total), n_budgets)
    curves = {p: budget_curve(test, lambda p=p: cal.policy_object(p), budgets, lam=cal.lams, channel=ch,
                              answer_model=cal.answer_model(s))
              for p in AUTO_CANDIDATES}
    curves["auto"] = curves[cal.auto_choice()]
    aucs = budget_aucs(curves, float(s.q_total), n_boot=n_boot, seed=seed)
    rows = {}
    for p, v in aucs.items():
        d = v["boot"] - aucs["fixed"]["boot"]
        rows[p] = {"auc": v["auc"], "ci95": v["ci95"], "minus_fixed": v["auc"] - aucs["fixed"]["auc"],
                   "minus_fixed_ci95": [float(x) for x in np.quantile(d, [0.025, 0.975])]}
    a = rows["auto"]
    half = (a["minus_fixed_ci95"][1] - a["minus_fixed_ci95"][0]) / 2
    return {"pair": prep.data, "model": prep.model_label, "system": s.name, "n_dev": int(len(dev_i)),
            "folds": cal.dev["crossfit"]["folds"],
            "n_test": int(len(test_i)), "choice": cal.auto_choice(),
            "dev_order": [s.groups[g].name for g in cal.dev_order],
            "select_figures": cal.auto["candidates"], "test": rows, "seconds_calibrate": t_cal,
            "auto_not_below_fixed_by_more_than_ci": bool(a["minus_fixed"] >= -half),
            "auto_above_fixed": bool(a["minus_fixed_ci95"][0] > 0)}


def report(r: dict[str, Any]) -> str:
    L = ["# `--policy auto` against fixed order (test images)", "",
         f"`{r['command']}`; wall {r['wall_seconds']:.0f} s, CPU {r['cpu_seconds']:.0f} s; load average "
         f"{r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after.", ""]
    rows = []
    for key, p in r["pairs"].items():
        t = p["test"]
        rows.append([key, f"{p['n_dev']} ({p['folds']} folds)/{p['n_test']}", p["choice"],
                     *(f"{t[c]['auc']:.3f}" for c in AUTO_CANDIDATES),
                     f"{t['auto']['minus_fixed']:+.3f} [{t['auto']['minus_fixed_ci95'][0]:+.3f}, "
                     f"{t['auto']['minus_fixed_ci95'][1]:+.3f}]"])
    L += [C.md_table(["pair", "dev (cross-fit folds)/test images", "auto chose", *(f"AUC {c}" for c in AUTO_CANDIDATES),
                      "auto − fixed [95% CI]"], rows), ""]
    if r.get("probe_skipped"):
        L += [f"Probe pairs skipped: {r['probe_skipped']}", ""]
    return "\n".join(L) + "\n"


def run(out: Path, *, probe: Path | None, cache_dir: Path, seed: int = 0, quick: bool = False, command: str = "",
        log=print) -> dict[str, Any]:
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    preps, skipped = gen1_preps(probe, cache_dir, sim_images=2000, quick=quick, seed=seed, log=log)
    pairs = {}
    for key, prep in preps.items():
        log(f"[auto_policy] {key}: {prep.n} images")
        pairs[key] = evaluate(prep, seed=seed)
    res = {"benchmark": "auto_policy", "command": command, "pairs": pairs, "probe_skipped": skipped,
           "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
           "load_before": load0, "load_after": os.getloadavg()}
    C.write_outputs(Path(out), res, report(res))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--probe", default=str(DEFAULT_PROBE))
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE))
    args = ap.parse_args(argv)
    res = run(Path(args.out), probe=None if args.no_probe else Path(args.probe), cache_dir=Path(args.cache_dir),
              seed=args.seed, quick=args.quick, command=C.command_line("bench.auto_policy", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
