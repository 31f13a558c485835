"""The torch engine's time per image on a device, for the GPU script to set next to the model's time.

    python -m bench.gpu_engine --device cuda          # prints the figures as JSON
    from bench.gpu_engine import measure; measure("cuda")

The cases are bench.engine_speed's (pokemon15 4096 images eig τ=0.9; N=1000 G=50 K=10 eig τ=0.9
with a budget of 100, and the full system). The similarities sit on the device as float32, as a
model leaves them, in a :class:`engine.torch_backend.TensorSource`; the engine upcasts each block
to float64 there. It runs on the CPU too (``device="cpu"``; the tests smoke it with small sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from engine.torch_backend import TensorSource

from .lib.loop_cases import EPS, LAM, agree, cases, run_numpy, run_torch
from .lib.timing import best_time


def measure(device: str | torch.device, *, images: int = 4096, big_images: int = 1024, repeats: int = 3,
            numpy_too: bool = False, **sizes) -> dict[str, Any]:
    """{"device", "cases": [{case, images, mean_q, ms_per_image, [numpy_ms_per_image, agreement]}]}.

    ``sizes`` go to :func:`bench.engine_speed.cases` (n_classes, n_groups, k, budget); ``numpy_too``
    also times the numpy engine on the host over the same similarities and checks agreement.
    """
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rows = []
    for c in cases(images, big_images, **sizes):
        src = TensorSource(torch.as_tensor(c.sims, dtype=torch.float32, device=dev), c.system)
        res = run_torch(c, src)  # warm-up
        secs = best_time(lambda: run_torch(c, src), repeats, sync)
        row = {"case": c.name, "images": len(c.sims), "mean_q": sum(r.q_spent for r in res) / max(len(res), 1),
               "ms_per_image": 1e3 * secs / len(c.sims)}
        if numpy_too:
            c.sims = src._sims.double().cpu().numpy()  # the float32 values both engines see
            row["numpy_ms_per_image"] = 1e3 * best_time(lambda: run_numpy(c), 1) / len(c.sims)
            row["agreement"] = agree(run_numpy(c), run_torch(c, src))
        rows.append(row)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "lam": LAM, "eps": EPS, "repeats": repeats, "cases": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--big-images", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--numpy-too", action="store_true", help="also time the numpy engine and check agreement")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("bench.gpu_engine: no CUDA device here; pass --device cpu", file=sys.stderr)
        return 2
    print(json.dumps(measure(args.device, images=args.images, big_images=args.big_images, repeats=args.repeats,
                             numpy_too=args.numpy_too), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
