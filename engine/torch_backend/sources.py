"""Similarity sources for the torch loop: similarities as tensors on a device.

A *device source* is a :class:`engine.core.sources.SimilaritySource` that also has ``device``
(a torch.device) and ``similarities_t(images, group, options=None)``: the same block as
``similarities`` but taking an (n,) int64 tensor of image indices on that device and returning an
(n, K_g) (or (n, m)) float tensor there, so the loop never copies similarities to the host.
:class:`TensorSource` is the device twin of :class:`engine.core.sources.ArraySource`;
``engine.run.encoder_source.EncoderSource`` is one too. Any other source runs through
:class:`HostSource`, which calls its numpy ``similarities`` and moves the block to the loop's device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from systems.format import AttributeSystem


def is_device_source(source: Any) -> bool:
    """True when ``source`` offers tensors on a device (``device`` and ``similarities_t``)."""
    return isinstance(getattr(source, "device", None), torch.device) and callable(getattr(source, "similarities_t", None))


class HostSource:
    """A numpy source seen as a device source on ``device`` (CPU by default): each block is
    computed by the wrapped source and copied to the device. ``asked`` and any other bookkeeping
    of the wrapped source happen as usual."""

    def __init__(self, source: Any, device: torch.device | str = "cpu"):
        self.source = source
        self.n_images = int(source.n_images)
        self.device = torch.device(device)

    def similarities_t(self, images: torch.Tensor, group: int, options: torch.Tensor | None = None) -> torch.Tensor:
        opts = None if options is None else options.cpu().numpy()
        block = np.asarray(self.source.similarities(images.cpu().numpy(), group, options=opts), dtype=np.float64)
        return torch.as_tensor(block, device=self.device)


class TensorSource:
    """Precomputed similarities (B, Q) as a tensor, concatenated by group; the blocks stay on its device.

    It records every group asked in ``asked`` as (group, image index tensor), as ArraySource does.
    """

    def __init__(self, sims: torch.Tensor | np.ndarray, system: AttributeSystem, device: torch.device | str | None = None):
        sims = torch.as_tensor(sims)
        if device is not None:
            sims = sims.to(device)
        if sims.ndim != 2 or sims.shape[1] != system.q_total:
            raise ValueError(f"sims should be (B, {system.q_total}) for system {system.name!r}, "
                             f"got shape {tuple(sims.shape)}")
        self._sims = sims
        self._off = [int(o) for o in system.offsets]
        self._k = [int(k) for k in system.option_counts]
        self.n_images = int(sims.shape[0])
        self.device = sims.device
        self.asked: list[tuple[int, torch.Tensor]] = []

    def similarities_t(self, images: torch.Tensor, group: int, options: torch.Tensor | None = None) -> torch.Tensor:
        self.asked.append((int(group), images))
        o = self._off[group]
        block = self._sims.index_select(0, images)[:, o:o + self._k[group]]
        return block if options is None else block.index_select(1, options)

    def similarities(self, images: np.ndarray, group: int, options: np.ndarray | None = None) -> np.ndarray:
        """The numpy face of the same source (so the numpy loop can run on it too)."""
        idx = torch.as_tensor(np.asarray(images, dtype=np.int64), device=self.device)
        opts = None if options is None else torch.as_tensor(np.asarray(options, dtype=np.int64), device=self.device)
        return self.similarities_t(idx, group, opts).double().cpu().numpy()
