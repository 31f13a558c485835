"""The class-name question on a large system: never, as a whole group, or as a shortlist of m names.

    python -m bench.shortlist                 # simulator, PokeAPI Gen-1 system (151 classes)
    python -m bench.shortlist --images 3000 --name-margin 0.03

The PokeAPI Gen-1 system leaves 12 pairs of species no attribute tells apart
(Ekans/Arbok, Abra/Kadabra, ...). Adding the class names as a group fixes that
but costs 151 prompts when asked whole. The shortlist asks only "which of these
m names?" for an image's m most probable classes, once they are few.

Similarities come from the simulator (no model): attribute options get
``--margin``, class names the weaker ``--name-margin`` (names are what such
models know least), plus noise. Rows: accuracy and mean Q per τ.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine import SimulatedSource, StopRule, classify_batch
from engine.core.metrics import accuracy_ci
from engine.core.simulate import sample_classes
from engine.authoring.pokeapi import pokeapi_system
from systems.build import with_name_group
from engine.common.files import shared_data_path

from .lib import harness as C

TAUS = (0.5, 0.7, 0.9, 0.95)


def run(system, truth, margins, noise, seed, policy, tau, lam, eps, shortlist=None) -> dict[str, float]:
    src = SimulatedSource(system, truth, margin=margins, noise=noise, seed=seed)
    t0 = time.perf_counter()
    res = classify_batch(src, system, policy, stop=StopRule(tau=tau), logit_scale=lam, eps=eps,
                         shortlist_size=shortlist)
    secs = time.perf_counter() - t0
    correct = np.array([r.label == system.classes[c] for r, c in zip(res, truth)])
    lo, hi = accuracy_ci(correct)
    return {"accuracy": float(correct.mean()), "ci95": [lo, hi], "mean_q": float(np.mean([r.q_spent for r in res])),
            "ms_per_image": 1000 * secs / len(truth)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--margin", type=float, default=C.SIM["margin"])
    ap.add_argument("--name-margin", type=float, default=C.SIM["name_margin"])
    ap.add_argument("--noise", type=float, default=C.SIM["noise"])
    ap.add_argument("--logit-scale", type=float, default=C.SIM["logit_scale"])
    ap.add_argument("--eps", type=float, default=C.DEFAULT_EPS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(C.DEFAULT_OUT / "shortlist"))
    args = ap.parse_args(argv)
    if shared_data_path("pokemon/pokeapi/species_attributes.csv") is None:
        print("bench.shortlist: shared/data/pokemon/pokeapi is absent; it builds the Gen-1 system from it")
        return 2
    attrs = pokeapi_system(generations=(1,))
    named = with_name_group(attrs)
    truth = sample_classes(args.images, attrs.n_classes, args.seed)
    m_attr = [args.margin] * attrs.n_groups
    m_named = m_attr + [args.name_margin]
    variants: list[tuple[str, Any, list[float], str, int | None]] = [
        ("attributes only, eig", attrs, m_attr, "eig", None),
        ("+ names as a group, eig", named, m_named, "eig", None),
        ("+ names as a group, eig_per_prompt", named, m_named, "eig_per_prompt", None),
        ("+ shortlist m=3, eig", named, m_named, "eig", 3),
        ("+ shortlist m=5, eig", named, m_named, "eig", 5),
        ("+ shortlist m=10, eig", named, m_named, "eig", 10),
    ]
    results: dict[str, Any] = {"model": C.SIMULATOR, "model_label": C.model_label(C.SIMULATOR),
                               "command": C.command_line("bench.shortlist", argv), "system": attrs.name,
                               "n_classes": attrs.n_classes, "q_attributes": attrs.q_total,
                               "images": args.images, "margin": args.margin, "name_margin": args.name_margin,
                               "noise": args.noise, "rows": []}
    for label, system, margins, policy, m in variants:
        for tau in TAUS:
            r = run(system, truth, margins, args.noise, args.seed, policy, tau, args.logit_scale, args.eps, m)
            results["rows"].append({"variant": label, "tau": tau, **r})
            print(f"{label:<38} τ={tau:<5} acc {r['accuracy']:.4f}  mean Q {r['mean_q']:.1f}", flush=True)
    headers = ["variant"] + [f"τ={t}" for t in TAUS]
    table = []
    for label, *_ in variants:
        cells = [f"{r['accuracy']:.3f} / {r['mean_q']:.1f}" for r in results["rows"] if r["variant"] == label]
        table.append([label] + cells)
    report = "\n".join([
        f"# Class names as a shortlist — {results['model_label']}", "",
        f"Command: `{results['command']}`", "",
        f"System: {attrs.name} ({attrs.n_classes} classes, attribute Q={attrs.q_total}; the name group adds "
        f"{attrs.n_classes} prompts). {args.images} simulated images; attribute margin {args.margin}, name margin "
        f"{args.name_margin}, noise {args.noise}, λ {args.logit_scale}, ε {args.eps}.", "",
        "Cells: accuracy / mean Q.", "", C.md_table(headers, table), ""])
    C.write_outputs(Path(args.out), results, report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
