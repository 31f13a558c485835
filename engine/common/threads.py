"""BLAS threads around the engine's iterative fits."""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def one_blas_thread() -> threadpool_limits:
    """A context manager holding every BLAS library in the process to one thread, the caller's counts restored on
    exit (also on an exception). For the L-BFGS fits: they call small products hundreds of times, and OpenBLAS's
    own threads mostly wait (``python -m bench.fit_speed`` on the project's 2-core machine: the few-shot LR
    2.9-16.6x faster with one thread on the probe pairs' dev halves, docs/calibration.md). The limit is
    process-wide, not per Python thread; nothing in the engine fits in threads."""
    return threadpool_limits(limits=1, user_api="blas")
