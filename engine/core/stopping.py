"""Choosing a stop rule's threshold on traced paths: where a threshold on a statistic stops each path, and the
smallest threshold that changes almost no answer (``--settle auto``; the bench's τ and settle rows), and how soon
any stop that keeps every path's label could stop (the bench's hindsight bound).

Pure numpy. A *path* is one image's τ = 1 run of the loop, traced point by point: column 0 before any question,
then one column per question asked, NaN (or -1) after its last point. ``stat`` (B, S) is what the stop compares
with its threshold at each point (the confidence, or the settled bound); ``label`` (B, S) the label there; ``q``
(B, S) the prompts spent by then. A threshold of 1 or more never fires, as in the loop (``StopRule``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: settle thresholds ``--settle auto`` tries (1, never stopping settled, is what the rule falls back to)
SETTLE_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
#: at most this share of dev images may end on another label than without the stop
STOP_MARGIN = 0.01


def first_stop(stat: np.ndarray, threshold: float, before: np.ndarray | None = None) -> np.ndarray:
    """(B,) the column where each path stops: its first point with ``stat`` ≥ ``threshold`` (never when the
    threshold is ≥ 1) or with ``before`` True (points where the run stops anyway, e.g. on confidence), else its
    last point. stat : (B, S), NaN after a path's last point; before : (B, S) bool or None."""
    stat = np.asarray(stat, dtype=np.float64)
    if stat.ndim != 2 or stat.shape[1] < 1:
        raise ValueError(f"stat should be a (B, S) array with S >= 1, got shape {stat.shape}")
    ok = ~np.isnan(stat)
    last = np.where(ok.any(axis=1), stat.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), 0)  # the last non-NaN point
    hit = np.zeros(stat.shape, dtype=bool)
    if before is not None:
        before = np.asarray(before, dtype=bool)
        if before.shape != stat.shape:
            raise ValueError(f"before should have stat's shape {stat.shape}, got {before.shape}")
        hit |= ok & before
    if threshold < 1.0:
        hit |= ok & (np.nan_to_num(stat, nan=-np.inf) >= threshold)  # exactly the loop's comparison
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1), last)


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen on traced paths (:func:`choose_threshold`).

    threshold : the chosen one (1.0: none passed, the stop never fires). margin : the share of paths allowed to
    end on another label. agreement : the share that end on the same label at it; n_images : paths. mean_q,
    mean_q_without : mean prompts spent with the stop at ``threshold`` and without it. table : ((threshold,
    agreement, mean_q), ...) for every threshold tried, then 1.0.
    """

    threshold: float
    margin: float
    agreement: float
    n_images: int
    mean_q: float
    mean_q_without: float
    table: tuple

    @property
    def saves_nothing(self) -> bool:
        """True when the choice is 1 although the thresholds at the top of the grid kept the labels: the smallest
        from which on every one does saved no prompt on the paths (e.g. a budget that affords no question), so 1
        for want of a saving, not of agreement or of paths."""
        below = self.table[:-1]
        return (self.threshold >= 1.0 and self.n_images > 0 and bool(below)
                and below[-1][1] >= 1.0 - self.margin - 1e-12)


def thresholds_tried(grid) -> list[float]:
    """The thresholds a choice tries: those of ``grid`` below 1, ascending and once each, then 1 (never)."""
    return sorted({float(t) for t in grid if float(t) < 1.0}) + [1.0]


def smallest_passing(ok: list[bool], mean_q: list[float], mean_q_without: float) -> int:
    """The index into :func:`thresholds_tried` of the threshold to take: the smallest from which on every one
    passes (``ok``; the last, 1, always counts as passing), unless it saves no prompt (its ``mean_q`` not below
    ``mean_q_without``): then the last, never. ok, mean_q : one per threshold tried."""
    j = len(ok) - 1
    while j > 0 and ok[j - 1]:
        j -= 1
    return j if mean_q[j] < mean_q_without - 1e-9 else len(ok) - 1


def choose_threshold(stat: np.ndarray, label: np.ndarray, q: np.ndarray, *, grid=SETTLE_GRID,
                     margin: float = STOP_MARGIN, before: np.ndarray | None = None) -> ThresholdChoice:
    """The smallest threshold on ``grid`` from which on every threshold on the grid leaves at least 1 − ``margin``
    of the paths on the label they end with without this stop (at their first ``before`` point, else their last);
    1 (never) without any path.

    "From which on": agreement is not monotone in the threshold (one image more or less), and the smallest
    threshold that passes once may pass by luck; requiring every larger one to pass too does not. Then the stopped
    accuracy is within ``margin`` of the accuracy without the stop, whichever way the changed labels go. A
    threshold that saves no prompt on the paths (mean Q not below the mean without the stop) is not taken either:
    no evidence that it pays, so 1 (:attr:`ThresholdChoice.saves_nothing` says which reason).

    stat, q : (B, S) float, label : (B, S) int, before : (B, S) bool or None — see the module docstring.
    """
    stat = np.asarray(stat, dtype=np.float64)
    label, q = np.asarray(label), np.asarray(q, dtype=np.float64)
    if not (stat.ndim == 2 and stat.shape == label.shape == q.shape and stat.shape[1] >= 1):
        raise ValueError(f"stat, label and q should be (B, S) arrays of one shape, got {stat.shape}, {label.shape} "
                         f"and {q.shape}")
    if not 0.0 <= float(margin) < 1.0:
        raise ValueError(f"margin == {margin!r}, must be in [0, 1)")
    B = stat.shape[0]
    rows = np.arange(B)
    base = first_stop(stat, 1.0, before)
    mean_q_without = float(q[rows, base].mean()) if B else 0.0
    table = []
    for t in thresholds_tried(grid):
        at = first_stop(stat, t, before)
        agree = float((label[rows, at] == label[rows, base]).mean()) if B else 1.0
        table.append((t, agree, float(q[rows, at].mean()) if B else 0.0))
    ok = [bool(B) and a >= 1.0 - margin - 1e-12 for _, a, _ in table]  # no path, no evidence: never
    t, agree, mq = table[smallest_passing(ok, [m for _, _, m in table], mean_q_without)]
    return ThresholdChoice(threshold=t, margin=float(margin), agreement=agree, n_images=int(B), mean_q=mq,
                           mean_q_without=mean_q_without, table=tuple(table))


def hindsight_stop(label: np.ndarray) -> np.ndarray:
    """(B,) each path's first column whose label is the label of its last point (-1 pads after the last point, as
    in :class:`StopPaths`). A stop rule that ends every path on the label the path ends with cannot stop a path
    sooner, so the prompts spent there bound from below what any such rule spends along these paths (a rule would
    have to know the later answers to reach it). label : (B, S) int, at least one point per path (column 0)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.shape[1] < 1:
        raise ValueError(f"label should be a (B, S) array with S >= 1, got shape {label.shape}")
    B, S = label.shape
    if B == 0:
        return np.zeros(0, dtype=np.int64)
    if (label[:, 0] < 0).any():
        raise ValueError("every path needs its first point (column 0); a path of only -1 pads has no label")
    last = S - 1 - np.argmax(label[:, ::-1] >= 0, axis=1)
    final = label[np.arange(B), last]
    return np.argmax(label == final[:, None], axis=1)
