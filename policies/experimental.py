"""Policies measured by the benchmarks but not registered: ``--policy`` does not offer them until a
benchmark shows them paying (``bench.channels --predictive`` measures ``budget_plan``)."""

from __future__ import annotations

import numpy as np

from .base import Policy, PolicyState, masked_argmax, near_max

MAX_PLAN_GROUPS = 12  # budget_plan enumerates the 2^G subsets of groups up to this G; beyond, eig_per_prompt


def _subsets(n_groups: int) -> np.ndarray:
    """(2^G, G) float 0/1: every subset of the groups, one per row (row i holds the bits of i)."""
    return ((np.arange(2 ** n_groups)[:, None] >> np.arange(n_groups)[None, :]) & 1).astype(np.float64)


class BudgetPlanPolicy(Policy):
    """EIG per prompt inside the best affordable plan: a knapsack over the remaining budget.

    For each image, the set A of available groups with Σ_{g∈A} K_g ≤ budget_left that maximises Σ_{g∈A} EIG_g
    (the EIGs taken as additive: a one-step plan, no redundancy discount; ties to the cheaper set, then the
    first found), and from A the group with the highest EIG per prompt (ties: lowest index). Without a budget A
    is every available group, so it is ``eig_per_prompt``. Under a budget it stops spending the budget on one
    expensive group when two cheaper ones, together, are worth more (budget 21, K 10 + 11 against 14 + 8 that
    does not fit). Cost: one (n, G) @ (G, 2^G) matmul; G > MAX_PLAN_GROUPS falls back to ``eig_per_prompt``.
    """

    name = "budget_plan"
    any_backend = True

    def select(self, state: PolicyState) -> np.ndarray:
        xp, ch = state.xp, state.channel
        n, G = state.available.shape
        rate = state.eig / ch.sizes[None, :]
        if G > MAX_PLAN_GROUPS:
            return masked_argmax(rate, state.available, xp)
        sub = _subsets(G)  # (S, G)
        cost = xp.asarray(sub @ xp.to_host(ch.sizes).astype(np.float64))  # (S,)
        subs = xp.asarray(sub)
        fits = ((1.0 - xp.asarray(state.available)) @ subs.T < 0.5) & (cost[None, :] <= state.budget_left[:, None])
        value = xp.where(fits, state.eig @ subs.T, -np.inf)  # (n, S); the empty set always fits (value 0)
        # the best plan; among plans within the tie tolerance the cheapest (its cost decides), then the first
        best_cost = xp.where(near_max(value, fits, xp), cost[None, :], np.inf)
        plan = xp.argmax(best_cost <= xp.amax(-best_cost, axis=1, keepdims=True) * -1.0, axis=1)  # (n,)
        in_plan = (subs[plan] > 0.5) & state.available
        has = in_plan.any(axis=1)
        return masked_argmax(rate, xp.where(has[:, None], in_plan, state.available), xp)
