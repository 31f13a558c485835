"""JPEG files on disk -> embeddings through the fast image path, next to the model-only ceiling, one run.

    python -m bench.gpu_images                       # CUDA if present: 512 JPEGs 300x300, random ViT-B/32, batch 256
    python -m bench.gpu_images --device cpu --n 32 --batch 16 --size tiny   # a smoke run on the CPU

``measure(device, paths, model_folder, batch_size)`` is what ``bench/gpu_check.py`` (or a test)
calls: ``model_folder`` is a saved model folder or an already loaded encoder with a pixel plan.
It times, in the same process and on the same images:

- ``model_only``: the image tower on ready normalised pixels (the ceiling);
- ``fast``: files -> embeddings through :class:`engine.encoders.image_pool.ImageLoader`:
  nvjpeg decode and resize on the device when CUDA and torchvision are there (everything the
  GPU decoder refuses goes to the decode workers), else the worker pool; batch i+1 decoding
  while batch i is on the model;
- ``processor``: today's path (Pillow in this process, the model's own processor), on at
  most ``processor_n`` images;

and reports images/s for each, the ratio of ``fast`` to the ceiling, how many images the GPU
decoded, and the peak GPU memory (CUDA only).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .lib.synthetic import make_jpegs
from .lib.timing import best_time, device_sync


def _encoder(model: Any, device: torch.device, batch_size: int):
    if not isinstance(model, (str, os.PathLike)):
        return model
    from engine.encoders import load_encoder

    return load_encoder(str(model), device=str(device), batch_size=batch_size)


def measure(device: Any, paths: list[str], model_folder: Any, batch_size: int, *, workers: int | None = None,
            repeats: int = 3, processor_n: int = 256) -> dict:
    """Images/s from JPEG files to embeddings (the fast path), the model-only ceiling, today's path, peak memory.

    device : "cuda", "cpu", a torch.device. paths : image files. model_folder : a model folder or a
    loaded encoder with a ``pixel_plan``. batch_size : images per model call. workers : decode
    processes (None: :func:`engine.encoders.image_pool.default_workers`).
    """
    from engine.encoders.base import embed_decoded, encode_images_tolerant
    from engine.encoders.image_pool import ImageLoader, default_workers
    from engine.encoders.pixels import normalise

    device = torch.device(device)
    enc = _encoder(model_folder, device, batch_size)
    enc.batch_size = batch_size
    plan = enc.pixel_plan
    if plan is None:
        raise ValueError(f"{enc.name} has no pixel plan, so it has no fast image path to measure")
    workers = default_workers() if workers is None else workers
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = len(paths)
    chunks = [paths[i:i + batch_size] for i in range(0, n, batch_size)]

    # the ceiling: the model on ready pixels of one batch
    h, w = plan.out_hw
    px = normalise(torch.randint(0, 256, (min(batch_size, n), 3, h, w), dtype=torch.uint8), plan, device, enc.dtype)

    def model_only():
        with torch.inference_mode():
            enc._embed_pixels(px)

    loader = ImageLoader(plan, workers, device=device)

    def fast():
        pend = loader.submit(chunks[0])
        for k in range(len(chunks)):
            nxt = loader.submit(chunks[k + 1]) if k + 1 < len(chunks) else None
            emb, good, bad = embed_decoded(enc, pend.result(), chunks[k])
            pend = nxt
        return emb

    def timed(fn, r):
        return best_time(fn, r, sync=lambda: device_sync(device))

    model_only()  # warm-up: kernels, autotuning, the workers' start
    loader.load(chunks[0][: max(1, min(len(chunks[0]), 16))])
    t_model = timed(model_only, repeats)
    t_fast = timed(fast, repeats)
    stats = dict(loader.stats)
    loader.close()
    proc_paths = paths[:processor_n]
    mode = getattr(enc, "preprocess_mode", "fast")
    enc.preprocess_mode = "processor"
    try:
        encode_images_tolerant(enc, proc_paths[: min(8, len(proc_paths))])
        t_proc = timed(lambda: encode_images_tolerant(enc, proc_paths), 1)
    finally:
        enc.preprocess_mode = mode
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": getattr(enc, "name", "?"), "dtype": str(enc.dtype).replace("torch.", ""),
        "images": n, "batch_size": batch_size, "decode_workers": workers,
        "gpu_decoder": type(loader.gpu_decoder).__name__ if loader.gpu_decoder is not None else None,
        "model_only_images_s": px.shape[0] / t_model,
        "fast_images_s": n / t_fast,
        "processor_images_s": len(proc_paths) / t_proc,
        "gpu_decoded": stats["gpu"], "gpu_refused": stats["gpu_refused"], "pool_decoded": stats["pool"],
        "inline_decoded": stats["inline"],
    }
    out["fast_share_of_ceiling"] = out["fast_images_s"] / out["model_only_images_s"]
    out["fast_over_processor"] = out["fast_images_s"] / out["processor_images_s"]
    out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return out


def report(r: dict) -> str:
    lines = [f"device: {r['device']}; model {r['model']} ({r['dtype']}), batch {r['batch_size']}, {r['images']} JPEGs, "
             f"decode workers {r['decode_workers']}, GPU decoder {r['gpu_decoder']}",
             f"  model only (the ceiling)          {r['model_only_images_s']:10.0f} images/s",
             f"  files -> embeddings, fast path    {r['fast_images_s']:10.0f} images/s  "
             f"({100 * r['fast_share_of_ceiling']:.0f}% of the ceiling; {r['gpu_decoded']} decoded on the GPU, "
             f"{r['gpu_refused']} refused by it, {r['pool_decoded']} by the workers, {r['inline_decoded']} in process)",
             f"  files -> embeddings, processor    {r['processor_images_s']:10.0f} images/s  "
             f"(fast path {r['fast_over_processor']:.1f}x)"]
    if r["peak_gpu_mib"] is not None:
        lines.append(f"  peak GPU memory allocated         {r['peak_gpu_mib']:10.0f} MiB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    ap.add_argument("--n", type=int, default=512, help="JPEG files (written to a temp folder)")
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", default="vit-b-32", choices=["tiny", "vit-b-32"], help="the random CLIP's size")
    ap.add_argument("--model", default=None, help="a model folder (default: a random CLIP of --size)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: from the core count)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from engine.testing.tiny_models import save_random_model

            model = str(save_random_model(Path(tmp) / "clip", "clip", size=args.size))
        paths = make_jpegs(Path(tmp) / "jpegs", args.n, args.image_size)
        r = measure(device, paths, model, args.batch, workers=args.workers)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
