"""An information gain that predicts what the few-shot posterior will do with an answer (issue 26).

The few-shot posterior (:class:`engine.core.answer_models.FewShotPosterior`) adds a per-group term
ℓ_g(z_g) (C,) to the log posterior when group g is asked. The engine's channel EIG reads the per-class answer
channel P_g(k | c) instead, which does not predict what the logistic regression will do with an answer. This
module replaces it by a nonparametric predictive built from the dev images themselves:

- every dev image i of class y_i keeps its **out-of-fold** per-group terms ℓ_g^i (C,), computed by the
  posterior fitted on the other folds (cross-fitted, so they are as spread as a new image's, not as
  confident as an image the posterior was fitted on);
- for an image with log posterior L (C,), p = softmax(L), the expected posterior entropy after asking g is

      E_g = Σ_c p_c · mean_{i: y_i = c} H(softmax(L + ℓ_g^i)),

  and the predictive information gain is EIG_g = H(p) − E_g (nats); per prompt, EIG_g / K_g.

When the terms are the log-likelihoods of the samples' own answer distribution (ℓ^i = log P(k_i | ·), with
class c's samples answering k in proportion P(k | c)), E_g is the expected posterior entropy of that discrete
channel and EIG_g its mutual information, the engine's channel EIG (tested). The terms of a real posterior are
not that: EIG_g can then be < 0 (an answer that, on average, makes a confident posterior less sure: the dev
images of its leading class often pull elsewhere); the loop receives max(EIG_g, 0), so the δ stop keeps its
meaning, and groups that would only unsettle the posterior tie at 0.

Cost: n·k·S·C·G per call (n images, k classes weighed, S dev samples per class, C classes, G groups), chunked
over images. ``max_classes`` weighs only each image's k most probable classes (their mass renormalised): exact
when k = C; the calibration uses k = 16 for systems of more classes. ``max_per_class`` caps S by a seeded
subsample of each class's dev images.

Pure functions over the loop's array backend ``xp`` (:mod:`engine.core.arrays`); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import log_softmax

from engine.core.arrays import NUMPY, Arrays
from engine.core.scoring import bayes_loglik, group_log_probs

MAX_CLASSES = 16  # classes weighed per image in the expectation (the most probable; exact for C ≤ this)
MAX_PER_CLASS = 16  # dev samples kept per class (a seeded subsample beyond)
CHUNK_ELEMENTS = 4_000_000  # floats of the (chunk, k, S, C) block formed at once


# --------------------------------------------------------------------------- the maths
def by_class(terms: np.ndarray, labels: np.ndarray, n_classes: int, *, max_per_class: int | None = None,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad the dev samples' terms by class: terms (G, M, C), labels (M,) -> (T (G, C, S, C), valid (C, S) bool).

    T[g, c, s] is the terms of the s-th kept dev sample of class c (zeros where ``valid`` is False); S is the
    largest class's count (capped at ``max_per_class``, by a seeded subsample of that class's samples).
    """
    terms = np.asarray(terms, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    G, M, C = terms.shape
    if labels.shape != (M,) or C != n_classes or (M and (labels.min() < 0 or labels.max() >= C)):
        raise ValueError(f"terms should be (G, M, {n_classes}) and labels (M,) in [0, {n_classes}), "
                         f"got {terms.shape} and {labels.shape}")
    rng = np.random.default_rng([seed, 2727])
    members = []
    for c in range(C):
        idx = np.nonzero(labels == c)[0]
        if max_per_class is not None and len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        members.append(idx)
    S = max([len(m) for m in members] + [1])
    T = np.zeros((G, C, S, C))
    valid = np.zeros((C, S), dtype=bool)
    for c, idx in enumerate(members):
        T[:, c, :len(idx)] = terms[:, idx]
        valid[c, :len(idx)] = True
    return T, valid


def _entropy_rows(x, xp: Arrays):
    """H(softmax(x)) over the last axis of x (..., C), -inf entries allowed (a class ruled out)."""
    lse = xp.logsumexp(x, axis=-1, keepdims=True)
    lp = x - lse
    p = xp.exp(lp)
    return -(p * xp.where(p > 0, lp, 0.0)).sum(axis=-1)  # 0·log 0 = 0


def _error_rows(x, xp: Arrays):
    """1 − max softmax(x) over the last axis of x (..., C): the Bayes 0–1 risk of the posterior."""
    return 1.0 - xp.exp(xp.amax(x, axis=-1) - xp.logsumexp(x, axis=-1))


UNCERTAINTY = {"entropy": _entropy_rows, "error": _error_rows}  # name -> rows function (..., C) -> (...)


def expected_posterior_uncertainty(log_post, T, valid, *, max_classes: int | None = None, xp: Arrays = NUMPY,
                                   chunk_elements: int = CHUNK_ELEMENTS, uncertainty: str = "entropy"):
    """E_g (n, G): Σ_c p_c · mean_{s valid} U(softmax(L + T[g, c, s])) for every image and group, U the entropy H
    (``uncertainty="entropy"``) or the 0–1 risk 1 − max (``"error"``: :func:`expected_error_reduction`).

    log_post : (n, C) log posteriors L (normalised; -inf allowed for ruled-out classes), on ``xp``.
    T : (G, C, S, C) dev samples' terms by class and valid : (C, S) bool (:func:`by_class`), on ``xp``
    (:meth:`PredictiveTerms.on`). max_classes : weigh only each image's k most probable classes, their mass
    renormalised (None or ≥ C: every class, exact). A class with no valid sample contributes U(p) (no change).
    """
    G, C, S, _ = T.shape
    n = log_post.shape[0]
    k = C if max_classes is None else max(1, min(int(max_classes), C))
    n_s = valid.sum(axis=1)  # (C,) samples per class
    has = n_s > 0
    inv_n = xp.where(has, 1.0 / xp.maximum(xp.to_float(n_s), 1.0), 0.0)  # (C,)
    rows_of = UNCERTAINTY[uncertainty]
    h_now = rows_of(log_post, xp)  # (n,)
    out = []
    step = max(1, int(chunk_elements) // max(1, k * S * C))
    for a in range(0, n, step):
        L = log_post[a:a + step]  # (m, C)
        m = L.shape[0]
        if k < C:  # the k most probable classes of each image, chosen on the host
            top = np.argpartition(-xp.to_host(L), k - 1, axis=1)[:, :k]
            idx = xp.asindex(top)  # (m, k)
        else:
            idx = xp.asindex(np.broadcast_to(np.arange(C), (m, C)).copy())
        w = xp.exp(xp.gather(L, idx))  # (m, k) p of the weighed classes
        w = w / xp.maximum(w.sum(axis=1, keepdims=True), 1e-300)
        vk = valid[idx]  # (m, k, S)
        hk = has[idx]  # (m, k)
        cols = []
        for g in range(G):
            x = L[:, None, None, :] + T[g][idx]  # (m, k, S, C)
            h = rows_of(x, xp)  # (m, k, S)
            mean_h = xp.where(vk, h, 0.0).sum(axis=2) * inv_n[idx]  # (m, k)
            mean_h = xp.where(hk, mean_h, h_now[a:a + step][:, None])
            cols.append((w * mean_h).sum(axis=1)[:, None])
        out.append(_hstack(cols, xp))
    return xp.concat(out) if out else xp.zeros((0, G))


def _hstack(cols, xp: Arrays):
    """(m, 1) columns -> (m, G), with the operations both backends share."""
    return xp.concat([c.T for c in cols]).T


def predictive_information_gain(log_post, T, valid, *, max_classes: int | None = None, xp: Arrays = NUMPY,
                                clip: bool = True, chunk_elements: int = CHUNK_ELEMENTS):
    """EIG_g (n, G) = H(p) − :func:`expected_posterior_uncertainty` (nats), clipped at 0 unless ``clip`` is False.

    log_post : (n, C); T : (G, C, S, C); valid : (C, S). See the module docstring for when the unclipped value
    is negative.
    """
    e = expected_posterior_uncertainty(log_post, T, valid, max_classes=max_classes, xp=xp,
                                       chunk_elements=chunk_elements)
    gain = _entropy_rows(log_post, xp)[:, None] - e
    return xp.maximum(gain, 0.0) if clip else gain


def expected_error_reduction(log_post, T, valid, *, max_classes: int | None = None, xp: Arrays = NUMPY,
                             chunk_elements: int = CHUNK_ELEMENTS):
    """(n, G) the expected fall of the posterior's 0–1 risk, (1 − max p) − E_g[1 − max p'], after asking g.

    The predictive EIG with the risk of the argmax in place of entropy (Roy and McCallum's expected error
    reduction): the budget curve scores accuracy, not entropy. An experiment (``bench.predictive_variants``);
    may be < 0, like the EIG. Shapes as :func:`predictive_information_gain`.
    """
    e = expected_posterior_uncertainty(log_post, T, valid, max_classes=max_classes, xp=xp,
                                       chunk_elements=chunk_elements, uncertainty="error")
    return _error_rows(log_post, xp)[:, None] - e


def label_stability(log_post: np.ndarray, asked: np.ndarray, T: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(n,) the predicted chance that asking every remaining group leaves each image's label unchanged.

    log_post : (n, C) normalised; asked : (n, G) bool; T : (G, C, S, C), valid : (C, S) (:func:`by_class`).
    For image i with p = softmax(L) and label a = argmax L: Σ_c p_c · mean_{s valid} 1[argmax(L + Σ_{g not
    asked} T[g, c, s]) = a]: the remaining answers are drawn from a dev sample of the class, independent of
    the answers already seen (as the predictive EIG draws them). A class with no valid sample counts as
    unchanged; an image with every group asked has stability 1. An experiment of issue 26 (a stop rule:
    ``bench.predictive_variants``); numpy, one image at a time.
    """
    L = np.asarray(log_post, dtype=np.float64)
    asked = np.asarray(asked, dtype=bool)
    p = np.exp(L)
    n_s = valid.sum(axis=1)
    out = np.ones(len(L))
    for i in range(len(L)):
        rest = ~asked[i]
        if not rest.any():
            continue
        R = np.tensordot(rest.astype(np.float64), T, axes=(0, 0))  # (C, S, C): Σ of the unasked groups' terms
        same = ((L[i] + R).argmax(axis=-1) == L[i].argmax()) & valid  # (C, S)
        frac = np.where(n_s > 0, same.sum(axis=1) / np.maximum(n_s, 1), 1.0)
        out[i] = float(p[i] @ frac)
    return out


# --------------------------------------------------------------------------- fitting the terms
def crossfit_terms(sims: np.ndarray, truth: np.ndarray, sizes: np.ndarray, n_classes: int, *, reg: float,
                   folds: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list]:
    """Out-of-fold per-group terms of every dev image, and the fold posteriors that made them.

    sims : (M, Q) dev similarities; truth : (M,) classes; sizes : (G,) K_g; reg : the L2 strength of the
    posterior (no cross-validation inside the folds); folds : (M,) fold of each image
    (:func:`engine.core.answer_models.stratified_folds`). Image i's terms come from the few-shot posterior
    fitted (:func:`engine.core.answer_models.fit_few_shot_posterior`) on the images of the other folds.
    Returns terms (G, M, C) and the fold posteriors (one per distinct fold, in sorted fold order).
    """
    from engine.core.answer_models import fit_few_shot_posterior

    sims = np.asarray(sims, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    folds = np.asarray(folds, dtype=np.int64)
    posts = []
    for f in np.unique(folds):
        tr = folds != f
        if not tr.any():  # one fold: nothing held out; the terms are in-sample
            tr = np.ones_like(tr)
        posts.append(fit_few_shot_posterior(sims[tr], truth[tr], sizes, n_classes, regs=(reg,), seed=seed).posterior)
    return terms_of(sims, folds, posts), posts


def terms_of(sims: np.ndarray, folds: np.ndarray, posteriors: list) -> np.ndarray:
    """(G, M, C) ℓ_g of every image by its own fold's posterior (``posteriors`` in sorted fold order)."""
    sims = np.asarray(sims, dtype=np.float64)
    folds = np.asarray(folds, dtype=np.int64)
    uniq = np.unique(folds)
    if len(uniq) != len(posteriors):
        raise ValueError(f"{len(uniq)} folds but {len(posteriors)} fold posteriors")
    sizes = posteriors[0].sizes
    G, C = len(sizes), posteriors[0].n_classes
    out = np.zeros((G, len(folds), C))
    for f, post in zip(uniq, posteriors):
        rows = folds == f
        for g in range(G):
            out[g, rows] = post.group_loglik(g, sims[rows][:, post.cols(g)])
    return out


# --------------------------------------------------------------------------- what a calibration stores
@dataclass(frozen=True, eq=False)
class PredictiveTerms:
    """The dev samples behind the predictive EIG: what a calibration stores, and the padded terms.

    sims : (M, Q) the fit part's dev similarities; truth : (M,) their classes; folds : (M,) their folds;
    posteriors : the fold posteriors (:func:`crossfit_terms`); max_classes, max_per_class : see the module
    docstring. The terms are recomputed from these on load (M·Q + folds·C·(Q+G) numbers instead of G·M·C).
    """

    sims: np.ndarray
    truth: np.ndarray
    folds: np.ndarray
    posteriors: tuple
    max_classes: int = MAX_CLASSES
    max_per_class: int = MAX_PER_CLASS
    seed: int = 0
    _padded: dict = field(default_factory=dict, repr=False)  # (backend name, device) -> (T, valid) on it
    _folds: dict = field(default_factory=dict, repr=False)  # i -> without_fold(i), its terms padded once

    def __post_init__(self):
        if int(self.max_classes) < 1 or int(self.max_per_class) < 1:
            raise ValueError(f"predictive: max_classes and max_per_class should be >= 1, got {self.max_classes} "
                             f"and {self.max_per_class}")

    @property
    def n_classes(self) -> int:
        return self.posteriors[0].n_classes

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """(T (G, C, S, C), valid (C, S)) on the host (:func:`by_class`)."""
        if "host" not in self._padded:
            self._padded["host"] = by_class(terms_of(self.sims, self.folds, list(self.posteriors)), self.truth,
                                            self.n_classes, max_per_class=self.max_per_class, seed=self.seed)
        return self._padded["host"]

    def on(self, xp: Arrays):
        """(T, valid) on the backend ``xp`` (copied once per backend kind and device: the run layer makes a new
        backend object per call, and an id could be reused by another device's)."""
        key = (getattr(xp, "name", type(xp).__name__), str(getattr(xp, "device", "host")))
        if key not in self._padded:
            T, valid = self.padded()
            self._padded[key] = (T, valid) if xp is NUMPY else (xp.asarray(T), xp.asarray(valid) > 0.5)
        return self._padded[key]

    def information_gain(self, log_post, xp: Arrays = NUMPY):
        """(n, G) the predictive EIG (clipped at 0) of log posteriors (n, C) on ``xp``."""
        T, valid = self.on(xp)
        return predictive_information_gain(log_post, T, valid, max_classes=self.max_classes, xp=xp)

    def without_fold(self, i: int) -> "PredictiveTerms":
        """The terms of the images outside the ``i``-th fold (in sorted fold order), for the paths of that fold's
        images (cross-fitting: an image's EIG does not read its own terms). Memoised: a calibration traces every
        policy's paths, and replays budgets, on the same fold views."""
        if i not in self._folds:
            keep = self.folds != np.unique(self.folds)[i]
            self._folds[i] = replace(self, sims=self.sims[keep], truth=self.truth[keep], folds=self.folds[keep],
                                     posteriors=tuple(p for j, p in enumerate(self.posteriors) if j != i),
                                     _padded={}, _folds={})
        return self._folds[i]

    def to_dict(self) -> dict:
        return {"method": "out-of-fold per-group terms of the fit part's dev images (engine.core.predictive)",
                "sims": self.sims.tolist(), "truth": [int(t) for t in self.truth],
                "folds": [int(f) for f in self.folds], "posteriors": [p.to_dict() for p in self.posteriors],
                "max_classes": int(self.max_classes), "max_per_class": int(self.max_per_class), "seed": int(self.seed)}

    @classmethod
    def from_file(cls, d: dict, n_groups: int) -> "PredictiveTerms":
        """:meth:`from_dict` with the classes and group sizes of its own first fold posterior, checked against
        ``n_groups`` (a calibration's groups); ValueError naming the field."""
        try:
            first = d["posteriors"][0]
            sizes, n_classes = [int(k) for k in first["sizes"]], len(first["b"])
        except (KeyError, IndexError, TypeError):
            raise ValueError("predictive: no fold posterior with sizes and b") from None
        if len(sizes) != n_groups:
            raise ValueError(f"predictive: its posteriors have {len(sizes)} groups, the calibration {n_groups}")
        return cls.from_dict(d, n_classes, sizes)

    @classmethod
    def from_dict(cls, d: dict, n_classes: int, sizes) -> "PredictiveTerms":
        """The inverse of :meth:`to_dict`; ValueError naming the field when it does not fit (n_classes, sizes)."""
        from engine.core.answer_models import FewShotPosterior

        posts = tuple(FewShotPosterior.from_dict(p) for p in d["posteriors"])
        sims = np.asarray(d["sims"], dtype=np.float64)
        truth = np.asarray(d["truth"], dtype=np.int64)
        folds = np.asarray(d["folds"], dtype=np.int64)
        Q = int(np.sum(sizes))
        if not posts or any(p.n_classes != n_classes or list(p.sizes) != [int(k) for k in sizes] for p in posts):
            raise ValueError(f"predictive: its fold posteriors should be for {n_classes} classes and sizes {list(sizes)}")
        if sims.ndim != 2 or sims.shape[1] != Q or not np.isfinite(sims).all():
            raise ValueError(f"predictive: sims should be finite with shape (M, {Q}), got {sims.shape}")
        M = sims.shape[0]
        if truth.shape != (M,) or folds.shape != (M,) or (M and (truth.min() < 0 or truth.max() >= n_classes)):
            raise ValueError(f"predictive: truth and folds should be ({M},), truth in [0, {n_classes})")
        if len(np.unique(folds)) != len(posts):
            raise ValueError(f"predictive: {len(np.unique(folds))} folds but {len(posts)} fold posteriors")
        return cls(sims=sims, truth=truth, folds=folds, posteriors=posts, max_classes=int(d["max_classes"]),
                   max_per_class=int(d["max_per_class"]), seed=int(d.get("seed", 0)))


def fit_predictive(sims: np.ndarray, truth: np.ndarray, sizes: np.ndarray, n_classes: int, *, reg: float,
                   seed: int = 0, n_folds: int | None = None) -> PredictiveTerms:
    """The :class:`PredictiveTerms` of dev images (M, Q), truth (M,): folds by
    :func:`engine.core.answer_models.stratified_folds` (its N_FOLDS), the posterior refitted per fold at ``reg``."""
    from engine.core.answer_models import N_FOLDS, stratified_folds

    truth = np.asarray(truth, dtype=np.int64)
    folds = stratified_folds(truth, N_FOLDS if n_folds is None else n_folds, seed)
    _, posts = crossfit_terms(sims, truth, sizes, n_classes, reg=reg, folds=folds, seed=seed)
    return PredictiveTerms(sims=np.asarray(sims, dtype=np.float64), truth=truth, folds=folds, posteriors=tuple(posts),
                           seed=seed)


class PredictivePosterior:
    """A few-shot posterior whose information gain is the predictive's: what the adaptive loop is given as
    ``answer_model`` when a calibration holds :class:`PredictiveTerms`.

    log_prior, group_loglik and log_posterior are the posterior's (the loop reports and stops on it);
    ``information_gain(log_post, xp)`` (n, G) replaces the channel's EIG wherever the loop uses it (every
    policy's ``state.eig``, the δ stop, the EIG a step records).
    """

    def __init__(self, posterior, predictive: PredictiveTerms):
        self.posterior = posterior
        self.predictive = predictive

    @property
    def n_classes(self) -> int:
        return self.posterior.n_classes

    @property
    def has_head(self) -> bool:
        """The wrapped posterior's: whether it switches to its full-system head once every group is asked
        (the loop then keeps each image's similarities for it)."""
        return bool(getattr(self.posterior, "has_head", False))

    def log_prior(self, n_images: int) -> np.ndarray:
        return self.posterior.log_prior(n_images)

    def group_loglik(self, g: int, sims: np.ndarray) -> np.ndarray:
        return self.posterior.group_loglik(g, sims)

    def log_posterior(self, sims: np.ndarray, asked: np.ndarray | None = None) -> np.ndarray:
        return self.posterior.log_posterior(sims, asked)

    def information_gain(self, log_post, xp: Arrays = NUMPY):
        return self.predictive.information_gain(log_post, xp)


class TemperedChannelPosterior:
    """The per-class channel tempered per group as a posterior ("design D" of issue 26), in the loop's
    ``answer_model`` protocol: a uniform prior, and each asked group adds

        ℓ_g(c) = β_g · log Σ_k p_g[k]·P_g(k | c),   p_g = softmax(λ_g·s_g),

    a weighted naive Bayes over the soft answers (:func:`engine.core.answer_models.fit_tempering`'s model).
    P : (C, Q) the untempered per-class channel; beta : (G,) β_g; lams : (G,) λ_g; sizes : (G,) K_g. Its EIG
    is the loop's channel EIG: give the loop the tempered channel (``FewShotModel.channel``) as ``channel``.
    """

    def __init__(self, P: np.ndarray, beta: np.ndarray, lams: np.ndarray, sizes: np.ndarray):
        self.P = np.asarray(P, dtype=np.float64)
        self.beta = np.asarray(beta, dtype=np.float64)
        self.lams = np.broadcast_to(np.asarray(lams, dtype=np.float64), (len(sizes),)).copy()
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def n_classes(self) -> int:
        return self.P.shape[0]

    def log_prior(self, n_images: int) -> np.ndarray:
        return np.full((int(n_images), self.n_classes), -np.log(self.n_classes))

    def group_loglik(self, g: int, sims: np.ndarray) -> np.ndarray:
        o, k = int(self.offsets[g]), int(self.sizes[g])
        ll = bayes_loglik(group_log_probs(np.asarray(sims, dtype=np.float64), float(self.lams[g])), self.P[:, o:o + k])
        return self.beta[g] * np.maximum(ll, -1e6)  # a class ruled out: very unlikely, finite (as fit_tempering)

    def log_posterior(self, sims: np.ndarray, asked: np.ndarray | None = None) -> np.ndarray:
        sims = np.asarray(sims, dtype=np.float64)
        G = len(self.sizes)
        asked = np.ones((sims.shape[0], G), dtype=bool) if asked is None else np.asarray(asked, dtype=bool)
        x = self.log_prior(sims.shape[0])
        for g in range(G):
            o, k = int(self.offsets[g]), int(self.sizes[g])
            x = x + np.where(asked[:, g:g + 1], self.group_loglik(g, sims[:, o:o + k]), 0.0)
        return log_softmax(x, axis=1)
