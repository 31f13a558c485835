"""What a system can and cannot tell apart.

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

*Scale.* Everything per class is computed by grouping classes by a hashed rule
signature, in O(C·G) time and memory: identical signatures, indistinguishable
classes (both equivalence classes), each group's blocks, not-applicable classes,
information and ``pairs_separated`` (counted from how many applicable classes
share each acceptable option set, blockwise over the distinct sets). Only the two
answers that are lists of *pairs* or need them, ``weakly_distinguishable`` and the
greedy ``minimal_separating_set``, look at pairs; they are computed over the
distinct canonical signatures (classes with the same one behave identically), and
only while (groups + 1) × signature pairs is at most :data:`PAIRWISE_LIMIT`
(100,000,000, about 100 MB of booleans): above it both are None and
``pairwise_skipped`` says why. A 100,000-class system is analysed this way in
seconds; the former (3, G, C, C) boolean tensors needed 27.9 GiB for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the most (groups + 1) × (distinct signature pairs) the pairwise answers (weakly distinguishable pairs,
#: the minimal separating set) are computed for: one bool per group and pair, about 100 MB
PAIRWISE_LIMIT = 100_000_000

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


def _by_signature(system: AttributeSystem, signatures) -> list[list[str]]:
    """Groups (size >= 2) of classes with equal signature (a hashable per class), in system order."""
    groups: dict = {}
    for c, sig in zip(system.classes, signatures):
        groups.setdefault(sig, []).append(c)
    return [cs for cs in groups.values() if len(cs) > 1]  # dicts keep insertion order: by first class


def identical_signatures(system: AttributeSystem) -> list[list[str]]:
    """Groups (size >= 2) of classes whose rules are identical in every group (O(C·G), by hashing)."""
    return _by_signature(system, system.rules)


def canonical_signatures(system: AttributeSystem) -> list[tuple[frozenset[int], ...]]:
    """Per class, its acceptable option set in every group, a not-applicable rule read as every option."""
    full = [frozenset(range(k)) for k in system.option_counts]
    return [tuple(r if r else f for r, f in zip(row, full)) for row in system.rules]


def indistinguishable_classes(system: AttributeSystem) -> list[list[str]]:
    """Groups (size >= 2) of classes that get the same answer distribution from every group.

    Under the Bayes channel (module docstring) nothing the model answers can
    move the odds between them. Equals :func:`identical_signatures` once a
    not-applicable rule is read as "every option" (so computed that way: O(C·G)).
    """
    return _by_signature(system, canonical_signatures(system))


def _cells(system: AttributeSystem) -> tuple[np.ndarray, np.ndarray]:
    """(first class index of each distinct canonical signature (U,), class -> its cell (C,))."""
    index: dict = {}
    cell = np.array([index.setdefault(sig, len(index)) for sig in canonical_signatures(system)], dtype=np.int64)
    _, first = np.unique(cell, return_index=True)  # cells are numbered by first appearance: sorted
    return first.astype(np.int64), cell


def pairwise_size(system: AttributeSystem) -> int:
    """(groups + 1) × pairs of distinct canonical signatures: the booleans the pairwise answers hold (one per
    group and pair, and one per pair for "told apart"); see :data:`PAIRWISE_LIMIT`."""
    u = len(set(canonical_signatures(system)))
    return (system.n_groups + 1) * (u * (u - 1) // 2)


def _pair_starts(u: int) -> np.ndarray:
    """(U,) where row a's pairs (a, a+1 .. U-1) start in the row-major upper triangle."""
    a = np.arange(u, dtype=np.int64)
    return a * u - a * (a + 1) // 2


def _pair_rows_cols(idx: np.ndarray, u: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b), a < b, of upper-triangle pair indices ``idx`` (the order of ``np.triu_indices(u, 1)``)."""
    starts = _pair_starts(u)
    a = np.searchsorted(starts, idx, side="right") - 1
    return a, idx - starts[a] + a + 1


def _pair_covers(system: AttributeSystem, first: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Over the pairs of cells (the upper triangle of the U representatives ``first``, row-major, P pairs):
    separates (G, P) bool (group g separates the pair) and distinguishes (P,) bool (some group tells the
    pair apart). Computed in blocks of rows: the temporaries are (block, U), never (U, U)."""
    u = len(first)
    m = system.rule_matrix[first]  # (U, Q) bool
    starts = _pair_starts(u)
    n_pairs = u * (u - 1) // 2
    sep = np.zeros((system.n_groups, n_pairs), dtype=bool)
    dist = np.zeros(n_pairs, dtype=bool)
    per_group = []
    for o, k in zip(system.offsets, system.option_counts):
        seg = m[:, o:o + k].astype(np.float32)  # small counts: exact in float32, and BLAS-fast
        applicable = seg.any(axis=1)
        full = np.where(applicable[:, None], seg, 1.0).astype(np.float32)  # not applicable == every option
        per_group.append((seg, applicable, full, full.sum(axis=1)))
    for i0 in range(0, u, block):
        i1 = min(u, i0 + block)
        for g, (seg, applicable, full, n) in enumerate(per_group):
            s = applicable[i0:i1, None] & applicable[None, :] & ((seg[i0:i1] @ seg.T) == 0)
            d = (n[i0:i1, None] + n[None, :] - 2 * (full[i0:i1] @ full.T)) > 0  # |A xor B| > 0
            for r in range(i1 - i0):
                a = i0 + r
                lo, hi = starts[a], starts[a] + (u - a - 1)
                sep[g, lo:hi] = s[r, a + 1:]
                dist[lo:hi] |= d[r, a + 1:]
    return sep, dist


