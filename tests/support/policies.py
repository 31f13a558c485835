"""Which registered policies a policy sweep in the tests covers."""

from __future__ import annotations

import numpy as np

from engine.core.scoring import expected_information_gain
from policies import PolicyState, list_policies

#: policies that, with no calibration (no fitted order, no recorded choice), ask exactly as ``fixed`` does
#: (policies/builtin.py; checked by tests/test_engine.py)
FIXED_WITHOUT_CALIBRATION = frozenset({"dev-order", "auto"})


def distinct_policies() -> list[str]:
    """Every registered policy that is not ``fixed`` in disguise without a calibration: what a test sweeps."""
    return [p for p in list_policies() if p not in FIXED_WITHOUT_CALIBRATION]


def policy_state(ch, post, *, eig=None, available=None, budget_left=None) -> PolicyState:
    """The PolicyState of n images with posteriors ``post`` (n, C) under channel ``ch``: EIG from the channel
    unless given, every group available and no budget unless given."""
    n = post.shape[0]
    return PolicyState(post=post, eig=expected_information_gain(post, ch) if eig is None else eig,
                       available=np.ones((n, ch.n_groups), bool) if available is None else available,
                       budget_left=np.full(n, np.inf) if budget_left is None else budget_left,
                       images=np.arange(n), channel=ch)
