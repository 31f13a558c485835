"""Answer models fitted on labelled dev images of the classes being classified (the *few-shot* setting).

numpy/scipy (and threadpoolctl: one BLAS thread inside the fits); no I/O, no torch. Notation as in
:mod:`engine.core.scoring`: B images, C classes, G groups, K_g options of group g, Q = Σ_g K_g prompts, the option
axis of all groups concatenated.

Two halves (issue 26):

- **The posterior** (:class:`FewShotPosterior`, :func:`fit_few_shot_posterior`): a group-masked
  multinomial logistic regression over the groups' similarities,

      logit_c = b_c + Σ_{g asked} (W_g[c]·z_g + m_g[c]),   z = (s − mean) / scale (standardised on dev),

  trained on the dev images, each repeated with random prefixes of random group orders (the other
  groups masked, as V-IP trains its classifier on random query histories), so that any set of asked
  groups gives a calibrated posterior. It is additive per group: each asked group adds the per-class
  log-likelihood term ℓ_g(c) = W_g[c]·z_g + m_g[c] to the log posterior, and the prior is softmax(b),
  so it plugs into the adaptive loop's additive update as it is. With every group asked it is exactly
  a plain multinomial LR on all Q similarities (intercept b + Σ_g m_g). The masked design matrix
  (masked features zeroed, plus one indicator column per group) makes the fit a plain multinomial LR,
  fitted by L-BFGS with the L2 strength chosen by cross-validated held-out NLL on dev.
- **The generative half** (:func:`per_class_channel`, :func:`temper_channel`, :func:`fit_tempering`):
  P_g(k | c) = the mean soft answer of class c's own dev images, shrunk towards a rule channel with α
  pseudo-images (Branson et al.'s class-conditional answer model), and per-group exponents β_g fitted
  on cross-fitted dev prefixes. The policies' EIG and lookahead read this channel (tempered); the
  posterior the loop reports and stops on is the few-shot posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize
from scipy.special import entr, log_softmax, logsumexp

from engine.common.threads import one_blas_thread
from engine.core.scoring import Channel, bayes_loglik, check_logit_scales, full_bayes_log_posterior, group_log_probs

REG_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried by cross-validation (per standardised feature)
N_FOLDS = 3
MASKS_PER_IMAGE = 8  # random prefixes per dev image, besides its full row
SCALE_FLOOR = 1e-6  # a prompt whose dev similarities do not vary is not rescaled by less than this


def _offsets(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _col_group(sizes: np.ndarray) -> np.ndarray:
    """(Q,) the group of every column."""
    return np.repeat(np.arange(len(sizes)), sizes)


# --------------------------------------------------------------------------- the posterior
@dataclass(frozen=True)
class FewShotPosterior:
    """A group-masked multinomial logistic regression (see the module docstring).

    mean, scale : (Q,) the standardisation of the similarities, from the dev images.
    W : (C, Q) weights; m : (C, G) per-group offsets; b : (C,) prior logits.
    sizes : (G,) K_g. reg : the L2 strength it was fitted with. n_dev : (C,) dev images per class.
    head_W : (C, Q), head_b : (C,), head_reg : the *full-system head*, a plain multinomial LR on all Q
        standardised similarities fitted on the full rows only (:func:`fit_plain_lr`); None without one.
        With a head, an image for which every group has been asked gets the head's posterior
        softmax(head_W·z + head_b) instead of the masked model's (partial sets keep the masked model).
    """

    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray
    m: np.ndarray
    b: np.ndarray
    sizes: np.ndarray
    reg: float
    n_dev: np.ndarray
    head_W: np.ndarray | None = None
    head_b: np.ndarray | None = None
    head_reg: float | None = None

    @property
    def n_classes(self) -> int:
        return self.W.shape[0]

    @property
    def has_head(self) -> bool:
        """Whether the posterior with every group asked is the full-system head (see the class docstring)."""
        return self.head_W is not None

    def cols(self, g: int) -> slice:
        o = int(_offsets(self.sizes)[g])
        return slice(o, o + int(self.sizes[g]))

    def log_prior(self, n_images: int) -> np.ndarray:
        """(n_images, C) log softmax(b): the posterior before any question."""
        return np.broadcast_to(log_softmax(self.b), (int(n_images), self.n_classes)).copy()

    def group_loglik(self, g: int, sims: np.ndarray) -> np.ndarray:
        """ℓ_g (B, C) = W_g·z_g + m_g for one group's similarities sims (B, K_g); added to the log posterior."""
        sims = np.asarray(sims, dtype=np.float64)
        c = self.cols(g)
        z = (sims - self.mean[c]) / self.scale[c]
        return z @ self.W[:, c].T + self.m[:, g][None, :]

    def log_posterior(self, sims: np.ndarray, asked: np.ndarray | None = None) -> np.ndarray:
        """Normalised log posterior (B, C) after the asked groups.

        sims : (B, Q) similarities (columns of unasked groups are not read); asked : (B, G) bool, or
        None for every group.
        """
        sims = np.asarray(sims, dtype=np.float64)
        B, G = sims.shape[0], len(self.sizes)
        asked = np.ones((B, G), dtype=bool) if asked is None else np.asarray(asked, dtype=bool)
        z = self._z(sims)
        logits = _design(z, asked, self.sizes) @ np.concatenate([self.W, self.m], axis=1).T + self.b
        if self.has_head:
            full = asked.all(axis=1)
            if full.any():
                logits[full] = z[full] @ self.head_W.T + self.head_b
        return log_softmax(logits, axis=1)

    def _z(self, sims: np.ndarray) -> np.ndarray:
        return (np.asarray(sims, dtype=np.float64) - self.mean) / self.scale

    def to_dict(self) -> dict:
        head = None if not self.has_head else {"W": self.head_W.tolist(), "b": self.head_b.tolist(),
                                                   "reg": float(self.head_reg)}
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "W": self.W.tolist(), "m": self.m.tolist(),
                "b": self.b.tolist(), "sizes": [int(k) for k in self.sizes], "reg": float(self.reg),
                "n_dev": [int(n) for n in self.n_dev], "head": head}

    @classmethod
    def from_dict(cls, d: dict) -> "FewShotPosterior":
        sizes = np.asarray(d["sizes"], dtype=np.int64)
        Q, G = int(sizes.sum()), len(sizes)
        W = np.asarray(d["W"], dtype=np.float64)
        C = W.shape[0] if W.ndim == 2 else -1
        arrs = {"mean": (np.asarray(d["mean"], dtype=np.float64), (Q,)),
                "scale": (np.asarray(d["scale"], dtype=np.float64), (Q,)), "W": (W, (C, Q)),
                "m": (np.asarray(d["m"], dtype=np.float64), (C, G)), "b": (np.asarray(d["b"], dtype=np.float64), (C,)),
                "n_dev": (np.asarray(d["n_dev"], dtype=np.int64), (C,))}
        for name, (a, shape) in arrs.items():
            if a.shape != shape or not np.isfinite(a).all():
                raise ValueError(f"few-shot posterior: {name} should be finite with shape {shape}, got {a.shape}")
        if (arrs["scale"][0] <= 0).any():
            raise ValueError("few-shot posterior: every scale must be > 0")
        head = {}
        if d.get("head") is not None:  # files before the full-system head have none
            hW, hb = np.asarray(d["head"]["W"], dtype=np.float64), np.asarray(d["head"]["b"], dtype=np.float64)
            if hW.shape != (C, Q) or hb.shape != (C,) or not (np.isfinite(hW).all() and np.isfinite(hb).all()):
                raise ValueError(f"few-shot posterior: head.W should be finite ({C}, {Q}) and head.b ({C},), got "
                                 f"{hW.shape} and {hb.shape}")
            head = {"head_W": hW, "head_b": hb, "head_reg": float(d["head"]["reg"])}
        return cls(sizes=sizes, reg=float(d["reg"]), **{k: v[0] for k, v in arrs.items()}, **head)


