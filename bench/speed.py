"""Where the time goes: the engine against the model, throughput, EIG cost, peak memory.

    python -m bench.speed --data jina15 --system pokemon15
    python -m bench.speed --model simulator            # engine only (no model time)

Measured side by side in one process, on the same images:

- model time per image: image encoding (fresh, no cache) and the text
  encoding of the system's prompts, amortised per image over the batch;
- engine time per image: ``classify_batch`` over precomputed similarities
  (scoring, EIG, policy, stopping; no model), for the full system and for
  adaptive ``eig`` at τ = 0.9;
- throughput (images/s) at batch sizes 1, 16 and 256: engine alone, and model
  image encoding (where a model is used);
- EIG selection cost (EIG of every group + the eig policy's pick, 256
  images) at N ∈ {15, 150, 1000} classes × G ∈ {5, 20, 50} groups, K = 10;
- peak memory: Python allocations (tracemalloc, numpy included) during the
  engine runs, and the process's max RSS (model included).
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import StopRule

from .lib import harness as C
from .lib.loop_cases import eig_selection_step
from .lib.timing import best_time

BATCHES = (1, 16, 256)
EIG_N = (15, 150, 1000)
EIG_G = (5, 20, 50)
EIG_K = 10
TAU = 0.9


def eig_cost(n_classes: int, n_groups: int, k: int = EIG_K, n_images: int = 256, repeats: int = 5,
             seed: int = 0) -> float:
    """Best-of-repeats ms per image to pick the next group by EIG (all groups' EIG + the pick), batch of n_images."""
    once = eig_selection_step(n_images, n_classes, n_groups, k, seed)
    return 1000 * best_time(once, repeats) / n_images


def _one_thread(fn):
    """fn() with BLAS limited to one thread (threadpoolctl); None where threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(limits=1, user_api="blas"):
        return fn()


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _model_throughput(encoder: Any, images: list, batches, threads: int | None = None) -> dict[int, float]:
    """Images/s of ``encoder.encode_images`` at each batch size (best of 3 at batch 1, else one run).

    ``threads`` sets torch's intra-op threads for the measurement and restores them after.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        out = {}
        for b in batches:
            batch = [images[i % len(images)] for i in range(b)]
            out[b] = b / best_time(lambda: encoder.encode_images(batch), 3 if b == 1 else 1)
        return out
    finally:
        torch.set_num_threads(before)


def _tile(prep: C.Prepared, n: int) -> C.Prepared:
    """n images drawn cyclically from prep (so a batch of 256 exists even for small inputs)."""
    return prep.subset(np.arange(n) % prep.n)


def engine_times(prep: C.Prepared, repeats: int) -> dict[str, Any]:
    """ms per image of the engine alone for full and adaptive, on all prepared images."""
    ch = C.channel_for(prep)
    out = {}
    for mode, pol, stop in (("full", "fixed", StopRule()), ("adaptive eig τ=0.9", "eig", StopRule(tau=TAU))):
        secs = best_time(lambda: C.run_point(prep, pol, stop, channel=ch), repeats)
        pt = C.run_point(prep, pol, stop, channel=ch)
        out[mode] = {"ms_per_image": 1000 * secs / prep.n, "mean_q": pt.mean_q, "text_encodes": pt.text_encodes}
    return out


def run(prep: C.Prepared, out: Path, *, encoder: Any = None, images: list[str] | None = None, repeats: int = 3,
        model_batches=BATCHES, eig_n=EIG_N, eig_g=EIG_G, command: str = "") -> dict[str, Any]:
    """Time everything; ``encoder`` and ``images`` (paths) enable the model columns."""
    eng = engine_times(prep, repeats)
    tracemalloc.start()  # a separate run: tracing slows Python down, so it is not timed
    ch = C.channel_for(prep)
    C.run_point(prep, "fixed", StopRule(), channel=ch)
    C.run_point(prep, "eig", StopRule(tau=TAU), channel=ch)
    _, peak_engine = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    thr_engine = {}
    for b in BATCHES:
        sub = _tile(prep, b)
        ch = C.channel_for(sub)
        row = {}
        for mode, pol, stop in (("full", "fixed", StopRule()), ("adaptive", "eig", StopRule(tau=TAU))):
            reps = 20 if b == 1 else repeats
            row[mode] = b / best_time(lambda: C.run_point(sub, pol, stop, channel=ch), reps)
        thr_engine[b] = row

    model: dict[str, Any] = {}
    if encoder is not None and images:
        q_prompts = [p for g in prep.system.groups for p in g.prompts()]
        t0 = time.perf_counter()
        encoder.encode_texts(q_prompts)
        t_text_all = time.perf_counter() - t0
        thr_model = _model_throughput(encoder, images, model_batches)
        thr_model_1 = _model_throughput(encoder, images, model_batches, threads=1)
        img_ms = 1000 / thr_model[max(model_batches)]
        n_amort = prep.n
        model = {"image_ms_per_image": img_ms, "text_ms_per_prompt": 1000 * t_text_all / len(q_prompts),
                 "text_ms_full_system": 1000 * t_text_all, "images_per_s": thr_model,
                 "images_per_s_1_torch_thread": thr_model_1, "torch_threads": _torch_threads(),
                 "amortised_over_images": n_amort}
        for mode, e in eng.items():
            text_ms = 1000 * t_text_all * e["text_encodes"] / len(q_prompts) / n_amort
            model_ms = img_ms + text_ms
            e["model_ms_per_image"] = model_ms
            e["engine_share"] = e["ms_per_image"] / (e["ms_per_image"] + model_ms)
            e["model_over_engine"] = model_ms / e["ms_per_image"]

    eig = {f"N={n},G={g}": {"n_classes": n, "n_groups": g, "k": EIG_K, "ms_per_image": eig_cost(n, g),
                            "ms_per_image_1_blas_thread": _one_thread(lambda: eig_cost(n, g))}
           for n in eig_n for g in eig_g}
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = {"benchmark": "speed", "meta": C.meta_block(prep, {"repeats": repeats, "command": command}),
               "engine": eng, "model": model, "throughput_engine": thr_engine, "eig_cost": eig,
               "memory": {"engine_peak_python_mb": peak_engine / 2**20, "process_max_rss_mb": rss_mb}}
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = [_plot(prep, results, out / "speed.png")]
    C.write_outputs(out, results, _report(prep, results, command))
    return results


def _plot(prep: C.Prepared, res: dict[str, Any], path: Path) -> str:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    modes = list(res["engine"])
    x = np.arange(len(modes))
    eng = [res["engine"][m]["ms_per_image"] for m in modes]
    ax.bar(x - 0.2, eng, 0.4, label="engine (scoring, EIG, policy)")
    if res["model"]:
        mod = [res["engine"][m]["model_ms_per_image"] for m in modes]
        ax.bar(x + 0.2, mod, 0.4, label="model (image + amortised text encoding)")
    ax.set_yscale("log")
    ax.set_xticks(x, modes)
    ax.set_ylabel("ms per image (log scale)")
    ax.set_title("engine time against model time", fontsize=10)
    ax.legend(fontsize=8, loc="center")
    ax = axes[1]
    for i, n in enumerate(EIG_N):
        vals = [v for v in res["eig_cost"].values() if v["n_classes"] == n]
        if not vals:
            continue
        col = f"C{i}"
        ax.plot([v["n_groups"] for v in vals], [v["ms_per_image"] for v in vals], "o-", color=col,
                label=f"N = {n} classes, default BLAS threads")
        one = [v.get("ms_per_image_1_blas_thread") for v in vals]
        if all(o is not None for o in one):
            ax.plot([v["n_groups"] for v in vals], one, "s--", color=col, label=f"N = {n}, 1 BLAS thread")
    ax.set_xlabel("G (groups), K = 10 options each")
    ax.set_ylabel("ms per image per selection (log scale)")
    ax.set_yscale("log")
    ax.set_title("EIG selection cost, batch of 256", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(C.plot_title("Speed", prep).replace("\n", " — "), fontsize=11)
    return C.save_fig(fig, path)


def model_cells(res: dict[str, Any], b: int) -> list[str]:
    m = res["model"]
    if not m:
        return ["—", "—"]
    a, o = m["images_per_s"].get(b), m.get("images_per_s_1_torch_thread", {}).get(b)
    return ["—" if a is None else f"{a:.1f} ({m.get('torch_threads')} threads)", "—" if o is None else f"{o:.1f}"]


def engine_rows(res: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for m, e in res["engine"].items():
        rows.append([m, f"{e['mean_q']:.1f}", f"{e['ms_per_image']:.3f}",
                     f"{e['model_ms_per_image']:.1f}" if "model_ms_per_image" in e else "— (no model)",
                     f"{e['model_over_engine']:.0f}×" if "model_over_engine" in e else "—"])
    return rows


def _report(prep: C.Prepared, res: dict[str, Any], command: str) -> str:
    out = [C.report_header("bench.speed", prep, command)]
    out.append("Engine = `classify_batch` over precomputed similarities (no model). Model = image encoding "
               "(fresh) + text encoding of the prompts a run embeds, amortised over the "
               f"{prep.n} images. Best of {res['meta']['repeats']} runs (20 at batch 1), one process.\n")
    out.append(C.md_table(["mode", "mean Q", "engine ms/image", "model ms/image", "model ÷ engine"], engine_rows(res)))
    out.append("\n## Throughput (images/s)\n")
    rows = []
    for b, r in res["throughput_engine"].items():
        rows.append([b, f"{r['full']:.0f}", f"{r['adaptive']:.0f}", *model_cells(res, b)])
    out.append(C.md_table(["batch", "engine, full", "engine, adaptive eig τ=0.9", "model image encoding",
                           "model, 1 torch thread"], rows))
    out.append("\n## EIG selection cost (ms per image, batch of 256, K = 10)\n")
    gs = sorted({v["n_groups"] for v in res["eig_cost"].values()})
    ns = sorted({v["n_classes"] for v in res["eig_cost"].values()})
    def cell(n, g):
        v = res["eig_cost"][f"N={n},G={g}"]
        one = v.get("ms_per_image_1_blas_thread")
        return f"{v['ms_per_image']:.4f}" + ("" if one is None else f" ({one:.4f})")

    rows = [[f"N={n}"] + [cell(n, g) for g in gs] for n in ns]
    out.append(C.md_table(["", *[f"G={g}" for g in gs]], rows))
    out.append("\nIn brackets: the same with BLAS limited to one thread (threadpoolctl).\n")
    m = res["memory"]
    out.append(f"\nPeak memory: engine runs {m['engine_peak_python_mb']:.1f} MB of Python/numpy allocations "
               f"(tracemalloc); process max RSS {m['process_max_rss_mb']:.0f} MB (model included).\n")
    if res["model"]:
        mm = res["model"]
        out.append(f"\nModel: {mm['image_ms_per_image']:.1f} ms per image (batch {max(mm['images_per_s'])}), "
                   f"{mm['text_ms_per_prompt']:.2f} ms per prompt.\n")
    out.append(f"\n![speed]({res['plots'][0]})\n")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, out="speed")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    encoder, images = None, None
    if args.model != C.SIMULATOR:
        from engine.run.datasets import load_dataset

        encoder = C.load_model(args.model)
        images = [it.path for it in load_dataset(C.resolve_data(args.data), split=args.split, limit=256,
                                                 seed=args.seed).items]
    prep = C.prepare_from_args(args, encoder=encoder)
    res = run(prep, Path(args.out), encoder=encoder, images=images, repeats=args.repeats,
              command=C.command_line("bench.speed", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
