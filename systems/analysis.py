"""What a system can and cannot tell apart (networkx).

Two notions, both over the rules alone (no model):

*Distinguishable* (under the Bayes channel the engine scores with). A class
c answers group g with P(k | c) = (1-ε)·1[k ∈ R_g(c)]/|R_g(c)| + ε/K_g, or
1/K_g when g does not apply to c (``engine.core.scoring``). Classes a and b
are **indistinguishable** when every group gives them the same answer
distribution, for every ε: the same set of acceptable options, where "not
applicable" counts as accepting all K_g options (both give the uniform
distribution). Then no answer, however good the model, moves the odds between
them. This is an equivalence relation, so the reported groups are exactly the
classes with the same canonical rule signature. A not-applicable rule is *not*
"the same option" as an applicable one: an answer the other class predicts is
evidence for it (before issue 14, a class with all-null rules was taken to
match every class, and linked, by transitivity, classes that colour rules
apart).

*Separated*. Group g **separates** a and b when it applies to both and their
acceptable sets are disjoint: a correct answer to g then rules one of them out
(its likelihood is only ε/K_g). Pairs that are distinguishable but that no
group separates are **weakly distinguishable**: the answers shift the odds
(a not-applicable or wider rule on one side) but never rule either out; they
are listed apart, as the pairs most likely to be confused. The minimal
separating set and ``pairs_separated`` use separation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import networkx as nx
import numpy as np

from systems.format import AttributeSystem


def separation_tensor(system: AttributeSystem) -> np.ndarray:
    """Bool array of shape (G, C, C): ``[g, a, b]`` is True when group g separates a and b."""
    m = system.rule_matrix.astype(np.int32)  # (C, Q)
    out = np.zeros((system.n_groups, system.n_classes, system.n_classes), dtype=bool)
    for g, (o, k) in enumerate(zip(system.offsets, system.option_counts)):
        seg = m[:, o:o + k]  # (C, K_g)
        applicable = seg.any(axis=1)
        overlap = (seg @ seg.T) > 0
        out[g] = applicable[:, None] & applicable[None, :] & ~overlap
    return out


def distinction_tensor(system: AttributeSystem) -> np.ndarray:
    """Bool array (G, C, C): ``[g, a, b]`` is True when group g gives a and b different answer distributions.

    That is when their acceptable option sets differ, a not-applicable rule
    counting as the full set (see the module docstring).
    """
    m = system.rule_matrix.astype(np.int32)  # (C, Q)
    out = np.zeros((system.n_groups, system.n_classes, system.n_classes), dtype=bool)
    for g, (o, k) in enumerate(zip(system.offsets, system.option_counts)):
        seg = m[:, o:o + k]
        full = np.where(seg.any(axis=1, keepdims=True), seg, 1)  # not applicable == every option (uniform)
        n = full.sum(axis=1)
        inter = full @ full.T
        out[g] = (n[:, None] + n[None, :] - 2 * inter) > 0  # |A xor B| > 0
    return out


def inseparable_graph(system: AttributeSystem) -> nx.Graph:
    """Classes as nodes, an edge for every pair that no group separates."""
    sep_any = separation_tensor(system).any(axis=0)
    graph = nx.Graph()
    graph.add_nodes_from(system.classes)
    a, b = np.nonzero(np.triu(~sep_any, k=1))
    graph.add_edges_from((system.classes[i], system.classes[j]) for i, j in zip(a, b))
    return graph


def identical_signatures(system: AttributeSystem) -> list[list[str]]:
    """Groups (size >= 2) of classes whose rules are identical in every group."""
    graph = nx.Graph()
    graph.add_nodes_from(system.classes)
    first: dict[tuple, str] = {}
    for c, sig in zip(system.classes, system.rules):
        if sig in first:
            graph.add_edge(first[sig], c)
        else:
            first[sig] = c
    return _components(graph, system)


def indistinguishable_classes(system: AttributeSystem) -> list[list[str]]:
    """Groups (size >= 2) of classes that get the same answer distribution from every group.

    Under the Bayes channel (module docstring) nothing the model answers can
    move the odds between them. Equals :func:`identical_signatures` once a
    not-applicable rule is read as "every option".
    """
    dist = distinction_tensor(system).any(axis=0)
    graph = nx.Graph()
    graph.add_nodes_from(system.classes)
    a, b = np.nonzero(np.triu(~dist, k=1))
    graph.add_edges_from((system.classes[i], system.classes[j]) for i, j in zip(a, b))
    return _components(graph, system)


def weakly_distinguishable_pairs(system: AttributeSystem) -> list[list[str]]:
    """Pairs [a, b] some group tells apart but none separates: the answers shift the odds, never rule one out."""
    dist = distinction_tensor(system).any(axis=0)
    sep = separation_tensor(system).any(axis=0)
    a, b = np.nonzero(np.triu(dist & ~sep, k=1))
    return [[system.classes[i], system.classes[j]] for i, j in zip(a, b)]


def _components(graph: nx.Graph, system: AttributeSystem) -> list[list[str]]:
    order = {c: i for i, c in enumerate(system.classes)}
    comps = [sorted(cc, key=order.__getitem__) for cc in nx.connected_components(graph) if len(cc) > 1]
    return sorted(comps, key=lambda cc: order[cc[0]])


@dataclass(frozen=True)
class GroupSplit:
    group: str
    n_options: int
    blocks: dict[str, list[str]]  # option text -> classes that accept it
    not_applicable: list[str]
    pairs_separated: int
    info_bits: float  # information gain of asking it first: uniform prior, noiseless rules


def group_splits(system: AttributeSystem) -> list[GroupSplit]:
    """How each group splits the classes."""
    sep = separation_tensor(system)
    m = system.rule_matrix
    out = []
    for g, grp in enumerate(system.groups):
        seg = m[:, system.offsets[g]:system.offsets[g] + grp.n_options]
        blocks = {opt: [system.classes[c] for c in np.nonzero(seg[:, k])[0]] for k, opt in enumerate(grp.options)}
        na = [system.classes[c] for c in np.nonzero(~seg.any(axis=1))[0]]
        counts = seg.sum(axis=1, keepdims=True)
        dist = np.where(counts > 0, seg / np.maximum(counts, 1), 1.0 / grp.n_options).mean(axis=0)
        nz = dist[dist > 0]
        h_answer = float(-(nz * np.log2(nz)).sum())
        h_given_class = float(np.log2(np.where(counts[:, 0] > 0, counts[:, 0], grp.n_options)).mean())
        out.append(GroupSplit(
            group=grp.name, n_options=grp.n_options, blocks=blocks, not_applicable=na,
            pairs_separated=int(np.triu(sep[g], k=1).sum()),
            info_bits=max(h_answer - h_given_class, 0.0),
        ))
    return out


def minimal_separating_set(system: AttributeSystem) -> list[str]:
    """A greedy smallest set of groups that separates every distinguishable pair.

    Greedy set cover: repeatedly take the group that separates the most pairs
    not yet separated (ties: fewer options, then system order).
    """
    sep = separation_tensor(system)
    iu = np.triu_indices(system.n_classes, k=1)
    covers = sep[:, iu[0], iu[1]]  # (G, P)
    todo = covers.any(axis=0)
    chosen: list[int] = []
    while todo.any():
        gain = (covers & todo).sum(axis=1)
        best = max(range(system.n_groups),
                   key=lambda g: (gain[g], -system.option_counts[g], -g))
        if gain[best] == 0:
            break
        chosen.append(best)
        todo &= ~covers[best]
    return [system.groups[g].name for g in chosen]


@dataclass(frozen=True)
class SystemAnalysis:
    system: str
    n_classes: int
    n_groups: int
    q_total: int
    identical_signatures: list[list[str]]
    indistinguishable: list[list[str]]
    weakly_distinguishable: list[list[str]]
    splits: list[GroupSplit]
    minimal_separating_set: list[str]
    minimal_set_q: int

    def to_dict(self) -> dict:
        return asdict(self)


def analyze(system: AttributeSystem) -> SystemAnalysis:
    """Everything above in one report."""
    minimal = minimal_separating_set(system)
    return SystemAnalysis(
        system=system.name,
        n_classes=system.n_classes,
        n_groups=system.n_groups,
        q_total=system.q_total,
        identical_signatures=identical_signatures(system),
        indistinguishable=indistinguishable_classes(system),
        weakly_distinguishable=weakly_distinguishable_pairs(system),
        splits=group_splits(system),
        minimal_separating_set=minimal,
        minimal_set_q=int(sum(system.groups[system.group_index(g)].n_options for g in minimal)),
    )
