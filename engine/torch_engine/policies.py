"""Tensor versions of the built-in policies, and the host fallback for any other policy.

A policy stays what :mod:`policies` says: an object with one numpy method, ``select``. The torch
backend looks up ``type(policy)`` (exactly: a subclass that overrides ``select`` is not its parent)
in :data:`TORCH_POLICIES`; a hit runs as tensor operations on the device, a miss (a plug-in, or the
built-in `lookahead`, which has no tensor version yet) runs the policy's own ``select`` on a numpy
copy of the state (:func:`host_select`), so every policy works on every device. A plug-in can add
its own tensor version with ``@torch_policy(MyPolicy)``.

A tensor version takes ``(policy, state)``, ``state`` a :class:`TorchPolicyState`. Ties follow
:func:`policies.base.near_max` exactly: within TIE_RTOL of the row's best (TIE_ATOL near 0), lowest
index first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policies import Policy, PolicyState
from policies.base import TIE_ATOL, TIE_RTOL
from policies.builtin import (
    AutoPolicy, DevOrderPolicy, EIGPerPromptPolicy, EIGPolicy, FixedPolicy, RandomPolicy, Top2Policy,
)

@dataclass(frozen=True)
class TorchPolicyState:
    """:class:`policies.PolicyState` as tensors on the device, for n images.

    post (n, C), eig (n, G), available (n, G) bool, budget_left (n,) float, images (n,) int64
    (indices into the batch), channel : the ``engine.torch_engine.arrays.TorchChannel``, n_images :
    the batch's B, memo : a dict that lives for one run, where a tensor policy may keep what it
    computes once per batch.
    """

    post: torch.Tensor
    eig: torch.Tensor
    available: torch.Tensor
    budget_left: torch.Tensor
    images: torch.Tensor
    channel: Any
    n_images: int
    memo: dict


TorchSelect = Callable[[Policy, TorchPolicyState], torch.Tensor]
TORCH_POLICIES: dict[type, TorchSelect] = {}


def torch_policy(cls: type) -> Callable[[TorchSelect], TorchSelect]:
    """Register ``fn(policy, state) -> (n,) int64 tensor`` as the tensor version of policy class ``cls``."""
    def deco(fn: TorchSelect) -> TorchSelect:
        TORCH_POLICIES[cls] = fn
        return fn
    return deco


def near_max(score: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """(n, G) bool: available entries tied with their row's best (policies.base.near_max)."""
    s = torch.where(available, score, -torch.inf)
    best = s.amax(dim=1, keepdim=True)
    return available & (s >= best - (TIE_ATOL + TIE_RTOL * best.abs()))


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """(n, G) bool -> (n,) index of each row's first True (0 for a row without one, as np.argmax)."""
    return torch.argmax(mask.to(torch.uint8), dim=1)


def masked_argmax(score: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    return first_true(near_max(score, available))


@torch_policy(FixedPolicy)
def _fixed(policy: FixedPolicy, st: TorchPolicyState) -> torch.Tensor:
    return first_true(st.available)


@torch_policy(EIGPolicy)
def _eig(policy: EIGPolicy, st: TorchPolicyState) -> torch.Tensor:
    return masked_argmax(st.eig, st.available)


@torch_policy(EIGPerPromptPolicy)
def _eig_per_prompt(policy: EIGPerPromptPolicy, st: TorchPolicyState) -> torch.Tensor:
    return masked_argmax(st.eig / st.channel.sizes.to(st.eig.dtype)[None, :], st.available)


@torch_policy(RandomPolicy)
def _random(policy: RandomPolicy, st: TorchPolicyState) -> torch.Tensor:
    # the numpy policy's keys, made once per batch for all B images on the host and gathered per round
    key = ("random", policy.seed)
    if key not in st.memo:
        st.memo[key] = torch.as_tensor(policy.keys(np.arange(st.n_images), st.available.shape[1]),
                                       device=st.images.device)
    keys = st.memo[key].index_select(0, st.images)
    return torch.argmax(torch.where(st.available, keys, -1.0), dim=1)


@torch_policy(Top2Policy)
def _top2(policy: Top2Policy, st: TorchPolicyState) -> torch.Tensor:
    ch = st.channel
    if ch.P.shape[0] < 2:
        return masked_argmax(st.eig, st.available)
    every = torch.ones_like(st.post, dtype=torch.bool)
    first = masked_argmax(st.post, every)
    rows = torch.arange(st.post.shape[0], device=st.post.device)
    every[rows, first] = False
    second = masked_argmax(st.post, every)
    tv = 0.5 * ((ch.P[first] - ch.P[second]).abs() @ ch.seg)  # (n, G)
    return masked_argmax(st.eig, near_max(tv, st.available))


@torch_policy(DevOrderPolicy)
def _dev_order(policy: DevOrderPolicy, st: TorchPolicyState) -> torch.Tensor:
    if policy.order is None:
        return first_true(st.available)
    order = torch.as_tensor(policy.order, dtype=torch.int64, device=st.available.device)
    return order[first_true(st.available.index_select(1, order))]


@torch_policy(AutoPolicy)
def _auto(policy: AutoPolicy, st: TorchPolicyState) -> torch.Tensor:
    return select(policy.inner, st)  # the chosen policy's tensor version (or its host fallback)


def host_select(policy: Policy, st: TorchPolicyState) -> torch.Tensor:
    """Any policy's own numpy ``select``, on a host copy of the state; the choice goes back to the device."""
    state = PolicyState(post=st.post.cpu().numpy(), eig=st.eig.cpu().numpy(), available=st.available.cpu().numpy(),
                        budget_left=st.budget_left.cpu().numpy(), images=st.images.cpu().numpy(),
                        channel=st.channel.channel)
    return torch.as_tensor(np.asarray(policy.select(state), dtype=np.int64), device=st.images.device)


def select(policy: Policy, st: TorchPolicyState) -> torch.Tensor:
    """(n,) int64 on the device: the tensor version of ``policy`` when there is one, else the host fallback."""
    fn = TORCH_POLICIES.get(type(policy))
    return fn(policy, st) if fn is not None else host_select(policy, st)
