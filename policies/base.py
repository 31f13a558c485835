"""The policy protocol and the registry by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from engine.common.plugins import POLICY_GROUP, load_plugins

from .arrays import HOST


class AnswerChannel(Protocol):
    """What a policy may read of the answer channel P(k | c) (``engine.core.scoring.Channel`` is one).

    Declared here, in the policies' own layer, so that no import, not even a type-only one, runs up to
    the core that calls them.

    P : (C, K) P(k | c), the options of every group concatenated (K = sum of sizes).
    H : (C, G) entropy of each class's answer to each group (nats).
    offsets, sizes : (G,) int64, where each group's options start in K, and how many there are.
    """

    P: np.ndarray
    H: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def cols(self, g: int) -> slice: ...

# Scores within TIE_RTOL of a row's best (relative; TIE_ATOL near 0) count as ties, broken by the lowest
# group index. A batched matmul rounds an image's EIG differently from the same image alone, in the last
# bits; a tolerance absorbs that wherever two groups are really equal. (Rounding to a fixed number of
# decimals did not: two equal values on either side of a rounding boundary round apart.) A path can
# still depend on the batch if two groups' scores differ by about the tolerance itself.
TIE_RTOL = 1e-9
TIE_ATOL = 1e-12


@dataclass(frozen=True)
class PolicyState:
    """What a policy sees for the n images that still need a question.

    post : (n, C) posterior over classes.
    eig : (n, G) expected information gain of every group (nats): the answer channel's, or the answer model's
        predictive EIG when it has one; for a policy with ``reads_model_eig = True`` and a model with its own
        information (the Gaussian few-shot posterior), that.
    available : (n, G) bool, unasked groups that fit the remaining budget;
        every row has at least one True.
    budget_left : (n,) float, prompts left (inf without a budget).
    images : (n,) int, the images' indices in the batch.
    channel : the answer channel (:class:`AnswerChannel`: sizes, P(k|c)).
    xp : the array operations of these arrays (:mod:`policies.arrays`): numpy by default; the adaptive
        loop passes its backend's, so that a policy written over ``xp`` runs on torch tensors as well.
    gain : (n, G) expected accuracy gain of every group (the top class's expected rise in probability if it is
        asked), or None: the loop computes it only for a policy with ``reads_gain = True``, under the answer
        model's own predictive when it has one (the Gaussian few-shot posterior), else under the answer channel
        (hard answers; also with an LR few-shot posterior, whose answers it then only approximates).
    """

    post: np.ndarray
    eig: np.ndarray
    available: np.ndarray
    budget_left: np.ndarray
    images: np.ndarray
    channel: AnswerChannel
    xp: Any = HOST
    gain: Any = None


class Policy(ABC):
    """Picks the next group for every image. Parameters are set in ``__init__``; no state between calls.

    ``any_backend``: set True on a class whose ``select`` uses only ``state.xp`` and operators, so the
    torch backend of the loop hands it tensors; any other ``select`` gets numpy arrays (a host copy).
    See :func:`on_any_backend`. ``reads_eig``: False on a class that never reads ``state.eig`` (the loop may then
    skip an answer model's costly information gain); ``reads_gain``: True on one that reads ``state.gain`` (the
    loop computes it only then); ``reads_model_eig``: True on one whose ``state.eig`` should be the answer model's
    own information where it has one (a Gaussian few-shot posterior's ``own_information``) instead of the
    channel's or the predictive's EIG.
    """

    name: ClassVar[str]
    any_backend: ClassVar[bool] = False
    reads_eig: ClassVar[bool] = True
    reads_gain: ClassVar[bool] = False
    reads_model_eig: ClassVar[bool] = False

    @abstractmethod
    def select(self, state: PolicyState) -> np.ndarray:
        """(n,) int: one available group per image."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def _check_plugin(name: str, obj: object) -> str | None:
    if not (isinstance(obj, type) and issubclass(obj, Policy)):
        return f"it is a {type(obj).__name__}, not a policies.Policy subclass"
    if name in POLICIES and POLICIES[name] is not obj:
        return f"the name {name!r} is taken by a built-in policy"
    return None


def load_plugin_policies() -> None:
    """Register the policies of the ``twentyq.policies`` entry points (once; see :mod:`engine.common.plugins`)."""
    for name, cls in load_plugins(POLICY_GROUP, _check_plugin).items():
        POLICIES.setdefault(name, cls)


def list_policies() -> list[str]:
    """Every policy name: the built-ins and those of installed plug-ins."""
    load_plugin_policies()
    return sorted(POLICIES)


def get_policy(name: str | Policy, **params) -> Policy:
    """A policy by name (``get_policy("eig")``), or the policy object itself."""
    if isinstance(name, Policy):
        return name
    load_plugin_policies()
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {list_policies()}") from None
    return cls(**params)


def on_any_backend(policy: Policy) -> bool:
    """Whether ``policy.select`` may be given the loop backend's arrays: the class that defines the
    ``select`` that runs says so (``any_backend = True``; a subclass that overrides ``select`` without
    saying so is not), or, for a policy that delegates, a method ``any_backend(self)`` answers."""
    owner = next(c for c in type(policy).__mro__ if "select" in vars(c))
    flag = vars(owner).get("any_backend", False)
    return bool(flag(policy)) if callable(flag) else bool(flag)


def near_max(score: np.ndarray, available: np.ndarray, xp: Any = HOST) -> np.ndarray:
    """(n, G) bool: the available entries tied with their row's best, within TIE_RTOL / TIE_ATOL.

    score : (n, G) finite; available : (n, G) bool with a True in every row; xp : their array operations.
    """
    s = xp.where(available, score, -np.inf)
    best = xp.amax(s, axis=1, keepdims=True)
    return available & (s >= best - (TIE_ATOL + TIE_RTOL * abs(best)))


def masked_argmax(score: np.ndarray, available: np.ndarray, xp: Any = HOST) -> np.ndarray:
    """Row-wise argmax over available groups; ties (see :func:`near_max`) -> lowest index. (n, G) -> (n,)."""
    return xp.argmax(near_max(score, available, xp), axis=1)
