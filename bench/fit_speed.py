"""The few-shot LR fit with one BLAS thread (what ships) against BLAS's default threads, side by side.

    python -m bench.fit_speed                  # the simulator (pokemon15, 180 dev images) and the probe pairs
    python -m bench.fit_speed --no-probe       # the simulator only (a few seconds)

``engine.core.answer_models._fit_lr`` runs L-BFGS under ``engine.common.threads.one_blas_thread`` (threadpoolctl): it calls
its objective hundreds of times on products too small to share out between threads. This times
:func:`engine.core.answer_models.fit_few_shot_posterior` (the cross-validated group-masked LR and its head, what
``calibrate --setting few-shot`` and the predictive refits run) as shipped and with the limit taken away,
alternating (shipped, default, shipped, default, ...) so that a change in the machine's load falls on both;
each figure is the best of ``--repeats`` wall times, and the two fits are checked to agree. Probe pairs: the dev
half of each pair (seed 0), as ``bench.channels --predictive`` fits it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from engine.core import answer_models as AM

from . import channels as CH
from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "fit_speed"


def timed_fit(prep: C.Prepared, *, limited: bool) -> tuple[float, Any]:
    """(wall seconds, the fit) of fit_few_shot_posterior on ``prep``, with the shipped BLAS limit or without."""
    s = prep.system
    saved = AM.one_blas_thread
    if not limited:
        AM.one_blas_thread = contextlib.nullcontext
    try:
        t0 = time.perf_counter()
        fit = AM.fit_few_shot_posterior(prep.sims, prep.truth, s.option_counts, s.n_classes)
        return time.perf_counter() - t0, fit
    finally:
        AM.one_blas_thread = saved


def compare(prep: C.Prepared, repeats: int) -> dict[str, Any]:
    best = {"one thread (ships)": np.inf, "default threads": np.inf}
    fits = {}
    for _ in range(repeats):
        for label, limited in (("one thread (ships)", True), ("default threads", False)):
            sec, fits[label] = timed_fit(prep, limited=limited)
            best[label] = min(best[label], sec)
    a, b = (f.posterior for f in fits.values())
    return {"images": prep.n, "classes": prep.system.n_classes, "q": prep.system.q_total, "model": prep.model_label,
            "seconds": best, "ratio": best["default threads"] / best["one thread (ships)"],
            "max_abs_weight_diff": float(np.abs(a.W - b.W).max()), "same_reg": a.reg == b.reg}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (results.json, report.md)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-probe", action="store_true", help="the simulator only")
    ap.add_argument("--probe", default=str(CH.DEFAULT_PROBE), help="a trained probe folder (bench.probe train)")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache (bench.probe's)")
    ap.add_argument("--datasets", nargs="+", default=["sprites151", "jina15-gen1", "web150"])
    ap.add_argument("--systems", nargs="+", default=["pokemon15-gen1"])
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    default = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    if default <= 1:
        print("[fit_speed] BLAS already runs one thread here (OMP_NUM_THREADS or OPENBLAS_NUM_THREADS=1?), so "
              "both columns time the same thing; unset them to compare")
    sim = CH.simulator_prep(images=360, seed=0)
    preps = {"simulator × " + CH.SIM_SYSTEM + " (180 dev images)": sim.subset(np.arange(0, sim.n, 2))}
    if not args.no_probe:
        found, why = CH.probe_preps(Path(args.probe), Path(args.cache_dir), limit=None, seed=0,
                                    datasets_only=args.datasets, systems_only=args.systems)
        if not found:
            print(f"[fit_speed] no probe pair ({why}); the simulator only")
        for key, prep in found.items():
            preps[key + " (dev half)"] = prep.subset(CH.split_by_image(prep.truth, 0.5, 0)[0])
    rows = {}
    for key, prep in preps.items():
        rows[key] = compare(prep, args.repeats)
        r = rows[key]
        print(f"[fit_speed] {key}: one thread {r['seconds']['one thread (ships)']:.2f} s, default threads "
              f"{r['seconds']['default threads']:.2f} s ({r['ratio']:.1f}x)", flush=True)
    results = {"benchmark": "fit_speed", "command": C.command_line("bench.fit_speed", argv),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), "
                          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, BLAS threads {default} by "
                          "default",
               "repeats": args.repeats, "pairs": rows, "seconds": time.perf_counter() - t0,
               "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    report = "\n".join([
        "# bench.fit_speed — the few-shot LR fit, one BLAS thread against the default\n", *C.run_lines(results),
        f"- best of {args.repeats}, alternating; the same fit both ways (largest weight difference in the table)\n",
        C.md_table(["dev images", "similarities from", "N", "Q", "one thread (ships), s", "default threads, s",
                    "default / one", "largest |ΔW|"],
                   [[f"{k}: {r['images']}", r["model"], r["classes"], r["q"], f"{r['seconds']['one thread (ships)']:.2f}",
                     f"{r['seconds']['default threads']:.2f}", f"{r['ratio']:.1f}x", f"{r['max_abs_weight_diff']:.1e}"]
                    for k, r in rows.items()])]) + "\n"
    C.write_outputs(Path(args.out), results, report)
    print(report)
    return results


if __name__ == "__main__":
    main()
