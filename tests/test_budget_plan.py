"""policies.experimental.BudgetPlanPolicy: EIG per prompt inside the best plan the remaining budget pays for."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.scoring import build_channel
from policies import PolicyState, get_policy
from policies.experimental import BudgetPlanPolicy


def channel_of(sizes):
    sizes = np.asarray(sizes, dtype=np.int64)
    r = np.zeros((2, int(sizes.sum())), dtype=bool)
    off = np.r_[0, np.cumsum(sizes)[:-1]]
    r[:, off] = True
    return build_channel(r, sizes, 0.05)


def state(eig, avail, left, sizes):
    eig = np.atleast_2d(np.asarray(eig, dtype=float))
    n = eig.shape[0]
    return PolicyState(post=np.full((n, 2), 0.5), eig=eig, available=np.atleast_2d(np.asarray(avail, dtype=bool)),
                       budget_left=np.asarray(left, dtype=float).reshape(n), images=np.arange(n),
                       channel=channel_of(sizes))


SIZES = (10, 13, 14, 11, 8)


def test_two_cheap_groups_beat_one_dear_one_under_a_budget():
    """Budget 21: g2 (K 14) has the best EIG alone, but g0 + g3 (K 10 + 11 = 21) are worth more together; the plan
    is {g0, g3} and its better rate, g3 (0.6/11 > 0.5/10), goes first. Without a budget it is eig_per_prompt."""
    eig = [0.5, 0.6, 0.9, 0.6, 0.2]
    st_ = state(eig, [True] * 5, [21.0], SIZES)
    assert BudgetPlanPolicy().select(st_).tolist() == [3]
    assert get_policy("eig").select(st_).tolist() == [2]
    free = state(eig, [True] * 5, [np.inf], SIZES)
    assert BudgetPlanPolicy().select(free).tolist() == get_policy("eig_per_prompt").select(free).tolist()


@st.composite
def problems(draw):
    G = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(1, 6), min_size=G, max_size=G))
    n = draw(st.integers(1, 5))
    eig = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.7, 1.2]), min_size=n * G, max_size=n * G)))
    avail = np.array(draw(st.lists(st.booleans(), min_size=n * G, max_size=n * G))).reshape(n, G)
    left = np.array(draw(st.lists(st.sampled_from([1.0, 3.0, 6.0, 9.0, np.inf]), min_size=n, max_size=n)))
    sizes_a = np.array(sizes, dtype=float)
    # every row has an available group the budget pays for (what the loop guarantees)
    for i in range(n):
        ok = avail[i] & (sizes_a <= left[i])
        if not ok.any():
            g = int(np.argmin(sizes_a))
            avail[i, g] = True
            left[i] = max(left[i], sizes_a[g])
    avail &= sizes_a[None, :] <= left[:, None]
    return eig.reshape(n, G), avail, left, sizes


@settings(max_examples=150, deadline=None)
@given(problems())
def test_the_choice_belongs_to_a_best_affordable_plan_and_has_its_best_rate(pb):
    """Brute force over subsets: the chosen group is available, lies in a plan of maximal total EIG within the
    budget, and no group of that plan has a clearly higher EIG per prompt."""
    eig, avail, left, sizes = pb
    choice = BudgetPlanPolicy().select(state(eig, avail, left, sizes))
    G = len(sizes)
    for i, g in enumerate(choice):
        assert avail[i, g]
        plans = [A for r in range(G + 1) for A in itertools.combinations(range(G), r)
                 if all(avail[i, a] for a in A) and sum(sizes[a] for a in A) <= left[i]]
        best = max(sum(eig[i, a] for a in A) for A in plans)
        holders = [A for A in plans if sum(eig[i, a] for a in A) >= best - 1e-9 and g in A]
        assert holders or best <= 1e-12, (i, g, best)
        if holders:
            assert any(all(eig[i, g] / sizes[g] >= eig[i, a] / sizes[a] - 1e-9 for a in A) for A in holders)


def test_runs_on_the_torch_backend_with_the_numpy_choices():
    pytest.importorskip("torch")
    from engine.torch_backend import TorchArrays

    rng = np.random.default_rng(0)
    n, G = 40, 5
    eig = rng.uniform(0, 1, (n, G))
    avail = rng.uniform(size=(n, G)) < 0.8
    avail[:, 4] = True
    left = rng.choice([8.0, 21.0, 30.0, np.inf], n)
    st_np = state(eig, avail, left, SIZES)
    xp = TorchArrays("cpu")
    st_t = PolicyState(post=xp.asarray(st_np.post), eig=xp.asarray(eig), available=xp.asarray(avail) > 0.5,
                       budget_left=xp.asarray(left), images=xp.asindex(np.arange(n)), channel=xp.channel(st_np.channel),
                       xp=xp)
    np.testing.assert_array_equal(xp.to_host(BudgetPlanPolicy().select(st_t)), BudgetPlanPolicy().select(st_np))
