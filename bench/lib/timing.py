"""Wall-clock timing for the benchmarks: the best of N runs (timeit's convention), a device synchronised around each."""

from __future__ import annotations

import time

import torch


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats: int, sync=None) -> float:
    """The shortest of ``repeats`` wall times of ``fn()`` in seconds; ``sync()`` (if given) runs before the clock
    starts and before it stops, so queued device work is counted."""
    ts = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return float(min(ts))
