"""The scoring maths of :mod:`engine.core.scoring`, as torch operations on the similarities' device.

Same notation and shapes (B images, C classes, G groups, K_g options, Q = Σ K_g); each function
here is the torch twin of the numpy function of the same name and agrees with it to float64
rounding (tests/test_torch_engine.py). Nothing here validates its inputs: the loop checks them once
with the numpy core (:func:`engine.core.adaptive.loop_setup`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.core.scoring import SHORTLIST_RTOL, Channel
from engine.core.scoring import entropy as np_entropy

_UNDERFLOW = 1e-250  # as engine.core.scoring: a likelihood this small is recomputed in log space


@dataclass(frozen=True)
class TorchChannel:
    """A :class:`engine.core.scoring.Channel` as tensors on one device (read from its fields only).

    P, A : (C, Q); logP : (C, Q) log P (-inf where P is 0); H : (C, G); seg : (Q, G) the 0/1
    matrix of which group each column belongs to (a segment sum is ``x @ seg``); sizes, offsets :
    (G,) int64 tensors and ``k``, ``off`` the same as Python ints; channel : the numpy original.
    """

    P: torch.Tensor
    logP: torch.Tensor
    H: torch.Tensor
    A: torch.Tensor
    seg: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    k: tuple[int, ...]
    off: tuple[int, ...]
    channel: Channel

    @classmethod
    def of(cls, ch: Channel, device: torch.device, dtype: torch.dtype = torch.float64) -> "TorchChannel":
        def t(a):
            return torch.tensor(np.asarray(a, dtype=np.float64), device=device, dtype=dtype)

        sizes = np.asarray(ch.sizes, dtype=np.int64)
        seg = np.repeat(np.eye(len(sizes)), sizes, axis=0)  # (Q, G)
        P = t(ch.P)
        return cls(P=P, logP=torch.log(P), H=t(ch.H), A=t(ch.A), seg=t(seg),
                   sizes=torch.as_tensor(sizes, device=device), offsets=torch.as_tensor(ch.offsets, device=device),
                   k=tuple(int(k) for k in sizes), off=tuple(int(o) for o in ch.offsets), channel=ch)

    def cols(self, g: int) -> slice:
        return slice(self.off[g], self.off[g] + self.k[g])


# Row maxima are taken with ``amax`` and the softmax is written out: on the CPU, torch's ``max(dim)`` and
# ``log_softmax`` open a thread pool region even for a (3, 7) tensor, and on a loaded machine each call
# then waits milliseconds for a descheduled thread (measured: 14 ms against 2 µs for ``amax``).


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    """log Σ exp over each row, max-shifted (scipy's way, a non-finite max shifting by 0): (n, C) -> (n, 1)."""
    m = x.amax(dim=1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)
    return m + torch.log(torch.exp(x - m).sum(dim=1, keepdim=True))


def group_log_probs(sims: torch.Tensor, lam: float) -> torch.Tensor:
    """log softmax(λ·(s − max s)) per row: (n, K) -> (n, K). No overflow for finite input (see the numpy twin).

    Each row's shifted logits have max 0, so the normaliser is log Σ exp(z) with no second shift,
    the same operations as scipy's log_softmax."""
    z = lam * (sims - sims.amax(dim=1, keepdim=True))
    return z - torch.log(torch.exp(z).sum(dim=1, keepdim=True))


def bayes_loglik(log_p: torch.Tensor, P_g: torch.Tensor, logP_g: torch.Tensor) -> torch.Tensor:
    """log Σ_k p_g[k]·P(k | c): log_p (n, K), P_g and logP_g (C, K) -> (n, C).

    A max-shifted matmul; rows where it underflows are recomputed with logsumexp, as in numpy.
    """
    m = log_p.amax(dim=1, keepdim=True)
    lik = torch.exp(log_p - m) @ P_g.T
    out = m + torch.log(lik)
    bad = (lik < _UNDERFLOW).any(dim=1)
    if bool(bad.any()):
        out[bad] = torch.logsumexp(log_p[bad][:, None, :] + logP_g[None, :, :], dim=2)
    return out


def bayes_update(log_post: torch.Tensor, loglik: torch.Tensor) -> torch.Tensor:
    """(n, C) + (n, C) -> the normalised log posterior (n, C)."""
    x = log_post + loglik
    return x - logsumexp(x)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row: (n, C) -> (n,)."""
    return torch.special.entr(p).sum(dim=1)


def expected_information_gain(post: torch.Tensor, ch: TorchChannel) -> torch.Tensor:
    """EIG of every group: post (n, C) -> (n, G) nats, clipped at 0 (the numpy twin's formula)."""
    h_marg = torch.special.entr(post @ ch.P) @ ch.seg  # (n, G)
    return torch.clamp(h_marg - post @ ch.H, min=0.0)


def shortlist(post: torch.Tensor, m: int) -> torch.Tensor:
    """The m most probable classes per row, best first, ties within SHORTLIST_RTOL by class index.
    post (n, C) -> (n, min(m, C)) int64."""
    n, C = post.shape
    m = min(int(m), C)
    left = torch.ones_like(post, dtype=torch.bool)
    rows = torch.arange(n, device=post.device)
    out = torch.zeros((n, m), dtype=torch.int64, device=post.device)
    for j in range(m):
        s = torch.where(left, post, -math.inf)
        best = s.amax(dim=1, keepdim=True)
        pick = torch.argmax((left & (s >= best - SHORTLIST_RTOL * best.abs())).to(torch.uint8), dim=1)
        out[:, j] = pick
        left[rows, pick] = False
    return out


def shortlist_loglik(log_p: torch.Tensor, cand: torch.Tensor, n_classes: int, eps: float) -> torch.Tensor:
    """log-likelihood of every class for the names question: log_p, cand (n, m) -> (n, C)."""
    n, m = log_p.shape
    out = torch.full((n, n_classes), -math.log(m), dtype=log_p.dtype, device=log_p.device)
    named = math.log1p(-eps) + log_p
    if eps > 0:
        floor = eps / m
        named = torch.logaddexp(named, torch.full_like(named, math.log(floor) if floor > 0 else -math.inf))
    return out.scatter_(1, cand, named)


def shortlist_eig(post: torch.Tensor, cand: torch.Tensor, eps: float) -> torch.Tensor:
    """EIG (nats) of the names question: post (n, C), cand (n, m) -> (n,)."""
    m = cand.shape[1]
    pc = torch.gather(post, 1, cand)
    s = torch.clamp(pc.sum(dim=1, keepdim=True), max=1.0)
    marg = torch.clamp((1.0 - eps) * pc + eps / m * s + (1.0 - s) / m, min=0.0)
    row = np.full(m, eps / m)
    row[0] += 1.0 - eps
    h_cand = float(np_entropy(row))
    h_cond = s[:, 0] * h_cand + (1.0 - s[:, 0]) * math.log(m)
    return torch.clamp(entropy(marg) - h_cond, min=0.0)