def _design(z: np.ndarray, asked: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The masked design matrix (R, Q + G): z with unasked groups' columns zeroed, then the asked indicators.

    z : (R, Q) standardised similarities; asked : (R, G) bool.
    """
    colmask = asked[:, _col_group(np.asarray(sizes))]
    return np.concatenate([np.where(colmask, z, 0.0), asked.astype(np.float64)], axis=1)


def random_prefix_masks(n_images: int, n_groups: int, per_image: int, rng: np.random.Generator) -> np.ndarray:
    """(n_images·per_image, G) bool: for each copy, a random prefix (length uniform on 0..G) of a random order.

    Row r belongs to image r // per_image.
    """
    R = int(n_images) * int(per_image)
    order = np.argsort(rng.random((R, n_groups)), axis=1)  # a random order per row
    length = rng.integers(0, n_groups + 1, size=R)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_groups)[None, :].repeat(R, axis=0), axis=1)
    return rank < length[:, None]


def training_rows(n_images: int, n_groups: int, *, per_image: int = MASKS_PER_IMAGE, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(image index (R,), asked (R, G) bool): every image once with every group asked, then ``per_image``
    random prefixes of random orders."""
    rng = np.random.default_rng([seed, 2626])
    full = np.ones((n_images, n_groups), dtype=bool)
    masks = random_prefix_masks(n_images, n_groups, per_image, rng)
    img = np.concatenate([np.arange(n_images), np.repeat(np.arange(n_images), per_image)])
    return img, np.concatenate([full, masks])


def _fit_lr(x: np.ndarray, y: np.ndarray, n_classes: int, reg: float, n_penalised: int,
            w0: np.ndarray | None = None, maxiter: int = 500) -> np.ndarray:
    """Multinomial LR by L-BFGS: argmin mean CE + reg/2·‖first n_penalised weight columns‖².

    x : (R, D) design; y : (R,) int classes. Returns (C, D + 1) weights, the last column the intercept.
    """
    R, D = x.shape
    C = int(n_classes)
    Y = np.zeros((R, C))
    Y[np.arange(R), y] = 1.0
    pen = np.zeros(D + 1)
    pen[:n_penalised] = 1.0
    xb = np.concatenate([x, np.ones((R, 1))], axis=1)

    def f(theta):
        Wt = theta.reshape(C, D + 1)
        lp = log_softmax(xb @ Wt.T, axis=1)
        loss = -(Y * lp).sum() / R + 0.5 * reg * ((Wt * pen) ** 2).sum()
        grad = (np.exp(lp) - Y).T @ xb / R + reg * Wt * pen
        return loss, grad.ravel()

    theta0 = np.zeros(C * (D + 1)) if w0 is None else w0.ravel()
    # One BLAS thread: L-BFGS calls f hundreds of times on products too small to share out. On the project's
    # 2-core machine OpenBLAS's own threads made `calibrate --setting few-shot`'s fits 10x slower on a 15-class
    # probe pair (6.2 s against 0.6 s) and 2x slower at 151 classes and 1,496 dev images (68 s against 34 s).
    with one_blas_thread():
        res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    return res.x.reshape(C, D + 1)


def _standardise(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = sims.mean(axis=0)
    scale = np.maximum(sims.std(axis=0), SCALE_FLOOR)
    return mean, scale


def _fit_posterior_at(sims, truth, sizes, n_classes, reg, per_image, seed, w0=None):
    mean, scale = _standardise(sims)
    img, asked = training_rows(len(truth), len(sizes), per_image=per_image, seed=seed)
    x = _design((sims[img] - mean) / scale, asked, sizes)
    Q = int(sizes.sum())
    theta = _fit_lr(x, truth[img], n_classes, reg, n_penalised=Q, w0=w0)
    # m is not penalised, but it is only identified through the masked rows; b likewise
    return FewShotPosterior(mean=mean, scale=scale, W=theta[:, :Q], m=theta[:, Q:-1], b=theta[:, -1],
                            sizes=np.asarray(sizes, dtype=np.int64), reg=float(reg),
                            n_dev=np.bincount(truth, minlength=n_classes)), theta


def stratified_folds(truth: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """(B,) fold index in 0..n_folds-1 of each image, each class's images dealt round-robin after a seeded shuffle."""
    truth = np.asarray(truth, dtype=np.int64)
    rng = np.random.default_rng([seed, 3131])
    fold = np.zeros(len(truth), dtype=np.int64)
    start = 0
    for c in np.unique(truth):
        idx = np.nonzero(truth == c)[0]
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (start + np.arange(len(idx))) % n_folds
        start += len(idx)
    return fold


def _fit_head_at(sims, truth, n_classes, reg, w0=None):
    """A plain multinomial LR on all Q standardised similarities (full rows only).

    Returns ((mean, scale, W (C, Q), b (C,)), the fitted parameters (C, Q + 1) for a warm start)."""
    mean, scale = _standardise(sims)
    theta = _fit_lr((sims - mean) / scale, truth, n_classes, reg, n_penalised=sims.shape[1], w0=w0)
    return (mean, scale, theta[:, :-1], theta[:, -1]), theta


def _head_log_posterior(head, sims):
    mean, scale, W, b = head
    return log_softmax(((sims - mean) / scale) @ W.T + b, axis=1)


@dataclass(frozen=True)
class PosteriorFit:
    """:func:`fit_few_shot_posterior`'s result: the posterior, and the cross-validation behind it.

    cv : one row per strength tried for the masked model: (reg, held-out NLL over masked rows, held-out
    accuracy with every group asked, held-out NLL with every group asked). head_cv : the same rows for the
    full-system head (reg, held-out full NLL, held-out full accuracy, held-out full NLL). heldout_log_post :
    (B, C) the cross-fitted full posterior of every dev image (the head's when it is kept; None without
    cross-validation); heldout_masked, heldout_head : the same for each alternative. fold_posteriors : one
    posterior per fold, fitted on the other folds at the chosen strengths (with the head when it is kept),
    for cross-fitted paths; () without cross-validation. folds : (B,) the folds used (None without).
    head_kept : why the head was kept or not (one line).
    """

    posterior: FewShotPosterior
    cv: tuple
    heldout_log_post: np.ndarray | None
    head_cv: tuple = ()
    heldout_masked: np.ndarray | None = None
    heldout_head: np.ndarray | None = None
    fold_posteriors: tuple = ()
    folds: np.ndarray | None = None
    head_kept: str = ""


def _with_head(post: FewShotPosterior, head, reg) -> FewShotPosterior:
    """``post`` with the head (mean, scale, W, b) attached; its standardisation must be the posterior's."""
    mean, scale, W, b = head
    if not (np.array_equal(mean, post.mean) and np.array_equal(scale, post.scale)):
        raise ValueError("the full-system head must share the masked model's standardisation")
    return replace(post, head_W=W, head_b=b, head_reg=float(reg))


def fit_plain_lr(x: np.ndarray, truth: np.ndarray, n_classes: int, *, regs=REG_GRID, n_folds: int = N_FOLDS,
                 seed: int = 0) -> tuple[tuple, float, tuple, np.ndarray | None]:
    """A plain multinomial LR on standardised features x (B, D), L2 strength by cross-validated held-out NLL.

    The few-shot posterior's full-system head, and the bench's "LR on the same similarities" baseline: one
    function, so the two are the same fit. Returns ((mean, scale, W (C, D), b (C,)), reg, cv rows
    (reg, NLL, accuracy, NLL), held-out (B, C) log posterior at the chosen strength or None) — folds as
    :func:`stratified_folds`, the strongest strength first, each warm-starting the next.
    """
    x = np.asarray(x, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    regs = tuple(float(r) for r in regs)
    fold = stratified_folds(truth, n_folds, seed)
    if len(regs) < 2 or n_folds < 2 or len(np.unique(fold)) < 2:
        return _fit_head_at(x, truth, n_classes, regs[0])[0], regs[0], (), None
    held, _ = _crossfit_heads(x, truth, n_classes, regs, fold)
    rows = [(r, *_scores(held[r], truth)) for r in regs]
    best = min(rows, key=lambda t: (t[1], -t[0]))[0]
    return _fit_head_at(x, truth, n_classes, best)[0], best, tuple((r, n, a, n) for r, n, a in rows), held[best]


def _scores(lp, truth):
    """(NLL of the true class, accuracy) of a (B, C) log posterior."""
    return float(-lp[np.arange(len(truth)), truth].mean()), float((lp.argmax(1) == truth).mean())


def _crossfit_heads(x, truth, n_classes, regs, fold):
    """Held-out (B, C) log posteriors of the plain LR at every strength, and the fold heads {reg: [head per fold]}."""
    held = {r: np.zeros((len(truth), n_classes)) for r in regs}
    heads = {r: [] for r in regs}
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        w0 = None
        for r in sorted(regs, reverse=True):
            head, w0 = _fit_head_at(x[tr], truth[tr], n_classes, r, w0)
            held[r][te] = _head_log_posterior(head, x[te])
            heads[r].append(head)
    return held, heads


def dev_arrays(sims, truth, sizes, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sims (B, Q) float64, truth (B,) int64, sizes (G,) int64) of dev images for a posterior fit, checked: Q =
    Σ sizes, one class per image, at least one image (a ValueError naming ``what`` otherwise)."""
    sims = np.asarray(sims, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sims.ndim != 2 or sims.shape[1] != int(sizes.sum()) or truth.shape != (sims.shape[0],):
        raise ValueError(f"sims should be (B, {int(sizes.sum())}) and truth (B,), got {sims.shape} and {truth.shape}")
    if len(truth) == 0:
        raise ValueError(f"no dev images to fit {what} on")
    return sims, truth, sizes


def fit_few_shot_posterior(sims: np.ndarray, truth: np.ndarray, sizes: np.ndarray, n_classes: int, *,
                           regs=REG_GRID, n_folds: int = N_FOLDS, per_image: int = MASKS_PER_IMAGE,
                           seed: int = 0, head: bool = True) -> PosteriorFit:
    """Fit the group-masked LR on dev images, choosing its L2 strength by cross-validated held-out NLL; and the
    full-system head, kept when its cross-validated full-row NLL is no higher than the masked model's.

    sims : (B, Q) dev similarities; truth : (B,) class indices in [0, n_classes); sizes : (G,) K_g.
    regs : the strengths tried (one value: no cross-validation, and no head). The held-out score of a
    masked strength is the mean NLL of the true class over the held-out images' full rows and random
    prefixes; the head's is the mean NLL over their full rows. The masked model alone has to serve every
    partial set, so its weights trade the full rows against the prefixes; the head serves only the full
    rows (where a plain LR fitted to them is 1–3 points more accurate on the probe pairs' dev images).
    """
    sims, truth, sizes = dev_arrays(sims, truth, sizes, "the few-shot posterior")
    regs = tuple(float(r) for r in regs)
    fold = stratified_folds(truth, n_folds, seed)
    if not (len(regs) > 1 and n_folds > 1 and len(np.unique(fold)) > 1):
        post, _ = _fit_posterior_at(sims, truth, sizes, n_classes, regs[0], per_image, seed)
        return PosteriorFit(posterior=post, cv=(), heldout_log_post=None, head_kept="no head: no cross-validation")
    scores = {r: [] for r in regs}
    held_by_reg = {r: np.zeros((len(truth), n_classes)) for r in regs}
    fold_posts = {r: [] for r in regs}
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        w0 = None
        for r in sorted(regs, reverse=True):  # strongest first, each warm-starting the next
            post, w0 = _fit_posterior_at(sims[tr], truth[tr], sizes, n_classes, r, per_image, seed, w0)
            img, asked = training_rows(int(te.sum()), len(sizes), per_image=per_image, seed=seed + 1)
            lp = post.log_posterior(sims[te][img], asked)
            scores[r].append(-lp[np.arange(len(img)), truth[te][img]])
            held_by_reg[r][te] = post.log_posterior(sims[te])
            fold_posts[r].append(post)
    cv_rows = []
    for r in regs:
        nll_full, acc_full = _scores(held_by_reg[r], truth)
        cv_rows.append((r, float(np.concatenate(scores[r]).mean()), acc_full, nll_full))
    best = min(cv_rows, key=lambda t: (t[1], -t[0]))[0]
    masked_held = held_by_reg[best]
    post, _ = _fit_posterior_at(sims, truth, sizes, n_classes, best, per_image, seed)
    fold_posteriors = tuple(fold_posts[best])
    out = dict(posterior=post, cv=tuple(cv_rows), heldout_log_post=masked_held, heldout_masked=masked_held,
               fold_posteriors=fold_posteriors, folds=fold, head_kept="no head (not asked for)")
    if head:
        hheld, hfolds = _crossfit_heads(sims, truth, n_classes, regs, fold)
        hrows = [(r, *_scores(hheld[r], truth)) for r in regs]
        hbest = min(hrows, key=lambda t: (t[1], -t[0]))[0]
        nll_h, _ = _scores(hheld[hbest], truth)
        nll_m, _ = _scores(masked_held, truth)
        out.update(head_cv=tuple((r, n, a, n) for r, n, a in hrows), heldout_head=hheld[hbest])
        if nll_h <= nll_m:
            full_head, _ = _fit_head_at(sims, truth, n_classes, hbest)
            out.update(posterior=_with_head(post, full_head, hbest), heldout_log_post=hheld[hbest],
                       fold_posteriors=tuple(_with_head(p, h, hbest) for p, h in zip(fold_posteriors, hfolds[hbest])),
                       head_kept=f"head kept: held-out full-system NLL {nll_h:.4f} <= masked model's {nll_m:.4f}")
        else:
            out["head_kept"] = f"no head: held-out full-system NLL {nll_h:.4f} > masked model's {nll_m:.4f}"
    return PosteriorFit(**out)


# --------------------------------------------------------------------------- the generative half
def soft_answers(sims: np.ndarray, sizes: np.ndarray, lam) -> np.ndarray:
    """(B, Q) p_g = softmax(λ_g·s_g) of every group, concatenated. lam : a float or (G,) λ_g."""
    sims = np.asarray(sims, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    lams = check_logit_scales(lam, len(sizes))
    off = _offsets(sizes)
    return np.concatenate([np.exp(group_log_probs(sims[:, o:o + k], lams[g]))
                           for g, (o, k) in enumerate(zip(off, sizes))], axis=1)


def per_class_channel(soft: np.ndarray, truth: np.ndarray, prior_P: np.ndarray, alpha: float) -> np.ndarray:
    """P_g(k | c): class c's mean soft answer shrunk towards a rule channel with α pseudo-images.

    soft : (B, Q) soft answers of dev images (:func:`soft_answers`), each group's segment summing to 1.
    truth : (B,) class indices; prior_P : (C, Q) the rule channel (:attr:`Channel.P`), segments summing to 1.
    alpha : α ≥ 0. Returns (C, Q) = (Σ_{i: c_i = c} soft_i + α·prior_P[c]) / (n_c + α); a class with no
    dev image gets its prior row (also with α = 0). α → ∞ gives the rule channel, α → 0 the empirical mean.
    """
    soft = np.asarray(soft, dtype=np.float64)
    prior_P = np.asarray(prior_P, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    if alpha < 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha == {alpha}, must be a finite number >= 0")
    C = prior_P.shape[0]
    sums = np.zeros_like(prior_P)
    np.add.at(sums, truth, soft)
    n = np.bincount(truth, minlength=C).astype(np.float64)[:, None]  # (C, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (sums + alpha * prior_P) / (n + alpha)
    return np.where(n > 0, out, prior_P)  # exactly the rule row without a dev image


def temper_channel(P: np.ndarray, sizes: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Rows P_g(·|c)^β_g renormalised within each group: (C, Q) -> (C, Q). β = 1 leaves P, β = 0 is uniform."""
    P = np.asarray(P, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    beta = np.asarray(beta, dtype=np.float64)
    bcol = beta[_col_group(sizes)]
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = bcol * np.log(P)  # β·(-inf) = -inf for β > 0; 0·(-inf) is NaN, replaced by 0 (uniform at β = 0)
    lp = np.where(bcol == 0, 0.0, lp)
    off = _offsets(sizes)
    out = np.empty_like(P)
    for g, (o, k) in enumerate(zip(off, sizes)):
        if beta[g] == 1.0:  # exactly P, not P through exp(log P) rounding
            out[:, o:o + k] = P[:, o:o + k]
            continue
        seg = lp[:, o:o + k]
        out[:, o:o + k] = np.exp(seg - logsumexp(seg, axis=1, keepdims=True))
    return out


def channel_from_P(P: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, eps: float) -> Channel:
    """A :class:`Channel` with answer distributions P (C, Q) (each group's segment a distribution); A from the rules."""
    P = np.array(P, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    r = np.asarray(rule_matrix, dtype=bool)
    off = _offsets(sizes)
    col_k = np.repeat(sizes, sizes).astype(np.float64)
    applicable = np.repeat(np.add.reduceat(r.astype(np.float64), off, axis=1) > 0, sizes, axis=1)
    A = np.where(applicable, r.astype(np.float64), 1.0 / col_k)
    H = np.add.reduceat(entr(P), off, axis=1)
    confused = np.ones(len(sizes), dtype=bool)
    for arr in (P, H, A, confused):
        arr.setflags(write=False)
    return Channel(P=P, H=H, A=A, offsets=off, sizes=sizes, eps=float(eps), confused=confused)


def group_logliks(soft_log: list[np.ndarray], P: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(G, B, C) soft-evidence log-likelihood log Σ_k p_g[k]·P(k|c) of every group. soft_log : G arrays (B, K_g)."""
    off = _offsets(np.asarray(sizes))
    return np.stack([bayes_loglik(lp, P[:, o:o + int(k)]) for lp, o, k in zip(soft_log, off, sizes)])


def fit_tempering(ll: np.ndarray, truth: np.ndarray, *, per_image: int = MASKS_PER_IMAGE, seed: int = 0,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Per-group exponents β_g (a weighted naive Bayes) by maximum likelihood of the true class over random prefixes.

    ll : (G, B, C) each group's log-likelihood of held-out (cross-fitted) dev images; truth : (B,).
    The posterior of a prefix A is ∝ exp(Σ_{g∈A} β_g·ll_g); β is chosen in ``bounds`` to minimise the mean
    NLL of the true class over the full set and ``per_image`` random prefixes per image. Returns (G,).
    """
    ll = np.maximum(np.asarray(ll, dtype=np.float64), -1e6)  # a class ruled out by a group: very unlikely, finite
    truth = np.asarray(truth, dtype=np.int64)
    G, B, C = ll.shape
    img, asked = training_rows(B, G, per_image=per_image, seed=seed)
    lt = ll[:, img, :]  # (G, R, C)
    rows = np.arange(len(img))
    y = truth[img]
    a = asked.T[:, :, None].astype(np.float64)  # (G, R, 1)
    la = np.where(a > 0, lt, 0.0)  # masked groups contribute nothing (and no -inf·0)

    def f(beta):
        x = np.tensordot(beta, la, axes=1)  # (R, C)
        lp = x - logsumexp(x, axis=1, keepdims=True)
        p = np.exp(lp)
        loss = -lp[rows, y].mean()
        # d loss / d β_g = mean_r (E_p[la_g] − la_g[y])
        grad = ((la * p[None]).sum(axis=2) - la[:, rows, y]).mean(axis=1)
        return loss, grad

    with one_blas_thread():
        res = minimize(f, np.ones(G), jac=True, method="L-BFGS-B", bounds=[bounds] * G)
    beta = res.x if f(res.x)[0] <= f(np.ones(G))[0] else np.clip(np.ones(G), *bounds)
    return np.asarray(beta, dtype=np.float64)


# --------------------------------------------------------------------------- both halves, fitted together
PER_CLASS_ALPHA = 5.0  # pseudo-images of the rule channel in each class's answer distribution (Branson et al.)


@dataclass(frozen=True)
class FewShotModel:
    """The few-shot answer model a calibration stores: the posterior and the generative half.

    posterior : the :class:`FewShotPosterior` the loop reports and stops on; None when some class has no dev
        image (then the loop's Bayes update runs on the per-class channel, whose rows for those classes are
        the rule channel's).
    P : (C, Q) the per-class channel (:func:`per_class_channel`, untempered); beta : (G,) β_g;
    alpha : its α. n_dev : (C,) dev images per class (the counts P rests on). sizes : (G,) K_g.
    """

    posterior: FewShotPosterior | None
    P: np.ndarray
    beta: np.ndarray
    alpha: float
    n_dev: np.ndarray
    sizes: np.ndarray  # (G,) K_g of the groups P's columns and β belong to

    def channel(self, rule_matrix: np.ndarray, sizes: np.ndarray, eps: float) -> Channel:
        """The tempered per-class channel (EIG and lookahead read it)."""
        return channel_from_P(temper_channel(self.P, sizes, self.beta), rule_matrix, sizes, eps)

    def to_dict(self) -> dict:
        return {"posterior": None if self.posterior is None else self.posterior.to_dict(),
                "sizes": [int(k) for k in self.sizes], "per_class_channel": self.P.tolist(),
                "beta": self.beta.tolist(), "alpha": float(self.alpha), "n_dev": [int(n) for n in self.n_dev]}

    @classmethod
    def from_dict(cls, d: dict) -> "FewShotModel":
        post = None if d["posterior"] is None else FewShotPosterior.from_dict(d["posterior"])
        sizes = np.asarray(d["sizes"], dtype=np.int64)
        if post is not None and not np.array_equal(post.sizes, sizes):
            raise ValueError("few-shot posterior: its group sizes differ from the model's")
        P = np.asarray(d["per_class_channel"], dtype=np.float64)
        beta = np.asarray(d["beta"], dtype=np.float64)
        n_dev = np.asarray(d["n_dev"], dtype=np.int64)
        C, Q, G = P.shape[0] if P.ndim == 2 else -1, int(sizes.sum()), len(sizes)
        if P.shape != (C, Q) or not np.isfinite(P).all() or (P < 0).any():
            raise ValueError(f"per-class channel should be ({C}, {Q}) non-negative, got {P.shape}")
        if not np.allclose(np.add.reduceat(P, _offsets(sizes), axis=1), 1.0, atol=1e-6):
            raise ValueError("per-class channel: every group's segment of a row must sum to 1")
        if beta.shape != (G,) or not np.isfinite(beta).all() or (beta < 0).any():
            raise ValueError(f"beta should be ({G},) finite and >= 0, got {beta.shape}")
        if n_dev.shape != (C,):
            raise ValueError(f"n_dev should be ({C},), got {n_dev.shape}")
        for a in (P, beta, n_dev):
            a.setflags(write=False)
        return cls(posterior=post, P=P, beta=beta, alpha=float(d["alpha"]), n_dev=n_dev, sizes=sizes)


def fit_per_class_tempered(sims: np.ndarray, truth: np.ndarray, sizes: np.ndarray, lam, prior_P: np.ndarray, *,
                           alpha: float = PER_CLASS_ALPHA, folds: np.ndarray | None = None, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The per-class channel P (C, Q) on every dev image, and β (G,) fitted on cross-fitted dev prefixes.

    sims : (B, Q); truth : (B,); lam : λ or (G,) λ_g of the soft answers; prior_P : (C, Q) the rule channel.
    folds : (B,) fold of each image (:func:`stratified_folds`): image i's log-likelihoods for β come from the
    channel fitted on the other folds. With one fold, β = 1.
    """
    sims = np.asarray(sims, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    lams = check_logit_scales(lam, len(sizes))
    soft = soft_answers(sims, sizes, lams)
    P = per_class_channel(soft, truth, prior_P, alpha)
    folds = stratified_folds(truth, N_FOLDS, seed) if folds is None else np.asarray(folds)
    if len(np.unique(folds)) < 2:
        return P, np.ones(len(sizes))
    off = _offsets(sizes)
    soft_log = [group_log_probs(sims[:, o:o + k], lams[g]) for g, (o, k) in enumerate(zip(off, sizes))]
    ll = np.zeros((len(sizes), len(truth), prior_P.shape[0]))
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        Pf = per_class_channel(soft[tr], truth[tr], prior_P, alpha)
        ll[:, te, :] = group_logliks([s[te] for s in soft_log], Pf, sizes)
    return P, fit_tempering(ll, truth, seed=seed)


# --------------------------------------------------------------------------- a calibration that cannot hurt
#: the zero-shot (rule channel) candidates, from no fit to strongly regularised and free fits:
#: name -> fit_answer_channels keywords (None: the uncalibrated channel, λ of the model and ε)
RULE_VARIANTS = {"uncalibrated": None,
                 "fitted, α=100, global λ": {"prior_strength": 100.0, "fit_lams": False},
                 "fitted, α=100": {"prior_strength": 100.0},
                 "fitted, α=10": {"prior_strength": 10.0}}


def heldout_scores(log_post: np.ndarray, truth: np.ndarray) -> dict:
    """{"accuracy", "nll", "correct"} of a (B, C) log posterior against truth (B,); correct is the (B,) list of
    which images are right (for paired comparisons; :func:`public_scores` drops it)."""
    truth = np.asarray(truth, dtype=np.int64)
    correct = log_post.argmax(axis=1) == truth
    return {"accuracy": float(correct.mean()), "nll": float(-log_post[np.arange(len(truth)), truth].mean()),
            "correct": correct}


def heldout_scores_any_set(fold_posteriors, folds: np.ndarray, sims: np.ndarray, truth: np.ndarray,
                           n_groups: int, *, per_image: int = MASKS_PER_IMAGE, seed: int = 0) -> dict:
    """Held-out scores over the asked sets a posterior serves in the loop, not only the full one.

    Each fold's images (folds (B,)) are scored by the posterior fitted on the other folds (``fold_posteriors``, in
    sorted fold order; any object with ``log_posterior(sims, asked)``), on each image's full row and ``per_image``
    random prefixes of random orders (:func:`training_rows`). Returns {"accuracy", "nll", "correct"}: correct (B,)
    is each image's share of its rows right (so a paired comparison counts images, not correlated rows), accuracy
    its mean, nll the mean NLL of the true class over every row.
    """
    sims = np.asarray(sims, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    share = np.zeros(len(truth))
    nll = []
    for f, post in zip(np.unique(folds), fold_posteriors):
        te = np.nonzero(folds == f)[0]
        # other prefixes than the ones the posteriors' settings were chosen on (seed + 1 there)
        img, asked = training_rows(len(te), n_groups, per_image=per_image, seed=seed + 2)
        lp = post.log_posterior(sims[te][img], asked)
        y = truth[te][img]
        share[te] = np.bincount(img, weights=(lp.argmax(axis=1) == y).astype(float), minlength=len(te)) / \
            np.bincount(img, minlength=len(te))
        nll.append(-lp[np.arange(len(img)), y])
    return {"accuracy": float(share.mean()), "nll": float(np.concatenate(nll).mean()), "correct": share}


def public_scores(scores: dict) -> dict:
    """{name: {"accuracy", "nll"}}: held-out scores without the per-image arrays (what a file records)."""
    return {k: {"accuracy": v["accuracy"], "nll": v["nll"]} for k, v in scores.items()}


def crossfit_rule_variants(sims: np.ndarray, truth: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, *,
                           lam0: float, eps: float, folds: np.ndarray, skip_groups: tuple[int, ...] = (),
                           variants: dict | None = None) -> dict:
    """Cross-fitted (held-out) full-system accuracy and NLL of each rule-channel variant on dev images.

    Each fold's images are scored by the variant fitted on the other folds. Returns
    {name: {"accuracy", "nll"}}; the uncalibrated variant fits nothing (the same on every fold).
    """
    from engine.core.channel_fit import fit_answer_channels, full_log_posterior

    truth = np.asarray(truth, dtype=np.int64)
    out = {}
    for name, kw in (RULE_VARIANTS if variants is None else variants).items():
        lp = np.zeros((len(truth), np.asarray(rule_matrix).shape[0]))
        for f in np.unique(folds):
            tr, te = folds != f, folds == f
            if kw is None:
                lp[te] = full_log_posterior(sims[te], rule_matrix, sizes, lam0, eps)
                continue
            ch = fit_answer_channels(sims[tr], truth[tr], rule_matrix, sizes, lam0=lam0, eps=eps,
                                     skip_groups=skip_groups, **kw)
            lp[te] = full_log_posterior(sims[te], rule_matrix, sizes, ch.lams, eps,
                                        channel=ch.channel(rule_matrix, sizes))
        out[name] = heldout_scores(lp, truth)
    return out


def replaces(a: dict, b: dict) -> bool:
    """Whether held-out scores ``a`` (a fitted part) should replace ``b``: NLL no higher, and accuracy higher
    by at least one paired standard error, sqrt(Σ_i (a_i − b_i)²)/n over the images' correctness a_i, b_i: for
    right/wrong images sqrt(n_ab + n_ba)/n, the images one gets right and the other not (so that a gain of a few
    images out of hundreds, which is noise, keeps ``b``); a_i may also be an image's share of rows right
    (:func:`heldout_scores_any_set`). Without per-image ``correct`` arrays, accuracy no lower."""
    if a["nll"] > b["nll"]:
        return False
    if "correct" not in a or "correct" not in b:
        return a["accuracy"] >= b["accuracy"]
    ca, cb = np.asarray(a["correct"], dtype=np.float64), np.asarray(b["correct"], dtype=np.float64)
    gain = float(ca.mean() - cb.mean())
    return gain >= 0 and gain >= np.sqrt(((ca - cb) ** 2).sum()) / len(ca)


def choose_rule_variant(scores: dict) -> str:
    """The fitted variant with the lowest held-out NLL among those that may replace "uncalibrated"
    (:func:`replaces`); "uncalibrated" when none may. scores : :func:`crossfit_rule_variants`' output."""
    base = scores["uncalibrated"]
    ok = [(s["nll"], -s["accuracy"], n) for n, s in scores.items() if n != "uncalibrated" and replaces(s, base)]
    return min(ok)[2] if ok else "uncalibrated"


def crossfit_per_class(sims: np.ndarray, truth: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, lam,
                       prior_P: np.ndarray, eps: float, *, folds: np.ndarray, alpha: float = PER_CLASS_ALPHA) -> dict:
    """Cross-fitted full-system scores (:func:`heldout_scores`) of the Bayes posterior under the per-class channel
    (each fold's images scored by the channel fitted on the other folds). sims (B, Q); truth (B,); prior_P (C, Q)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    lams = check_logit_scales(lam, len(sizes))
    soft = soft_answers(sims, sizes, lams)
    off = _offsets(sizes)
    lp = np.zeros((len(truth), prior_P.shape[0]))
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        ch = channel_from_P(per_class_channel(soft[tr], truth[tr], prior_P, alpha), rule_matrix, sizes, eps)
        lp[te] = full_bayes_log_posterior([group_log_probs(sims[te][:, o:o + k], lams[g])
                                           for g, (o, k) in enumerate(zip(off, sizes))], ch)
    return heldout_scores(lp, truth)
