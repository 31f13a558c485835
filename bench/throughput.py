"""Throughput: the engine's batched baseline against transformers' zero-shot pipeline, same CPU, one run.

    python -m bench.throughput                  # 256 images x 50 labels
    python -m bench.throughput --images 64 --skip-offline

Three measurements over the same images and labels:

1. the engine on a tiny random CLIP (``save_random_model``, width 32):
   images encoded in batches, the 50 label prompts encoded once (lazy text
   cache), similarities as one matmul, scoring by ``classify_batch``;
2. ``transformers.pipeline("zero-shot-image-classification")`` on the same
   tiny CLIP folder, same prompt template (batch size 1, its default, and the
   ``--batch-size`` used by the engine);
3. the engine on the offline stand-in (weak ConSE model, NOT CLIP).

Model loading is outside the timings; image decoding too (every path gets the
same RGB PIL images). The tiny CLIP has random weights: its labels are
meaningless, but both paths use the same model, so their top-1 must agree.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from systems.files import shared_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = shared_data_root()
TEMPLATE = "a photo of a {}."


def pick_images(data: Path, n: int, seed: int):
    from engine.encoders.images import load_image

    csv_path = data / "pokemon" / "jina15.csv"
    if csv_path.is_file():
        with open(csv_path, encoding="utf-8", newline="") as f:
            paths = [csv_path.parent / r["path"] for r in csv.DictReader(f)]
        idx = np.random.default_rng(seed).choice(len(paths), size=n, replace=n > len(paths))
        return [load_image(paths[i]) for i in idx], f"{n} images from {csv_path}"
    rng = np.random.default_rng(seed)
    from PIL import Image
    return ([Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(n)],
            f"{n} random-noise images (shared data not found at {data})")


def engine_run(enc, images, labels):
    from engine import classify_batch
    from engine.run.encoder_source import EncoderSource
    from engine.encoders.text_cache import TextCache
    from systems import baseline_system

    system = baseline_system(labels, template=TEMPLATE)
    t0 = time.perf_counter()
    emb = enc.encode_images(images)
    t1 = time.perf_counter()
    cache = TextCache(enc)
    res = classify_batch(EncoderSource(enc, cache, system, emb), system, "fixed", logit_scale=enc.logit_scale)
    t2 = time.perf_counter()
    return [r.label for r in res], t2 - t0, {"images_s": t1 - t0, "text_and_scoring_s": t2 - t1,
                                              "text_encodes": cache.text_encodes}


def pipeline_run(pipe, images, labels, batch_size):
    t0 = time.perf_counter()
    out = pipe(images, candidate_labels=labels, hypothesis_template=TEMPLATE, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return [o[0]["label"] for o in out], dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32, help="engine image batch (and the pipeline's second run)")
    ap.add_argument("--skip-offline", action="store_true", help="leave out the offline stand-in")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import transformers
    from transformers.utils import logging as hf_logging

    from engine.encoders import load_encoder
    from bench.tiny_models import save_random_model
    from engine.encoders.offline import imagenet_classes

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    images, what = pick_images(args.data, args.images, args.seed)
    labels = list(dict.fromkeys(imagenet_classes()[:: max(1, 1000 // args.labels)]))[: args.labels]
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    print(f"data: {what}; {len(labels)} labels (ImageNet class names), template {TEMPLATE!r}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(Path(tmp) / "tiny-clip", "clip", size="tiny")
        enc = load_encoder(str(folder), device="cpu", batch_size=args.batch_size)
        pipe = transformers.pipeline("zero-shot-image-classification", model=str(folder), device="cpu")
        engine_run(enc, images[:4], labels)  # warm-up both
        pipeline_run(pipe, images[:2], labels, 1)

        ours, t_eng, parts = engine_run(enc, images, labels)
        theirs1, t_p1 = pipeline_run(pipe, images, labels, 1)
        theirs_b, t_pb = pipeline_run(pipe, images, labels, args.batch_size)
    agree = float(np.mean([a == b for a, b in zip(ours, theirs1)]))
    n = len(images)
    print("\nmodel: tiny random CLIP (CLIPModel, width 32, 2 layers, random weights; speed only)")
    print(f"  engine (batch {args.batch_size}, text cached)    {t_eng:8.2f} s  {n / t_eng:8.1f} img/s  "
          f"[images {parts['images_s']:.2f} s, text+scoring {parts['text_and_scoring_s']:.2f} s, "
          f"{parts['text_encodes']} text encodes]")
    print(f"  transformers pipeline (batch 1)      {t_p1:8.2f} s  {n / t_p1:8.1f} img/s  "
          f"[{n * len(labels)} text encodes]")
    print(f"  transformers pipeline (batch {args.batch_size:<3})    {t_pb:8.2f} s  {n / t_pb:8.1f} img/s")
    best_p = min(t_p1, t_pb)
    print(f"  speed-up vs pipeline: {t_p1 / t_eng:.1f}x (batch 1), {t_pb / t_eng:.1f}x (batch {args.batch_size}); "
          f"against the faster pipeline run {best_p / t_eng:.1f}x (target >= 3x)")
    print(f"  top-1 agreement engine vs pipeline: {100 * agree:.1f}%")
    if not args.skip_offline:
        off = load_encoder("offline", device="cpu")
        engine_run(off, images[:4], labels)
        _, t_off, p_off = engine_run(off, images, labels)
        print("\nmodel: offline stand-in (EfficientNet-Lite0 + MiniLM ConSE; weak, NOT CLIP)")
        print(f"  engine (batch {off.batch_size}, text cached)     {t_off:8.2f} s  {n / t_off:8.1f} img/s  "
              f"[images {p_off['images_s']:.2f} s, text+scoring {p_off['text_and_scoring_s']:.2f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
