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


# --------------------------------------------------------------------------- budget curves
def budget_grid(q_full: int, n: int = 9) -> list[int]:
    """n budgets spread evenly over [0, q_full], rounded and deduplicated (the budget sweep's points)."""
    return sorted({int(round(x)) for x in np.linspace(0, q_full, n)})


def normalised_auc_rows(acc: np.ndarray, mean_q: np.ndarray, q_full: float) -> np.ndarray:
    """Normalised budget AUC of R curves at once.

    acc, mean_q : (R, nb) accuracy and mean Q of each curve at each budget; column 0 is budget 0.
    Each curve starts at (0, its budget-0 accuracy), is linear between its points sorted by mean Q,
    and is held flat after its last point up to q_full (points beyond are clipped). Returns (R,): the
    area over [0, q_full] divided by q_full (a classifier right at every Q scores 1).
    """
    acc = np.asarray(acc, dtype=np.float64)
    mq = np.clip(np.asarray(mean_q, dtype=np.float64), 0.0, q_full)
    order = np.argsort(mq, axis=1, kind="stable")
    x = np.take_along_axis(mq, order, axis=1)
    y = np.take_along_axis(acc, order, axis=1)
    x = np.concatenate([np.zeros((len(x), 1)), x, np.full((len(x), 1), q_full)], axis=1)
    y = np.concatenate([acc[:, :1], y, y[:, -1:]], axis=1)
    return np.trapezoid(y, x, axis=1) / q_full


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) bootstrap weights: row r counts how often each of n items is drawn in resample r, over n."""
    idx = np.random.default_rng([seed, 7]).integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return w / max(n, 1)


def budget_aucs(curves: dict, q_full: float, *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Normalised budget AUC of several policies on the same images, with paired bootstrap CIs.

    curves : {name: (correct (B, nb), q (B, nb))} per-image outcomes along the same budget sweep.
    Returns {name: {"auc", "ci95", "boot" ((n_boot,) resampled AUCs, the same resamples for every name,
    so differences are paired)}}.
    """
    names = list(curves)
    B = next(iter(curves.values()))[0].shape[0] if names else 0
    w = bootstrap_weights(B, n_boot, seed)
    out = {}
    for k in names:
        cor, q = (np.asarray(a, dtype=np.float64) for a in curves[k])
        auc = float(normalised_auc_rows(cor.mean(0)[None], q.mean(0)[None], q_full)[0])
        boot = normalised_auc_rows(w @ cor, w @ q, q_full)
        out[k] = {"auc": auc, "ci95": [float(x) for x in np.quantile(boot, [0.025, 0.975])], "boot": boot}
    return out
