"""The worker pool behind the decode workers (engine/encoders/worker_pool.py): fresh interpreters that never
import the caller's ``__main__``, a task's exception back on its future, a dead worker breaks the pool."""

from __future__ import annotations

import os
import sys
from concurrent.futures.process import BrokenProcessPool

import pytest

from engine.encoders.worker_pool import WorkerPool, can_start_workers


def where_am_i() -> dict:
    main = sys.modules.get("__main__")
    return {"pid": os.getpid(), "main_file": getattr(main, "__file__", None),
            # multiprocessing aliases __mp_main__ to __main__ on import; spawn's re-run makes it a module of its own
            "mp_main": sys.modules.get("__mp_main__", main) is not main}


def fail(msg: str) -> None:
    raise ValueError(msg)


def die() -> None:
    os._exit(7)


def shout() -> int:
    print("this goes to stderr, not into the result stream")
    return 42


@pytest.mark.slow
def test_workers_import_neither_the_callers_main_nor_torch():
    pool = WorkerPool(2)
    try:
        got = [f.result(timeout=60) for f in [pool.submit(where_am_i) for _ in range(4)]]
    finally:
        pool.shutdown(wait=True)
    assert all(g["pid"] != os.getpid() for g in got)
    assert all(g["main_file"] is None and not g["mp_main"] for g in got), got


@pytest.mark.slow
def test_a_tasks_exception_and_prints_come_back_and_the_worker_goes_on():
    pool = WorkerPool(1)
    try:
        with pytest.raises(ValueError, match="bad input"):
            pool.submit(fail, "bad input").result(timeout=60)
        assert pool.submit(shout).result(timeout=60) == 42
    finally:
        pool.shutdown(wait=True)


@pytest.mark.slow
def test_a_dead_worker_breaks_the_pool_and_a_new_pool_works():
    pool = WorkerPool(1)
    try:
        doomed = pool.submit(die)
        queued = pool.submit(where_am_i)
        with pytest.raises(BrokenProcessPool, match="exit code 7"):
            doomed.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            queued.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            pool.submit(where_am_i).result(timeout=60)
    finally:
        pool.shutdown(wait=True)
    fresh = WorkerPool(1)
    try:
        assert fresh.submit(where_am_i).result(timeout=60)["pid"] != os.getpid()
    finally:
        fresh.shutdown(wait=True)


def test_no_worker_interpreter_means_decoding_here_quietly(monkeypatch, recwarn):
    from engine.encoders.image_pool import DecodeWorkersUnavailable

    from engine.encoders.image_pool import ImageLoader
    from engine.encoders.pixels import PixelPlan

    assert can_start_workers()
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # a frozen application: sys.executable is not Python
    assert not can_start_workers()
    plan = PixelPlan(shortest_edge=None, size=(8, 8), crop=None, mean=(0,) * 3, std=(1,) * 3)
    loader = ImageLoader(plan, 2)
    assert loader.workers == 0
    assert not [w for w in recwarn.list if issubclass(w.category, DecodeWorkersUnavailable)]


def test_messages_round_trip_without_pickle_and_refuse_other_objects():
    import io
    from dataclasses import dataclass

    import numpy as np

    from engine.encoders.pixels import PixelPlan
    from engine.encoders.worker_pool import decode, encode

    plan = PixelPlan(shortest_edge=24, size=None, crop=(24, 24), mean=(0.5,) * 3, std=(0.25,) * 3)
    array = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    value = [plan, b"\x89PNG\x00", "a.png", None, (1, 2.5, True), {"k": [array]}]
    stream = io.BytesIO(encode(value) + encode("second"))
    got = decode(stream)
    assert got[:5] == value[:5] and isinstance(got[4], tuple) and got[0] == plan
    assert np.array_equal(got[5]["k"][0], value[5]["k"][0]) and got[5]["k"][0].dtype == np.uint8
    assert decode(stream) == "second"
    with pytest.raises(EOFError):
        decode(stream)

    @dataclass
    class Other:
        x: int

    for bad in (Other(1), object(), np.array([object()]), {1: "non-str key"}):
        with pytest.raises(TypeError, match="cannot be sent"):
            encode(bad)
    with pytest.raises(ValueError, match="must be importable"):
        WorkerPool(1).submit(lambda: 1)
