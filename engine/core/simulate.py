"""A seeded simulator similarity source, for tests and benchmarks.

For image i of true class c and group g, the similarity to every prompt is
``base + noise·N(0, 1)``; the prompt of c's option (one drawn at random when
the rule accepts several) gets ``+ margin[g]`` on top. With probability
``wrong_rate[g]`` the margin goes to a random *other* option instead (the
model answers wrongly). A not-applicable group gets no standout option.

All of a group's similarities for the whole batch are drawn from a generator
seeded by (seed, group) the first time the group is asked, so an image's
answers do not depend on the order in which groups are asked, nor on which
other images asked.
"""

from __future__ import annotations

import numpy as np

from systems.format import AttributeSystem

BASE_SIMILARITY = 0.25


def _per_group(value: float | np.ndarray, n_groups: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n_groups,)).copy()
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


class SimulatedSource:
    """Simulated similarities for a batch of images with known true classes.

    Parameters
    ----------
    system : AttributeSystem
    true_classes : (B,) int, class index of each image.
    margin : float or (G,), default 0.05
        How far the true option's similarity stands out, per group (cosine units).
    noise : float, default 0.02
        Standard deviation of the Gaussian noise on every similarity.
    wrong_rate : float or (G,), default 0.0
        Probability that a group is answered with a wrong option.
    seed : int, default 0
    """

    def __init__(self, system: AttributeSystem, true_classes: np.ndarray, *, margin=0.05,
                 noise: float = 0.02, wrong_rate=0.0, seed: int = 0):
        self.system = system
        self.true_classes = np.asarray(true_classes, dtype=np.int64)
        if self.true_classes.ndim != 1 or ((self.true_classes < 0) | (self.true_classes >= system.n_classes)).any():
            raise ValueError(f"true_classes should be (B,) class indices in 0..{system.n_classes - 1}")
        self.margin = _per_group(margin, system.n_groups, "margin")
        self.wrong_rate = _per_group(wrong_rate, system.n_groups, "wrong_rate")
        if ((self.wrong_rate < 0) | (self.wrong_rate > 1)).any():
            raise ValueError(f"wrong_rate must be in [0, 1], got {wrong_rate!r}")
        if noise < 0:
            raise ValueError(f"noise == {noise}, must be >= 0")
        self.noise = float(noise)
        self.seed = int(seed)
        self.n_images = len(self.true_classes)
        self.asked: list[tuple[int, np.ndarray]] = []
        self._drawn: dict[int, np.ndarray] = {}

    def _draw(self, g: int) -> np.ndarray:
        sys_ = self.system
        k = int(sys_.option_counts[g])
        o = int(sys_.offsets[g])
        rng = np.random.default_rng([self.seed, g])
        B = self.n_images
        sims = BASE_SIMILARITY + self.noise * rng.standard_normal((B, k))
        acc = sys_.rule_matrix[self.true_classes, o:o + k]  # (B, K) acceptable options
        u = rng.random((B, k))
        chosen = np.argmax(np.where(acc, u, -1.0), axis=1)  # uniform among acceptable
        wrong = rng.random(B) < self.wrong_rate[g]
        shift = rng.integers(1, max(k, 2), size=B)
        chosen = np.where(wrong & (k > 1), (chosen + shift) % k, chosen)
        applicable = acc.any(axis=1)
        sims[np.arange(B)[applicable], chosen[applicable]] += self.margin[g]
        return sims

    def similarities(self, images: np.ndarray, group: int, options: np.ndarray | None = None) -> np.ndarray:
        images = np.asarray(images, dtype=np.int64)
        self.asked.append((int(group), images.copy()))
        if group not in self._drawn:
            self._drawn[group] = self._draw(group)
        block = self._drawn[group][images]
        return block if options is None else block[:, np.asarray(options, dtype=np.int64)]


def heterogeneous_wrong_rates(n_groups: int, *, low: float = 0.0, high: float = 0.6, seed: int = 0) -> np.ndarray:
    """Per-group wrong-answer rates for a simulator whose groups are answered unequally well.

    Returns (G,) float: ``n_groups`` rates spread evenly over [low, high] (one group gets each), in an
    order drawn from ``seed``, so which groups are the unreliable ones is random but the spread is not.
    Pass it as ``SimulatedSource(..., wrong_rate=...)``; a group with rate r gives its margin to a wrong
    option for a fraction r of the images.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low!r}, high={high!r}")
    n = int(n_groups)
    rates = np.linspace(low, high, n) if n > 1 else np.array([low] * n, dtype=np.float64)
    return np.random.default_rng([seed, 16]).permutation(rates)


def sample_classes(n_images: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """Balanced true classes: each class about n_images/n_classes times, shuffled."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n_images) % n_classes)
