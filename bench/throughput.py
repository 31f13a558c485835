"""Throughput: the engine's batched baseline against transformers' zero-shot pipeline, same CPU, one run.

    python -m bench.throughput                  # 256 images x 50 labels
    python -m bench.throughput --images 64 --skip-offline
    python -m bench.throughput --e2e-only       # just the image-path comparison (issue 17)

Three measurements over the same images and labels:

1. the engine on a tiny random CLIP (``save_random_model``, width 32):
   images encoded in batches, the 50 label prompts encoded once (lazy text
   cache), similarities as one matmul, scoring by ``classify_batch``;
2. ``transformers.pipeline("zero-shot-image-classification")`` on the same
   tiny CLIP folder, same prompt template (batch size 1, its default, and the
   ``--batch-size`` used by the engine);
3. the engine on the offline stand-in (weak ConSE model, NOT CLIP).

Model loading is outside the timings; image decoding too (every path gets the
same RGB PIL images).

4. End to end from image files on disk to results (``Classifier.iter_classify``, pokemon15,
   eig, τ = 0.9), today's image path against the new one, side by side in one run, for the
   tiny CLIP and the offline stand-in: "processor" (decoded in this process, the model's own
   image processor) against "fast" (decode workers, the pixel plan, normalised as tensors,
   the next chunk decoding while this one is classified), with the default number of decode
   workers for this machine and with 0. Runs alternate and the best of ``--repeats`` counts,
   so a neighbour's burst on a shared machine hurts both sides alike. The tiny CLIP has random weights: its labels are
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

from engine.common.files import shared_data_root
from engine.testing.tiny_models import save_random_model
from systems import baseline_system

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
    from engine.encoders.text_cache import TextCache
    from engine.run.encoder_source import EncoderSource

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


def pick_files(data: Path, n: int, seed: int, tmp: Path) -> tuple[list[str], str]:
    """n image files from the pokemon jina15 list (JPEGs on disk), or n noise JPEGs written to ``tmp``."""
    csv_path = data / "pokemon" / "jina15.csv"
    if csv_path.is_file():
        with open(csv_path, encoding="utf-8", newline="") as f:
            paths = [str(csv_path.parent / r["path"]) for r in csv.DictReader(f)]
        idx = np.random.default_rng(seed).choice(len(paths), size=n, replace=n > len(paths))
        return [paths[i] for i in idx], f"{n} image files from {csv_path}"
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = tmp / f"noise{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (160, 128, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out, f"{n} random-noise JPEG files (shared data not found at {data})"


def e2e_run(clf, files, mode: str, chunk: int):
    """(labels, seconds) for files -> results through ``clf`` with ``mode`` preprocessing."""
    from engine.run.config import RunConfig

    clf.encoder.preprocess_mode = mode  # the encoder is shared by the variants; its loader is not
    config = RunConfig(mode="adaptive", policy="eig", tau=0.9)
    t0 = time.perf_counter()
    out = [r.label for r in clf.iter_classify(files, config, chunk_size=chunk)]
    return out, time.perf_counter() - t0


def end_to_end(files, what, model, label, repeats, chunk):
    """Print today's image path against the new one, images/s and the ratio, for one model."""
    from engine.encoders.image_pool import default_workers
    from engine.run.classifier import Classifier
    from engine.run.config import EncoderSpec

    enc = EncoderSpec(model=model, device="cpu").load()
    workers = default_workers()
    variants = [("today: in-process PIL + processor", "processor", 0), ("new: fast, 0 workers", "fast", 0),
                (f"new: fast, {workers} decode workers (default)", "fast", workers)]
    clfs = {name: Classifier(EncoderSpec(model=model, device="cpu", decode_workers=w, preprocess=mode),
                             "pokemon15", encoder=enc) for name, mode, w in variants}
    for name, mode, _ in variants:  # warm-up: text cache, worker start, first-call costs
        e2e_run(clfs[name], files[: 2 * chunk], mode, chunk)
    best = {v[0]: float("inf") for v in variants}
    labels = {}
    for _ in range(repeats):
        for name, mode, _ in variants:
            labels[name], dt = e2e_run(clfs[name], files, mode, chunk)
            best[name] = min(best[name], dt)
    for c in clfs.values():
        c.close()
    n = len(files)
    base = best[variants[0][0]]
    print(f"\nend to end, files -> results ({what}; pokemon15, eig, tau 0.9, chunk {chunk}, best of {repeats})")
    print(f"model: {label}")
    for name, _, _ in variants:
        agree = np.mean([a == b for a, b in zip(labels[name], labels[variants[0][0]])])
        print(f"  {name:<44} {best[name]:7.2f} s  {n / best[name]:8.1f} img/s  x{base / best[name]:.2f}  "
              f"[labels as today: {100 * agree:.1f}%]")
    return {name: n / t for name, t in best.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32, help="engine image batch (and the pipeline's second run)")
    ap.add_argument("--skip-offline", action="store_true", help="leave out the offline stand-in")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end image-path comparison")
    ap.add_argument("--e2e-images", type=int, default=256, help="files per end-to-end run (tiny CLIP)")
    ap.add_argument("--e2e-offline-images", type=int, default=96, help="files per end-to-end run (offline)")
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs per variant (the best counts)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import transformers
    from transformers.utils import logging as hf_logging

    from engine.encoders import load_encoder
    from engine.encoders.offline import imagenet_classes

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.e2e_only:
        print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
        with tempfile.TemporaryDirectory() as tmp:
            e2e_all(args, Path(tmp))
        return 0
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
    with tempfile.TemporaryDirectory() as tmp:
        e2e_all(args, Path(tmp))
    return 0


def e2e_all(args, tmp: Path) -> dict:
    """Section 4: the end-to-end image-path comparison for the tiny CLIP and (unless skipped) the offline model."""
    folder = save_random_model(tmp / "tiny-clip", "clip", size="tiny")
    files, what = pick_files(args.data, args.e2e_images, args.seed, tmp)
    out = {"tiny_clip": end_to_end(files, what, str(folder), "tiny random CLIP (width 32, random weights)",
                                   args.repeats, 64)}
    if not args.skip_offline:
        files, what = pick_files(args.data, args.e2e_offline_images, args.seed, tmp)
        out["offline"] = end_to_end(files, what, "offline", "offline stand-in (EfficientNet-Lite0 ConSE; NOT CLIP)",
                                    args.repeats, 64)
    print("\ntarget (issue 17): new path >= 1.6x today's images/s on this machine's CPUs")
    for m, r in out.items():
        names = list(r)
        print(f"  {m}: default new path {r[names[2]] / r[names[0]]:.2f}x today "
              f"(fast preprocessing alone {r[names[1]] / r[names[0]]:.2f}x)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