def _pairwise(system: AttributeSystem) -> tuple[list[list[str]], list[str]]:
    """(weakly distinguishable pairs, the greedy minimal separating set), from one pass over the pairs."""
    first, cell = _cells(system)
    u = len(first)
    covers, dist = _pair_covers(system, first)
    members: dict[int, list[int]] = {}
    for c, x in enumerate(cell):
        members.setdefault(int(x), []).append(c)
    weak_idx = np.flatnonzero(dist & ~covers.any(axis=0))
    out = []
    for x, y in zip(*_pair_rows_cols(weak_idx, u)):
        out += [(min(a, b), max(a, b)) for a in members[int(x)] for b in members[int(y)]]
    weak = [[system.classes[a], system.classes[b]] for a, b in sorted(out)]

    # greedy set cover; a pair of cells weighs as many class pairs as it stands for
    size = np.bincount(cell, minlength=u).astype(np.int64)
    weight = None
    if (size > 1).any():
        a, b = _pair_rows_cols(np.arange(u * (u - 1) // 2, dtype=np.int64), u)
        weight = size[a] * size[b]
    todo = covers.any(axis=0)
    chosen: list[int] = []
    while todo.any():
        hit = [covers[g] & todo for g in range(system.n_groups)]
        gain = [int(h.sum()) if weight is None else int(weight[h].sum()) for h in hit]
        best = max(range(system.n_groups), key=lambda g: (gain[g], -system.option_counts[g], -g))
        if gain[best] == 0:
            break
        chosen.append(best)
        todo &= ~covers[best]
    return weak, [system.groups[g].name for g in chosen]


def weakly_distinguishable_pairs(system: AttributeSystem) -> list[list[str]] | None:
    """Pairs [a, b] some group tells apart but none separates: the answers shift the odds, never rule one out.

    None when the system is too large for pairs (:func:`pairwise_size` over :data:`PAIRWISE_LIMIT`).
    """
    return None if pairwise_size(system) > PAIRWISE_LIMIT else _pairwise(system)[0]


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
            pairs_separated=_pairs_separated(seg),
            info_bits=max(h_answer - h_given_class, 0.0),
        ))
    return out


def _pairs_separated(seg: np.ndarray, block: int = 2048) -> int:
    """How many class pairs one group separates (both applicable, disjoint acceptable sets), counted from
    how many applicable classes share each acceptable set: O(C·K + U²·K) for U distinct sets, in blocks."""
    app = seg[seg.any(axis=1)]
    if len(app) < 2:
        return 0
    sets, counts = np.unique(app, axis=0, return_counts=True)  # (U, K), (U,)
    sets, counts = sets.astype(np.int32), counts.astype(np.int64)
    total = 0
    for i in range(0, len(sets), block):
        disjoint = (sets[i:i + block] @ sets.T) == 0  # (b, U); a set is never disjoint from itself
        total += int((counts[i:i + block, None] * counts[None, :] * disjoint).sum())
    return total // 2


def minimal_separating_set(system: AttributeSystem) -> list[str] | None:
    """A greedy smallest set of groups that separates every distinguishable pair.

    Greedy set cover: repeatedly take the group that separates the most pairs
    not yet separated (ties: fewer options, then system order). Pairs are counted
    between classes (a pair of signatures counts once per pair of their classes).
    None when the system is too large for pairs (:data:`PAIRWISE_LIMIT`).
    """
    return None if pairwise_size(system) > PAIRWISE_LIMIT else _pairwise(system)[1]


@dataclass(frozen=True)
class SystemAnalysis:
    system: str
    n_classes: int
    n_groups: int
    q_total: int
    identical_signatures: list[list[str]]
    indistinguishable: list[list[str]]
    weakly_distinguishable: list[list[str]] | None  # None: too large for pairs (pairwise_skipped says why)
    splits: list[GroupSplit]
    minimal_separating_set: list[str] | None
    minimal_set_q: int | None
    pairwise_skipped: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def analyze(system: AttributeSystem) -> SystemAnalysis:
    """Everything above in one report (the pairwise answers None above :data:`PAIRWISE_LIMIT`)."""
    size = pairwise_size(system)
    skipped = None
    if size > PAIRWISE_LIMIT:
        skipped = (f"weakly distinguishable pairs and the minimal separating set not computed: they need one "
                   f"entry per group (and one more) and pair of distinct rule signatures, {size:,} here, over the "
                   f"limit of {PAIRWISE_LIMIT:,} (systems.analysis.PAIRWISE_LIMIT); the rest of the analysis is "
                   "complete")
    weak, minimal = (None, None) if skipped else _pairwise(system)
    return SystemAnalysis(
        system=system.name,
        n_classes=system.n_classes,
        n_groups=system.n_groups,
        q_total=system.q_total,
        identical_signatures=identical_signatures(system),
        indistinguishable=indistinguishable_classes(system),
        weakly_distinguishable=weak,
        splits=group_splits(system),
        minimal_separating_set=minimal,
        minimal_set_q=None if minimal is None else int(sum(system.groups[system.group_index(g)].n_options
                                                           for g in minimal)),
        pairwise_skipped=skipped,
    )
