"""The adaptive loop's two backends side by side: numpy (the reference) against torch, on the CPU.

    python -m bench.engine_speed                       # the issue-17 cases; a few minutes on 2 cores
    python -m bench.engine_speed --images 512 --big-images 256 --repeats 1    # quicker

Cases (random similarities, no model; the same arrays for both backends):

- pokemon15, 4096 images, eig, τ = 0.9;
- a random system of N = 1000 classes, G = 50 groups of K = 10 options, eig τ = 0.9 with a budget
  of 100 prompts, and the full system (every group, fixed order, no stop).

numpy runs ``classify_batch`` over an ``ArraySource``; torch runs ``classify_batch_torch`` over a
``TensorSource`` holding the same float64 array on the CPU, with torch's default intra-op threads
and again with one thread. Each figure is the best of ``--repeats`` wall times, all in one process,
and each case checks that both backends gave the same labels, Q and question paths.

On a CPU shared with other jobs, torch's OpenMP threads spin-wait at the end of every parallel
region, and a region whose partner thread is descheduled stalls: the default-threads column can then
be several times the one-thread column. ``OMP_WAIT_POLICY=PASSIVE python -m bench.engine_speed``
(set before torch loads) shows the loop without that stall.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import ArraySource, StopRule, classify_batch
from engine.torch_engine import TensorSource, classify_batch_torch
from systems import AttributeSystem, load_system

from .simulate import random_system

LAM, EPS, TAU = 100.0, 0.05, 0.9


@dataclass
class Case:
    name: str
    system: AttributeSystem
    sims: np.ndarray  # (B, Q) float64
    policy: str
    stop: StopRule


def random_sims(system: AttributeSystem, n: int, seed: int = 0) -> np.ndarray:
    """(n, Q) CLIP-like random cosine similarities: N(0.2, 0.03²)."""
    return np.random.default_rng(seed).normal(0.2, 0.03, size=(n, system.q_total))


def cases(images: int = 4096, big_images: int = 1024, n_classes: int = 1000, n_groups: int = 50, k: int = 10,
          budget: int = 100, seed: int = 0) -> list[Case]:
    p15 = load_system("pokemon15")
    big = random_system(n_classes, n_groups, k, seed)
    big_sims = random_sims(big, big_images, seed)
    return [
        Case("pokemon15, eig τ=0.9", p15, random_sims(p15, images, seed), "eig", StopRule(tau=TAU)),
        Case(f"N={n_classes} G={n_groups} K={k}, eig τ=0.9", big, big_sims, "eig", StopRule(tau=TAU)),
        Case(f"N={n_classes} G={n_groups} K={k}, eig τ=0.9 budget {budget}", big, big_sims, "eig",
             StopRule(tau=TAU, budget=budget)),
        Case(f"N={n_classes} G={n_groups} K={k}, full system", big, big_sims, "fixed", StopRule()),
    ]


def run_numpy(c: Case) -> list:
    return classify_batch(ArraySource(c.sims, c.system), c.system, c.policy, stop=c.stop, logit_scale=LAM, eps=EPS,
                          top_k=1)


def run_torch(c: Case, source: TensorSource | None = None) -> list:
    src = source if source is not None else TensorSource(torch.as_tensor(c.sims), c.system)
    return classify_batch_torch(src, c.system, c.policy, stop=c.stop, logit_scale=LAM, eps=EPS, top_k=1)


def best_time(fn, repeats: int, sync=None) -> float:
    ts = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return float(min(ts))


def agree(a: list, b: list) -> dict[str, Any]:
    """How far two backends' Results are apart: label, Q, stop and path mismatches; max |Δconfidence|."""
    return {"labels_differ": sum(x.label != y.label for x, y in zip(a, b)),
            "q_differ": sum(x.q_spent != y.q_spent for x, y in zip(a, b)),
            "stops_differ": sum(x.stop != y.stop for x, y in zip(a, b)),
            "paths_differ": sum([s.group for s in x.steps] != [s.group for s in y.steps] for x, y in zip(a, b)),
            "max_confidence_diff": max((abs(x.confidence - y.confidence) for x, y in zip(a, b)), default=0.0)}


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
    args = ap.parse_args(argv)
    rows = [measure_case(c, args.repeats) for c in cases(args.images, args.big_images)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; best of {args.repeats}")
    print(report(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
