"""Lazy against eager text embeddings: text encodes and wall time, adaptive (τ) against the full system.

    python -m bench.lazy                              # jina15 (656 images), pokemon15, offline model
    python -m bench.lazy --n 200 --tau 0.8 --model /path/to/clip

The image embeddings are computed once (shared by every run, optionally from
an on-disk :class:`engine.encoders.image_cache.ImageCache`); each run then gets a fresh
:class:`engine.encoders.text_cache.TextCache`, so its ``text_encodes`` are the prompts
it really embedded. Two settings:

- batch: all images in one ``classify_batch`` call (a group is embedded once,
  the first time any image asks it);
- single: each of ``--single`` images classified alone with a cold cache, as a
  one-image command would be.

The default model is the offline stand-in (weak ConSE model, NOT CLIP): it is
near chance on these Pokémon images, so accuracies here say nothing about
the method; the counts and times are what this benchmark measures.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

from engine import NO_STOP, StopRule
from engine.common.files import shared_data_root
from systems import load_system

REPO = Path(__file__).resolve().parents[1]
CSV = shared_data_root() / "pokemon" / "jina15.csv"


def run(enc, system, emb, truth, policy, stop, lam):
    from engine import classify_batch
    from engine.encoders.text_cache import TextCache
    from engine.run.encoder_source import EncoderSource

    cache = TextCache(enc)
    t0 = time.perf_counter()
    res = classify_batch(EncoderSource(enc, cache, system, emb), system, policy, stop=stop,
                         logit_scale=lam)
    dt = time.perf_counter() - t0
    acc = float(np.mean([r.label == t for r, t in zip(res, truth)]))
    return {"text_encodes": cache.text_encodes, "wall_s": dt, "mean_q": float(np.mean([r.q_spent for r in res])),
            "acc": acc, "groups_asked": len({s.group for r in res for s in r.steps})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=CSV, help="labels CSV (path,label; paths relative to its folder)")
    ap.add_argument("--system", default="pokemon15")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--policy", default="eig")
    ap.add_argument("--n", type=int, default=None, help="first n images (default: all)")
    ap.add_argument("--single", type=int, default=20, help="images classified one at a time, cold cache")
    ap.add_argument("--cache-dir", type=Path, default=None, help="image-embedding cache folder")
    ap.add_argument("--logit-scale", type=float, default=None, help="λ (default: the model's own)")
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from engine.encoders import load_encoder
    from engine.encoders.image_cache import ImageCache

    if not args.csv.is_file():
        raise SystemExit(f"{args.csv} not found; pass --csv")
    with open(args.csv, encoding="utf-8", newline="") as f:
        rows = [(args.csv.parent / r["path"], r["label"]) for r in csv.DictReader(f)][: args.n]
    system = load_system(args.system)
    enc = load_encoder(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    kind = "weak ConSE stand-in, NOT CLIP" if enc.name.startswith("offline") else type(enc).__name__
    print(f"model: {enc.name} ({kind}); model_id {enc.model_id}; device {enc.device}")
    print(f"system: {system.name} ({system.n_classes} classes, {system.n_groups} groups, Q = {system.q_total}); "
          f"data: {len(rows)} images from {args.csv}")
    t0 = time.perf_counter()
    icache = ImageCache(enc, args.cache_dir)
    emb = icache.encode([p for p, _ in rows])
    print(f"image embeddings: {time.perf_counter() - t0:.1f} s ({icache.encoded} encoded, {icache.hits} cached)")
    truth = [lab for _, lab in rows]
    enc.encode_texts(["warm-up prompt"] * 4)  # first-call costs stay out of the timings
    adaptive = StopRule(tau=args.tau)
    lam = enc.logit_scale if args.logit_scale is None else args.logit_scale
    print(f"logit scale λ = {lam:g}")

    print(f"\n{'setting':<10}{'run':<22}{'text encodes':>13}{'groups':>8}{'mean Q':>8}{'wall s':>9}{'acc':>8}")
    for name, policy, stop in (("full", "fixed", NO_STOP), (f"{args.policy} τ={args.tau}", args.policy, adaptive)):
        r = run(enc, system, emb, truth, policy, stop, lam)
        print(f"{'batch':<10}{name:<22}{r['text_encodes']:>13}{r['groups_asked']:>8}{r['mean_q']:>8.1f}"
              f"{r['wall_s']:>9.2f}{100 * r['acc']:>7.1f}%")
    k = min(args.single, len(rows))
    spread = np.linspace(0, len(rows) - 1, k).round().astype(int)  # evenly over the CSV (all classes)
    for name, policy, stop in (("full", "fixed", NO_STOP), (f"{args.policy} τ={args.tau}", args.policy, adaptive)):
        rs = [run(enc, system, emb[i:i + 1], truth[i:i + 1], policy, stop, lam) for i in spread]
        print(f"{'single':<10}{name:<22}{np.mean([r['text_encodes'] for r in rs]):>13.1f}"
              f"{np.mean([r['groups_asked'] for r in rs]):>8.1f}{np.mean([r['mean_q'] for r in rs]):>8.1f}"
              f"{np.mean([r['wall_s'] for r in rs]):>9.3f}{100 * np.mean([r['acc'] for r in rs]):>7.1f}%")
    print(f"(single: means per image over {k} images spread evenly over the CSV, each with a cold text cache)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
