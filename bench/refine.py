"""Refine systems on dev images with the model frozen; measure before/after on held-out test images.

    python -m bench.refine                      # jina15, web150 (PokeAPI Gen-1 system), flowers17
    python -m bench.refine --cases jina15 --limit 300

Cases:
- ``jina15``: the hand-written ``pokemon15`` against itself refined on a dev split;
- ``web150``: the PokeAPI-built Gen-1 system (151 classes, built here from
  ``shared/data/pokemon/pokeapi/species_attributes.csv``, never committed) on the
  150-class web pictures, with its analysis (indistinguishable classes) and the
  same system plus the optional class-name group;
- ``flowers17``: the shipped ``flowers17`` system.

Each image set is split by image (seeded, stratified by class) into dev and
test; refinement sees dev only. Test rows: baseline (class names), full and
adaptive ``eig`` before and after, and the shuffled-rules control of both, with
95% bootstrap CIs. Images are embedded once through the image cache.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.authoring.pokeapi import pokeapi_system
from engine.authoring.refine import RefineConfig
from engine.authoring.refine_images import refine_embedded
from engine.run.datasets import check_labels, load_dataset
from systems import analyze, load_system
from systems.build import with_name_group

from .lib import harness as C

CASES = ("jina15", "web150", "flowers17")
WEB150 = C.SHARED_DATA / "pokemon" / "web150" / "labels.csv"


def case_spec(name: str) -> tuple[Path, Any]:
    """(data CSV, system factory taking the dataset's labels)."""
    if name == "jina15":
        return C.DATASETS["jina15"], lambda labels: load_system("pokemon15")
    if name == "web150":
        return WEB150, lambda labels: pokeapi_system(generations=(1,), labels=labels)
    if name == "flowers17":
        return C.DATASETS["flowers17"], lambda labels: load_system("flowers17")
    raise ValueError(f"unknown case {name!r}; choose from {list(CASES)}")


def run_case(name: str, encoder: Any, args: argparse.Namespace, *, name_group: bool = False) -> dict[str, Any]:
    from engine.encoders.image_cache import ImageCache
    from engine.encoders.text_cache import TextCache

    path, make_system = case_spec(name)
    if not path.is_file():
        return {"case": name, "skipped": f"{path} is absent (see shared/data/README)"}
    ds = load_dataset(path, limit=args.limit, seed=args.seed)
    system = make_system(ds.labels)
    if name_group:
        system = with_name_group(system)
    ds, missing = check_labels(ds, system.classes, allow_missing=True)
    t0 = time.perf_counter()
    emb = ImageCache(encoder, args.cache_dir).encode([it.path for it in ds.items])
    t_img = time.perf_counter() - t0
    truth = np.array([system.class_index(it.label) for it in ds.items])
    lam = float(encoder.logit_scale if args.logit_scale is None else args.logit_scale)
    config = RefineConfig(lam=lam, eps=args.eps)
    run = refine_embedded(system, TextCache(encoder, args.cache_dir), emb, truth, config=config,
                          dev_frac=args.dev_frac, seed=args.seed, tau=args.tau,
                          shortlist=args.shortlist if name_group else None)
    a = analyze(system)
    return {"case": name + (" +names" if name_group else ""), "data": str(path), "n_images": len(ds),
            "labels_not_in_system": missing, "seconds_images": t_img,
            "analysis": {"n_classes": system.n_classes, "q_total": system.q_total,
                         "indistinguishable_pairs": len(a.indistinguishable),
                         "classes_in_indistinguishable_pairs": len({c for p in a.indistinguishable for c in p}),
                         "identical_signature_groups": len(a.identical_signatures)},
            "lines": run.lines(), **run.to_dict()}


def report_md(results: dict[str, Any]) -> str:
    out = [f"# Refinement with the model frozen — {results['model_label']}", "",
           f"Command: `{results['command']}`", "",
           f"dev fraction {results['dev_frac']}, seed {results['seed']}, τ {results['tau']}; test images are never "
           "seen by refinement. 95% bootstrap CIs.", ""]
    for case in results["cases"]:
        if "skipped" in case:
            out += [f"## {case['case']}: skipped ({case['skipped']})", ""]
            continue
        a = case["analysis"]
        out += [f"## {case['case']} — {case['system']} ({a['n_classes']} classes, Q={a['q_total']}), "
                f"{case['n_images']} images (dev {case['n_dev']}, test {case['n_test']})", ""]
        if case["labels_not_in_system"]:
            out.append(f"Labels not in the system, skipped: {case['labels_not_in_system']}\n")
        out.append(f"Analysis: {a['indistinguishable_pairs']} pairs of classes no group tells apart "
                   f"({a['classes_in_indistinguishable_pairs']} classes).\n")
        rows = [[k, f"{v['accuracy']:.4f}", f"[{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]", f"{v['mean_q']:.1f}"]
                for k, v in case["test"].items()]
        out += [C.md_table(["test row", "accuracy", "95% CI", "mean Q"], rows), ""]
        out.append(f"McNemar p, full before vs after: {C.fmt_p(case['mcnemar_p_full'])}\n")
        out += ["What refinement did:", "", "```", *case["lines"][1:-len(case["test"]) - 2], "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    ap.add_argument("--model", default="offline", help="model string (default: the offline stand-in, NOT CLIP)")
    ap.add_argument("--limit", type=int, default=None, help="a seeded random subset of each image set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dev-frac", type=float, default=0.5)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--eps", type=float, default=C.DEFAULT_EPS)
    ap.add_argument("--logit-scale", type=float, default=None)
    ap.add_argument("--no-name-group", action="store_true", help="web150: skip the +class-name-group run")
    ap.add_argument("--shortlist", type=int, default=3, help="web150 +names: adaptive rows ask a shortlist of M names")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE))
    ap.add_argument("--out", default=str(C.DEFAULT_OUT / "refine"))
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        case_spec(c)  # unknown names fail before the model loads
    t0 = time.perf_counter()
    encoder = C.load_model(args.model)
    results: dict[str, Any] = {"model": args.model, "model_label": C.model_label(args.model),
                               "command": C.command_line("bench.refine", argv), "seed": args.seed,
                               "dev_frac": args.dev_frac, "tau": args.tau, "cases": []}
    for c in cases:
        results["cases"].append(run_case(c, encoder, args))
        print(f"{c}: done", flush=True)
        if c == "web150" and not args.no_name_group:
            results["cases"].append(run_case(c, encoder, args, name_group=True))
    results["seconds"] = time.perf_counter() - t0
    report = report_md(results)
    C.write_outputs(Path(args.out), results, report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
