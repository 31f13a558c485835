"""The built-in question policies."""

from __future__ import annotations

import numpy as np

from .base import Policy, PolicyState, masked_argmax, near_max, register


@register
class FixedPolicy(Policy):
    """The system's own group order: the first available group."""

    name = "fixed"

    def select(self, state: PolicyState) -> np.ndarray:
        return np.argmax(state.available, axis=1)


def _hash_uniform(seed: int, images: np.ndarray, n_groups: int) -> np.ndarray:
    """Deterministic uniform keys in [0, 1) for (seed, image, group), shape (n, G) (splitmix64)."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + images.astype(np.uint64)[:, None] * np.uint64(0xBF58476D1CE4E5B9)
             + np.arange(n_groups, dtype=np.uint64)[None, :] * np.uint64(0x94D049BB133111EB))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@register
class RandomPolicy(Policy):
    """A random group order per image, seeded.

    Each image gets its own random permutation of the groups, fixed by
    (seed, image index), so its path does not depend on the other images in
    the batch or on the stopping threshold.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def select(self, state: PolicyState) -> np.ndarray:
        keys = _hash_uniform(self.seed, state.images, state.available.shape[1])
        return np.argmax(np.where(state.available, keys, -1.0), axis=1)


@register
class EIGPolicy(Policy):
    """Greedy maximum expected information gain."""

    name = "eig"

    def select(self, state: PolicyState) -> np.ndarray:
        return masked_argmax(state.eig, state.available)


@register
class EIGPerPromptPolicy(Policy):
    """EIG per prompt spent: EIG_g / K_g, so cheap questions win ties."""

    name = "eig_per_prompt"

    def select(self, state: PolicyState) -> np.ndarray:
        return masked_argmax(state.eig / state.channel.sizes[None, :], state.available)


@register
class Top2Policy(Policy):
    """The group that best separates the two most probable classes.

    Separation is the total-variation distance between the two classes'
    answer distributions in the group; ties go to the higher EIG, then the
    lower index.
    """

    name = "top2"

    def select(self, state: PolicyState) -> np.ndarray:
        ch = state.channel
        if ch.n_classes < 2:
            return masked_argmax(state.eig, state.available)
        # the two leaders; classes tied in probability (see near_max) go by class index
        rows = np.arange(state.post.shape[0])
        first = masked_argmax(state.post, np.ones(state.post.shape, dtype=bool))
        rest = np.ones(state.post.shape, dtype=bool)
        rest[rows, first] = False
        second = masked_argmax(state.post, rest)
        diff = np.abs(ch.P[first] - ch.P[second])  # (n, Q)
        tv = 0.5 * np.add.reduceat(diff, ch.offsets, axis=1)  # (n, G)
        # lexicographic: the best-separating groups (ties within tolerance), then the higher EIG among them
        return masked_argmax(state.eig, near_max(tv, state.available))
