"""Text asks before and after bucketed shapes and warm-up, side by side in one run.

    python -m bench.gpu_text                        # CPU: a tiny random CLIP (--model offline: the stand-in)
    python -m bench.gpu_text --model vit-b-32       # CUDA: the random ViT-B/32 CLIP of bench.gpu_check, fp16
    python -m bench.gpu_text --model DIR --device cuda --json out.json
    python -m bench.gpu_text --threads 1            # steadier on a shared CPU

:func:`measure` loads the encoder twice in one process, first as today (prompts padded to
the longest one, no warm-up, lazy), then with bucketed shapes and warm-up
(:mod:`engine.encoders.text_shapes`), and times, for each, with 256 image embeddings:

- ``first_ask_ms``: the first group ask after load (embed K_g prompts, matmul, copy back);
- ``new_group_ms``: each other group's first ask (median and max), later in the same run;
- ``warm_ask_ms``: a group ask with its prompts cached (median);
- ``load_extra_s``: what bucketing's check and the warm-up added to the load;
  (on the CPU every figure is this process's CPU time, steadier than the wall clock on a shared
  machine; on an accelerator, wall time with the device synchronised)
- ``eager_ms``: embedding every prompt of the system at once (what eager prompts cost at load),
  and ``first_ask_after_eager_ms``: a group's first ask after that (a cache hit).

The "before" run goes first, so the process-wide first-call costs (library handles, the
allocator) fall on it, as they do on a real first ask today. Both runs embed the same
prompts: ``text_encodes`` must match and the embeddings must agree (``max_embedding_diff``).
The images are random unit vectors: only the text side is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.encoders.device import dtype_name, resolve_device, resolve_dtype
from engine.encoders.text_shapes import prepare_text, prompt_policy
from engine.testing.tiny_models import random_model
from systems import load_system

from .lib.synthetic import word_tokenizer
from .lib.timing import device_sync

N_IMAGES = 256


def _clock(device: torch.device) -> Callable[[], float]:
    """Wall time on an accelerator (synchronised); this process's CPU time on the CPU, which other
    jobs on a shared machine disturb far less than the wall clock."""
    return time.perf_counter if device.type != "cpu" else time.process_time


def _factory(encoder: Any, device: str, dtype: str | None) -> tuple[Callable[[], Any], bool]:
    """A zero-argument loader of a fresh encoder, and whether each call really loads a fresh one."""
    if isinstance(encoder, (str, os.PathLike)):
        from engine.encoders import load_encoder

        return (lambda: load_encoder(str(encoder), device=device, dtype=dtype)), True
    if callable(encoder) and not hasattr(encoder, "encode_texts"):
        return encoder, True
    return (lambda: encoder), False  # one loaded encoder: its settings are switched between the runs


def _run(load: Callable[[], Any], system: Any, on: bool, images: int, repeats: int, max_groups: int,
         compile_text: bool = False) -> dict:
    from engine.encoders.text_cache import TextCache
    from engine.run.encoder_source import EncoderSource
    from engine.run.prompts import eager_prompt_list

    enc = load()
    dev = enc.device
    clock = _clock(dev)
    t0 = clock()
    done = prepare_text(enc, buckets=on, warm_up=on, compile_text=compile_text)
    device_sync(dev)
    load_extra = clock() - t0
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(images, enc.embed_dim, generator=gen), dim=-1).to(dev)
    cache = TextCache(enc)
    src = EncoderSource(enc, cache, system, emb)
    every = np.arange(images)

    def ask(g: int) -> float:
        device_sync(dev)
        t = clock()
        src.similarities(every, g)  # returns host numpy: the copy waits for the device
        device_sync(dev)
        return clock() - t

    groups = list(range(min(system.n_groups, max_groups)))
    first = ask(groups[0])
    new = [ask(g) for g in groups[1:]]
    warm = [ask(groups[0]) for _ in range(repeats)]
    eager_cache = TextCache(enc)
    prompts = eager_prompt_list(system)
    device_sync(dev)
    t = clock()
    eager_cache.embed(prompts)
    device_sync(dev)
    eager = clock() - t
    if eager_cache.text_encodes != len(prompts):
        raise AssertionError(f"eager: {eager_cache.text_encodes} prompts embedded, expected {len(prompts)}")
    src = EncoderSource(enc, eager_cache, system, emb)
    first_eager = ask(groups[-1])  # after eager prompts: a cache hit
    rows = {p: cache._rows[p].float().cpu() for g in groups for p in system.groups[g].prompts()}
    return {"buckets": bool(done["buckets"]), "warm_up_passes": int(done["warm_up_passes"]),
            "compiled": bool(done["compiled"]),
            "load_extra_s": load_extra, "first_ask_ms": 1e3 * first,
            "new_group_ms_median": 1e3 * float(np.median(new)) if new else float("nan"),
            "new_group_ms_max": 1e3 * float(np.max(new)) if new else float("nan"),
            "warm_ask_ms": 1e3 * float(np.median(warm)), "eager_ms": 1e3 * eager, "eager_prompts": len(prompts),
            "first_ask_after_eager_ms": 1e3 * first_eager,
            "text_encodes": cache.text_encodes, "text_shapes": len(getattr(enc, "text_shapes", ()) or ()),
            "_rows": rows, "_encoder": enc}


def measure(encoder: Any, system: Any = "pokemon15", device: str = "auto", *, dtype: str | None = None,
            images: int = N_IMAGES, repeats: int = 5, max_groups: int = 16,
            compile_text: bool = False) -> dict[str, Any]:
    """Before/after figures of the text side for one encoder and system (see the module docstring).

    encoder : a model string or folder (loaded fresh for each run), a zero-argument callable
        returning a fresh encoder, or a loaded encoder (reused; then the "after" run's shapes may
        already have been met by the "before" run, which flatters neither side much).
    system : an AttributeSystem or a shipped name. device / dtype : for model strings.
    compile_text : the "after" run also compiles the text tower (every bucket is compiled during
        its warm-up: minutes, not seconds).
    Returns {"model", "device", "dtype", "system", "Q", "images", "before": {...}, "after": {...},
    "ratio": {figure: before / after}, "max_embedding_diff", "policy"}.
    """
    system = load_system(system)
    load, fresh = _factory(encoder, device, dtype)
    before = _run(load, system, False, images, repeats, max_groups)
    after = _run(load, system, True, images, repeats, max_groups, compile_text)
    enc = after.pop("_encoder")
    before.pop("_encoder")
    rb, ra = before.pop("_rows"), after.pop("_rows")
    diff = max(float((rb[p] - ra[p]).abs().max()) for p in rb)
    if before["text_encodes"] != after["text_encodes"]:
        raise AssertionError(f"text_encodes differ: {before['text_encodes']} before, {after['text_encodes']} after")
    keys = ("first_ask_ms", "new_group_ms_median", "new_group_ms_max", "warm_ask_ms", "eager_ms",
            "first_ask_after_eager_ms")
    size = getattr(enc, "text_batch_size", None) or enc.batch_size
    return {"model": getattr(enc, "name", "?"), "device": str(enc.device), "dtype": dtype_name(enc.dtype),
            "system": system.name, "Q": system.q_total, "groups_asked": min(system.n_groups, max_groups),
            "images": images, "fresh_load_per_run": fresh,
            "clock": "process CPU time" if enc.device.type == "cpu" else "wall time, synchronised", "before": before, "after": after,
            "ratio": {k: before[k] / after[k] if after[k] else float("nan") for k in keys},
            "max_embedding_diff": diff,
            "policy": prompt_policy(enc.device.type, len(set(p for g in system.groups for p in g.prompts())), size)}


def vit_b32(device: str = "cuda", dtype: str = "fp16", batch: int = 256) -> Callable[[], Any]:
    """A loader of bench.gpu_check's random ViT-B/32-sized CLIP (word-level tokenizer, no download)."""
    from engine.encoders.hf import CLIPFamilyEncoder

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    system = load_system("pokemon15")
    words = " ".join(p for g in system.groups for p in g.prompts()).replace(".", " ").split()
    tok = word_tokenizer(words + [f"w{i}" for i in range(2000)])

    def load():
        model = random_model("clip", "vit-b-32", vocab_size=max(len(tok), 49408), eos_token_id=3, bos_token_id=2,
                             pad_token_id=0).to(dev, dt)
        return CLIPFamilyEncoder(model, tok, None, name="random ViT-B/32 CLIP", model_id="random-vit-b-32@seed0",
                                 device=dev, dtype=dt, batch_size=batch, text_batch_size=batch)

    return load


