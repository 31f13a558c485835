"""Calibration of the Bayes scorer: fit λ and ε, measure calibration error.

Pure functions over arrays (numpy/scipy); no I/O, no torch.

The Bayes posterior after every group (``../shared/docs/method.md``) depends
on two knobs: the logit scale λ in p_g = softmax(λ·s_g), and the rule noise ε
of the answer channel. :func:`fit_logit_scale_and_eps` picks both by maximum
likelihood of the true class on a dev split: it minimises the mean negative
log posterior of the true class over log λ and logit ε (a coarse grid, then
L-BFGS-B from the best grid point).

Expected calibration error (ECE) and reliability-diagram bins use equal-width
confidence bins on [0, 1]: ECE = Σ_b (n_b / n)·|accuracy_b − mean confidence_b|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit

from engine.core.scoring import build_channel, check_eps, check_logit_scale, full_bayes_log_posterior, group_log_probs

LAM_BOUNDS = (1e-2, 1e4)
EPS_BOUNDS = (1e-6, 0.99)


def _check_sims(sims: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sims.ndim != 2 or sims.shape[1] != int(sizes.sum()):
        raise ValueError(f"sims should be (B, {int(sizes.sum())}), got shape {sims.shape}")
    return sims, sizes


def full_log_posterior(sims: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, lam: float,
                       eps: float) -> np.ndarray:
    """Bayes log posterior after asking every group.

    sims : (B, Q) similarities to every prompt, concatenated by group.
    rule_matrix : (C, Q) bool acceptable options.
    sizes : (G,) K_g, summing to Q.
    lam, eps : logit scale λ > 0 and rule noise ε in [0, 1).
    Returns (B, C) normalised log posterior (uniform prior).
    """
    sims, sizes = _check_sims(sims, sizes)
    lam = check_logit_scale(lam)
    ch = build_channel(rule_matrix, sizes, check_eps(eps))
    return full_bayes_log_posterior([group_log_probs(sims[:, ch.cols(g)], lam) for g in range(ch.n_groups)], ch)


def true_class_nll(log_post: np.ndarray, truth: np.ndarray) -> float:
    """Mean negative log posterior of the true class.

    log_post : (B, C) log posterior; truth : (B,) int class indices.
    Returns a float >= 0 (inf if a true class has probability 0).
    """
    log_post = np.asarray(log_post, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    if truth.shape != (log_post.shape[0],):
        raise ValueError(f"truth should be ({log_post.shape[0]},), got shape {truth.shape}")
    return float(-log_post[np.arange(len(truth)), truth].mean())


@dataclass(frozen=True)
class CalibrationFit:
    """Result of :func:`fit_logit_scale_and_eps`.

    lam, eps : the fitted λ and ε.
    nll : mean true-class negative log posterior at the fit (dev split).
    nll_start : the same at the starting (λ, ε).
    success : whether the final L-BFGS-B polish reported convergence.
    """

    lam: float
    eps: float
    nll: float
    nll_start: float
    success: bool


def fit_logit_scale_and_eps(sims: np.ndarray, truth: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, *,
                            lam0: float = 100.0, eps0: float = 0.05, fit_eps: bool = True,
                            n_grid: int = 9) -> CalibrationFit:
    """Maximum-likelihood λ (and ε) of the full-system Bayes posterior.

    sims : (B, Q) dev-split similarities; truth : (B,) true class indices.
    rule_matrix : (C, Q) bool; sizes : (G,) K_g.
    lam0, eps0 : the starting values (the uncalibrated setting). With ``fit_eps``
        False, ε is eps0 exactly as given (0 included); only λ is fitted.
    n_grid : grid points per parameter for the coarse search, log-spaced in λ
        over [0.1·lam0, 10·lam0] ∩ LAM_BOUNDS and over ε in [1e-3, 0.5].

    Optimises over (log λ, logit ε) within LAM_BOUNDS × EPS_BOUNDS, from the
    start clipped into them; returns a :class:`CalibrationFit`. ``nll_start`` is
    the NLL at (lam0, eps0) as given, and the fit is never worse: if nothing in
    the bounds beats the start, the start is returned.
    """
    sims, sizes = _check_sims(sims, sizes)
    truth = np.asarray(truth, dtype=np.int64)
    lam0, eps0 = check_logit_scale(lam0), check_eps(eps0)
    lo_l, hi_l = np.log(LAM_BOUNDS)
    lo_e, hi_e = logit(np.array(EPS_BOUNDS))

    def nll(lam, eps):
        return true_class_nll(full_log_posterior(sims, rule_matrix, sizes, lam, eps), truth)

    def unpack(x):
        lam = float(np.exp(np.clip(x[0], lo_l, hi_l)))
        eps = float(expit(np.clip(x[1], lo_e, hi_e))) if fit_eps else eps0
        return lam, eps

    def objective(x):
        v = nll(*unpack(x))
        return v if np.isfinite(v) else 1e6

    f_start = nll(lam0, eps0)  # at the start values themselves, not clipped into the bounds
    start = np.array([np.clip(np.log(lam0), lo_l, hi_l), logit(np.clip(eps0, *EPS_BOUNDS))])  # in the bounds
    lams = np.clip(np.geomspace(0.1 * lam0, 10 * lam0, n_grid), *LAM_BOUNDS)
    epss = np.geomspace(1e-3, 0.5, n_grid) if fit_eps else np.array([expit(start[1])])
    best_x, best_f = start, objective(start)
    for la in lams:
        for e in epss:
            x = np.array([np.log(la), logit(e)])
            f = objective(x)
            if f < best_f:
                best_x, best_f = x, f
    dims = 2 if fit_eps else 1
    res = minimize(lambda z: objective(np.r_[z, best_x[1]] if dims == 1 else z), best_x[:dims], method="L-BFGS-B",
                   bounds=[(lo_l, hi_l), (lo_e, hi_e)][:dims])
    x = np.r_[res.x, best_x[1]] if dims == 1 else res.x
    f = objective(x)
    if f > best_f:
        x, f = best_x, best_f
    lam, eps = unpack(x)
    if not f <= f_start:  # nothing inside the bounds beats the start (which may lie outside them)
        lam, eps, f = lam0, eps0, f_start
    return CalibrationFit(lam=lam, eps=eps, nll=float(f), nll_start=float(f_start), success=bool(res.success))


# --------------------------------------------------------------------------- calibration error
def _check_conf(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != correct.shape:
        raise ValueError(f"conf and correct should both be (n,), got shapes {conf.shape} and {correct.shape}")
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1):
        raise ValueError("conf must hold probabilities in [0, 1]")
    return conf, correct


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width reliability-diagram bins.

    conf : (n,) confidence of each prediction in [0, 1]; correct : (n,) 0/1.
    Returns a dict of arrays: ``edges`` (n_bins+1,), ``count`` (n_bins,) int,
    ``confidence`` (n_bins,) mean confidence and ``accuracy`` (n_bins,) mean
    correctness per bin (NaN where a bin is empty). A confidence equal to an
    inner edge falls in the bin above it; 1.0 falls in the last bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins == {n_bins}, must be >= 1")
    conf, correct = _check_conf(conf, correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mconf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mconf, "accuracy": acc}


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / n)·|accuracy_b − confidence_b| over equal-width bins.

    conf : (n,) in [0, 1]; correct : (n,) 0/1. Returns a float in [0, 1]; NaN
    when n = 0.
    """
    b = reliability_bins(conf, correct, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    nz = b["count"] > 0
    gap = np.abs(b["accuracy"][nz] - b["confidence"][nz])
    return float(np.clip((b["count"][nz] * gap).sum() / n, 0.0, 1.0))
