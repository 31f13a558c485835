"""Policies on the simulator: accuracy against mean Q, and the engine's own selection cost.

    python -m bench.simulate                      # pokemon15, 2,000 images
    python -m bench.simulate --images 5000 --margin 0.04

No model is involved: similarities come from :class:`engine.SimulatedSource`
(true option +margin, Gaussian noise, optional wrong answers). The baseline is
the one-group system of class names, simulated with its own (smaller) margin,
because a model that does not know the names separates them less well.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from engine import SimulatedSource, StopRule, classify_batch
from engine.core.simulate import sample_classes
from policies import get_policy, list_policies
from systems import baseline_system, load_system

from .lib.loop_cases import eig_selection_step

TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
RANDOM_SEEDS = (0, 1, 2)


def run_point(system, truth, policy, stop, args, margin=None):
    src = SimulatedSource(system, truth, margin=args.margin if margin is None else margin, noise=args.noise,
                          wrong_rate=args.wrong_rate, seed=args.seed)
    res = classify_batch(src, system, policy, stop=stop, eps=args.eps, logit_scale=args.logit_scale)
    acc = float(np.mean([system.class_index(r.label) == t for r, t in zip(res, truth)]))
    q = float(np.mean([r.q_spent for r in res]))
    return acc, q


def curve(system, truth, name, args):
    """[(tau, acc, mean_q)] for one policy (random: averaged over seeds)."""
    out = []
    for tau in TAUS:
        if name == "random":
            pts = [run_point(system, truth, get_policy("random", seed=s), StopRule(tau=tau), args)
                   for s in RANDOM_SEEDS]
            acc, q = float(np.mean([p[0] for p in pts])), float(np.mean([p[1] for p in pts]))
        else:
            acc, q = run_point(system, truth, name, StopRule(tau=tau), args)
        out.append((tau, acc, q))
    return out


def interp_acc(points, q):
    """Accuracy of a curve [(tau, acc, q)] at mean Q ``q`` by linear interpolation; None outside its range."""
    qs = np.array([p[2] for p in points])
    accs = np.array([p[1] for p in points])
    order = np.argsort(qs)
    qs, accs = qs[order], accs[order]
    if q < qs[0] - 1e-9 or q > qs[-1] + 1e-9:
        return None
    return float(np.interp(q, qs, accs))


def selection_cost(n_images=256, n_classes=1000, n_groups=50, k=10, repeats=20, seed=0):
    """Median ms per image to choose the next group by EIG (EIG for all groups + the policy's pick)."""
    step = eig_selection_step(n_images, n_classes, n_groups, k, seed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / n_images


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="pokemon15")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--margin", type=float, default=0.05, help="true-option margin of attribute groups (cosine)")
    ap.add_argument("--name-margin", type=float, default=0.02, help="true-name margin of the baseline (cosine)")
    ap.add_argument("--noise", type=float, default=0.02, help="similarity noise s.d. (cosine)")
    ap.add_argument("--wrong-rate", type=float, default=0.0, help="probability a group is answered wrongly")
    ap.add_argument("--eps", type=float, default=0.05, help="rule noise ε of the Bayes scorer")
    ap.add_argument("--logit-scale", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-cost", action="store_true", help="skip the EIG selection timing")
    args = ap.parse_args(argv)

    system = load_system(args.system)
    truth = sample_classes(args.images, system.n_classes, args.seed)
    print(f"# simulator (no model): system={system.name} N={system.n_classes} G={system.n_groups} "
          f"Q={system.q_total}; {args.images} images; margin={args.margin} name_margin={args.name_margin} "
          f"noise={args.noise} wrong_rate={args.wrong_rate} eps={args.eps} logit_scale={args.logit_scale} "
          f"seed={args.seed}")

    t0 = time.perf_counter()
    full_acc, full_q = run_point(system, truth, "fixed", StopRule(), args)
    base = baseline_system(system)
    base_acc, base_q = run_point(base, truth, "fixed", StopRule(), args, margin=args.name_margin)
    print(f"\nfull system (fixed, no stopping): accuracy {full_acc:.4f}  mean Q {full_q:.1f}")
    print(f"baseline (class names, Q=N):       accuracy {base_acc:.4f}  mean Q {base_q:.1f}")

    curves = {name: curve(system, truth, name, args) for name in list_policies()}
    print("\naccuracy / mean Q at each τ" + (f" (random: mean of seeds {list(RANDOM_SEEDS)})"))
    print(f"{'policy':<16}" + "".join(f"{'τ=' + str(t):>16}" for t in TAUS))
    for name, pts in curves.items():
        print(f"{name:<16}" + "".join(f"{acc:>9.4f}/{q:>5.1f} " for _, acc, q in pts))

    print("\ntarget: eig within 1 point of full-system accuracy at <= 60% of its Q")
    ok = [(tau, acc, q) for tau, acc, q in curves["eig"] if acc >= full_acc - 0.01 and q <= 0.6 * full_q]
    if ok:
        tau, acc, q = min(ok, key=lambda p: p[2])
        print(f"  met at τ={tau}: accuracy {acc:.4f} (full {full_acc:.4f}), mean Q {q:.1f} = "
              f"{100 * q / full_q:.0f}% of {full_q:.1f}")
    else:
        best = min(curves["eig"], key=lambda p: (p[1] < full_acc - 0.01, p[2]))
        print(f"  NOT met: closest τ={best[0]}: accuracy {best[1]:.4f} (full {full_acc:.4f}), "
              f"mean Q {best[2]:.1f} = {100 * best[2] / full_q:.0f}% of {full_q:.1f}")

    print("\nat equal mean Q (other curves interpolated at eig's points):")
    print(f"{'eig Q':>8}{'eig':>8}" + "".join(f"{n:>16}" for n in curves if n != "eig"))
    wins = {n: [0, 0] for n in curves if n != "eig"}
    for _, acc, q in curves["eig"]:
        row = f"{q:>8.1f}{acc:>8.4f}"
        for n in wins:
            other = interp_acc(curves[n], q)
            row += f"{'—' if other is None else f'{other:.4f}':>16}"
            if other is not None:
                wins[n][1] += 1
                wins[n][0] += acc > other
        print(row)
    for n, (w, tot) in wins.items():
        print(f"  eig beats {n} at {w} of {tot} comparable points")
    print(f"\n(sweep took {time.perf_counter() - t0:.1f} s)")

    if not args.skip_cost:
        ms = selection_cost()
        print(f"\nengine cost: choose the next group by EIG for 256 images, N=1000, G=50, K=10: "
              f"{ms:.3f} ms per image (median of 20; target <= 2 ms)")


if __name__ == "__main__":
    main()
