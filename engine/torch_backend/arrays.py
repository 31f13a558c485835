"""The torch backend of the adaptive loop: :mod:`engine.core.arrays`' operations on tensors on one device.

``classify_batch(source, ..., xp=TorchArrays.for_source(source))`` runs the one loop of
:mod:`engine.core.adaptive` with its state (log posterior, asked mask, Q, stop codes, the channel's
P, H, A) as tensors on the source's device; similarities come as tensors from the source
(``similarities_t``; a numpy source runs through :class:`HostSource` on the CPU) and never go to the
host; built-in policies run as tensor operations (:mod:`engine.torch_backend.policies`), any other on a
host copy of its state. The host still learns a few small things each round: whether any image is
left, which groups were chosen, whether the policy chose available groups, and whether any
likelihood underflowed (the exact log-space path).

Everything is float64 on every device: the property suite compares posteriors at 1e-9 and breaks
ties between groups within 1e-9 relative (policies.base.TIE_RTOL), which float32 (2^-24 ≈ 6e-8)
cannot honour, so a float32 loop would take other question paths than numpy. Similarities arrive
in the model's dtype and are upcast on the device, as numpy does.

Row maxima are taken with ``amax`` and the softmax is written out: on the CPU, torch's ``max(dim)``
and ``log_softmax`` open a thread pool region even for a (3, 7) tensor, and on a loaded machine each
call then waits milliseconds for a descheduled thread (measured: 14 ms against 2 µs for ``amax``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.core.scoring import Channel
from engine.torch_backend.policies import select
from engine.torch_backend.sources import HostSource, is_device_source

DTYPE = torch.float64
_DTYPES = {"float": DTYPE, "int": torch.int64, "bool": torch.bool}
_QUIET = nullcontext()


@dataclass(frozen=True)
class TorchChannel:
    """A :class:`engine.core.scoring.Channel` as tensors on one device.

    P, A : (C, Q); H : (C, G); seg : (Q, G) the 0/1 matrix of which group each column belongs to (a
    segment sum is ``x @ seg``); sizes, offsets : (G,) int64; channel : the numpy original.
    """

    P: torch.Tensor
    H: torch.Tensor
    A: torch.Tensor
    seg: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    channel: Channel

    @classmethod
    def of(cls, ch: Channel, device: torch.device) -> "TorchChannel":
        def t(a):
            return torch.tensor(np.asarray(a, dtype=np.float64), device=device, dtype=DTYPE)

        seg = np.repeat(np.eye(len(ch.sizes)), ch.sizes, axis=0)  # (Q, G)
        return cls(P=t(ch.P), H=t(ch.H), A=t(ch.A), seg=t(seg), sizes=torch.as_tensor(ch.sizes, device=device),
                   offsets=torch.as_tensor(ch.offsets, device=device), channel=ch)


class TorchArrays:
    """:class:`engine.core.arrays.Arrays` on torch tensors on ``device``, float64."""

    name = "torch"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cheap_sync = self.device.type == "cpu"  # on an accelerator, ``any`` waits for the device

    @classmethod
    def for_source(cls, source: Any) -> "TorchArrays":
        """On a device source's device; on the CPU for a numpy source."""
        return cls(source.device if is_device_source(source) else "cpu")

    def asarray(self, a):
        if type(a) is torch.Tensor and a.dtype is DTYPE:  # the loop's own arrays: already on its device
            return a
        return torch.as_tensor(a, dtype=DTYPE, device=self.device)

    def asindex(self, a):
        return torch.as_tensor(a, dtype=torch.int64, device=self.device)

    def array(self, a):
        return torch.tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE, device=self.device)

    def zeros(self, shape, dtype="float"):
        return torch.zeros(shape, dtype=_DTYPES[dtype], device=self.device)

    def full(self, shape, value, dtype="float"):
        return torch.full(shape if isinstance(shape, tuple) else (shape,), value, dtype=_DTYPES[dtype],
                          device=self.device)

    def to_host(self, x):
        return x.cpu().numpy()

    def to_float(self, x):
        return x.to(DTYPE)

    def any(self, x):
        return bool(x.any())

    def nonzero(self, mask):
        return torch.nonzero(mask).squeeze(1)

    def unique(self, x):
        return torch.unique(x)  # sorted

    def searchsorted(self, sorted_, x):
        return torch.searchsorted(sorted_, x)

    def concat(self, xs):
        return torch.cat(xs)

    def arange(self, n):
        return torch.arange(n, device=self.device)

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def errstate(self, **kw):
        return _QUIET  # torch does not warn on overflow, 0/0 or log(0)

    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    isfinite = staticmethod(torch.isfinite)
    entr = staticmethod(torch.special.entr)

    def amax(self, x, axis, keepdims=False):
        return x.amax(dim=axis, keepdim=keepdims)

    def argmax(self, x, axis):
        return torch.argmax(x.to(torch.uint8) if x.dtype == torch.bool else x, dim=axis)

    def maximum(self, x, lo):
        return torch.clamp(x, min=lo)

    def minimum(self, x, hi):
        return torch.clamp(x, max=hi)

    def logaddexp(self, x, c):
        return torch.logaddexp(x, torch.full_like(x, c))

    def logsumexp(self, x, axis, keepdims=False):
        """Max-shifted, a non-finite max shifting by 0 (scipy's way)."""
        m = x.amax(dim=axis, keepdim=True)
        m = torch.where(torch.isfinite(m), m, 0.0)
        out = m + torch.log(torch.exp(x - m).sum(dim=axis, keepdim=True))
        return out if keepdims else out.squeeze(axis)

    def log_softmax(self, x):
        """Over rows whose max is already 0 (scoring's shifted logits): z − log Σ exp z, no second shift,
        the same operations as scipy's log_softmax on them."""
        return x - torch.log(torch.exp(x).sum(dim=1, keepdim=True))

    def gather(self, x, idx):
        return torch.gather(x, 1, idx)

    def segment_sum(self, x, channel):
        return x @ channel.seg

    def channel(self, ch):
        return TorchChannel.of(ch, self.device)

    def source(self, source):
        return _DeviceBlocks(source if is_device_source(source) else HostSource(source, self.device), self.device)

    def select(self, policy, state):
        return select(policy, state).to(self.device, torch.int64)


class _DeviceBlocks:
    """A device source whose blocks come back as float64 tensors on the loop's device."""

    def __init__(self, source: Any, device: torch.device):
        self.source, self.device = source, device

    def similarities(self, images, group, options=None):
        if options is None:
            block = self.source.similarities_t(images, group)
        else:
            block = self.source.similarities_t(images, group, options=options)
        return block.to(self.device, DTYPE)


__all__ = ["DTYPE", "TorchArrays", "TorchChannel"]
