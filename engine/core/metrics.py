"""Evaluation metrics: accuracy with exact intervals, bootstrap intervals, per-class accuracy, confusions, McNemar.

An accuracy is k right out of n, a binomial proportion, so its interval is the exact
(Clopper–Pearson) one, :func:`exact_ci` / :func:`accuracy_ci`: never narrower than its
level promises, and not degenerate at 0/n or n/n (0 of 52 right gives [0, 0.068], where the
percentile bootstrap gives [0, 0]). :func:`bootstrap_ci` stays for statistics that are not a
proportion (differences of paired accuracies, AUCs).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.stats import beta, binomtest

#: what :func:`exact_ci` is called in summaries (``ci_method``)
CI_METHOD = "Clopper-Pearson"


def exact_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) interval for k successes in n; (nan, nan) when n = 0.

    Each tail holds (1 − level)/2: lo = Beta⁻¹((1−level)/2; k, n−k+1) (0 when k = 0),
    hi = Beta⁻¹((1+level)/2; k+1, n−k) (1 when k = n). Always 0 ≤ lo ≤ k/n ≤ hi ≤ 1.
    """
    if isinstance(k, bool) or isinstance(n, bool) or not 0 <= k <= n:
        raise ValueError(f"exact_ci: k == {k!r}, n == {n!r}; need 0 <= k <= n")
    if n == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def accuracy_ci(correct: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The exact interval (:func:`exact_ci`) of the accuracy of a 0/1 vector (n,); (nan, nan) when empty."""
    c = np.asarray(correct, dtype=bool)
    return exact_ci(int(c.sum()), int(c.size), level)


def bootstrap_ci(correct: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a vector (n,). (nan, nan) when empty.

    For statistics that are not a proportion (a paired difference, an AUC); an accuracy's
    interval is :func:`accuracy_ci` (the bootstrap collapses to [0, 0] at 0/n).
    """
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
