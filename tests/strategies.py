"""Hypothesis strategies: rule tables, systems, similarities, posteriors, confusion matrices."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from systems.format import AttributeSystem, Group

FINITE = st.floats(-1.0, 1.0, allow_nan=False, width=64)
# Similarities drawn from a few values produce exact ties often.
TIED = st.sampled_from([-0.5, 0.0, 0.25, 0.25, 0.5])


@st.composite
def rule_tables(draw, max_classes=7, max_groups=4, min_k=1, max_k=5, multi=True, not_applicable=True):
    """(rules, sizes): rules[c][g] is a frozenset of option indices (empty = not applicable)."""
    C = draw(st.integers(1, max_classes))
    G = draw(st.integers(1, max_groups))
    sizes = draw(st.lists(st.integers(min_k, max_k), min_size=G, max_size=G))
    rules = []
    for _ in range(C):
        row = []
        for k in sizes:
            kind = draw(st.sampled_from(["one", "one", "one"] + (["multi"] if multi else [])
                                        + (["na"] if not_applicable else [])))
            if kind == "na":
                row.append(frozenset())
            elif kind == "multi" and k > 1:
                row.append(frozenset(draw(st.sets(st.integers(0, k - 1), min_size=2, max_size=k))))
            else:
                row.append(frozenset([draw(st.integers(0, k - 1))]))
        rules.append(tuple(row))
    return tuple(rules), np.array(sizes, dtype=np.int64)


def make_system(rules, sizes, name="gen") -> AttributeSystem:
    """An AttributeSystem (built in code, so K=1 groups are allowed) from a rule table."""
    groups = tuple(Group(name=f"g{g}", template=f"q{g} {{}}", options=tuple(f"o{g}_{k}" for k in range(k_)))
                   for g, k_ in enumerate(sizes))
    classes = tuple(f"c{c}" for c in range(len(rules)))
    return AttributeSystem(name=name, classes=classes, groups=groups, rules=tuple(rules))


@st.composite
def systems(draw, min_k=2, **kw):
    rules, sizes = draw(rule_tables(min_k=min_k, **kw))
    return make_system(rules, sizes)


@st.composite
def similarity_arrays(draw, n_images, n_cols):
    elements = draw(st.sampled_from([FINITE, TIED]))
    return draw(arrays(np.float64, (n_images, n_cols), elements=elements))


LOGIT_SCALES = st.one_of(st.sampled_from([1.0, 100.0, 1e4]), st.floats(1e-3, 1e4))
EPS = st.one_of(st.just(0.0), st.floats(0.0, 0.99))


@st.composite
def posteriors(draw, n_classes, n_rows=1):
    """(n_rows, n_classes) probability rows, some with zeros and one-hots."""
    kind = draw(st.sampled_from(["dense", "sparse", "onehot", "uniform"]))
    if kind == "uniform":
        return np.full((n_rows, n_classes), 1.0 / n_classes)
    if kind == "onehot":
        idx = draw(st.lists(st.integers(0, n_classes - 1), min_size=n_rows, max_size=n_rows))
        return np.eye(n_classes)[idx]
    w = draw(arrays(np.float64, (n_rows, n_classes), elements=st.floats(0.0, 10.0)))
    if kind == "sparse":
        mask = draw(arrays(bool, (n_rows, n_classes)))
        w = w * mask
    w[w.sum(axis=1) == 0, 0] = 1.0
    return w / w.sum(axis=1, keepdims=True)


def rule_matrix(rules, sizes) -> np.ndarray:
    return make_system(rules, sizes).rule_matrix


def _row_stochastic(draw, k):
    w = draw(arrays(np.float64, (k, k), elements=st.floats(0.0, 5.0)))
    w[w.sum(axis=1) == 0, 0] = 1.0
    return w / w.sum(axis=1, keepdims=True)


@st.composite
def confusion_sets(draw, system):
    """One entry per group: None (the ε channel) or a random row-stochastic (K, K) matrix."""
    return [draw(st.sampled_from([None, "m"])) and _row_stochastic(draw, int(k)) for k in system.option_counts]
