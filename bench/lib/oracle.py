"""The oracle: a question order that knows each image's true class (the upper bound the policy benchmarks draw)."""

from __future__ import annotations

import numpy as np

from policies import Policy, PolicyState
from systems import AttributeSystem

def oracle_orders(system: AttributeSystem, truth: np.ndarray) -> np.ndarray:
    """Per-image group order of the oracle.

    truth : (B,) true class indices. Returns (B, G) int: for each image, the
    groups in the order the oracle asks them. Greedy: the next group is the one
    that rules out the most classes still consistent with the true class's
    answers (a class c' is ruled out by g when R_g(c') and R_g(c) are disjoint
    and both applicable); ties go to the smaller K_g, then the lower index.
    Groups that rule nothing out follow in system order.
    """
    C_, G = system.n_classes, system.n_groups
    K = system.option_counts
    # disjoint[g, c, c'] : g tells c from c'
    disjoint = np.zeros((G, C_, C_), dtype=bool)
    for g in range(G):
        cols = system.rule_matrix[:, system.offsets[g]:system.offsets[g] + K[g]]
        app = cols.any(axis=1)
        overlap = (cols.astype(int) @ cols.T.astype(int)) > 0
        disjoint[g] = ~overlap & app[:, None] & app[None, :]
    per_class = np.zeros((C_, G), dtype=np.int64)
    for c in range(C_):
        alive = np.ones(C_, dtype=bool)
        alive[c] = False
        left = list(range(G))
        order = []
        while left:
            gains = [int((disjoint[g, c] & alive).sum()) for g in left]
            best = max(range(len(left)), key=lambda i: (gains[i], -K[left[i]], -left[i]))
            if gains[best] == 0:
                order += left
                break
            g = left.pop(best)
            order.append(g)
            alive &= ~disjoint[g, c]
        per_class[c] = order
    return per_class[np.asarray(truth, dtype=np.int64)]


class OraclePolicy(Policy):
    """Asks groups in :func:`oracle_orders` order (first available one). Not registered."""

    name = "oracle"

    def __init__(self, orders: np.ndarray):
        self.orders = np.asarray(orders, dtype=np.int64)

    def select(self, state: PolicyState) -> np.ndarray:
        ords = self.orders[state.images]  # (n, G)
        avail = np.take_along_axis(state.available, ords, axis=1)
        return ords[np.arange(len(ords)), np.argmax(avail, axis=1)]
