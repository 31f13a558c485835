"""Does the target-accuracy guarantee hold? A repeated-split simulation of its miss rate (issue 26, item 5).

    python -m bench.target_repeats                                  # 200 repetitions, targets 0.7 0.8 0.85 0.9,
                                                                    # n_dev 60 100 300 (the figures in docs/channels.md)
    python -m bench.target_repeats --reps 20 --n-dev 60 --quick     # a smoke run

Each repetition draws fresh simulated images (pokemon15, per-group wrong-answer rates spread over [0, 0.6] by
:func:`engine.core.simulate.heterogeneous_wrong_rates`, margin 0.05, noise 0.02, λ 100; the image seed is the
repetition's): ``n_dev`` labelled dev images and ``n_test`` test images. On the dev images it does what
``twentyq calibrate`` does (:func:`engine.run.calibration_file.fit_calibration`: the answer model fitted on
every dev image, ``eig``'s τ=1 paths cross-fitted: each of 3 folds traced with the model fitted on the other
two), and for each target :meth:`Calibration.tau_for` chooses τ
(learn-then-test, α = 0.1). On the test images the τ=1 ``eig`` paths with the fitted channel give, for every
target at once (:func:`engine.core.channel_fit.stop_outcomes`; a path does not depend on τ), the accuracy
among images that stop on confidence.

A *miss* is a repetition whose test accuracy among confident stops is below the target (a repetition where
no τ was reached stops nothing on confidence and cannot miss). The guarantee says P(miss) ≤ α; the report
gives the miss rate over repetitions with a 95% Clopper–Pearson interval, the share of repetitions where the
target was reached, and the same figures for the old rule (τ chosen on the images the channels were fitted
on, every dev image used for both, at most 20 stops needed) as the control. With a finite test set a
repetition whose true accuracy sits just above the target can still "miss" by test noise; ``n_test``
(default 1,500; about 1,000 confident stops, SE ≈ 0.01) keeps that small; it can only raise the miss rate.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.channel_fit import choose_tau, fit_answer_channels, stop_outcomes
from engine.core.simulate import SimulatedSource, heterogeneous_wrong_rates, sample_classes
from engine.run.calibration_file import fit_calibration, trace_paths
from engine.run.evaluation import exact_ci
from systems import load_system

from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "target_repeats"
ALPHA = 0.1
SYSTEM = "pokemon15"
WRONG = (0.0, 0.6)


def draw(system, n: int, seed: int, wrong) -> tuple[np.ndarray, np.ndarray]:
    """n balanced simulated images: (sims (n, Q), truth (n,))."""
    truth = sample_classes(n, system.n_classes, seed)
    src = SimulatedSource(system, truth, margin=C.SIM["margin"], noise=C.SIM["noise"], wrong_rate=wrong, seed=seed)
    every = np.arange(n)
    return np.concatenate([src.similarities(every, g) for g in range(system.n_groups)], axis=1), truth


def one_repetition(system, wrong, rep: int, n_dev: int, n_test: int, targets: list[float], policy: str,
                   old: bool = True) -> dict[str, Any]:
    """One repetition: fit on n_dev fresh dev images, choose τ per target, measure on n_test fresh test images."""
    lam = C.SIM["logit_scale"]
    dev_sims, dev_truth = draw(system, n_dev, seed=1_000_003 * (rep + 1) + n_dev, wrong=wrong)
    test_sims, test_truth = draw(system, n_test, seed=2_000_003 * (rep + 1) + n_dev, wrong=wrong)
    cal = fit_calibration(dev_sims, dev_truth, system, lam0=lam, eps=0.05, model="sim", model_id="sim",
                          policies=[policy], auto=False, seed=rep)
    ch = cal.channel(system)
    test = trace_paths(test_sims, test_truth, system, policy, cal.lams, ch, cal.answer_model(system))
    out = {"new": [], "old": []}
    for t in targets:
        c = cal.tau_for(policy, t, alpha=ALPHA, system=system)
        out["new"].append(_outcome(c, test, t))
    if old:  # the control: channels and τ on the same images, and τ tested from 20 stops (the old rule)
        fit = fit_answer_channels(dev_sims, dev_truth, system.rule_matrix, system.option_counts, lam0=lam, eps=0.05)
        och = fit.channel(system.rule_matrix, system.option_counts)
        dev_p = trace_paths(dev_sims, dev_truth, system, policy, fit.lams, och)
        test_o = trace_paths(test_sims, test_truth, system, policy, fit.lams, och)
        for t in targets:
            c = choose_tau(dev_p.conf, dev_p.correct, t, alpha=ALPHA, min_stopped=20, errors=None)
            out["old"].append(_outcome(c, test_o, t))
    return out


def _outcome(choice, test, target: float) -> dict[str, Any]:
    if not choice.reached:
        return {"reached": False, "miss": False, "tau": 1.0, "n": 0, "acc": None}
    s, r = stop_outcomes(test.conf, test.correct, choice.tau)
    n, k = int(s.sum()), int(r.sum())
    acc = k / n if n else None
    return {"reached": True, "miss": bool(n and acc < target), "tau": choice.tau, "n": n, "acc": acc}


def summarise(rows: list[dict], targets: list[float]) -> list[dict[str, Any]]:
    out = []
    for j, t in enumerate(targets):
        o = [r[j] for r in rows]
        misses, reached = sum(x["miss"] for x in o), sum(x["reached"] for x in o)
        accs = [x["acc"] for x in o if x["acc"] is not None]
        out.append({"target": t, "reps": len(o), "misses": misses, "miss_rate": misses / len(o),
                    "miss_ci95": list(exact_ci(misses, len(o))), "reached": reached, "reached_rate": reached / len(o),
                    "mean_test_accuracy_when_reached": float(np.mean(accs)) if accs else None,
                    "mean_tau_when_reached": float(np.mean([x["tau"] for x in o if x["reached"]])) if reached else None,
                    "mean_confident_share": float(np.mean([x["n"] for x in o])) })
    return out


def run(out: Path, *, reps: int, n_devs: list[int], n_test: int, targets: list[float], policy: str = "eig",
        old_at: tuple[int, ...] = (100,), command: str = "", log=print) -> dict[str, Any]:
    system = load_system(SYSTEM)
    wrong = heterogeneous_wrong_rates(system.n_groups, low=WRONG[0], high=WRONG[1], seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()
    res = {}
    for n_dev in n_devs:
        t1 = time.perf_counter()
        rows = {"new": [], "old": []}
        for rep in range(reps):
            o = one_repetition(system, wrong, rep, n_dev, n_test, targets, policy, n_dev in old_at)
            rows["new"].append(o["new"])
            if o["old"]:
                rows["old"].append(o["old"])
        res[n_dev] = {k: summarise(v, targets) for k, v in rows.items() if v}
        log(f"[target_repeats] n_dev {n_dev}: {reps} repetitions in {time.perf_counter() - t1:.0f} s; "
            + "; ".join(f"t={r['target']}: miss {r['misses']}/{r['reps']}, reached {r['reached']}"
                        for r in res[n_dev]["new"]))
    results = {"benchmark": "target_repeats", "command": command, "system": SYSTEM, "wrong_rates": wrong.tolist(),
               "policy": policy, "alpha": ALPHA, "reps": reps, "n_test": n_test, "targets": targets,
               "results": {str(k): v for k, v in res.items()}, "wall_seconds": time.perf_counter() - t0,
               "cpu_seconds": time.process_time() - c0, "load_before": load0, "load_after": os.getloadavg()}
    C.write_outputs(Path(out), results, report(results))
    return results


def report(r: dict[str, Any]) -> str:
    L = ["# Target accuracy: repeated-split miss rate (simulator)", "",
         f"`{r['command']}`; {r['reps']} repetitions per n_dev, {r['n_test']} test images each; policy "
         f"{r['policy']}; α = {r['alpha']}; wall {r['wall_seconds']:.0f} s, CPU {r['cpu_seconds']:.0f} s; load "
         f"average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after.", ""]
    for n_dev, v in r["results"].items():
        rows = []
        for which in ("new", "old"):
            for x in v.get(which, []):
                ci = x["miss_ci95"]
                acc = x["mean_test_accuracy_when_reached"]
                rows.append([which, x["target"], f"{x['miss_rate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                             "yes" if ci[0] <= r["alpha"] else "NO", f"{x['reached_rate']:.2f}",
                             "-" if acc is None else f"{acc:.3f}",
                             "-" if x["mean_tau_when_reached"] is None else f"{x['mean_tau_when_reached']:.3f}"])
        L += [f"## n_dev = {n_dev}", "",
              C.md_table(["rule", "target", "miss rate [95% CI]", "≤ α within CI", "reached", "test acc. of "
                          "confident stops (mean, when reached)", "mean τ"], rows), ""]
    L += ["new: the answer model on every dev image, τ on its cross-fitted paths (3 folds, each traced with the "
          "model fitted on the other two), τ tested from min_stops(target, α, 1) stops; the test images run on the "
          "model fitted on every dev image (what calibrate ships). old: channels and τ on every dev image, in "
          "sample, τ tested from 20 stops.", ""]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--n-dev", type=int, nargs="+", default=[60, 100, 300])
    ap.add_argument("--n-test", type=int, default=1500)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.8, 0.85, 0.9])
    ap.add_argument("--policy", default="eig")
    ap.add_argument("--old-at", type=int, nargs="*", default=[100],  # none given: no control
                    help="n_dev values at which the old rule is run too, as the control (default: 100)")
    ap.add_argument("--quick", action="store_true", help="1,000 test images")
    args = ap.parse_args(argv)
    res = run(Path(args.out), reps=args.reps, n_devs=args.n_dev, n_test=1000 if args.quick else args.n_test,
              targets=args.targets, policy=args.policy, old_at=tuple(args.old_at),
              command=C.command_line("bench.target_repeats", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
