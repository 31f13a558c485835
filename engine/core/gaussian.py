"""The Gaussian few-shot posterior: one Gaussian per class over the standardised similarities, with a covariance
shared by the classes (linear discriminant analysis), fitted on labelled dev images (issue 26).

Pure numpy/scipy; no I/O, no torch. Notation as in :mod:`engine.core.answer_models`: C classes, G groups, K_g
options of group g, Q = Σ_g K_g prompts, z = (s − mean) / scale the standardised similarities (Q,).

The model: class c has prior π_c and z | c ~ N(μ_c, Σ), Σ shared. A group's similarities are not independent of
the others' given the class (every prompt's similarity is a projection of the same image embedding), and the
model keeps that: after the asked groups' columns A, the posterior is the exact marginal

    log p(c | z_A) = t·(log π_c − ½·(z_A − μ_c,A)ᵀ Σ_AA⁻¹ (z_A − μ_c,A)) + const,

for *any* set of asked groups, with no training on prefixes (the group-masked LR of
:mod:`engine.core.answer_models` has to learn each prefix). Because it is not a sum of per-group terms, the
adaptive loop recomputes it from every similarity seen so far after each question (``conditional = True``).

Fitted (:func:`fit_gaussian_posterior`): μ_c the class means of z; Σ the pooled within-class covariance shrunk
towards its diagonal, Σ_s = (1 − s)·Σ + s·diag(Σ), s chosen by cross-validated held-out log density on a grid;
then a temperature t in [0.01, 2] on the whole log posterior (so the label with every group asked does not move),
by the held-out NLL of the true class over the held-out images' full rows and random prefixes (a little shrinkage
leaves the posterior overconfident; t corrects it; each fold model gets a t fitted without its own fold). π_c: the
dev class frequencies with one pseudo-image each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, ndtr

from engine.common.memo import BoundedMemo
from engine.core.answer_models import (N_FOLDS, MASKS_PER_IMAGE, _col_group, _standardise, dev_arrays,
                                       stratified_folds, training_rows)

SHRINK_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # s tried by cross-validation
TEMPERATURE_BOUNDS = (0.01, 2.0)
MAX_ABS = 1e6  # no fitted mean, class mean, scale, log prior or covariance entry comes near this
SCALE_MIN = 1e-12
MAX_PROMPTS = 100_000
RIDGE = 1e-6  # added to Σ's diagonal: a singular pooled covariance (fewer dev images than prompts) stays usable
KIND = "gaussian"  # the posterior's "kind" in a calibration file (the group-masked LR's files have none)
SETTLE_COMPONENTS = 16  # classes whose unasked similarities settled_probability draws from (the rest count as "not")
SETTLE_CHUNK = 256  # images per block in settled_probability ((chunk, k, C) arrays)
GAIN_COMPONENTS = 16  # classes expected_accuracy_gain draws answers from and weighs (each image's most probable)
GAIN_DRAWS = 32  # draws of a group's answers per class in expected_accuracy_gain: 16 fixed normals and their negatives
GAIN_CHUNK = 64  # images per block in expected_accuracy_gain ((chunk, k, draws, k) arrays)
JITTERS = (1e-12, 1e-10, 1e-8, 1e-6)  # relative to the mean variance: tried in turn on a block that fails Cholesky
INFO_CLASSES = 32  # classes information_bound sums over (each image's most probable, renormalised)
INFO_FACTOR = {"bhattacharyya": 1 / 8, "kl": 1 / 2}  # D_ij's factor (times t) in the two pairwise estimators
INFO_CHUNK = 64  # rows per block when a row is summed over every class ((chunk, C, C) arrays)
# (asked set, group) whitened conditional means a model keeps, (C, K_g) each (13 KB at 151 classes and 11 options):
# a run touches at most G·2^(G−1) of them, so 2048 hold every one up to G = 9
DISTANCE_MEMO = 2048


def pd_cholesky(S: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of a covariance block S (k, k): a submatrix or Schur complement of the model's
    Σ, positive definite in exact arithmetic but not always in floats when Σ is nearly singular (a hand-made or
    damaged file with almost no ridge). Then the smallest of :data:`JITTERS` × mean variance that makes it one is
    added to the diagonal; past them, LinAlgError."""
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        scale = max(float(np.mean(np.abs(np.diag(S)))), np.finfo(float).tiny)
        for j in JITTERS:
            try:
                return np.linalg.cholesky(S + j * scale * np.eye(len(S)))
            except np.linalg.LinAlgError:
                continue
        raise


