"""How the torch backend runs a policy: on tensors where the policy allows it, else on a host copy.

A policy stays what :mod:`policies` says: an object with one method, ``select``. The built-ins (all but
``lookahead``) are written over ``state.xp`` (:func:`policies.base.on_any_backend`), so the torch
backend hands them a :class:`policies.PolicyState` of tensors on the device with ``xp`` the
:class:`engine.torch_backend.arrays.TorchArrays` and ``channel`` its ``TorchChannel``. Any other policy
(``lookahead``, a plug-in) runs its own numpy ``select`` on a host copy of the state
(:func:`host_select`), so every policy works on every device; a plug-in written for numpy only can
add a tensor version with ``@torch_policy(MyPolicy)`` (looked up by exact class).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from policies import Policy, PolicyState
from policies.base import on_any_backend

TorchSelect = Callable[[Policy, PolicyState], torch.Tensor]
TORCH_POLICIES: dict[type, TorchSelect] = {}


def torch_policy(cls: type) -> Callable[[TorchSelect], TorchSelect]:
    """Register ``fn(policy, state) -> (n,) int64 tensor`` as the tensor version of policy class ``cls``."""
    def deco(fn: TorchSelect) -> TorchSelect:
        TORCH_POLICIES[cls] = fn
        return fn
    return deco


def host_select(policy: Policy, st: PolicyState) -> torch.Tensor:
    """Any policy's own numpy ``select``, on a host copy of the state; the choice goes back to the device."""
    state = PolicyState(post=st.post.cpu().numpy(), eig=st.eig.cpu().numpy(), available=st.available.cpu().numpy(),
                        budget_left=st.budget_left.cpu().numpy(), images=st.images.cpu().numpy(),
                        channel=st.channel.channel, gain=None if st.gain is None else st.gain.cpu().numpy())
    return torch.as_tensor(np.asarray(policy.select(state), dtype=np.int64), device=st.images.device)


def select(policy: Policy, st: PolicyState) -> torch.Tensor:
    """(n,) int64 on the device: the policy's ``select`` on the tensors when it is written over ``xp``,
    else its registered tensor version, else its numpy ``select`` on a host copy."""
    if on_any_backend(policy):
        return policy.select(st)
    fn = TORCH_POLICIES.get(type(policy))
    return fn(policy, st) if fn is not None else host_select(policy, st)
