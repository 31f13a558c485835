"""The GPU path measured in one run (issue 17): JPEG files to results, next to the model-only ceiling.

    python -m bench.gpu_pipeline --json $OUT/gpu_pipeline.json     # on a CUDA machine: a few minutes
    python -m bench.gpu_pipeline --device cpu --size tiny --n 64 --engine-images 256 --big-images 64  # CPU smoke

One process, one model (a random ViT-B/32-sized CLIP in fp16 on CUDA; its outputs are meaningless,
its shapes and FLOPs are CLIP's), so every ratio below is between figures of the same run:

1. ``ceiling``: the image tower alone on ready normalised pixels, images/s;
2. ``end_to_end``: JPEG files on disk to classification results through the product path
   (:class:`engine.run.classifier.Classifier.classify`: decode workers or GPU decode, pipelined
   chunks, lazy or eager prompts, the adaptive loop on the engine ``auto`` picks), pokemon15,
   ``eig`` τ=0.9; images/s and the share of the ceiling; the engine's share of that wall time
   (the Classifier's own ``seconds["classify"]``);
3. ``engine``: :func:`bench.gpu_engine.measure` (the torch loop on the device) for pokemon15 and
   N=1000, G=50, K=10 (eig τ=0.9, with a budget of 100, and the full system); each case's
   share of a wall time made of the model's time per image (from 1.) and the engine's;
4. ``text``: :func:`bench.gpu_text.measure`: first and warm group asks before and after
   bucketed shapes, warm-up and eager prompts;
5. peak GPU memory.

The figures go to ``--json`` with each of the issue's targets and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.testing.tiny_models import save_random_model

from .lib.synthetic import make_jpegs
from .lib.timing import device_sync

TARGETS = {
    "end_to_end_images_s": 8000.0,  # or ≥ 30% of the ceiling
    "end_to_end_share_of_ceiling": 0.30,
    "engine_share_n15": 0.10,
    "engine_share_n1000": 0.30,
    "warm_ask_ms": 2.0,
    "first_ask_ms": 5.0,
}


def ceiling(enc: Any, batch: int, repeats: int) -> float:
    """Images/s of the image tower alone on one batch of ready normalised pixels (random values)."""
    from engine.encoders.pixels import normalise

    plan = enc.pixel_plan
    h, w = plan.out_hw
    px = normalise(torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8), plan, enc.device, enc.dtype)
    with torch.inference_mode():
        enc._embed_pixels(px)  # warm-up: kernels, autotuning
        best = float("inf")
        for _ in range(repeats):
            device_sync(enc.device)
            t0 = time.perf_counter()
            enc._embed_pixels(px)
            device_sync(enc.device)
            best = min(best, time.perf_counter() - t0)
    return batch / best


def end_to_end(model_folder: str, paths: list[str], *, device: str, dtype: str | None, batch: int,
               repeats: int) -> dict[str, Any]:
    """Files -> results through the Classifier, pokemon15, eig τ=0.9; the best of ``repeats`` after a warm-up."""
    from engine.run.classifier import Classifier
    from engine.run.config import EncoderSpec, RunConfig

    clf = Classifier(EncoderSpec(model=model_folder, device=device, dtype=dtype, batch_size=batch), "pokemon15")
    config = RunConfig(mode="adaptive", policy="eig", tau=0.9)
    clf.classify(paths[: min(len(paths), batch)], config)  # warm-up: workers, kernels, every group's prompts
    best, best_engine, res = float("inf"), 0.0, []
    for _ in range(repeats):
        clf.seconds = {"embed": 0.0, "classify": 0.0}
        device_sync(clf.encoder.device)
        t0 = time.perf_counter()
        res = clf.classify(paths, config)
        device_sync(clf.encoder.device)
        wall = time.perf_counter() - t0
        if wall < best:
            best, best_engine = wall, clf.seconds["classify"]
    bad = sum(r.error is not None for r in res)
    out = {"images": len(paths), "failed": bad, "images_s": len(paths) / best, "wall_s": best,
           "engine_s": best_engine, "engine_share": best_engine / best, "mean_q": float(np.mean([r.q_spent for r in res])),
           "prompt_mode": clf.prompt_mode, "decode_workers": clf.spec.workers(), "engine": config.engine,
           "text_encodes": clf.text_cache.text_encodes}
    loader = clf.images.loader  # started by the runs above (None without a fast image path)
    if loader is not None:
        out["decoded"] = dict(loader.stats)
        out["gpu_decoder"] = type(loader.gpu_decoder).__name__ if loader.gpu_decoder is not None else None
    clf.close()
    return out


def measure(device: str, *, size: str = "vit-b-32", n: int = 2048, batch: int = 256, repeats: int = 3,
            engine_images: int = 4096, big_images: int = 1024, text: bool = True, log=print) -> dict[str, Any]:
    from bench.gpu_engine import measure as engine_measure
    from engine.encoders import load_encoder

    dev = torch.device(device)
    dtype = "fp16" if dev.type == "cuda" else None
    t_start = time.perf_counter()
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                           "host": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
                           "model": f"CLIPModel with random weights, {size} size (meaningless outputs"
                           + ("; ViT-B/32's shapes and FLOPs)" if size == "vit-b-32" else ")"), "dtype": dtype or "fp32",
                           "batch": batch}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(save_random_model(Path(tmp) / "clip", "clip", size=size))
        paths = make_jpegs(Path(tmp) / "jpegs", n, 300)
        enc = load_encoder(folder, device=str(dev), dtype=dtype, batch_size=batch)
        out["ceiling_images_s"] = ceiling(enc, batch, repeats)
        model_ms = 1e3 / out["ceiling_images_s"]
        log(f"[gpu_pipeline] ceiling {out['ceiling_images_s']:.0f} images/s")
        del enc
        out["end_to_end"] = e2e = end_to_end(folder, paths, device=str(dev), dtype=dtype, batch=batch, repeats=repeats)
        e2e["share_of_ceiling"] = e2e["images_s"] / out["ceiling_images_s"]
        log(f"[gpu_pipeline] files -> results {e2e['images_s']:.0f} images/s ({100 * e2e['share_of_ceiling']:.0f}% of "
            f"the ceiling), engine {100 * e2e['engine_share']:.0f}% of the wall time")
    eng = engine_measure(str(dev), images=engine_images, big_images=big_images, repeats=repeats)
    for row in eng["cases"]:
        row["share_with_model"] = row["ms_per_image"] / (row["ms_per_image"] + model_ms)
    out["engine"] = eng
    log("[gpu_pipeline] engine: " + "; ".join(f"{r['case']}: {r['ms_per_image']:.3f} ms/image "
                                              f"({100 * r['share_with_model']:.0f}% with the model)" for r in eng["cases"]))
    if text:
        from bench.gpu_text import measure as text_measure, vit_b32

        loader = vit_b32(str(dev), dtype or "fp32", batch) if size == "vit-b-32" else folder_loader(size, dev, batch)
        out["text"] = text_measure(loader, "pokemon15", str(dev))
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    out["seconds"] = time.perf_counter() - t_start
    out["targets"] = verdicts(out)
    return out


def folder_loader(size: str, dev: torch.device, batch: int):
    """A loader of a freshly saved random CLIP of ``size`` (the CPU smoke run's text side)."""
    from engine.encoders import load_encoder

    tmp = tempfile.mkdtemp(prefix="twentyq-gpu-text-")
    folder = str(save_random_model(Path(tmp) / "clip", "clip", size=size))
    return lambda: load_encoder(folder, device=str(dev), batch_size=batch)


def verdicts(r: dict[str, Any]) -> dict[str, Any]:
    """Each of the issue's targets: the figure, the target and whether it is met."""
    e2e = r["end_to_end"]
    cases = r["engine"]["cases"]
    n15 = [c for c in cases if c["case"].startswith("pokemon15")]
    big = [c for c in cases if c["case"].startswith("N=")]
    v = {"end_to_end": {"images_s": e2e["images_s"], "share_of_ceiling": e2e["share_of_ceiling"],
                        "met": e2e["images_s"] >= TARGETS["end_to_end_images_s"]
                        or e2e["share_of_ceiling"] >= TARGETS["end_to_end_share_of_ceiling"]},
         "engine_share_n15": {"figure": max(c["share_with_model"] for c in n15), "target": TARGETS["engine_share_n15"]},
         "engine_share_n1000": {"figure": max(c["share_with_model"] for c in big),
                                "target": TARGETS["engine_share_n1000"]},
         "engine_share_end_to_end_n15": {"figure": e2e["engine_share"], "target": TARGETS["engine_share_n15"]}}
    if "text" in r:
        after = r["text"]["after"]
        v["warm_ask_ms"] = {"figure": after["warm_ask_ms"], "target": TARGETS["warm_ask_ms"]}
        first = after.get("first_ask_after_eager_ms") if r["end_to_end"]["prompt_mode"] == "eager" else None
        v["first_ask_ms"] = {"figure": first if first is not None else after["first_ask_ms"],
                             "target": TARGETS["first_ask_ms"]}
    for k, x in v.items():
        if "target" in x:
            x["met"] = x["figure"] <= x["target"]
    return v


def report(r: dict[str, Any]) -> str:
    e2e = r["end_to_end"]
    L = [f"device {r['device']} ({r['host']}); torch {r['torch']}; model {r['model']}, {r['dtype']}, batch {r['batch']}",
         f"  image tower alone (the ceiling)   {r['ceiling_images_s']:10.0f} images/s",
         f"  JPEG files -> results (pokemon15, eig τ=0.9) {e2e['images_s']:10.0f} images/s = "
         f"{100 * e2e['share_of_ceiling']:.1f}% of the ceiling; engine {100 * e2e['engine_share']:.1f}% of the wall "
         f"time; mean Q {e2e['mean_q']:.1f}; {e2e['failed']} failed; decode {e2e.get('decoded')}"]
    for c in r["engine"]["cases"]:
        L.append(f"  engine {c['case']:<40} {c['ms_per_image']:8.4f} ms/image = {100 * c['share_with_model']:5.1f}% "
                 "of model + engine")
    if "text" in r:
        b, a = r["text"]["before"], r["text"]["after"]
        L.append(f"  text: first ask {b['first_ask_ms']:.2f} -> {a['first_ask_ms']:.2f} ms; warm ask "
                 f"{b['warm_ask_ms']:.3f} -> {a['warm_ask_ms']:.3f} ms; first ask after eager prompts "
                 f"{a.get('first_ask_after_eager_ms')}")
    if r.get("peak_gpu_mib") is not None:
        L.append(f"  peak GPU memory allocated {r['peak_gpu_mib']:.0f} MiB")
    L.append("  targets: " + "; ".join(f"{k} {'met' if v['met'] else 'MISSED'}" for k, v in r["targets"].items()))
    L.append(f"  ({r['seconds']:.0f} s in all)")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    ap.add_argument("--size", default="vit-b-32", choices=["tiny", "vit-b-32"])
    ap.add_argument("--n", type=int, default=2048, help="JPEG files (300x300, written to a temp folder)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine-images", type=int, default=4096)
    ap.add_argument("--big-images", type=int, default=1024, help="images of the N=1000 engine cases")
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    r = measure(device, size=args.size, n=args.n, batch=args.batch, repeats=args.repeats,
                engine_images=args.engine_images, big_images=args.big_images, text=not args.no_text)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
