"""Evaluation metrics: accuracy with bootstrap intervals, per-class accuracy, confusions, McNemar."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.stats import binomtest


def bootstrap_ci(correct: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 0/1 vector (n,). (nan, nan) when empty."""
    c = np.asarray(correct, dtype=np.float64)
    if c.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = c[rng.integers(0, c.size, size=(n_boot, c.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Exact (binomial) McNemar p-value for two methods scored on the same items."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    n01 = int((a & ~b).sum())
    n10 = int((~a & b).sum())
    if n01 + n10 == 0:
        return 1.0
    return float(binomtest(n01, n01 + n10, 0.5).pvalue)


def per_class(labels: list[str], preds: list[str | None]) -> dict[str, dict[str, float]]:
    out: dict[str, list[int]] = {}
    for y, p in zip(labels, preds):
        out.setdefault(y, []).append(int(p == y))
    return {y: {"n": len(v), "accuracy": float(np.mean(v))} for y, v in sorted(out.items())}


def top_confusions(labels: list[str], preds: list[str | None], k: int = 10) -> list[dict]:
    cnt = Counter((y, p) for y, p in zip(labels, preds) if p != y)
    return [{"label": y, "predicted": p, "count": n} for (y, p), n in cnt.most_common(k)]
