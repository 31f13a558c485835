"""Scale-out: one process against local Ray with 1 and 2 workers, on the same images, in one run.

    python -m bench.scale                                 # 2,000 images, offline stand-in (needs twentyq[ray])
    python -m bench.scale --images 400 --model tiny-clip  # a tiny random CLIP: Ray's own overhead shows
    python -m bench.scale --encoders cuda                 # no Ray: CLIP image towers' images/s on the GPU
    python -m bench.scale --decode [CSV]                  # no Ray: decoding images/s on one CPU core

Images: all of ``jina15.csv`` plus a seeded sample of ``web150`` up to ``--images``
(``../shared/data/pokemon``). Every arm classifies the same paths with the same
configuration (adaptive, ``eig``, τ=0.9), in this order:

1. ``single 1 thread`` and ``single N threads``: ``Classifier.iter_classify`` in this
   process, chunks of 64, torch on 1 thread and on all N CPUs (the default);
2. ``ray-1``: :func:`engine.run.ray_executor.classify_shards`, 1 actor with 1 CPU (Ray sets an
   actor's OMP_NUM_THREADS to its CPUs, so 1 torch thread), lazy text embeddings;
3. ``ray-2``: 2 actors, 1 CPU each, lazy text embeddings (each actor embeds what it asks);
4. ``ray-2 precompute``: as 3 with ``precompute_text=True`` (one task embeds every prompt,
   the actors read them from the object store).

Per arm: ``wall`` (the call to the last result), ``start-up`` (the call to the first batch
an actor starts: worker processes, imports, model load, the precompute task; for
``single``, the model load), ``steady`` (images / the time from that first batch to the
last result), ``busy`` (the actors' summed seconds inside their batches). Ratios are
against ``single N threads`` in the same run. The overhead per image is ``ray-1``'s steady
seconds per image minus ``single 1 thread``'s (the same compute), and the part of it where
the actor sat idle (window − busy). Labels and ``q_spent``
of every Ray arm are compared with ``single``. Ray starts once (its start-up is timed
apart) and its workers run at nice 0: Ray's default (15) hands the CPUs to any other
process, which on a shared machine measures the neighbours, not Ray. The load average is
recorded around each arm: figures taken while other jobs ran are not clean.

Writes ``bench/out/scale/results.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.common.files import shared_data_root
from engine.core.results import Result
from engine.run.classifier import RunConfig
from engine.run.config import EncoderSpec
from engine.run.pipeline import Job
from engine.run.store import ResultStore, results_from_arrow, results_to_arrow
from systems import load_system

from .lib.harness import DEFAULT_OUT, command_line, md_table, model_label, write_outputs

REPO = Path(__file__).resolve().parents[1]
POKEMON = shared_data_root() / "pokemon"
TINY = "tiny-clip"


def pick_paths(n: int, seed: int) -> list[str]:
    """All jina15 images, then a seeded sample of web150 ones not already in, up to n."""
    def read(csv_path: Path) -> list[str]:
        with open(csv_path, encoding="utf-8", newline="") as f:
            return [str((csv_path.parent / r["path"]).resolve()) for r in csv.DictReader(f)]

    jina = read(POKEMON / "jina15.csv")
    if n <= len(jina):
        return jina[:n]
    seen = set(jina)
    web = [p for p in read(POKEMON / "web150" / "labels.csv") if p not in seen]
    pick = np.sort(np.random.default_rng(seed).choice(len(web), size=min(n - len(jina), len(web)), replace=False))
    return jina + [web[i] for i in pick]


def run_single(model: str, paths: list[str], config, threads: int) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _single(model, paths, config)
    finally:
        torch.set_num_threads(before)


def _single(model: str, paths: list[str], config) -> dict[str, Any]:
    from engine.run.classifier import Classifier

    t0 = time.perf_counter()
    clf = Classifier(model=model, device="cpu")
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    recs = [r.to_dict() for r in clf.iter_classify(paths, config, names=paths, chunk_size=64)]
    t_run = time.perf_counter() - t1
    text_s = _time_text(clf, config)
    return {"records": recs, "wall_s": t_load + t_run, "startup_s": t_load, "window_s": t_run, "busy_s": t_run,
            "steady_ips": len(paths) / t_run, "text_encodes": clf.text_cache.text_encodes,
            "text_all_prompts_s": text_s}


def _time_text(clf, config) -> float:
    """Seconds to embed every prompt of the system once, group by group, with a fresh cache (the model is warm)."""
    from engine.encoders.text_cache import TextCache
    from engine.run.ray_executor import system_prompt_groups

    cache = TextCache(clf.encoder)
    t0 = time.perf_counter()
    for prompts in system_prompt_groups(clf.system, config.mode):
        cache.embed(prompts)
    return time.perf_counter() - t0


def run_ray(model: str, paths: list[str], config, *, workers: int, precompute: bool,
            shard_size: int) -> dict[str, Any]:
    """One Ray arm. Times: ``startup_s`` from the call to the first batch an actor starts (actor
    processes, imports, model load, the precompute task), ``window_s`` from then to the last result,
    ``busy_s`` the actors' summed time inside their batches."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from engine.run.ray_executor import BUSY, STARTED, TEXT_ENCODES, RayOptions, classify_shards

    rows = pa.table({"path": paths})
    shards = list(range(-(-len(paths) // shard_size)))
    got: dict[int, list] = {}
    encodes, busy, first_start = 0, 0.0, float("inf")
    job = Job(EncoderSpec(model=model, device="cpu"), load_system("pokemon15"), config)
    options = RayOptions(workers=workers, cpus_per_worker=1.0, gpus_per_worker=0.0, precompute_text=precompute)
    t0 = time.time()
    for k, table in classify_shards(rows, shards, shard_size, job, options):
        encodes += int(pc.sum(table.column(TEXT_ENCODES)).as_py() or 0)
        busy += float(pc.sum(table.column(BUSY)).as_py() or 0.0)
        starts = [t for t in table.column(STARTED).to_pylist() if t > 0]
        first_start = min([first_start, *starts])
        got[k] = [r.to_dict() for r in results_from_arrow(table)]
    t_end = time.time()
    recs = [r for k in shards for r in got[k]]
    window = t_end - first_start
    return {"records": recs, "wall_s": t_end - t0, "startup_s": first_start - t0, "window_s": window,
            "busy_s": busy, "steady_ips": len(paths) / window, "text_encodes": encodes}


# --------------------------------------------------------------------------- encoder and decode speed (no Ray)
ENCODERS = {  # standard CLIP image towers: width, layers, heads, mlp, patch (224 px), projection
    "ViT-B/32": (768, 12, 12, 3072, 32, 512), "ViT-B/16": (768, 12, 12, 3072, 16, 512),
    "ViT-L/14": (1024, 24, 16, 4096, 14, 768),
}


def encoder_speed(device: str, batch: int = 256, iters: int = 10) -> dict[str, Any]:
    """Images/s of randomly initialised CLIP image towers (right shapes and FLOPs, no weights needed),
    fp16 on CUDA, fp32 on the CPU; and prompts/s of the ViT-B text tower (16 tokens a prompt)."""
    import torch
    import transformers

    dtype = torch.float16 if device == "cuda" else torch.float32
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "dtype": str(dtype), "batch": batch, "images_per_s": {}}

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / iters

    with torch.inference_mode():
        for name, (w, layers, heads, mlp, patch, proj) in ENCODERS.items():
            cfg = transformers.CLIPVisionConfig(hidden_size=w, num_hidden_layers=layers, num_attention_heads=heads,
                                                intermediate_size=mlp, patch_size=patch, image_size=224,
                                                projection_dim=proj)
            model = transformers.CLIPVisionModelWithProjection(cfg).to(device, dtype).eval()
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            out["images_per_s"][name] = batch / timed(lambda: model(pixel_values=x).image_embeds)
            print(f"  {name:<9} {out['images_per_s'][name]:9.0f} images/s ({out['device']}, {dtype}, batch {batch})",
                  flush=True)
        tcfg = transformers.CLIPTextConfig(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                                           intermediate_size=2048, projection_dim=512)
        text = transformers.CLIPTextModelWithProjection(tcfg).to(device, dtype).eval()
        ids = torch.randint(0, tcfg.vocab_size - 1, (batch, 16), device=device)
        out["prompts_per_s_vit_b_text"] = batch / timed(lambda: text(input_ids=ids).text_embeds)
        print(f"  text tower (ViT-B, 16 tokens) {out['prompts_per_s_vit_b_text']:9.0f} prompts/s", flush=True)
    return out


def decode_speed(paths: list[str]) -> dict[str, Any]:
    """Images/s on one CPU core: open + decode to RGB (``load_image``) + resize to 224×224 + to a float
    tensor, the part of a GPU actor's work that stays on the CPU."""
    import torch

    from engine.encoders.images import load_image

    torch.set_num_threads(1)
    for p in paths:  # from the page cache, not the disk
        Path(p).read_bytes()
    pixels = 0
    t0 = time.perf_counter()
    for p in paths:
        im = load_image(p)
        pixels += im.size[0] * im.size[1]
        torch.from_numpy(np.asarray(im.resize((224, 224)), dtype=np.float32)).permute(2, 0, 1)
    secs = time.perf_counter() - t0
    return {"images": len(paths), "images_per_s_one_core": len(paths) / secs, "mean_pixels": pixels / len(paths)}


def write_speed(records: list[dict], tmp: Path, shard: int = 1000) -> dict[str, Any]:
    """Rows/s the driver finishes shards at (records in, JSONL or Parquet shard + marker out, each
    fsynced), the same without the file (serialising only), and bytes/row.

    Uses ``records`` (classify --json dicts) repeated to ``shard`` rows; one process, one thread.
    """
    import pyarrow.parquet as pq

    reps = -(-shard // len(records))
    rows = [Result.from_dict(r) for r in (records * reps)[:shard]]
    table = results_to_arrow(rows)
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"rows": shard}
    t0 = time.perf_counter()  # the CPU part alone: no file, no fsync
    "".join(json.dumps(r.to_dict(top_records=True), ensure_ascii=False) + "\n" for r in results_from_arrow(table))
    out["jsonl_serialise_rows_per_s"] = shard / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    pq.write_table(table, tmp / "nosync.parquet")
    out["parquet_serialise_rows_per_s"] = shard / (time.perf_counter() - t0)
    for fmt in ("jsonl", "parquet"):
        store = ResultStore.open(tmp / f"w.{fmt}", n_rows=shard * 5, shard_size=shard, settings={}, fingerprint="f",
                                 resume=False)
        t0 = time.perf_counter()
        for k in range(5):
            store.write(k, rows)
        secs = time.perf_counter() - t0
        store.close()
        out[fmt] = {"rows_per_s": 5 * shard / secs, "bytes_per_row": store.shard_path(0).stat().st_size / shard}
    return out


def agree(a: list[dict], b: list[dict]) -> dict[str, Any]:
    same = [(x["image"], x["label"], x["q_spent"]) == (y["image"], y["label"], y["q_spent"]) for x, y in zip(a, b)]
    return {"identical_label_and_q": int(sum(same)), "of": len(b),
            "max_conf_diff": float(max(abs(x["confidence"] - y["confidence"]) for x, y in zip(a, b)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="offline",
                    help=f"'offline' (default: the stand-in, NOT CLIP), '{TINY}' (a tiny random CLIP made here), "
                         "or any model string")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT / "scale"))
    ap.add_argument("--encoders", choices=["cuda", "cpu"], default=None,
                    help="instead of the Ray arms: time random-weight CLIP image towers (B/32, B/16, L/14) and the "
                         "ViT-B text tower on this device (writes encoders.json)")
    ap.add_argument("--decode", nargs="?", const="pokemon", default=None, metavar="CSV",
                    help="instead of the Ray arms: time image decoding + resizing on one CPU core, on the Ray arms' "
                         "images or on a dataset CSV's (path,label; writes decode.json)")
    args = ap.parse_args(argv)
    if args.encoders or args.decode:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        if args.encoders:
            res = encoder_speed(args.encoders)
            (Path(args.out) / "encoders.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        if args.decode:
            csv_path = POKEMON / "jina15.csv" if args.decode == "pokemon" else Path(args.decode)
            if not csv_path.is_file():
                raise SystemExit(f"bench.scale: the images are absent ({csv_path} not found)")
            if args.decode == "pokemon":
                paths, what = pick_paths(args.images, args.seed), "jina15/web150"
            else:
                with open(csv_path, encoding="utf-8", newline="") as f:
                    paths = [str(csv_path.parent / r["path"]) for r in csv.DictReader(f)][:args.images]
                what = str(csv_path)
            res = decode_speed(paths)
            print(f"  decode + resize to 224 + float tensor, one core: {res['images_per_s_one_core']:.0f} images/s "
                  f"({res['images']} {what} images, {res['mean_pixels']:.0f} pixels on average)")
            (Path(args.out) / "decode.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not (POKEMON / "jina15.csv").is_file():
        raise SystemExit(f"bench.scale: the shared images are absent ({POKEMON / 'jina15.csv'} not found)")
    from engine.run.ray_executor import require_ray

    try:
        ray = require_ray()
    except ImportError as e:
        raise SystemExit(f"bench.scale: {e}") from None
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cpus = args.cpus or os.cpu_count() or 1
    config = RunConfig(mode="adaptive", policy="eig", tau=args.tau)
    paths = pick_paths(args.images, args.seed)
    n = len(paths)
    for p in paths:  # every arm then reads the files from the page cache, not the first one from disk
        Path(p).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        label = model_label(model)
        if model == TINY:
            from engine.testing.tiny_models import save_random_model

            model = str(save_random_model(Path(tmp) / "tiny-clip", "clip", size="tiny"))
            label = "tiny random CLIP (width 32, random weights; speed only)"
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), Ray {ray.__version__}")
        print(f"model: {label}\ndata: {n} images (jina15 + web150), system pokemon15, eig τ={args.tau}")
        arms: dict[str, dict[str, Any]] = {}

        def timed(name, fn):
            load0 = os.getloadavg()[0]
            res = fn()
            res["load_avg"] = [load0, os.getloadavg()[0]]
            arms[name] = res
            print(f"  {name:<18} wall {res['wall_s']:7.1f} s  start-up {res['startup_s']:5.1f} s  "
                  f"steady {res['steady_ips']:6.1f} img/s  busy {res['busy_s']:6.1f} s  "
                  f"text encodes {res['text_encodes']:4d}  load avg {load0:.1f}->{res['load_avg'][1]:.1f}",
                  flush=True)

        timed("single 1 thread", lambda: run_single(model, paths, config, 1))
        timed(f"single {cpus} threads", lambda: run_single(model, paths, config, cpus))
        ws = min((write_speed(arms["single 1 thread"]["records"], Path(tmp) / f"w{i}") for i in range(3)),
                 key=lambda w: -w["jsonl"]["rows_per_s"])  # best of 3, before Ray starts (its I/O adds noise)
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t_init = time.perf_counter() - t0
        print(f"  ray.init (local, {cpus} CPUs): {t_init:.1f} s")
        try:
            common = dict(shard_size=args.shard_size)
            timed("ray-1", lambda: run_ray(model, paths, config, workers=1, precompute=False, **common))
            timed("ray-2", lambda: run_ray(model, paths, config, workers=2, precompute=False, **common))
            timed("ray-2 precompute", lambda: run_ray(model, paths, config, workers=2, precompute=True, **common))
        finally:
            ray.shutdown()

    single, single1 = arms[f"single {cpus} threads"], arms["single 1 thread"]
    rows, results = [], {"model": args.model, "model_label": label, "images": n, "cpus": cpus,
                         "ray_init_s": t_init, "shard_size": args.shard_size, "tau": args.tau, "arms": {}}
    for name, res in arms.items():
        res_out = {k: v for k, v in res.items() if k != "records"}
        res_out["agreement"] = agree(res["records"], single["records"])
        res_out["wall_ratio"] = single["wall_s"] / res["wall_s"]  # against the default single process
        res_out["steady_ratio"] = res["steady_ips"] / single["steady_ips"]
        results["arms"][name] = res_out
        rows.append([name, res["wall_s"], res["startup_s"], n / res["wall_s"], res["steady_ips"],
                     res_out["wall_ratio"], res_out["steady_ratio"], 1000 * res["busy_s"] / n, res["text_encodes"],
                     f"{res_out['agreement']['identical_label_and_q']}/{n}",
                     f"{res['load_avg'][0]:.1f}→{res['load_avg'][1]:.1f}"])
    results["driver_write"] = ws
    r1 = arms["ray-1"]
    gap_ms = 1000 * (r1["window_s"] - r1["busy_s"]) / n
    extra_ms = 1000 * (r1["window_s"] - single1["window_s"]) / n
    results.update(overhead_idle_ms_per_image=gap_ms, overhead_total_ms_per_image=extra_ms,
                   precompute_minus_lazy_wall_s=arms["ray-2 precompute"]["wall_s"] - arms["ray-2"]["wall_s"],
                   text_all_prompts_s=single["text_all_prompts_s"], model_load_s=single["startup_s"])
    table = md_table(["arm", "wall s", "start-up s", "img/s (wall)", "img/s (steady)", "× single (wall)",
                      "× single (steady)", "busy ms/img", "text encodes", "same label & Q", "load avg"], rows)
    lines = [
        f"ray.init: {t_init:.1f} s (in no arm)",
        f"Ray overhead per image, ray-1 against single 1 thread (both one torch thread): {extra_ms:+.2f} ms in all "
        f"(steady window per image minus the single process's), of which {gap_ms:.2f} ms is the actor idle between batches "
        "(window − busy: transfer, scheduling, the driver's Arrow work)",
        f"model load (single process): {single['startup_s']:.1f} s; embedding every prompt of the system once "
        f"(model warm): {1000 * single['text_all_prompts_s']:.0f} ms",
        f"driver, finishing shards of {ws['rows']} rows (written, fsynced, renamed, marked): JSONL "
        f"{ws['jsonl']['rows_per_s']:.0f} rows/s ({ws['jsonl']['bytes_per_row']:.0f} B/row), Parquet "
        f"{ws['parquet']['rows_per_s']:.0f} rows/s ({ws['parquet']['bytes_per_row']:.0f} B/row); serialising "
        f"alone: JSONL {ws['jsonl_serialise_rows_per_s']:.0f} rows/s, Parquet {ws['parquet_serialise_rows_per_s']:.0f}",
        f"precompute − lazy (ray-2 wall): {results['precompute_minus_lazy_wall_s']:+.1f} s; text encodes "
        f"lazy {arms['ray-2']['text_encodes']} (summed over actors) vs precompute "
        f"{arms['ray-2 precompute']['text_encodes']} (in the actors; the task embeds each prompt once)",
    ]
    print("\n" + table + "\n\n" + "\n".join(lines))
    report = (f"# Scale-out: single process vs local Ray\n\n- model: **{label}**\n- data: {n} images (jina15 + "
              f"web150)\n- system: pokemon15, eig τ={args.tau}\n- CPUs: {cpus}\n"
              f"- command: `{command_line('bench.scale', argv)}`\n\n{table}\n\n" + "\n".join(f"- {x}" for x in lines)
              + "\n")
    write_outputs(Path(args.out), results, report)
    print(f"\nwrote {args.out}/results.json and report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
