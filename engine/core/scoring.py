"""Scoring: pure functions over arrays (numpy/scipy), batched over images.

Notation (see ``../shared/docs/method.md``):

- B images, C classes, G groups, K_g options in group g, Q = sum_g K_g prompts.
- The option axis of all groups is concatenated: column ``offsets[g] + k`` is
  option k of group g.
- ``s`` are cosine similarities, ``lam`` (λ) the logit scale, ``eps`` (ε) the
  rule noise.

Every function is vectorised over images, classes and options; loops run over
groups at most. Log space is used wherever a product of many small numbers
appears, so λ up to 1e4 gives no NaN.

The functions the adaptive loop calls take ``xp``, the array backend
(:mod:`engine.core.arrays`): numpy by default, or the torch backend, on which the
same lines run on tensors (``channel`` is then ``xp.channel(channel)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
from scipy.special import entr, logsumexp, softmax

from engine.core.arrays import NUMPY, Arrays

# A likelihood this small is recomputed exactly in log space (see bayes_loglik).
_UNDERFLOW = 1e-250


def check_logit_scale(lam: float) -> float:
    lam = float(lam)
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"logit_scale == {lam}, must be a finite number > 0")
    return lam


def check_logit_scales(lam, n_groups: int) -> np.ndarray:
    """λ per group: a float (every group) or a (G,) sequence of λ_g. Returns a read-only (G,) float64 array."""
    arr = np.asarray(lam, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(int(n_groups), check_logit_scale(float(arr)))
    elif arr.shape != (int(n_groups),):
        raise ValueError(f"logit_scale should be a number or one per group ({n_groups}), got shape {arr.shape}")
    else:
        for v in arr:
            check_logit_scale(v)
        arr = arr.copy()
    arr.setflags(write=False)
    return arr


def check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps == {eps}, must be in [0, 1)")
    return eps


# --------------------------------------------------------------------------- answers
def _scaled_logits(sims: np.ndarray, lam: float, xp: Arrays = NUMPY) -> np.ndarray:
    """λ·(s − max_k s): the logits of p_g, shifted so that no finite input overflows.

    sims (B, K) finite -> (B, K), each row's max 0, the rest ≤ 0 or -inf. λ·s itself
    overflows to inf for |s| near 1e305 with λ=1e4 (and inf − inf is NaN in the softmax);
    the shifted logits only underflow, to -inf, which is probability 0.
    """
    sims = xp.asarray(sims)
    if sims.ndim != 2:
        raise ValueError(f"sims should be 2-d (B, K), got shape {tuple(sims.shape)}")
    lam = check_logit_scale(lam)
    if sims.shape[1] == 0:
        return sims
    with xp.errstate(over="ignore"):  # a difference of two huge similarities overflows to -inf: probability 0
        return lam * (sims - xp.amax(sims, axis=1, keepdims=True))


def group_log_probs(sims: np.ndarray, lam: float, xp: Arrays = NUMPY) -> np.ndarray:
    """log p_g = log_softmax(λ·s_g) within one group.

    sims : (B, K) similarities of B images to the K prompts of one group.
    Returns (B, K) float64 log-probabilities; every row logsumexps to 0. No NaN for
    any finite input (an option left behind by a huge margin gets -inf).
    """
    return xp.log_softmax(_scaled_logits(sims, lam, xp))


def group_probs(sims: np.ndarray, lam: float) -> np.ndarray:
    """p_g = softmax(λ·s_g). sims (B, K) -> (B, K), rows sum to 1, finite for any finite input."""
    return softmax(_scaled_logits(sims, lam), axis=1)


def baseline_probs(sims: np.ndarray, lam: float) -> np.ndarray:
    """The class-name baseline: softmax over the N class-name similarities.

    sims (B, N) -> (B, N). Its argmax is the cosine argmax. It is the same as
    :func:`group_probs` of a one-group system of class names.
    """
    return group_probs(sims, lam)


# --------------------------------------------------------------------------- channel
@dataclass(frozen=True)
class Channel:
    """The answer channel P(k | c) of every group, precomputed once per (system, ε).

    Attributes
    ----------
    P : (C, Q) float64
        ``P[c, offsets[g] + k]`` = P(answer k to group g | class c); each group's
        segment of a row sums to 1.
    H : (C, G) float64
        Entropy (nats) of each class's answer distribution in each group.
    A : (C, Q) float64
        Sum-scorer weights: 1 for an acceptable option, 1/K_g across a
        not-applicable group, else 0.
    offsets, sizes : (G,) int64
        Start column and K_g of each group.
    eps : float
        The ε of the rule-noise channel (the fallback of every group without a confusion).
    confused : (G,) bool
        Which groups use a fitted confusion matrix instead of the ε channel.
    """

    P: np.ndarray
    H: np.ndarray
    A: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    eps: float
    confused: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return self.P.shape[0]

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    def cols(self, g: int) -> slice:
        """The columns of group g in the concatenated option axis."""
        o = int(self.offsets[g])
        return slice(o, o + int(self.sizes[g]))


def eps_confusion(k: int, eps: float) -> np.ndarray:
    """The ε channel as a confusion matrix: (1−ε)·I + ε/K, (K, K); row j is P(answer · | true option j)."""
    eps = check_eps(eps)
    return (1.0 - eps) * np.eye(int(k)) + eps / int(k)


def check_confusion(m: np.ndarray, k: int, name: str = "confusion") -> np.ndarray:
    """A (K, K) row-stochastic matrix of finite non-negative numbers, as float64; ValueError otherwise."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (k, k):
        raise ValueError(f"{name} should be ({k}, {k}), got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any() or not np.allclose(m.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError(f"{name} must hold non-negative finite numbers with every row summing to 1")
    return m / m.sum(axis=1, keepdims=True)


def build_channel(rule_matrix: np.ndarray, sizes: np.ndarray, eps: float = 0.0,
                  confusions=None) -> Channel:
    """Channel from the rules, and optionally a fitted confusion per group.

    rule_matrix : (C, Q) bool, acceptable options (an all-False group segment
        means not applicable).
    sizes : (G,) int, K_g per group, summing to Q.
    eps : rule noise ε in [0, 1).
    confusions : None, or a length-G sequence whose entry g is None (the ε
        channel) or M_g (K_g, K_g), M_g[j, k] = P(answer k | the true option is j).

    P(k | c) = mean over j ∈ R_g(c) of M_g[j, k], or 1/K_g if not applicable. The ε
    channel is M_g = (1−ε)·I + ε/K_g, which gives the method's
    (1−ε)·1[k ∈ R_g(c)]/|R_g(c)| + ε/K_g; a group without a confusion gets exactly that.
    """
    eps = check_eps(eps)
    r = np.asarray(rule_matrix, dtype=bool)
    sizes = np.asarray(sizes, dtype=np.int64)
    if r.ndim != 2 or r.shape[1] != sizes.sum():
        raise ValueError(f"rule_matrix should be (C, {sizes.sum()}), got shape {r.shape}")
    if (sizes < 1).any():
        raise ValueError(f"every group needs at least one option, got sizes {sizes.tolist()}")
    if confusions is not None and len(confusions) != len(sizes):
        raise ValueError(f"confusions should hold one entry per group ({len(sizes)}), got {len(confusions)}")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    col_k = np.repeat(sizes, sizes).astype(np.float64)  # (Q,) K_g of each column
    n_acc = np.add.reduceat(r.astype(np.float64), offsets, axis=1)  # (C, G)
    n_acc_col = np.repeat(n_acc, sizes, axis=1)  # (C, Q)
    applicable = n_acc_col > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ruled = np.where(r, 1.0 / np.where(applicable, n_acc_col, 1.0), 0.0)  # (C, Q): uniform over R_g(c)
    P = np.where(applicable, (1.0 - eps) * ruled + eps / col_k, 1.0 / col_k)
    confused = np.zeros(len(sizes), dtype=bool)
    for g, m in enumerate(confusions or ()):
        if m is None:
            continue
        o, k = int(offsets[g]), int(sizes[g])
        m = check_confusion(m, k, f"confusion of group {g}")
        seg = ruled[:, o:o + k] @ m  # (C, K): the mean of M_g's rows over each class's acceptable options
        P[:, o:o + k] = np.where(applicable[:, o:o + k], seg, 1.0 / k)
        confused[g] = True
    H = np.add.reduceat(entr(P), offsets, axis=1)
    A = np.where(applicable, r.astype(np.float64), 1.0 / col_k)
    for arr in (P, H, A, confused):
        arr.setflags(write=False)
    return Channel(P=P, H=H, A=A, offsets=offsets, sizes=sizes, eps=eps, confused=confused)


# --------------------------------------------------------------------------- scorers
def sum_scores(probs: np.ndarray, A: np.ndarray) -> np.ndarray:
    """The write-up's sum scorer over the groups given.

    probs : (B, Q') concatenated p_g of the groups asked.
    A : (C, Q') the matching columns of :attr:`Channel.A`.
    Returns (B, C): score(c) = Σ_g Σ_{k∈R_g(c)} p_g[k], with 1/K_g per
    not-applicable group.
    """
    return np.asarray(probs, dtype=np.float64) @ np.asarray(A, dtype=np.float64).T


def bayes_loglik(log_p: np.ndarray, P_g: np.ndarray, xp: Arrays = NUMPY) -> np.ndarray:
    """Soft-evidence log-likelihood of one group's answers for every class.

    log_p : (B, K) log p_g of B images.
    P_g : (C, K) P(k | c) of that group.
    Returns (B, C): log Σ_k p_g[k]·P(k | c).

    Computed as a max-shifted matmul; rows where that underflows are recomputed
    exactly with logsumexp, so the result is finite for any finite input.
    """
    log_p = xp.asarray(log_p)
    m = xp.amax(log_p, axis=1, keepdims=True)  # (B, 1)
    lik = xp.exp(log_p - m) @ P_g.T  # (B, C)
    bad = (lik < _UNDERFLOW).any(axis=1)
    with xp.errstate(divide="ignore"):
        out = m + xp.log(lik)
        if xp.any(bad):
            logP = xp.log(P_g)  # -inf where P is 0
            out[bad] = xp.logsumexp(log_p[bad][:, None, :] + logP[None, :, :], axis=2)
    return out


def bayes_update(log_post: np.ndarray, loglik: np.ndarray, xp: Arrays = NUMPY) -> np.ndarray:
    """π(c) ← π(c)·L(c), normalised, in log space.

    log_post : (B, C) log posterior (may hold -inf for classes ruled out a priori).
    loglik : (B, C) from :func:`bayes_loglik`.
    Returns (B, C) normalised log posterior.
    """
    x = log_post + loglik
    return x - xp.logsumexp(x, axis=1, keepdims=True)


def log_prior(n_classes: int, prior: np.ndarray | None = None, n_images: int = 1) -> np.ndarray:
    """Log prior (B, C): uniform, or the given (C,) or (B, C) probabilities, normalised."""
    if prior is None:
        return np.full((n_images, n_classes), -np.log(n_classes))
    p = np.asarray(prior, dtype=np.float64)
    if p.shape[-1] != n_classes or (p < 0).any() or not np.isfinite(p).all() or (p.sum(axis=-1) <= 0).any():
        raise ValueError(f"prior should be non-negative with {n_classes} entries per row and a positive sum, "
                         f"got shape {p.shape}")
    p = np.broadcast_to(p / p.sum(axis=-1, keepdims=True), (n_images, n_classes))
    with np.errstate(divide="ignore"):
        return np.log(p)


def full_bayes_log_posterior(log_probs: list[np.ndarray], channel: Channel,
                             prior: np.ndarray | None = None) -> np.ndarray:
    """Bayes posterior after every group, in group order.

    log_probs : list of G arrays (B, K_g), log p_g.
    Returns (B, C) normalised log posterior.
    """
    B = log_probs[0].shape[0]
    x = log_prior(channel.n_classes, prior, B).copy()
    for g, lpg in enumerate(log_probs):
        x += bayes_loglik(lpg, channel.P[:, channel.cols(g)])
    return x - logsumexp(x, axis=1, keepdims=True)  # normalising once equals normalising after each update


# --------------------------------------------------------------------------- information gain
def entropy(p: np.ndarray, axis: int = -1, xp: Arrays = NUMPY) -> np.ndarray:
    """Shannon entropy in nats along ``axis``."""
    return xp.entr(xp.asarray(p)).sum(axis=axis)


def expected_information_gain(post: np.ndarray, channel: Channel, xp: Arrays = NUMPY) -> np.ndarray:
    """EIG of every group for every image, under the posterior.

    post : (B, C) posterior probabilities.
    Returns (B, G): EIG_g = H(Σ_c π(c) P(·|c)) − Σ_c π(c) H(P(·|c)), in nats,
    clipped at 0 against rounding. It needs no text embeddings.

    Cost: one (B, C) @ (C, Q) and one (B, C) @ (C, G) matmul.
    """
    post = xp.asarray(post)
    marg = post @ channel.P  # (B, Q)
    h_marg = xp.segment_sum(xp.entr(marg), channel)  # (B, G)
    h_cond = post @ channel.H  # (B, G)
    return xp.maximum(h_marg - h_cond, 0.0)


GAIN_BLOCK = 1 << 22  # entries of the (images, C, Q) product expected_accuracy_gain holds at once (32 MiB)


def expected_accuracy_gain(post: np.ndarray, channel: Channel, xp: Arrays = NUMPY) -> np.ndarray:
    """How much asking each group is expected to raise the top class's probability, under the posterior and the
    answer channel (a hard answer k drawn from Σ_c π(c) P(k|c)): the expected accuracy gain of the label.

    post : (B, C) posterior probabilities. Returns (B, G): gain_g = E_k[max_c π(c | k)] − max_c π(c)
    = Σ_{k ∈ g} max_c π(c)·P(k|c) − max_c π(c), ≥ 0 (the maximum is convex and the posterior a martingale),
    clipped at 0 against rounding. The ``accuracy_per_prompt`` policy reads it (an answer model that predicts
    its own answers, the Gaussian few-shot posterior, gives its own instead: engine.core.gaussian).

    Cost: a (B, C, Q) product and its maximum over the classes, in blocks of images of at most
    :data:`GAIN_BLOCK` entries (no matmul does it: about 12× the channel EIG's time at C = 151).
    """
    post = xp.asarray(post)
    B, C = post.shape
    Q = channel.P.shape[1]
    best = xp.zeros((B, Q))  # max_c π(c)·P(k|c)
    step = max(1, GAIN_BLOCK // max(C * Q, 1))
    for lo in range(0, B, step):
        best[lo:lo + step] = xp.amax(post[lo:lo + step, :, None] * channel.P[None, :, :], axis=1)
    return xp.maximum(xp.segment_sum(best, channel) - xp.amax(post, axis=1, keepdims=True), 0.0)


# --------------------------------------------------------------------------- shortlist of names
# Probabilities within this relative distance count as equal when ranking candidates, the same rule as
# the policies' ties (policies.base.near_max): the posterior of an image in a batch differs from the same
# image alone in the last bits, and its shortlist must not.
SHORTLIST_RTOL = 1e-9


def shortlist(post: np.ndarray, m: int, xp: Arrays = NUMPY) -> np.ndarray:
    """The m most probable classes of each row, best first. post (B, C) -> (B, min(m, C)) int.

    Classes whose probabilities are equal within SHORTLIST_RTOL go by class index.
    """
    post = xp.asarray(post)
    B, C = post.shape
    m = min(int(m), C)
    left = xp.full((B, C), True, "bool")
    rows = xp.arange(B)
    out = xp.zeros((B, m), "int")
    for j in range(m):
        s = xp.where(left, post, -math.inf)
        best = xp.amax(s, axis=1, keepdims=True)
        pick = xp.argmax(left & (s >= best - SHORTLIST_RTOL * abs(best)), axis=1)
        out[:, j] = pick
        left[rows, pick] = False
    return out


def shortlist_loglik(log_p: np.ndarray, cand: np.ndarray, n_classes: int, eps: float,
                     xp: Arrays = NUMPY) -> np.ndarray:
    """Log-likelihood of every class for the answer to "which of these m names is it?".

    log_p : (B, m) log-softmax over the m candidate-name prompts of each image.
    cand : (B, m) the candidates' class indices (distinct within a row).
    Returns (B, C): for the candidate in position j, log((1-ε)·p_j + ε/m); for every
    other class log(1/m): the question says nothing about classes it did not name,
    exactly like a not-applicable group.
    """
    eps = check_eps(eps)
    log_p, cand = xp.asarray(log_p), xp.asindex(cand)
    B, m = log_p.shape
    if tuple(cand.shape) != (B, m):
        raise ValueError(f"cand should be {(B, m)}, got shape {tuple(cand.shape)}")
    out = xp.full((B, n_classes), -math.log(m))
    named = math.log1p(-eps) + log_p
    if eps > 0:  # eps/m can underflow to 0 for a tiny eps; log(0) = -inf is right
        named = xp.logaddexp(named, math.log(eps / m) if eps / m > 0 else -math.inf)
    out[xp.arange(B)[:, None], cand] = named
    return out


def shortlist_eig(post: np.ndarray, cand: np.ndarray, eps: float, xp: Arrays = NUMPY) -> np.ndarray:
    """EIG (nats) of the shortlist question for each row, under the posterior.

    post : (B, C); cand : (B, m). The answer k has P(k | c) = (1-ε)·1[c = cand_k] + ε/m
    for a candidate and 1/m for any other class, so EIG = H(Σ_c π(c) P(·|c)) − Σ_c π(c) H(P(·|c)).
    """
    eps = check_eps(eps)
    post, cand = xp.asarray(post), xp.asindex(cand)
    m = cand.shape[1]
    pc = xp.gather(post, cand)  # (B, m)
    s = xp.minimum(pc.sum(axis=1, keepdims=True), 1.0)  # rounding can push a sum of 1 just above 1
    marg = xp.maximum((1.0 - eps) * pc + eps / m * s + (1.0 - s) / m, 0.0)  # (B, m); entr(-1e-17) is -inf
    row = np.full(m, eps / m)
    row[0] += 1.0 - eps
    h_cand = float(entropy(row))  # of one candidate's answer distribution, on the host
    h_cond = s[:, 0] * h_cand + (1.0 - s[:, 0]) * math.log(m)
    return xp.maximum(entropy(marg, xp=xp) - h_cond, 0.0)
