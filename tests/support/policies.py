"""Which registered policies a policy sweep in the tests covers."""

from __future__ import annotations

import numpy as np

from engine.core.scoring import expected_accuracy_gain, expected_information_gain
from policies import PolicyState, list_policies

#: policies that, with no calibration (no fitted order, no recorded choice), ask exactly as ``fixed`` does
#: (policies/builtin.py; checked by tests/test_engine.py)
FIXED_WITHOUT_CALIBRATION = frozenset({"dev-order", "auto"})


def distinct_policies() -> list[str]:
    """Every registered policy that is not ``fixed`` in disguise without a calibration: what a test sweeps."""
    return [p for p in list_policies() if p not in FIXED_WITHOUT_CALIBRATION]


def policy_state(ch, post, *, eig=None, available=None, budget_left=None) -> PolicyState:
    """The PolicyState of n images with posteriors ``post`` (n, C) under channel ``ch``: EIG from the channel
    unless given, the channel's expected accuracy gain, every group available and no budget unless given."""
    n = post.shape[0]
    return PolicyState(post=post, eig=expected_information_gain(post, ch) if eig is None else eig,
                       available=np.ones((n, ch.n_groups), bool) if available is None else available,
                       budget_left=np.full(n, np.inf) if budget_left is None else budget_left,
                       images=np.arange(n), channel=ch, gain=expected_accuracy_gain(post, ch))


def walk_paths(res, system, post, sims):
    """Yield (i, step, g, asked, log_post) for every step of every Result in ``res`` (the loop run with a
    conditional answer model ``post`` over ``sims``): the group index g the step asked, the set asked before it
    (G,) bool (a copy) and the model's posterior then (1, C), without any caller's prior."""
    names = [g.name for g in system.groups]
    for i, r in enumerate(res):
        asked = np.zeros(len(names), bool)
        for step in r.steps:
            g = names.index(step.group)
            yield i, step, g, asked.copy(), post.log_posterior(sims[i:i + 1], asked[None])
            asked[g] = True


def assert_greedy_paths(res, system, post, sims, budget: float, rate, tol: float = 1e-9) -> int:
    """Replay each Result's path in ``res`` (:func:`walk_paths`): before every step, ``rate(log_post (1, C), asked
    (G,), i)`` -> (G,) scores; the group asked must be the lowest index among the affordable unasked groups within
    ``tol`` of the best. Returns the steps checked."""
    sizes = np.asarray(system.option_counts)
    checked = 0
    for i, step, g, asked, lp in walk_paths(res, system, post, sims):
        score = np.asarray(rate(lp, asked.copy(), i), dtype=np.float64)
        ok = ~asked & (sizes <= budget - sizes[asked].sum())
        best = score[ok].max()
        assert g == min(h for h in np.nonzero(ok)[0] if score[h] >= best - tol * max(1.0, abs(best))), (i, step)
        checked += 1
    return checked