def report(r: dict[str, Any]) -> str:
    """The before/after table of one :func:`measure` result."""
    b, a, q = r["before"], r["after"], r["ratio"]
    lines = [f"{r['model']} on {r['device']} ({r['dtype']}; {r['clock']}), system {r['system']} (Q={r['Q']}), {r['images']} images; "
             f"buckets {a['buckets']}, compiled {a['compiled']}, warm-up {a['warm_up_passes']} passes in "
             f"{a['load_extra_s']:.2f} s; "
             f"auto prompt policy here: {r['policy']}",
             f"  {'':28s}{'before':>10s}{'after':>10s}{'before/after':>14s}"]
    for k, what in (("first_ask_ms", "first ask after load, ms"), ("new_group_ms_median", "new group ask, median ms"),
                    ("new_group_ms_max", "new group ask, max ms"), ("warm_ask_ms", "cached group ask, ms"),
                    ("eager_ms", f"all {a['eager_prompts']} prompts at once, ms"),
                    ("first_ask_after_eager_ms", "first ask after those, ms")):
        lines.append(f"  {what:28s}{b[k]:10.2f}{a[k]:10.2f}{q[k]:13.2f}x")
    lines.append(f"  text_encodes {b['text_encodes']} = {a['text_encodes']}; text shapes run {b['text_shapes']} "
                 f"before, {a['text_shapes']} after (warm-up included); max |embedding diff| "
                 f"{r['max_embedding_diff']:.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="tiny (random tiny CLIP), offline, vit-b-32 (CUDA), or a model folder / hub id; repeatable "
                         "(default: tiny)")
    ap.add_argument("--system", default="pokemon15")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--images", type=int, default=N_IMAGES)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--compile", action="store_true", help="the 'after' run also compiles the text tower (slow)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's own; 1 gives steady figures on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), "
          f"torch {torch.__version__}, "
          f"cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="twentyq-gpu-text-"))
    for m in args.model or ["tiny"]:
        if m == "tiny":
            from engine.testing.tiny_models import save_random_model

            enc: Any = str(save_random_model(tmp / "tiny-clip", "clip"))
        elif m == "vit-b-32":
            if not torch.cuda.is_available() and args.device in ("auto", "cuda"):
                print("bench.gpu_text: vit-b-32 needs CUDA here; pass --device cpu to run it on the CPU",
                      file=sys.stderr)
                return 2
            enc = vit_b32("cuda" if args.device == "auto" else args.device, args.dtype or "fp16")
        else:
            enc = m
        r = measure(enc, args.system, args.device, dtype=args.dtype, images=args.images, compile_text=args.compile)
        if m == "tiny":
            r["model"] = "tiny random CLIP (width 32, random weights; speed only)"
        print(report(r))
        out.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
