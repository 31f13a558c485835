"""The built-in question policies.

All but ``lookahead`` are written over ``state.xp`` (:mod:`policies.arrays`, ``any_backend = True``), so
the same ``select`` runs on numpy arrays and, in the loop's torch backend, on tensors on the device.
"""

from __future__ import annotations

import numpy as np

from .base import Policy, PolicyState, masked_argmax, near_max, on_any_backend, register


@register
class FixedPolicy(Policy):
    """The system's own group order: the first available group."""

    name = "fixed"
    any_backend = True
    reads_eig = False  # the loop may skip an answer model's costly information gain (engine.core.predictive)

    def select(self, state: PolicyState) -> np.ndarray:
        return state.xp.argmax(state.available, axis=1)


def _hash_uniform(seed: int, images: np.ndarray, n_groups: int) -> np.ndarray:
    """Deterministic uniform keys in [0, 1) for (seed, image, group), shape (n, G) (splitmix64)."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + images.astype(np.uint64)[:, None] * np.uint64(0xBF58476D1CE4E5B9)
             + np.arange(n_groups, dtype=np.uint64)[None, :] * np.uint64(0x94D049BB133111EB))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@register
class RandomPolicy(Policy):
    """A random group order per image, seeded.

    Each image gets its own random permutation of the groups, fixed by
    (seed, image index), so its path does not depend on the other images in
    the batch or on the stopping threshold.
    """

    name = "random"
    reads_eig = False

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def keys(self, images: np.ndarray, n_groups: int) -> np.ndarray:
        """(n, G) uniform keys in [0, 1) of images (n,) (batch indices); each image asks its groups in
        decreasing key order."""
        return _hash_uniform(self.seed, np.asarray(images), n_groups)

    any_backend = True

    def select(self, state: PolicyState) -> np.ndarray:
        xp = state.xp
        keys = xp.asarray(self.keys(xp.to_host(state.images), state.available.shape[1]))  # made on the host
        return xp.argmax(xp.where(state.available, keys, -1.0), axis=1)


@register
class EIGPolicy(Policy):
    """Greedy maximum expected information gain."""

    name = "eig"
    any_backend = True

    def select(self, state: PolicyState) -> np.ndarray:
        return masked_argmax(state.eig, state.available, state.xp)


@register
class EIGPerPromptPolicy(Policy):
    """EIG per prompt spent: EIG_g / K_g, so cheap questions win ties."""

    name = "eig_per_prompt"
    any_backend = True

    def select(self, state: PolicyState) -> np.ndarray:
        return masked_argmax(state.eig / state.channel.sizes[None, :], state.available, state.xp)


@register
class ModelEIGPerPromptPolicy(EIGPerPromptPolicy):
    """EIG per prompt, with the EIG the answer model's own where it has one: under a Gaussian few-shot calibration, a
    closed-form lower bound on I(C; z_g | z_asked) of the model's correlated similarities
    (:func:`engine.core.gaussian.information_bound`), where ``eig_per_prompt`` reads the per-class answer channel, a
    naive-Bayes model of the answers. Elsewhere the same as ``eig_per_prompt``."""

    name = "model_eig_per_prompt"
    reads_model_eig = True


@register
class AccuracyPerPromptPolicy(Policy):
    """The group expected to raise the top class's probability most per prompt: gain_g / K_g, where gain_g is the
    expected rise of the top class's probability if g is asked (``state.gain``: the expected accuracy gain of the
    label, a one-step look-ahead at the confidence stop). The loop computes it under the answer channel
    (:func:`engine.core.scoring.expected_accuracy_gain`), or under the answer model's own predictive when it has
    one (a Gaussian few-shot calibration: :func:`engine.core.gaussian.expected_accuracy_gain`). Where gains tie
    (none expected: an image already certain), the lowest index: system order."""

    name = "accuracy_per_prompt"
    any_backend = True
    reads_eig = False  # the loop need not compute the channel's EIG
    reads_gain = True

    def select(self, state: PolicyState) -> np.ndarray:
        if state.gain is None:
            raise ValueError("accuracy_per_prompt needs state.gain: the adaptive loop gives it to a policy with "
                             "reads_gain = True")
        return masked_argmax(state.gain / state.channel.sizes[None, :], state.available, state.xp)


@register
class Top2Policy(Policy):
    """The group that best separates the two most probable classes.

    Separation is the total-variation distance between the two classes'
    answer distributions in the group; ties go to the higher EIG, then the
    lower index.
    """

    name = "top2"
    any_backend = True

    def select(self, state: PolicyState) -> np.ndarray:
        ch, xp = state.channel, state.xp
        if ch.P.shape[0] < 2:
            return masked_argmax(state.eig, state.available, xp)
        # the two leaders; classes tied in probability (see near_max) go by class index
        rows = xp.arange(state.post.shape[0])
        first = masked_argmax(state.post, xp.full(state.post.shape, True, "bool"), xp)
        rest = xp.full(state.post.shape, True, "bool")
        rest[rows, first] = False
        second = masked_argmax(state.post, rest, xp)
        diff = abs(ch.P[first] - ch.P[second])  # (n, Q)
        tv = 0.5 * xp.segment_sum(diff, ch)  # (n, G)
        # lexicographic: the best-separating groups (ties within tolerance), then the higher EIG among them
        return masked_argmax(state.eig, near_max(tv, state.available, xp), xp)


def _next_eig(post: np.ndarray, channel, g: int) -> tuple[np.ndarray, np.ndarray]:
    """What answering group g does to the next question, for every answer k.

    post : (n, C) posterior; channel with P (C, Q), H (C, G), offsets, sizes.
    Returns (p_k (n, K_g), eig_next (n, K_g, G)): P(answer k) = Σ_c π(c)·P(k|c), and the EIG of every group
    under the posterior π_k(c) ∝ π(c)·P(k|c) that answer k would leave. Computed without forming π_k:
    Σ_c π_k(c)·P(q|c) = (π @ (P_g(k|·) ⊗ P(q|·)))[k, q] / p_k. Cost: one (n, C) @ (C, K_g·(Q+G)) matmul.
    """
    P, H = channel.P, channel.H
    n, C = post.shape
    Q, G = P.shape[1], H.shape[1]
    Pg = P[:, channel.cols(g)]  # (C, K)
    K = Pg.shape[1]
    w = np.concatenate([(Pg[:, :, None] * P[:, None, :]).reshape(C, K * Q),
                        (Pg[:, :, None] * H[:, None, :]).reshape(C, K * G)], axis=1)  # (C, K·(Q+G))
    out = post @ w
    pk = post @ Pg  # (n, K)
    safe = np.where(pk > 0, pk, 1.0)[:, :, None]
    marg = out[:, :K * Q].reshape(n, K, Q) / safe  # (n, K, Q) next answer marginals
    h_cond = out[:, K * Q:].reshape(n, K, G) / safe  # (n, K, G)
    m = np.clip(marg, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(m > 0, -m * np.log(np.where(m > 0, m, 1.0)), 0.0)  # entr without scipy (numpy-only layer)
    h_marg = np.add.reduceat(ent, channel.offsets, axis=2)  # (n, K, G)
    return pk, np.maximum(h_marg - h_cond, 0.0)


@register
class LookaheadPolicy(Policy):
    """Two-step lookahead on the answer channel, per prompt spent, within the remaining budget.

    For each candidate group g, the plan "ask g, then for each answer k the next group with the best
    EIG per prompt that the budget still pays for" gains, in expectation over the answers
    (P(k) = Σ_c π(c)·P(k|c)),

        V(g) = (EIG_g + Σ_k P(k)·EIG_{g'(k)}(π_k)) / (K_g + Σ_k P(k)·K_{g'(k)})   nats per prompt,

    with π_k(c) ∝ π(c)·P(k|c) and g'(k) the argmax of EIG_{g'}(π_k)/K_{g'} over the groups still available
    after g with K_{g'} ≤ budget_left − K_g. When no second group fits, V(g) = EIG_g / K_g. The policy asks
    the g with the largest V (ties: higher one-step EIG per prompt, then the lower index).

    The channel's P(k|c) is used throughout, so with fitted per-group confusions a group that is answered
    unreliably has low EIG at both steps and is put off. A group whose value comes only through what it
    makes of the next question (a coarse split that makes a fine question decisive) can win over a
    greedier one.

    candidates : only the ``candidates`` groups with the highest one-step EIG per prompt (per image; rates
        equal within TIE_RTOL go by the lower index, as everywhere in the engine) are looked ahead from; the
        others score −inf. With G ≤ candidates every group is. Cost per step:
        ``candidates`` matmuls of (n, C) @ (C, K_g·(Q+G)), i.e. about n·C·candidates·K̄·Q flops.
    """

    name = "lookahead"

    def __init__(self, candidates: int = 8):
        if int(candidates) < 1:
            raise ValueError(f"candidates == {candidates!r}, must be >= 1")
        self.candidates = int(candidates)

    def select(self, state: PolicyState) -> np.ndarray:
        value, cand = self.values(state)
        rate = state.eig / state.channel.sizes[None, :]
        # the value, then the one-step rate among groups tied on it, then the lowest index
        return masked_argmax(rate, near_max(value, cand))

    def values(self, state: PolicyState) -> tuple[np.ndarray, np.ndarray]:
        """(value (n, G) float, candidates (n, G) bool): V(g) of every candidate group, −inf elsewhere."""
        ch = state.channel
        sizes = ch.sizes.astype(np.float64)  # (G,)
        avail = state.available  # (n, G)
        n, G = avail.shape
        rate = state.eig / sizes[None, :]  # (n, G) one-step EIG per prompt
        # candidate set: the top `candidates` available groups by one-step rate, taken one at a time under the
        # engine's tie rule (masked_argmax: equal within TIE_RTOL go by the lower index), so rounding in the
        # last bits (a batched matmul) cannot swap two equally good groups in or out of the set, and with
        # candidates = 1 the one candidate is eig_per_prompt's choice
        if G > self.candidates:
            cand = np.zeros_like(avail)
            left = avail.copy()
            rows = np.arange(n)
            for _ in range(self.candidates):
                has = left.any(axis=1)
                if not has.any():
                    break
                pick = masked_argmax(rate, np.where(has[:, None], left, True))
                cand[rows[has], pick[has]] = True
                left[rows, pick] = False
            cand &= avail
        else:
            cand = avail
        value = np.full((n, G), -np.inf)
        for g in np.nonzero(cand.any(axis=0))[0]:
            rows = np.nonzero(cand[:, g])[0]
            pk, eig2 = _next_eig(state.post[rows], ch, int(g))  # (m, K), (m, K, G)
            left = state.budget_left[rows] - sizes[g]  # (m,)
            ok2 = avail[rows].copy()
            ok2[:, g] = False
            ok2 &= sizes[None, :] <= left[:, None]  # (m, G) second questions the budget still pays for
            m, K = pk.shape
            has2 = ok2.any(axis=1)  # (m,)
            ok2[~has2] = True  # placeholder rows (no second question fits), masked out below
            # the best second question per answer; ties (near_max) to the lowest index, so rounding
            # in eig2 cannot swap two equally good groups of different cost
            best = masked_argmax((eig2 / sizes[None, None, :]).reshape(m * K, G),
                                 np.repeat(ok2, K, axis=0)).reshape(m, K)
            e2 = np.take_along_axis(eig2, best[:, :, None], axis=2)[:, :, 0]  # (m, K)
            k2 = sizes[best]  # (m, K)
            gain = state.eig[rows, g] + np.where(has2, (pk * e2).sum(axis=1), 0.0)
            cost = sizes[g] + np.where(has2, (pk * k2).sum(axis=1), 0.0)
            value[rows, g] = gain / cost
        return value, cand


@register
class DevOrderPolicy(Policy):
    """A static group order fitted on labelled dev images (``twentyq calibrate`` stores it in the calibration file).

    order : a permutation of the G group indices, best first (the calibration's ``dev_order``, greedy by dev
        accuracy gained per prompt, :func:`engine.core.channel_fit.dev_greedy_order`). The policy asks the first
        group of the order that is still available, so under a budget it skips a group it cannot pay for and
        asks the next affordable one, as ``fixed`` does with the system order. With ``order`` None it is the
        system order (``fixed``): the run layer refuses ``--policy dev-order`` without a calibration.
    """

    name = "dev-order"
    any_backend = True
    reads_eig = False

    def __init__(self, order=None):
        self.order = None if order is None else tuple(int(g) for g in order)
        if self.order is not None and sorted(self.order) != list(range(len(self.order))):
            raise ValueError(f"order == {order!r}, must be a permutation of 0..G-1")

    def select(self, state: PolicyState) -> np.ndarray:
        xp, G = state.xp, state.available.shape[1]
        if self.order is None:
            return xp.argmax(state.available, axis=1)
        if len(self.order) != G:
            raise ValueError(f"dev-order: the order has {len(self.order)} groups, the system {G}; "
                             "the calibration was fitted for another system")
        order = xp.asindex(self.order)
        ranked = state.available[:, order]  # (n, G) availability in the order's sequence
        return order[xp.argmax(ranked, axis=1)]


AUTO_CANDIDATES = ("fixed", "dev-order", "eig", "lookahead")


@register
class AutoPolicy(Policy):
    """The policy a calibration chose on dev images it was not fitted on (``twentyq calibrate``: highest budget
    AUC among :data:`AUTO_CANDIDATES`, fixed unless clearly beaten; recorded in the file).

    choice : one of AUTO_CANDIDATES; order : the dev order (for choice "dev-order"). It delegates every
    ``select`` to that policy. With no choice it is ``fixed`` (what ``--policy auto`` does without a
    calibration; the run layer says so).
    """

    name = "auto"

    def __init__(self, choice: str = "fixed", order=None):
        if choice not in AUTO_CANDIDATES:
            raise ValueError(f"auto: choice == {choice!r}, must be one of {list(AUTO_CANDIDATES)}")
        self.choice = choice
        self.order = order
        self.inner = DevOrderPolicy(order) if choice == "dev-order" else POLICIES_BY_NAME[choice]()

    def any_backend(self) -> bool:  # as the chosen policy
        return on_any_backend(self.inner)

    @property
    def reads_eig(self) -> bool:  # as the chosen policy
        return getattr(self.inner, "reads_eig", True)

    @property
    def reads_gain(self) -> bool:  # as the chosen policy
        return getattr(self.inner, "reads_gain", False)

    @property
    def reads_model_eig(self) -> bool:  # as the chosen policy
        return getattr(self.inner, "reads_model_eig", False)

    def select(self, state: PolicyState) -> np.ndarray:
        return self.inner.select(state)


POLICIES_BY_NAME = {"fixed": FixedPolicy, "eig": EIGPolicy, "lookahead": LookaheadPolicy}