def conditional_blocks(cov: np.ndarray, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(KT (|A|, |B|) = Σ_AA⁻¹ Σ_AB, S (|B|, |B|) = Σ_BB − Σ_BA Σ_AA⁻¹ Σ_AB): how columns B given columns A (bool
    masks over Q) shift with z_A, and their conditional covariance (:func:`pd_cholesky` factors Σ_AA)."""
    if not A.any():
        return np.zeros((0, int(B.sum()))), cov[np.ix_(B, B)]
    L = pd_cholesky(cov[np.ix_(A, A)])
    KT = cho_solve((L, True), cov[np.ix_(A, B)])
    return KT, cov[np.ix_(B, B)] - cov[np.ix_(B, A)] @ KT


def asked_sets(asked: np.ndarray, sizes: np.ndarray):
    """Yield (a (G,) bool, A (Q,) bool, rows) for each distinct set of asked groups in ``asked`` (B, G): the set,
    its columns, and the images (indices into B) that asked exactly it. The Gaussian's conditionals are computed
    once per set."""
    col_group = _col_group(sizes)
    sets, which = np.unique(np.asarray(asked, dtype=bool), axis=0, return_inverse=True)
    for j, a in enumerate(sets):
        yield a, a[col_group], np.nonzero(which.reshape(-1) == j)[0]


@dataclass(frozen=True)
class GaussianPosterior:
    """Linear discriminant analysis over the standardised similarities (see the module docstring).

    mean, scale : (Q,) the standardisation, from the dev images. means : (C, Q) μ_c. cov : (Q, Q) Σ (shrunk, with
    the ridge). log_prior_c : (C,) log π_c (``log_prior`` in the file). temperature : t. shrink : s. sizes : (G,) K_g.
    n_dev : (C,) dev images per class.
    """

    mean: np.ndarray
    scale: np.ndarray
    means: np.ndarray
    cov: np.ndarray
    log_prior_c: np.ndarray
    temperature: float
    shrink: float
    sizes: np.ndarray
    n_dev: np.ndarray

    conditional = True  # the loop recomputes the posterior from all seen similarities (not an additive update)
    has_head = False

    @property
    def n_classes(self) -> int:
        return self.means.shape[0]

    def log_prior(self, n_images: int) -> np.ndarray:
        """(n_images, C) log softmax(t·log π): the posterior before any question."""
        return np.broadcast_to(log_softmax(self.temperature * self.log_prior_c), (int(n_images), self.n_classes)).copy()

    def log_posterior(self, sims: np.ndarray, asked: np.ndarray | None = None) -> np.ndarray:
        """Normalised log posterior (B, C) given the asked groups' similarities.

        sims : (B, Q) similarities (columns of unasked groups are not read); asked : (B, G) bool, or None for every
        group. Images are grouped by their set of asked groups; one Cholesky factor of Σ_AA per distinct set.
        """
        sims = np.asarray(sims, dtype=np.float64)
        B, G = sims.shape[0], len(self.sizes)
        asked = np.ones((B, G), dtype=bool) if asked is None else np.asarray(asked, dtype=bool)
        z = (sims - self.mean) / self.scale
        out = self.log_prior(B)
        if B == 0:
            return out
        for _, A, rows in asked_sets(asked, self.sizes):
            if not A.any():
                continue
            L = pd_cholesky(self.cov[np.ix_(A, A)])
            u = np.linalg.solve(L, z[np.ix_(rows, A)].T).T  # (n, |A|) whitened
            v = np.linalg.solve(L, self.means[:, A].T).T  # (C, |A|)
            quad = (u * u).sum(axis=1)[:, None] - 2.0 * u @ v.T + (v * v).sum(axis=1)[None, :]  # (n, C)
            out[rows] = self.temperature * (self.log_prior_c[None, :] - 0.5 * quad)
        return log_softmax(out, axis=1)

    @cached_property
    def linear_form(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (C, Q), b (C,)): with every group asked, t·(W_c·z + b_c) is class c's log posterior up to a term
        shared by the classes, W = M Σ⁻¹ and b_c = log π_c − ½ μ_cᵀ Σ⁻¹ μ_c (LDA's linear discriminant)."""
        W = cho_solve(cho_factor(self.cov), self.means.T).T
        return W, self.log_prior_c - 0.5 * (W * self.means).sum(axis=1)

    def settled_probability(self, sims: np.ndarray, asked: np.ndarray, log_post: np.ndarray,
                            offset: np.ndarray | None = None) -> np.ndarray:
        """:func:`settled_probability` of this model."""
        return settled_probability(self, sims, asked, log_post, offset)

    def expected_accuracy_gain(self, sims: np.ndarray, asked: np.ndarray, log_post: np.ndarray) -> np.ndarray:
        """:func:`expected_accuracy_gain` of this model."""
        return expected_accuracy_gain(self, sims, asked, log_post)

    def own_information(self, asked: np.ndarray, log_post: np.ndarray) -> np.ndarray:
        """(n, G) :func:`information_bound` of this model (its Bhattacharyya lower bound); asked groups 0. Not
        ``information_gain``: the loop reads that in place of the channel's EIG for every policy that reads an
        EIG (and for δ), and this only for a policy that asks for it (``reads_model_eig``)."""
        return information_bound(self, asked, log_post)

    @cached_property
    def distances(self) -> "PairwiseDistances":
        """This model's :class:`PairwiseDistances`, made once (a pickle carries none of its entries)."""
        return PairwiseDistances(self)

    def to_dict(self) -> dict:
        return {"kind": KIND, "mean": self.mean.tolist(), "scale": self.scale.tolist(), "means": self.means.tolist(),
                "cov": self.cov.tolist(), "log_prior": self.log_prior_c.tolist(),
                "temperature": float(self.temperature), "shrink": float(self.shrink),
                "sizes": [int(k) for k in self.sizes], "n_dev": [int(n) for n in self.n_dev]}

    @classmethod
    def from_dict(cls, d: dict) -> "GaussianPosterior":
        """Read :meth:`to_dict`'s form, refusing (ValueError) anything the loop could not use: wrong shapes or
        types, non-finite or absurd values, a covariance that is not symmetric positive definite (by its Cholesky
        factor, as the loop will take it), a temperature outside :data:`TEMPERATURE_BOUNDS`, and a model whose
        posterior at its own class means is not finite."""
        raw_sizes = np.asarray(d["sizes"], dtype=np.float64)
        if raw_sizes.ndim != 1 or not np.isfinite(raw_sizes).all() or (raw_sizes != np.round(raw_sizes)).any() \
                or (raw_sizes < 1).any() or raw_sizes.sum() > MAX_PROMPTS:
            raise ValueError(f"Gaussian posterior: sizes should be whole numbers >= 1 summing to <= {MAX_PROMPTS}")
        sizes = raw_sizes.astype(np.int64)
        Q = int(sizes.sum())
        means = np.asarray(d["means"], dtype=np.float64)
        C = means.shape[0] if means.ndim == 2 else -1
        arrs = {"mean": (np.asarray(d["mean"], dtype=np.float64), (Q,)),
                "scale": (np.asarray(d["scale"], dtype=np.float64), (Q,)), "means": (means, (C, Q)),
                "cov": (np.asarray(d["cov"], dtype=np.float64), (Q, Q)),
                "log_prior": (np.asarray(d["log_prior"], dtype=np.float64), (C,)),
                "n_dev": (np.asarray(d["n_dev"], dtype=np.float64), (C,))}
        for name, (a, shape) in arrs.items():
            if a.shape != shape:
                raise ValueError(f"Gaussian posterior: {name} should have shape {shape} (from sizes and means), "
                                 f"got {a.shape}")
            if not np.isfinite(a).all() or (np.abs(a) > MAX_ABS).any():
                raise ValueError(f"Gaussian posterior: {name} should be finite, each entry within ±{MAX_ABS:g}")
        scale, n_dev = arrs["scale"][0], arrs["n_dev"][0]
        if (scale < SCALE_MIN).any():
            raise ValueError(f"Gaussian posterior: every scale must be >= {SCALE_MIN:g}")
        if (n_dev < 0).any() or (n_dev != np.round(n_dev)).any():
            raise ValueError("Gaussian posterior: n_dev should be whole numbers >= 0")
        cov = arrs["cov"][0]
        try:
            if not np.allclose(cov, cov.T):
                raise np.linalg.LinAlgError("not symmetric")
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError("Gaussian posterior: cov must be symmetric positive definite") from None
        t, shrink = d["temperature"], d["shrink"]
        for name, x, lo, hi in (("temperature", t, *TEMPERATURE_BOUNDS), ("shrink", shrink, 0.0, 1.0)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi:
                raise ValueError(f"Gaussian posterior: {name} should be a number in [{lo:g}, {hi:g}], got {x!r}")
        post = cls(mean=arrs["mean"][0], scale=scale, means=means, cov=cov, log_prior_c=arrs["log_prior"][0],
                   temperature=float(t), shrink=float(shrink), sizes=sizes, n_dev=n_dev.astype(np.int64))
        if not np.isfinite(post.log_posterior(post.means * post.scale + post.mean)).all():
            raise ValueError("Gaussian posterior: its posterior at its own class means is not finite (a damaged "
                             "covariance or scale)")
        return post


def settled_probability(post: GaussianPosterior, sims: np.ndarray, asked: np.ndarray, log_post: np.ndarray,
                        offset: np.ndarray | None = None, components: int = SETTLE_COMPONENTS) -> np.ndarray:
    """A lower bound (B,) on the probability, under the model, that asking every unasked group would leave the
    label where it is now: how settled each image's answer is (the loop's ``settle`` stop).

    sims : (B, Q) similarities (unasked columns are not read); asked : (B, G) bool; log_post : (B, C) the posterior
    now (normalised); its argmax is the label now and its probabilities weigh the classes the unasked similarities
    are drawn from. offset : (B, C) log prior added to the full system's logits (the caller's prior), or None.

    Given class c and the asked columns A, the unasked ones are z_R ~ N(m_c, S), m_c = μ_c,R + Σ_RA Σ_AA⁻¹(z_A −
    μ_c,A), S = Σ_RR − Σ_RA Σ_AA⁻¹ Σ_AR (shared by the classes). The full system's label is the argmax over c' of
    t·(W_c'·z + b_c') + offset_c' (:attr:`GaussianPosterior.linear_form`); its margin over c' for the label now, τ,
    is Gaussian given c, so P(label moves | c) ≤ Σ_c'≠τ Φ(−mean / sd) (the union bound). The bound sums
    (1 − min(1, that)) over the ``components`` most probable classes, weighted by their probabilities; the rest of
    the mass counts as moving. An image with every group asked gets 1.
    """
    sims = np.asarray(sims, dtype=np.float64)
    asked = np.asarray(asked, dtype=bool)
    log_post = np.asarray(log_post, dtype=np.float64)
    B, C = log_post.shape
    out = np.ones(B)
    if B == 0:
        return out
    offset = np.zeros((B, C)) if offset is None else np.asarray(offset, dtype=np.float64)
    W, b = post.linear_form
    t, cov, M = post.temperature, post.cov, post.means
    z = (sims - post.mean) / post.scale
    k = min(int(components), C)
    for _, A, members in asked_sets(asked, post.sizes):
        R = ~A
        if not R.any():
            continue
        KT, S = conditional_blocks(cov, A, R)  # (|A|, |R|) Σ_AA⁻¹ Σ_AR, and the unasked columns' covariance
        WR = W[:, R]
        V = WR @ S @ WR.T  # (C, C): var of t⁻¹·(margin of c over c') is V_cc + V_c'c' − 2 V_cc'
        P1 = (M[:, R] - M[:, A] @ KT) @ WR.T  # (C, C): m_c·W_c',R without the z_A part
        ZW = KT @ WR.T  # (|A|, C)
        for lo in range(0, len(members), SETTLE_CHUNK):
            rows = members[lo:lo + SETTLE_CHUNK]
            zA = z[np.ix_(rows, A)]
            u = zA @ ZW  # (n, C)
            lin = zA @ W[:, A].T + b[None, :]  # (n, C): the asked part of W·z, plus b
            lp = log_post[rows]
            top = lp.argmax(axis=1)
            n = np.arange(len(rows))
            const = t * (lin[n, top][:, None] - lin + u[n, top][:, None] - u) \
                + offset[rows, top][:, None] - offset[rows]  # (n, C)
            sd = t * np.sqrt(np.maximum(V[top, top][:, None] + np.diag(V)[None, :] - 2.0 * V[top], 0.0))
            comp = np.argsort(-lp, axis=1, kind="stable")[:, :k]  # (n, k)
            mean = const[:, None, :] + t * (P1[comp, top[:, None]][:, :, None] - P1[comp])  # (n, k, C)
            with np.errstate(divide="ignore", invalid="ignore"):
                moves = np.where(sd[:, None, :] > 0, ndtr(-mean / sd[:, None, :]), (mean <= 0).astype(float))
            moves[n, :, top] = 0.0
            stay = 1.0 - np.minimum(1.0, moves.sum(axis=2))  # (n, k)
            out[rows] = (np.exp(np.take_along_axis(lp, comp, axis=1)) * stay).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


@lru_cache(maxsize=64)
def _gain_draws(draws: int, dim: int) -> np.ndarray:
    """(draws, dim) standard normals, fixed (seed 0) and antithetic (the second half is the first negated): the same
    gain for the same inputs, and the odd moments of the draws are exactly 0."""
    half = np.random.default_rng(0).standard_normal((max(int(draws) // 2, 1), int(dim)))
    return np.concatenate([half, -half])


def expected_accuracy_gain(post: GaussianPosterior, sims: np.ndarray, asked: np.ndarray, log_post: np.ndarray,
                           components: int = GAIN_COMPONENTS, draws: int = GAIN_DRAWS) -> np.ndarray:
    """(B, G) for each group g not asked yet, how much asking it is expected to raise the top class's probability:
    E[max_c p(c | z_A, z_g)] − max_c p(c | z_A), under the model's own predictive (0 for asked groups). The top
    class's probability is the model's accuracy of its label, so this is the expected accuracy gain of asking g
    (the ``accuracy_per_prompt`` policy divides it by K_g): a one-step look-ahead at the confidence stop.

    sims : (B, Q) similarities (unasked columns are not read); asked : (B, G) bool; log_post : (B, C) the posterior
    now (normalised; the caller's prior included, it carries over). The tempered model is t·(log π_c − ½ Mahalanobis),
    so given class c and the asked columns A, group g's similarities have the tempered density N(m_c, S/t) with
    m_c = μ_c,g + Σ_gA Σ_AA⁻¹(z_A − μ_c,A), S = Σ_gg − Σ_gA Σ_AA⁻¹ Σ_Ag, and asking g adds −½·t·(z_g − m_c)ᵀS⁻¹(z_g −
    m_c) to each class's log posterior. Drawing z_g from that same predictive (the class from the posterior now,
    then ``draws`` fixed antithetic normals) keeps E[p(c | z_A, z_g)] = p(c | z_A), so the gain is ≥ 0 (clipped
    there against the draws' error). Over more than ``components`` classes, each image's most probable ones,
    renormalised.
    """
    sims = np.asarray(sims, dtype=np.float64)
    asked = np.asarray(asked, dtype=bool)
    log_post = np.asarray(log_post, dtype=np.float64)
    B, G = log_post.shape[0], len(post.sizes)
    out = np.zeros((B, G))
    if B == 0:
        return out
    z = (sims - post.mean) / post.scale
    col_group = _col_group(post.sizes)
    for a, A, members in asked_sets(asked, post.sizes):
        R = ~A
        KT_R, S_R = conditional_blocks(post.cov, A, R)  # every unasked column given the asked ones, factored once
        for g in np.nonzero(~a)[0]:
            cols = (col_group == g)[R]  # g's columns among the unasked: its blocks are sub-blocks of R's
            out[members, g] = _top_gain(post, z, log_post, members, A, R & (col_group == g), KT_R[:, cols],
                                        S_R[np.ix_(cols, cols)], components, draws)
    return np.maximum(out, 0.0)  # ≥ 0 in expectation; a few draws can fall just below


def remaining_accuracy_gain(post: GaussianPosterior, sims: np.ndarray, asked: np.ndarray, log_post: np.ndarray,
                            components: int = GAIN_COMPONENTS, draws: int = 2 * GAIN_DRAWS) -> np.ndarray:
    """(B,) how much asking *every* group not asked yet is expected to raise the top class's probability:
    E[max_c p(c | z_A, z_R)] − max_c p(c | z_A), under the model's own tempered predictive, as
    :func:`expected_accuracy_gain` computes it for one group (R all the unasked columns; 0 once every group is
    asked). Under a calibrated model, the accuracy an image gives up by stopping now. Read by
    ``bench.stop_variants`` (a stop rule it measures); the loop does not use it."""
    sims = np.asarray(sims, dtype=np.float64)
    asked = np.asarray(asked, dtype=bool)
    log_post = np.asarray(log_post, dtype=np.float64)
    out = np.zeros(log_post.shape[0])
    z = (sims - post.mean) / post.scale
    for _, A, members in asked_sets(asked, post.sizes):
        R = ~A
        if R.any():
            KT, S = conditional_blocks(post.cov, A, R)
            out[members] = _top_gain(post, z, log_post, members, A, R, KT, S, components, draws)
    return np.maximum(out, 0.0)


def _top_gain(post: GaussianPosterior, z: np.ndarray, log_post: np.ndarray, members: np.ndarray, A: np.ndarray,
              cols: np.ndarray, KT: np.ndarray, S: np.ndarray, components: int, draws: int) -> np.ndarray:
    """(len(members),) E[max p after the columns ``cols`` (Q,) bool] − max p now for the images ``members``, which
    have asked the columns A (Q,) bool: z (B, Q) standardised, log_post (B, C), KT (|A|, |cols|) Σ_AA⁻¹ Σ_A,cols
    and S (|cols|, |cols|) the columns' conditional covariance. Not clipped."""
    t, M = post.temperature, post.means
    k = min(int(components), log_post.shape[1])
    L = pd_cholesky(S)
    eps = _gain_draws(draws, int(cols.sum())) / np.sqrt(t)  # (D, K) whitened draws of the tempered predictive
    out = np.zeros(len(members))
    for lo in range(0, len(members), GAIN_CHUNK):
        rows = members[lo:lo + GAIN_CHUNK]
        lp = log_post[rows]
        comp = np.argsort(-lp, axis=1, kind="stable")[:, :k]  # (n, k)
        lk = np.take_along_axis(lp, comp, axis=1)
        lk = lk - logsumexp(lk, axis=1, keepdims=True)
        m = M[comp][:, :, cols] - (M[comp][:, :, A] - z[rows][:, None, A]) @ KT  # (n, k, K) the m_c
        u = np.linalg.solve(L, m.reshape(-1, m.shape[-1]).T).T.reshape(m.shape)  # whitened by S
        d = u[:, :, None, :] - u[:, None, :, :]  # (n, k, k, K): u_c − u_c', c drawn, c' weighed
        # drawn from class c: whitened z_cols = u_c + ε; class c' then gets −½·t·|ε + u_c − u_c'|²
        quad = (eps * eps).sum(axis=1)[None, None, :, None] \
            + 2.0 * np.einsum("dq,nckq->ncdk", eps, d) + (d * d).sum(axis=3)[:, :, None, :]
        new = lk[:, None, None, :] - 0.5 * t * quad  # (n, k drawn, D, k)
        top = np.exp(new.max(axis=3) - logsumexp(new, axis=3)).mean(axis=2)  # (n, k) E[max p' | c]
        out[lo:lo + len(rows)] = (np.exp(lk) * top).sum(axis=1) - np.exp(lk.max(axis=1))
    return out


class PairwiseDistances:
    """The whitened conditional means u^{g|A} (C, K_g) of a :class:`GaussianPosterior`, per (asked groups a (G,)
    bool, group g), in a :class:`BoundedMemo` of :data:`DISTANCE_MEMO` entries; called, the distances D^{g|A}
    (C, C) between them.

    Given the asked columns A, class c's group-g similarities are N(m_c, S) with m_c = μ_c,g + Σ_gA Σ_AA⁻¹ (z_A −
    μ_c,A) and S = Σ_gg − Σ_gA Σ_AA⁻¹ Σ_Ag. The difference m_i − m_j = (μ_i − μ_j)_g − Σ_gA Σ_AA⁻¹ (μ_i − μ_j)_A
    does not depend on z_A, so with u_c = L⁻¹ (μ_c,g − Σ_gA Σ_AA⁻¹ μ_c,A) (S = L Lᵀ), D_ij = |u_i − u_j|² =
    (m_i − m_j)ᵀ S⁻¹ (m_i − m_j) depends on the asked set and g only."""

    def __init__(self, post: GaussianPosterior):
        self.post, self.col_group = post, _col_group(post.sizes)
        self.memo = BoundedMemo(DISTANCE_MEMO)

    def whitened(self, asked: np.ndarray, g: int) -> np.ndarray:
        """(C, K_g) u^{g|A}."""
        a = np.asarray(asked, dtype=bool)
        return self.memo.get((a.tobytes(), int(g)), lambda: self._make(a, int(g)))

    def __call__(self, asked: np.ndarray, g: int) -> np.ndarray:
        """(C, C) D^{g|A}."""
        return _squared_distances(self.whitened(asked, g))

    def _make(self, a: np.ndarray, g: int) -> np.ndarray:
        M = self.post.means
        A, Bg = a[self.col_group], self.col_group == g
        KT, Sg = conditional_blocks(self.post.cov, A, Bg)
        m = M[:, Bg] - M[:, A] @ KT  # (C, K_g) the conditional means' part that differs between classes
        return np.linalg.solve(pd_cholesky(Sg), m.T).T


def _squared_distances(u: np.ndarray) -> np.ndarray:
    """(..., k, k) |u_i − u_j|² of points u (..., k, K), clipped at 0."""
    sq = (u * u).sum(axis=-1)
    return np.maximum(sq[..., :, None] + sq[..., None, :] - 2.0 * u @ np.swapaxes(u, -1, -2), 0.0)


def _mixture_information(lp: np.ndarray, D: np.ndarray, f: float) -> np.ndarray:
    """(n,) −Σ_i p_i log Σ_j p_j exp(−f·D_ij) for normalised log weights lp (n, k) and distances D (n, k, k)."""
    inner = logsumexp(lp[:, None, :] - f * D, axis=2)
    return np.maximum(-(np.exp(lp) * inner).sum(axis=1), 0.0)


def _information(lp: np.ndarray, f: float, top: int, among) -> np.ndarray:
    """(n,) :func:`_mixture_information` of posteriors lp (n, C), over each row's ``top`` most probable classes
    (renormalised), ``among(keep (m, top) int)`` giving their distances (m, top, top) and ``among(None)`` all
    classes' (C, C). A row whose cut would split classes of equal positive probability (a prior with equal dev
    counts makes every first-round row one) is summed over every class instead, so the result does not depend
    on how the classes are numbered; equal rows are computed once, in blocks of :data:`INFO_CHUNK`."""
    n, C = lp.shape
    if C <= top:
        return _mixture_information(lp, np.broadcast_to(among(None), (n, C, C)), f)
    part = np.argpartition(-lp, top, axis=1)
    keep = part[:, :top]
    cut = np.take_along_axis(lp, keep, axis=1).min(axis=1)
    tied = np.isfinite(cut) & (np.take_along_axis(lp, part[:, top:], axis=1).max(axis=1) >= cut)
    out = np.empty(n)
    if (~tied).any():
        kl = np.take_along_axis(lp[~tied], keep[~tied], axis=1)
        out[~tied] = _mixture_information(kl - logsumexp(kl, axis=1, keepdims=True), among(keep[~tied]), f)
    if tied.any():
        rows, which = np.unique(lp[tied], axis=0, return_inverse=True)
        full = among(None)
        vals = np.concatenate([_mixture_information(rows[i:i + INFO_CHUNK],
                                                    np.broadcast_to(full, (len(rows[i:i + INFO_CHUNK]), C, C)), f)
                               for i in range(0, len(rows), INFO_CHUNK)])
        out[tied] = vals[which.reshape(-1)]
    return out


def pairwise_information(log_post: np.ndarray, dist: np.ndarray, temperature: float, kind: str = "bhattacharyya",
                         top: int = INFO_CLASSES) -> np.ndarray:
    """(n,) −Σ_i p_i log Σ_j p_j exp(−f·t·D_ij), f = :data:`INFO_FACTOR` [kind], for posteriors ``log_post`` (n, C)
    (normalised) and distances ``dist`` (C, C): a lower (``bhattacharyya``) or upper (``kl``) bound on the
    information of a mixture of Gaussians with one covariance (Kolchinsky & Tracey 2017, *Estimating mixture entropy
    with pairwise distances*), in nats. Over more than ``top`` classes, each image's ``top`` most probable,
    renormalised (every class where the cut would split a tie: :func:`_information`)."""
    dist = np.asarray(dist, dtype=np.float64)
    return _information(np.asarray(log_post, dtype=np.float64), INFO_FACTOR[kind] * float(temperature), top,
                        lambda keep: dist if keep is None else dist[keep[:, :, None], keep[:, None, :]])


def information_bound(post: GaussianPosterior, asked: np.ndarray, log_post: np.ndarray,
                      kind: str = "bhattacharyya") -> np.ndarray:
    """(n, G) a closed-form bound on the model's own information I(C; z_g | z_A) of every unasked group g, in nats,
    for images with asked groups ``asked`` (n, G) bool and posterior ``log_post`` (n, C); 0 for asked groups.

    The tempered model (the one the loop updates with) answers group g with N(m_c, S/t) given class c (see
    :class:`PairwiseDistances`), so the information is that of a Gaussian mixture with weights p and one covariance,
    bracketed by :func:`pairwise_information` (``bhattacharyya`` below, ``kl`` above). It is what
    ``--policy model_eig_per_prompt`` reads (per prompt), and what the loop's δ stop reads then."""
    asked = np.asarray(asked, dtype=bool)
    lp = np.asarray(log_post, dtype=np.float64)
    out = np.zeros(asked.shape)
    f = INFO_FACTOR[kind] * float(post.temperature)
    for a, _, rows in asked_sets(asked, post.sizes):
        for g in np.nonzero(~a)[0]:
            u = post.distances.whitened(a, g)
            out[rows, g] = _information(lp[rows], f, INFO_CLASSES,
                                        lambda keep, u=u: _squared_distances(u if keep is None else u[keep]))
    return out


def pooled_covariance(z: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class means (C, Q), pooled within-class covariance (Q, Q)) of standardised similarities z (B, Q).

    The covariance divides by max(B − C_seen, 1), C_seen the classes with an image; a class with no image has a
    zero mean (:func:`fit_gaussian_posterior` is only used when every class has one)."""
    truth = np.asarray(truth, dtype=np.int64)
    counts = np.bincount(truth, minlength=n_classes)
    means = np.zeros((n_classes, z.shape[1]))
    np.add.at(means, truth, z)
    means /= np.maximum(counts, 1)[:, None]
    r = z - means[truth]
    return means, r.T @ r / max(len(truth) - int((counts > 0).sum()), 1)


def shrunk(cov: np.ndarray, s: float) -> np.ndarray:
    """(1 − s)·Σ + s·diag(Σ), plus :data:`RIDGE` on the diagonal."""
    out = (1.0 - s) * cov + s * np.diag(np.diag(cov))
    return out + RIDGE * np.eye(len(cov))


def _moments(sims: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple:
    """What a fit at any shrinkage and temperature rests on: (mean, scale, class means, unshrunk pooled covariance,
    class counts) of dev images sims (B, Q) of classes truth (B,)."""
    mean, scale = _standardise(sims)
    means, cov = pooled_covariance((sims - mean) / scale, truth, n_classes)
    return mean, scale, means, cov, np.bincount(truth, minlength=n_classes)


def _posterior_at(moments: tuple, sizes: np.ndarray, s: float, temperature: float = 1.0) -> GaussianPosterior:
    """The posterior of :func:`_moments` at shrinkage s and temperature t."""
    mean, scale, means, cov, counts = moments
    return GaussianPosterior(mean=mean, scale=scale, means=means, cov=shrunk(cov, s),
                             log_prior_c=log_softmax(np.log(counts + 1.0)), temperature=float(temperature),
                             shrink=float(s), sizes=np.asarray(sizes, dtype=np.int64), n_dev=counts)


def heldout_log_density(post: GaussianPosterior, sims: np.ndarray, truth: np.ndarray) -> float:
    """Mean log N(z_i; μ_{y_i}, Σ) of images sims (B, Q) of classes truth (B,) under ``post`` (in its own
    standardised units): the cross-validation score of the shrinkage."""
    z = (np.asarray(sims, dtype=np.float64) - post.mean) / post.scale
    L = np.linalg.cholesky(post.cov)
    u = np.linalg.solve(L, (z - post.means[truth]).T)
    return float(-0.5 * (u * u).sum(axis=0).mean() - np.log(np.diag(L)).sum() - 0.5 * len(z[0]) * np.log(2 * np.pi))


@dataclass(frozen=True)
class GaussianFit:
    """:func:`fit_gaussian_posterior`'s result. cv : (s, held-out mean log density) per s tried. heldout_log_post :
    (B, C) the cross-fitted full posterior of every dev image (None without cross-validation). fold_posteriors :
    one per fold, fitted on the other folds at the chosen s and t. folds : (B,) or None."""

    posterior: GaussianPosterior
    cv: tuple
    heldout_log_post: np.ndarray | None
    fold_posteriors: tuple = ()
    folds: np.ndarray | None = None


def fit_gaussian_posterior(sims: np.ndarray, truth: np.ndarray, sizes: np.ndarray, n_classes: int, *,
                           shrinks=SHRINK_GRID, n_folds: int = N_FOLDS, per_image: int = MASKS_PER_IMAGE,
                           seed: int = 0) -> GaussianFit:
    """Fit the Gaussian posterior on dev images (see the module docstring).

    sims : (B, Q) dev similarities; truth : (B,) class indices in [0, n_classes); sizes : (G,) K_g.
    s by the mean held-out log density over ``n_folds`` stratified folds (the largest s among ties); t by the
    held-out NLL of the true class over each held-out image's full row and ``per_image`` random prefixes (the
    fold models at that s; each fold model's own t without its fold's rows). Without two folds: s = the grid's
    middle value, t = 1, no held-out figures.
    """
    sims, truth, sizes = dev_arrays(sims, truth, sizes, "the Gaussian posterior")
    shrinks = tuple(float(s) for s in shrinks)
    fold = stratified_folds(truth, n_folds, seed)
    ids = np.unique(fold)
    if len(ids) < 2 or len(shrinks) < 2:
        s = shrinks[len(shrinks) // 2]
        return GaussianFit(posterior=_posterior_at(_moments(sims, truth, n_classes), sizes, s), cv=(),
                           heldout_log_post=None)
    dens = {s: 0.0 for s in shrinks}
    moments = [_moments(sims[fold != f], truth[fold != f], n_classes) for f in ids]  # each fold's training part
    for f, m in zip(ids, moments):
        te = fold == f
        for s in shrinks:
            dens[s] += heldout_log_density(_posterior_at(m, sizes, s), sims[te], truth[te]) * te.sum() / len(truth)
    cv = tuple((s, float(dens[s])) for s in shrinks)
    best = max(shrinks, key=lambda s: (dens[s], s))
    folds_at = [_posterior_at(m, sizes, best) for m in moments]
    # the temperature: held-out rows (full and random prefixes) of every fold, scored by that fold's model at t = 1
    # (its logits, computed once). The shipped model's t uses every fold's rows; fold j's model gets a t fitted
    # without fold j's rows, so that its held-out scores (what calibrate compares) were not tuned on the images
    # they score
    parts = [(ll, y) for ll, y, _ in temperature_rows(sims, truth, fold, folds_at, per_image=per_image, seed=seed)]
    t = _fit_temperature(parts)
    fold_posteriors = tuple(replace(p, temperature=_fit_temperature(parts[:j] + parts[j + 1:]))
                            for j, p in enumerate(folds_at))
    held = np.zeros((len(truth), n_classes))
    for f, post in zip(ids, fold_posteriors):
        held[fold == f] = post.log_posterior(sims[fold == f])
    return GaussianFit(posterior=_posterior_at(_moments(sims, truth, n_classes), sizes, best, t), cv=cv,
                       heldout_log_post=held, fold_posteriors=fold_posteriors, folds=fold)


def temperature_rows(sims: np.ndarray, truth: np.ndarray, fold: np.ndarray, fold_posteriors, *,
                     per_image: int = MASKS_PER_IMAGE, seed: int = 0) -> list:
    """The held-out rows a fit's temperature is chosen on: per fold f of ``np.unique(fold)``, in that order, each of
    its images' full row and ``per_image`` random prefixes (``training_rows`` with seed + 1), scored by
    ``fold_posteriors[j]`` (fitted without fold f) at t = 1. Returns [(logits (R, C), truth (R,), asked (R, G))].

    sims : (B, Q); truth, fold : (B,). :func:`fit_gaussian_posterior` fits t on them (``seed`` its own)."""
    out = []
    for f, post in zip(np.unique(fold), fold_posteriors):
        te = np.nonzero(fold == f)[0]
        img, asked = training_rows(len(te), len(post.sizes), per_image=per_image, seed=seed + 1)
        out.append((replace(post, temperature=1.0).log_posterior(sims[te][img], asked), truth[te][img], asked))
    return out


def _fit_temperature(parts) -> float:
    """t minimising the mean NLL of the true class over parts of (logits at t = 1 (R, C), truth (R,)): the
    log posterior at t is log_softmax(t·logits)."""

    def nll(t: float) -> float:
        tot, n = 0.0, 0
        for ll, y in parts:
            lp = log_softmax(t * ll, axis=1)
            tot -= lp[np.arange(len(y)), y].sum()
            n += len(y)
        return tot / n

    return float(minimize_scalar(nll, bounds=TEMPERATURE_BOUNDS, method="bounded",
                                 options={"xatol": 1e-4}).x)
