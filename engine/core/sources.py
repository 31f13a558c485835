"""Similarity sources: where the adaptive loop gets image-prompt similarities.

The loop asks a source for one group at a time, and only for the images that
chose that group, so a source can embed a group's prompts lazily (the real
encoder source does; see ``engine.run.encoder_source``). The engine never reads a
group it has not asked.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from systems.format import AttributeSystem


@runtime_checkable
class SimilaritySource(Protocol):
    """Per-group similarities for a fixed batch of images.

    ``n_images`` is the batch size B. ``similarities(images, group)`` takes
    image indices (n,) into the batch and a group index g, and returns an
    (n, K_g) float array of cosine similarities to that group's prompts, in
    option order. With ``options`` (m,) it returns only those columns, (n, m):
    the shortlist question asks a few class names, not all of them.
    """

    n_images: int

    def similarities(self, images: np.ndarray, group: int, options: np.ndarray | None = None) -> np.ndarray: ...


class ArraySource:
    """A source over precomputed similarities (B, Q), concatenated by group.

    It records every group asked in ``asked`` as (group, image indices), so
    tests can prove the engine reads nothing it did not ask for.
    """

    def __init__(self, sims: np.ndarray, system: AttributeSystem):
        sims = np.asarray(sims, dtype=np.float64)
        if sims.ndim != 2 or sims.shape[1] != system.q_total:
            raise ValueError(f"sims should be (B, {system.q_total}) for system {system.name!r}, "
                             f"got shape {sims.shape}")
        self._sims = sims
        self._offsets = system.offsets
        self._sizes = system.option_counts
        self.n_images = sims.shape[0]
        self.asked: list[tuple[int, np.ndarray]] = []

    def similarities(self, images: np.ndarray, group: int, options: np.ndarray | None = None) -> np.ndarray:
        images = np.asarray(images, dtype=np.int64)
        self.asked.append((int(group), images.copy()))
        o = int(self._offsets[group])
        block = self._sims[images, o:o + int(self._sizes[group])]
        return block if options is None else block[:, np.asarray(options, dtype=np.int64)]
