"""GPU check: a ViT-B/32-sized CLIP in fp16 on CUDA; images/s, prompts/s, a lazy group batch, peak memory.

    python -m bench.gpu_check            # on a CUDA machine; about a minute
    python -m bench.gpu_check --batch 256 --repeats 5

The model is ``CLIPModel`` built from a ViT-B/32-sized ``CLIPConfig`` with
random weights (same shapes and FLOPs as openai/clip-vit-base-patch32; its
outputs are meaningless). It runs through the engine's own encoder class, text
cache and similarity source. Needs only torch, transformers, numpy, scipy and
Pillow (the tokenizer is a word-level one built here, so nothing is downloaded).
On a machine without CUDA it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from engine.encoders.device import resolve_device, resolve_dtype
from engine.testing.tiny_models import random_model
from systems import load_system

from .lib.synthetic import word_tokenizer


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats, with CUDA synchronised."""
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from engine.encoders.hf import CLIPFamilyEncoder
    from engine.encoders.text_cache import TextCache
    from engine.run.encoder_source import EncoderSource

    dev = resolve_device("cuda")
    dt = resolve_dtype(args.dtype, dev)
    system = load_system("pokemon15")
    words = " ".join(p for g in system.groups for p in g.prompts()).replace(".", " ").split()
    words += [f"w{i}" for i in range(2000)]
    tok = word_tokenizer(words)
    t0 = time.perf_counter()
    # CLIP's own vocabulary size (49,408), so the parameter count matches ViT-B/32; ids stay < len(tok)
    model = random_model("clip", "vit-b-32", vocab_size=max(len(tok), 49408), eos_token_id=3, bos_token_id=2,
                         pad_token_id=0)
    model = model.to(dev, dt)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    enc = CLIPFamilyEncoder(model, tok, proc, name="random ViT-B/32 CLIP", model_id="random-vit-b-32@seed0",
                            device=dev, dtype=dt, batch_size=args.batch, text_batch_size=args.batch)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; model: CLIPModel ViT-B/32-sized, "
          f"random weights, {n_params:.0f}M params, {args.dtype}; built in {time.perf_counter() - t0:.1f} s")
    torch.cuda.reset_peak_memory_stats(dev)

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(args.batch)]
    px = proc(images=pil, return_tensors="pt")["pixel_values"].to(dev, dt)
    rw = np.array(words)
    prompts = [" ".join(rng.choice(rw, size=rng.integers(6, 14))) for _ in range(args.batch)]

    def images_model_only():
        with torch.inference_mode():
            model.get_image_features(pixel_values=px)

    def images_end_to_end():
        enc.encode_images(pil)

    def texts():
        enc.encode_texts(prompts)

    for fn in (images_model_only, texts):  # warm-up (cuDNN/cuBLAS autotuning)
        fn()
    t_img = timed(images_model_only, args.repeats)
    t_e2e = timed(images_end_to_end, max(1, args.repeats // 2))
    t_txt = timed(texts, args.repeats)
    print(f"images, model only (batch {args.batch}):          {args.batch / t_img:9.0f} images/s "
          f"({1e3 * t_img:.1f} ms)")
    print(f"images, PIL + processor + model (batch {args.batch}): {args.batch / t_e2e:9.0f} images/s "
          f"({1e3 * t_e2e:.1f} ms; preprocessing runs on the CPU)")
    print(f"prompts (batch {args.batch}):                     {args.batch / t_txt:9.0f} prompts/s "
          f"({1e3 * t_txt:.1f} ms)")

    emb = enc.encode_images(pil)
    group_times, sim_times = [], []
    for g in range(system.n_groups):  # each group's first ask: one lazy text batch of K_g prompts
        cache = TextCache(enc)
        src = EncoderSource(enc, cache, system, emb)
        every = np.arange(len(pil))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        src.similarities(every, g)
        torch.cuda.synchronize()
        group_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.similarities(every, g)  # cached prompts: matmul + (n, K_g) copy to host
        torch.cuda.synchronize()
        sim_times.append(time.perf_counter() - t0)
    ks = [int(k) for k in system.option_counts]
    print("lazy group, first ask (embed K_g prompts + matmul + copy back), "
          + ", ".join(f"K={k}: {1e3 * t:.1f} ms" for k, t in zip(ks, group_times)))
    print(f"group ask with cached prompts ({len(pil)} images): median {1e3 * np.median(sim_times):.2f} ms")
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    print(f"peak GPU memory allocated: {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
