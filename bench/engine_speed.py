"""The adaptive loop's two backends side by side: numpy (the reference) against torch, on the CPU.

    python -m bench.engine_speed                       # the issue-17 cases; a few minutes on 2 cores
    python -m bench.engine_speed --images 512 --big-images 256 --repeats 1    # quicker
    python -m bench.engine_speed --before DIR          # this loop against an older checkout's, side by side

``--before DIR`` times the loop of another version of the code in the same process, on the same
arrays: DIR holds that version's ``engine/``, ``policies/`` and ``systems/`` (for example
``git archive 90c22eb engine policies systems | tar -x -C DIR``, the last commit with two loops), which
are imported under their own names and set aside again (:func:`load_before`). Each case then times
old and new numpy, old and new torch, alternating (old, new, old, new, ...) so that a change in the
machine's load falls on both, checks that old and new give the same Results, and prints new/old
ratios.

Cases (random similarities, no model; the same arrays for both backends):

- pokemon15, 4096 images, eig, τ = 0.9;
- a random system of N = 1000 classes, G = 50 groups of K = 10 options, eig τ = 0.9 with a budget
  of 100 prompts, and the full system (every group, fixed order, no stop).

numpy runs ``classify_batch`` over an ``ArraySource``; torch runs the same loop on the torch backend
(``engine.run.engines.classify(..., engine="torch")``) over a ``TensorSource`` holding the same float64
array on the CPU, with torch's default intra-op threads
and again with one thread. Each figure is the best of ``--repeats`` wall times, all in one process,
and each case checks that both backends gave the same labels, Q and question paths.

On a CPU shared with other jobs, torch's OpenMP threads spin-wait at the end of every parallel
region, and a region whose partner thread is descheduled stalls: the default-threads column can then
be several times the one-thread column. ``OMP_WAIT_POLICY=PASSIVE python -m bench.engine_speed``
(set before torch loads) shows the loop without that stall.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .lib.loop_cases import EPS, LAM, Case, agree, cases, run_numpy, run_torch
from .lib.timing import best_time

Runner = Callable[[Case], list]


def load_before(path: str | Path) -> tuple[Runner, Runner]:
    """(numpy runner, torch runner) of the loop in another checkout of ``engine``, ``policies`` and ``systems``.

    Its packages are imported from ``path`` under their own names while this version's are set aside,
    then this version's are put back: the old functions keep the old modules they were imported with.
    The runners take a :class:`Case` as :func:`run_numpy` and :func:`run_torch` do. The torch loop is
    ``engine.torch_engine.loop.classify_batch_torch`` in the layout up to 90c22eb (two loops), else
    ``engine.run.engines.classify(..., engine="torch")``.
    """
    tops = ("engine", "policies", "systems")
    ours = {k: m for k, m in sys.modules.items() if k.split(".")[0] in tops}
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, str(path))
    try:
        import engine.core.adaptive as old_adaptive
        import engine.core.sources as old_sources
        # the torch package was engine.torch_engine up to the folder moves of issue 28, engine.torch_backend after
        pkg = "engine.torch_engine" if (Path(path) / "engine/torch_engine").is_dir() else "engine.torch_backend"
        old_tsources = importlib.import_module(f"{pkg}.sources")
        if (Path(path) / pkg.replace(".", "/") / "loop.py").exists():
            old_torch_loop = importlib.import_module(f"{pkg}.loop").classify_batch_torch
        else:
            from engine.run.engines import classify as old_classify

            def old_torch_loop(*a, **kw):
                return old_classify(*a, engine="torch", **kw)
    finally:
        sys.path.remove(str(path))
        theirs = {k: m for k, m in sys.modules.items() if k.split(".")[0] in tops}
        for k in theirs:
            del sys.modules[k]
        sys.modules.update(ours)
    kw = lambda c: dict(stop=c.stop, logit_scale=LAM, eps=EPS, top_k=1)  # noqa: E731

    def in_their_modules(fn: Callable[[], list]) -> list:
        """Call ``fn`` with the old checkout's modules in sys.modules: its imports inside functions (the
        policies' plug-in loader, ...) then find the old modules, not this version's (a dict swap, µs)."""
        mine = {k: sys.modules.pop(k) for k in [k for k in sys.modules if k.split(".")[0] in tops]}
        sys.modules.update(theirs)
        try:
            return fn()
        finally:  # what the old code imported meanwhile stays with it; this version's modules come back as they were
            for k in [k for k in sys.modules if k.split(".")[0] in tops]:
                theirs[k] = sys.modules.pop(k)
            sys.modules.update(mine)

    def old_numpy(c: Case) -> list:
        return in_their_modules(lambda: old_adaptive.classify_batch(old_sources.ArraySource(c.sims, c.system),
                                                                    c.system, c.policy, **kw(c)))

    def old_torch(c: Case) -> list:
        return in_their_modules(lambda: old_torch_loop(old_tsources.TensorSource(torch.as_tensor(c.sims), c.system),
                                                       c.system, c.policy, **kw(c)))

    return old_numpy, old_torch


def alternating_best(fns: list, repeats: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """The best time of each function over ``repeats`` rounds, calling them in turn in every round.

    ``clock`` is wall time by default; ``time.process_time`` (this process's CPU time, all its threads)
    is steadier on a machine shared with other jobs."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            t0 = clock()
            fn()
            best[j] = min(best[j], clock() - t0)
    return best


def measure_before_after(c: Case, before: tuple[Runner, Runner], repeats: int,
                         clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Old and new loop, numpy and torch, on the same arrays: seconds, new/old ratios and agreement."""
    old_np, old_t = before
    new = run_numpy(c)
    agreement = {"numpy": agree(old_np(c), new), "torch": agree(old_t(c), run_torch(c))}  # and warm-up
    t = alternating_best([lambda: old_np(c), lambda: run_numpy(c), lambda: old_t(c), lambda: run_torch(c)], repeats,
                         clock)
    B = len(c.sims)
    return {"case": c.name, "images": B, "mean_q": float(np.mean([r.q_spent for r in new])),
            "old_numpy_ms_per_image": 1e3 * t[0] / B, "new_numpy_ms_per_image": 1e3 * t[1] / B,
            "old_torch_ms_per_image": 1e3 * t[2] / B, "new_torch_ms_per_image": 1e3 * t[3] / B,
            "numpy_new_over_old": t[1] / t[0], "torch_new_over_old": t[3] / t[2], "agreement": agreement}


def report_before_after(rows: list[dict[str, Any]]) -> str:
    out = ["| case | images | mean Q | numpy old ms/img | numpy new ms/img | numpy new/old | torch old ms/img "
           "| torch new ms/img | torch new/old | labels/Q/paths differ (numpy; torch) |", "|" + "---|" * 10]
    for r in rows:
        a, b = r["agreement"]["numpy"], r["agreement"]["torch"]
        out.append(f"| {r['case']} | {r['images']} | {r['mean_q']:.1f} | {r['old_numpy_ms_per_image']:.4f} "
                   f"| {r['new_numpy_ms_per_image']:.4f} | {r['numpy_new_over_old']:.2f}× "
                   f"| {r['old_torch_ms_per_image']:.4f} | {r['new_torch_ms_per_image']:.4f} "
                   f"| {r['torch_new_over_old']:.2f}× | {a['labels_differ']}/{a['q_differ']}/{a['paths_differ']}; "
                   f"{b['labels_differ']}/{b['q_differ']}/{b['paths_differ']} |")
    return "\n".join(out)


def measure_case(c: Case, repeats: int) -> dict[str, Any]:
    B = len(c.sims)
    ref, got = run_numpy(c), run_torch(c)  # warm-up, and the agreement check
    t_np = best_time(lambda: run_numpy(c), repeats)
    t_t = best_time(lambda: run_torch(c), repeats)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_t1 = best_time(lambda: run_torch(c), repeats)
    finally:
        torch.set_num_threads(before)
    return {"case": c.name, "images": B, "mean_q": float(np.mean([r.q_spent for r in ref])),
            "numpy_ms_per_image": 1e3 * t_np / B, "torch_ms_per_image": 1e3 * t_t / B,
            "torch_1_thread_ms_per_image": 1e3 * t_t1 / B, "torch_over_numpy": t_t / t_np,
            "torch_1_thread_over_numpy": t_t1 / t_np, "torch_threads": before, "agreement": agree(ref, got)}


def report(rows: list[dict[str, Any]]) -> str:
    head = ("| case | images | mean Q | numpy ms/img | torch ms/img | torch/numpy | torch 1-thread ms/img "
            "| 1-thread/numpy | labels/Q/paths differ |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        a = r["agreement"]
        out.append(f"| {r['case']} | {r['images']} | {r['mean_q']:.1f} | {r['numpy_ms_per_image']:.4f} "
                   f"| {r['torch_ms_per_image']:.4f} | {r['torch_over_numpy']:.2f}× "
                   f"| {r['torch_1_thread_ms_per_image']:.4f} | {r['torch_1_thread_over_numpy']:.2f}× "
                   f"| {a['labels_differ']}/{a['q_differ']}/{a['paths_differ']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4096, help="pokemon15 images (default 4096)")
    ap.add_argument("--big-images", type=int, default=1024, help="images of the N=1000 cases (default 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--before", default=None, metavar="DIR",
                    help="time this loop against the one in DIR (engine/, policies/, systems/ of another version)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="with --before: wall time, or this process's CPU time (steadier on a shared machine)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; best of {args.repeats}")
    if args.before:
        before = load_before(args.before)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        print(f"{args.clock} clock; old loop from {args.before}")
        rows = [measure_before_after(c, before, args.repeats, clock) for c in cases(args.images, args.big_images)]
        print(report_before_after(rows))
    else:
        rows = [measure_case(c, args.repeats) for c in cases(args.images, args.big_images)]
        print(report(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
