"""Calibration of the Bayes scorer: fit λ and ε, measure calibration error.

Pure functions over arrays (numpy/scipy); no I/O, no torch.

The Bayes posterior after every group (``../shared/docs/method.md``) depends
on two knobs: the logit scale λ in p_g = softmax(λ·s_g), and the rule noise ε
of the answer channel. :func:`fit_logit_scale_and_eps` picks both by maximum
likelihood of the true class on a dev split: it minimises the mean negative
log posterior of the true class over log λ and logit ε (a coarse grid, then
L-BFGS-B from the best grid point).

:func:`fit_answer_channels` goes further and fits how well each group is
answered (the per-group answer channel, issue 16): a logit scale λ_g, a
confusion M_g over the group's options from the soft answers of dev images, and
a reliability w_g that shrinks M_g towards "answers say nothing". EIG then is the
mutual information between class and answer as that model gives it.
:func:`choose_tau` picks the confidence threshold that reaches a target accuracy
among the images that stop on confidence (learn-then-test, see there).

Expected calibration error (ECE) and reliability-diagram bins use equal-width
confidence bins on [0, 1]: ECE = Σ_b (n_b / n)·|accuracy_b − mean confidence_b|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, logit, logsumexp
from scipy.stats import beta, binom

from engine.common.threads import one_blas_thread
from engine.core.scoring import (
    Channel, bayes_loglik, build_channel, check_eps, check_logit_scale, check_logit_scales, eps_confusion,
    full_bayes_log_posterior, group_log_probs,
)

LAM_BOUNDS = (1e-2, 1e4)
N_POLISH = 5  # at most this many local minima of the grid are polished by L-BFGS-B (fit_logit_scale_and_eps)
EPS_BOUNDS = (1e-6, 0.99)


def _check_sims(sims: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sims.ndim != 2 or sims.shape[1] != int(sizes.sum()):
        raise ValueError(f"sims should be (B, {int(sizes.sum())}), got shape {sims.shape}")
    return sims, sizes


def full_log_posterior(sims: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, lam, eps: float,
                       channel: Channel | None = None) -> np.ndarray:
    """Bayes log posterior after asking every group.

    sims : (B, Q) similarities to every prompt, concatenated by group.
    rule_matrix : (C, Q) bool acceptable options.
    sizes : (G,) K_g, summing to Q.
    lam : logit scale λ > 0, or (G,) λ_g; eps : rule noise ε in [0, 1).
    channel : a prebuilt channel (e.g. :meth:`AnswerChannels.channel`); then eps is not read.
    Returns (B, C) normalised log posterior (uniform prior).
    """
    sims, sizes = _check_sims(sims, sizes)
    lams = check_logit_scales(lam, len(sizes))
    ch = channel if channel is not None else build_channel(rule_matrix, sizes, check_eps(eps))
    return full_bayes_log_posterior([group_log_probs(sims[:, ch.cols(g)], lams[g]) for g in range(ch.n_groups)], ch)


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
    grid = np.array([[objective(np.array([np.log(la), logit(e)])) for e in epss] for la in lams])  # (nλ, nε)
    # the NLL can have several basins (small ε with small λ against larger ε with larger λ): polish from
    # every local minimum of the grid (no 8-neighbour lower), best first, and keep the best end point
    pad = np.pad(grid, 1, constant_values=np.inf)
    nbrs = np.stack([pad[1 + di:1 + di + grid.shape[0], 1 + dj:1 + dj + grid.shape[1]]
                     for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj])
    minima = sorted((grid[i, j], i, j) for i, j in zip(*np.nonzero(grid <= nbrs.min(axis=0))))[:N_POLISH]
    cands = [(objective(start), start)] + [(grid[i, j], np.array([np.log(lams[i]), logit(epss[j])]))
                                           for _, i, j in minima]
    best_f, best_x = min(cands, key=lambda t: t[0])
    starts = [x0 for _, x0 in cands]
    dims = 2 if fit_eps else 1
    x, f, res = best_x, best_f, None
    for x0 in starts:
        with one_blas_thread():
            r = minimize(lambda z, x0=x0: objective(np.r_[z, x0[1]] if dims == 1 else z), x0[:dims],
                         method="L-BFGS-B", bounds=[(lo_l, hi_l), (lo_e, hi_e)][:dims])
        xr = np.r_[r.x, x0[1]] if dims == 1 else r.x
        fr = objective(xr)
        if res is None or fr < f:
            x, f, res = xr, fr, r
    if f > best_f:
        x, f = best_x, best_f
    lam, eps = unpack(x)
    if not f <= f_start:  # nothing inside the bounds beats the start (which may lie outside them)
        lam, eps, f = lam0, eps0, f_start
    return CalibrationFit(lam=lam, eps=eps, nll=float(f), nll_start=float(f_start), success=bool(res.success))


# --------------------------------------------------------------------------- per-group answer channels
@dataclass(frozen=True)
class AnswerChannels:
    """How each group is answered, fitted on dev images (:func:`fit_answer_channels`).

    lams : (G,) λ_g, the logit scale of group g's answers p_g = softmax(λ_g·s_g).
    confusions : G entries, each (K_g, K_g) with M_g[j, k] = P(answer k | true option j),
        already shrunk by the reliability; None for a group left on the ε channel.
    reliability : (G,) w_g in [0, 1]: M_g = w_g·M̂_g + (1 − w_g)/K_g, where M̂_g is the
        smoothed mean soft answer. 0 means the group's answers are ignored; NaN marks a group
        left on (λ0, the ε channel): skipped, or with no dev image to fit it on.
    n_dev : (G,) dev images whose class has a rule in the group.
    eps : the ε of the prior channel (and of groups without a confusion).
    """

    lams: np.ndarray
    confusions: tuple
    reliability: np.ndarray
    n_dev: np.ndarray
    eps: float

    def channel(self, rule_matrix: np.ndarray, sizes: np.ndarray) -> Channel:
        """The answer channel these fits give for a system with this rule matrix (C, Q) and sizes (G,)."""
        return build_channel(rule_matrix, sizes, self.eps, confusions=list(self.confusions))


def fit_group_logit_scale(sims: np.ndarray, acceptable: np.ndarray, lam0: float = 100.0) -> float:
    """λ_g by maximum likelihood of the acceptable options: argmin over λ of −mean log Σ_{k∈R} p_g[k].

    sims : (B, K) one group's similarities; acceptable : (B, K) bool, the true class's
    acceptable options (rows with none are not used). Returns λ0 when no row is usable.
    """
    sims = np.asarray(sims, dtype=np.float64)
    acc = np.asarray(acceptable, dtype=bool)
    use = acc.any(axis=1)
    if not use.any() or sims.shape[1] < 2:
        return check_logit_scale(lam0)
    sims, acc = sims[use], acc[use]

    def nll(log_lam):
        lp = group_log_probs(sims, float(np.exp(log_lam)))
        return float(-logsumexp(np.where(acc, lp, -np.inf), axis=1).mean())

    lo, hi = np.log(LAM_BOUNDS)
    grid = np.linspace(lo, hi, 25)
    best = grid[int(np.argmin([nll(x) for x in grid]))]
    step = grid[1] - grid[0]
    res = minimize_scalar(nll, bounds=(max(lo, best - step), min(hi, best + step)), method="bounded")
    return float(np.exp(res.x if res.fun <= nll(best) else best))


def fit_answer_channels(sims: np.ndarray, truth: np.ndarray, rule_matrix: np.ndarray, sizes: np.ndarray, *,
                        lam0: float = 100.0, eps: float = 0.05, prior_strength: float = 10.0,
                        fit_lams: bool = True, fit_reliability: bool = True,
                        skip_groups: tuple[int, ...] = ()) -> AnswerChannels:
    """Fit every group's answer channel on dev images.

    sims : (B, Q) dev similarities, concatenated by group; truth : (B,) true class indices.
    rule_matrix : (C, Q) bool; sizes : (G,) K_g.
    lam0 : λ of groups that cannot be fitted; eps : ε of the prior channel.
    prior_strength : α, pseudo-images of the ε channel added to every row of M̂_g, so a
        group with few dev images falls back to the ε channel.
    skip_groups : groups left on (λ0, ε channel), e.g. the class-name group.

    Three steps, each by maximum likelihood on the dev images:

    1. λ_g (:func:`fit_group_logit_scale`), so p_g is a calibrated guess at the true option;
    2. M̂_g[j, ·] = (Σ_i w_ij·p_g(i) + α·E_j) / (Σ_i w_ij + α), w_ij = 1/|R_g(c_i)| for j ∈ R_g(c_i),
       E = (1−ε)·I + ε/K_g: the mean soft answer given the true option;
    3. w_g in [0, 1] minimising the mean negative log posterior of the true class after every
       group, with M_g = w_g·M̂_g + (1 − w_g)/K_g. This tempers groups whose evidence the naive
       product over-counts (answers of one image to different questions are not independent).
       Where that objective does not depend on w_g (a group answered at chance: M̂_g's rows equal,
       so every class gets the same likelihood), w_g = 0, "the answers say nothing", not the
       optimiser's start value (:func:`flat_reliabilities_to_zero`).
    """
    sims, sizes = _check_sims(sims, sizes)
    truth = np.asarray(truth, dtype=np.int64)
    r = np.asarray(rule_matrix, dtype=bool)
    B, G = sims.shape[0], len(sizes)
    if truth.shape != (B,):
        raise ValueError(f"truth should be ({B},), got shape {truth.shape}")
    eps = check_eps(eps)
    lam0 = check_logit_scale(lam0)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    lams = np.full(G, lam0)
    hats: list[np.ndarray | None] = [None] * G
    n_dev = np.zeros(G, dtype=np.int64)
    for g in range(G):
        o, k = int(offsets[g]), int(sizes[g])
        acc = r[truth, o:o + k]  # (B, K) the true class's acceptable options
        n_dev[g] = int(acc.any(axis=1).sum())
        if g in skip_groups or n_dev[g] == 0:  # nothing to fit: the group stays on (λ0, the ε channel)
            continue
        if fit_lams:
            lams[g] = fit_group_logit_scale(sims[:, o:o + k], acc, lam0)
        p = np.exp(group_log_probs(sims[:, o:o + k], lams[g]))  # (B, K)
        w = acc / np.maximum(acc.sum(axis=1, keepdims=True), 1)  # (B, K) weight of image i on row j
        counts = w.T @ p  # (K, K)
        hats[g] = (counts + prior_strength * eps_confusion(k, eps)) / (w.sum(axis=0)[:, None] + prior_strength)
    fitted = [g for g in range(G) if hats[g] is not None]
    rel = np.full(G, np.nan)  # NaN: not fitted (skipped, or no dev image of a class the group has a rule for)
    rel[fitted] = 1.0
    if fit_reliability and fitted:
        # per-group log-likelihoods of the full system at w = 1, then optimise the mixtures towards 1/K_g
        hat_ch = build_channel(r, sizes, eps, confusions=hats)
        ll = [bayes_loglik(group_log_probs(sims[:, hat_ch.cols(g)], lams[g]), hat_ch.P[:, hat_ch.cols(g)])
              for g in range(G)]  # G arrays (B, C): each group's log-likelihood at w = 1
        lik = {g: np.exp(ll[g]) for g in fitted}
        fixed = sum((ll[g] for g in range(G) if g not in lik), np.zeros((B, r.shape[0])))
        rows = np.arange(B)

        def objective(x):
            tot = fixed.copy()
            for wg, g in zip(x, fitted):
                tot += np.log(wg * lik[g] + (1.0 - wg) / sizes[g])
            return float(-(tot[rows, truth] - logsumexp(tot, axis=1)).mean())

        with one_blas_thread():
            res = minimize(objective, np.full(len(fitted), 0.5), method="L-BFGS-B", bounds=[(0.0, 1.0)] * len(fitted))
        x = res.x if objective(res.x) <= objective(np.ones(len(fitted))) else np.ones(len(fitted))
        x = flat_reliabilities_to_zero(objective, x)
        for wg, g in zip(x, fitted):
            rel[g] = float(wg)
    confusions = tuple(None if hats[g] is None else rel[g] * hats[g] + (1.0 - rel[g]) / sizes[g] for g in range(G))
    for m in confusions:
        if m is not None:
            m.setflags(write=False)
    lams.setflags(write=False)
    rel.setflags(write=False)
    return AnswerChannels(lams=lams, confusions=confusions, reliability=rel, n_dev=n_dev, eps=eps)


# nats of mean NLL: an objective that moves less than this along w_g over the whole of [0, 1] is flat in w_g. L-BFGS-B
# stops where the projected gradient is below 1e-5, so on such a coordinate it returns its start (0.5): the case of a
# group answered at chance (λ_g at its lower bound 0.01, every class's likelihood nearly 1/K_g)
FLAT_TOL = 1e-4


def flat_reliabilities_to_zero(objective, x: np.ndarray) -> np.ndarray:
    """The reliabilities ``x`` (m,) with every coordinate along which ``objective`` is flat set to 0.

    objective : callable (m,) -> float. Coordinate j is flat when the objective at x with x_j = 0 and with
    x_j = 1 both equal the objective at x within FLAT_TOL (nats). A flat objective has no minimiser to
    report; w = 0 is the defined answer: the group's answers are ignored (uninformative), which moves the
    objective by less than FLAT_TOL.
    Returns a new (m,) array.
    """
    x = np.array(x, dtype=np.float64)
    for j in range(len(x)):
        f = objective(x)
        tol = FLAT_TOL
        ends = []
        for v in (0.0, 1.0):
            y = x.copy()
            y[j] = v
            ends.append(objective(y))
        if all(abs(e - f) <= tol for e in ends):
            x[j] = 0.0
    return x


def fit_select_split(truth: np.ndarray, fit_frac: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split dev images into a *fit* part (answer channels, any answer model) and a *select* part (τ, the
    auto policy), disjoint, by image, stratified by class (:func:`split_by_image` on its own seed stream).

    truth : (B,) int class of each dev image. Returns sorted (fit, select) index arrays into the B images.
    Choosing τ on images the channels were not fitted on is what makes learn-then-test's guarantee hold:
    given the fit part, the select images are exchangeable with fresh test images.
    """
    return split_by_image(truth, fit_frac, seed=int(seed) + 7919)


def split_by_image(truth: np.ndarray, dev_frac: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified dev/test split of image indices.

    truth : (B,) int class index of each image. Each class's images are shuffled
    (seeded) and ``round(dev_frac * n)`` go to dev, clipped so that a class with
    at least two images has at least one on each side. Returns sorted (dev, test).
    """
    if not 0.0 < dev_frac < 1.0:
        raise ValueError(f"dev_frac == {dev_frac}, must be strictly between 0 and 1")
    truth = np.asarray(truth, dtype=np.int64)
    rng = np.random.default_rng(seed)
    dev: list[int] = []
    for c in np.unique(truth):
        idx = np.nonzero(truth == c)[0]
        idx = idx[rng.permutation(len(idx))]
        k = int(round(dev_frac * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        dev.extend(idx[:k].tolist())
    dev_arr = np.sort(np.array(dev, dtype=np.int64))
    test_arr = np.setdiff1d(np.arange(len(truth)), dev_arr)
    return dev_arr, test_arr


# --------------------------------------------------------------------------- a τ for a target accuracy
def stop_outcomes(conf: np.ndarray, correct: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Which images stop on confidence at τ, and whether they are right then.

    conf : (B, S) the confidence (max posterior) after each step of each image's path at τ = 1,
        NaN after its last step; column 0 may be the prior. correct : (B, S) bool, whether the
        label after that step is the true one. A path under a deterministic policy does not
        depend on τ (τ only cuts it short), so one run at τ = 1 gives the outcome at every τ.
    Returns (stopped (B,) bool, right (B,) bool): right is False where not stopped.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if conf.shape != correct.shape or conf.ndim != 2:
        raise ValueError(f"conf and correct should be the same (B, S) shape, got {conf.shape} and {correct.shape}")
    hit = np.nan_to_num(conf, nan=-1.0) >= tau  # (B, S)
    stopped = hit.any(axis=1)
    first = np.argmax(hit, axis=1)
    right = stopped & correct[np.arange(conf.shape[0]), first]
    return stopped, right


def binomial_lower_bound(k: int, n: int, alpha: float = 0.1) -> float:
    """One-sided Clopper–Pearson lower bound on a success rate: k successes in n, level 1 − α (0 when n = 0)."""
    if n == 0 or k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


@dataclass(frozen=True)
class TauChoice:
    """A τ chosen for a target accuracy (:func:`choose_tau`).

    tau : the chosen threshold; 1.0 when no τ on the grid could be shown to reach the target.
    target, alpha : the accuracy asked for and the error level (confidence 1 − α).
    reached : whether some τ passed its test.
    n_stopped, n_right : dev images that stop on confidence at τ, and how many of them are right.
    lower_bound : Clopper–Pearson (1 − α) lower bound on the accuracy among them.
    table : one (τ, n_stopped, n_right, p-value) row per τ tested, highest τ first.
    min_stopped : the fewest stopped images a τ needed to be tested (:func:`min_stops`; τ with fewer skipped).
    """

    tau: float
    target: float
    alpha: float
    reached: bool
    n_stopped: int
    n_right: int
    lower_bound: float
    table: tuple
    min_stopped: int = 0


# τ from 0.999 down to 0.2, denser near 1 where a posterior's confidence has most of its resolution
DEFAULT_TAUS = tuple(float(t) for t in np.round(1.0 - np.geomspace(1e-3, 0.8, 48), 6))
#: wrong images among the first τ tested that still let it pass (:func:`min_stops`): with 0, one wrong image
#: among the first ~ln α / ln t stopped ends the sequence (power collapses near the target); with 1 it does not
MIN_STOPS_ERRORS = 1


def min_stops(target: float, alpha: float, errors: int = MIN_STOPS_ERRORS) -> int:
    """The fewest stopped images n at which the exact binomial test of H0: accuracy < target can pass
    with ``errors`` wrong images: the smallest n with P(Binom(n, target) ≥ n − errors) ≤ α.

    With errors = 0 that is ⌈ln α / ln target⌉ (22 for target 0.9, α 0.1; 45 for 0.95); with errors = 1,
    38 for 0.9 and 77 for 0.95. Below it a τ could only pass with a perfect record, and a single wrong image
    would end the fixed sequence: testing starts where one error is survivable instead.
    """
    t, a, e = float(target), float(alpha), int(errors)
    if not (0.0 < t < 1.0 and 0.0 < a < 1.0 and e >= 0):
        raise ValueError(f"min_stops: need target, alpha in (0, 1) and errors >= 0, got {target!r}, {alpha!r}, "
                         f"{errors!r}")
    n = max(e + 1, int(np.floor(np.log(a) / np.log(t))))  # P(all n right) = t^n ≤ α needs at least this many
    while binom.sf(n - e - 1, n, t) > a:
        n += 1
    return n


def choose_tau(conf: np.ndarray, correct: np.ndarray, target: float, *, alpha: float = 0.1,
               taus=DEFAULT_TAUS, min_stopped: int = 20, errors: int | None = MIN_STOPS_ERRORS) -> TauChoice:
    """The lowest τ whose images that stop on confidence are right with probability ≥ target, at confidence 1 − α.

    Learn-then-test with fixed-sequence testing (Angelopoulos et al., 2021): the candidate τ are
    tested from the highest down; for each, H0: accuracy among images stopped at τ < target, with
    the exact binomial p-value P(Binom(n, target) ≥ k) for k right of n stopped. Testing stops at
    the first τ not rejected; the chosen τ is the last one rejected. Every τ passing before the
    first failure keeps the family-wise error at α, so with probability ≥ 1 − α the chosen τ's
    accuracy among stopped images is at least the target (images exchangeable with the dev ones,
    i.e. dev images the channels were not fitted on: the calibration's *select* part).

    A τ at which fewer than max(``min_stopped``, :func:`min_stops` (target, α, ``errors``)) dev images
    stop is skipped (row p-value NaN), neither passed nor failed: near τ = 1 almost nothing stops, and a
    test on fewer images than min_stops could pass only with a perfect record (at target 0.9, 20 right
    of 20 gives p = 0.12 > 0.1), so one image would end the sequence before the τ that matter. Which τ
    are skipped depends on the confidences only, not on whether the images are right, so the tests
    keep their level.

    conf, correct : as in :func:`stop_outcomes`; target in (0, 1); alpha in (0, 1). errors : see
    :func:`min_stops`; None tests from ``min_stopped`` alone (the rule before issue 26, kept for comparison).
    """
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"target accuracy == {target!r}, must be in (0, 1)")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha == {alpha!r}, must be in (0, 1)")
    n_min = max(int(min_stopped), 1, 0 if errors is None else min_stops(target, alpha, errors))
    table = []
    chosen = None
    for tau in sorted({float(t) for t in taus if 0.0 < float(t) < 1.0}, reverse=True):
        stopped, right = stop_outcomes(conf, correct, tau)
        n, k = int(stopped.sum()), int(right.sum())
        if n < n_min:
            table.append((tau, n, k, float("nan")))
            continue
        p = float(binom.sf(k - 1, n, target))
        table.append((tau, n, k, p))
        if p > alpha:
            break
        chosen = (tau, n, k)
    if chosen is None:
        return TauChoice(tau=1.0, target=float(target), alpha=float(alpha), reached=False, n_stopped=0, n_right=0,
                         lower_bound=0.0, table=tuple(table), min_stopped=n_min)
    tau, n, k = chosen
    return TauChoice(tau=tau, target=float(target), alpha=float(alpha), reached=True, n_stopped=n, n_right=k,
                     lower_bound=binomial_lower_bound(k, n, alpha), table=tuple(table), min_stopped=n_min)


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


# --------------------------------------------------------------------------- a dev-greedy order, the auto policy
def dev_greedy_order(sims: np.ndarray, truth: np.ndarray, lam, channel: Channel, answer_model=None
                     ) -> tuple[int, ...]:
    """A static group order chosen greedily on labelled dev images (the ``dev-order`` policy's order).

    sims : (B, Q) dev similarities; truth : (B,) class indices; lam : λ or (G,) λ_g; channel : the answer
    channel (e.g. fitted). Starting from the uniform prior, each step appends the unasked group g with the
    largest dev accuracy gain per prompt, (acc(asked ∪ {g}) − acc(asked)) / K_g, of the full Bayes posterior
    after the groups asked (its argmax, ties to the lower class index); ties (accuracies are multiples of
    1/B) go to the larger gain in mean true-class log posterior per prompt, then to the lower group index.
    Gain per prompt is the order that maximises the area under an accuracy-against-Q curve when gains add
    (Smith's rule); the budget AUC is the figure the auto policy compares. answer_model : a few-shot
    posterior (:class:`engine.core.answer_models.FewShotPosterior`): its prior and per-group terms replace
    the channel's, as in the loop; a conditional one (:class:`engine.core.gaussian.GaussianPosterior`) gives its
    ``log_posterior`` on each asked set instead. Returns a permutation of 0..G-1.
    """
    sims = np.asarray(sims, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    G = channel.n_groups
    lams = check_logit_scales(lam, G)
    sizes = np.asarray(channel.sizes, dtype=np.float64)
    conditional = bool(getattr(answer_model, "conditional", False))
    if answer_model is None:
        ll = [bayes_loglik(group_log_probs(sims[:, channel.cols(g)], lams[g]), channel.P[:, channel.cols(g)])
              for g in range(G)]  # G arrays (B, C)
        start = np.zeros((len(truth), channel.n_classes))
    elif not conditional:
        ll = [answer_model.group_loglik(g, sims[:, channel.cols(g)]) for g in range(G)]
        start = answer_model.log_prior(len(truth))
    rows = np.arange(len(truth))

    def log_post(asked: list[int]) -> np.ndarray:
        """(B, C) the (unnormalised) log posterior after the groups ``asked``."""
        if conditional:
            mask = np.zeros((len(truth), G), dtype=bool)
            mask[:, asked] = True
            return answer_model.log_posterior(sims, mask)
        return start + sum((ll[g] for g in asked), np.zeros_like(start))

    def score(tot):
        lp = tot - logsumexp(tot, axis=1, keepdims=True)
        return float((lp.argmax(axis=1) == truth).mean()), float(lp[rows, truth].mean())

    acc0, lt0 = score(log_post([]))
    order: list[int] = []
    while len(order) < G:
        best = None
        for g in (g for g in range(G) if g not in order):
            acc, lt = score(log_post(order + [g]))
            key = ((acc - acc0) / sizes[g], (lt - lt0) / sizes[g], -g)
            if best is None or key > best[0]:
                best = (key, g, acc, lt)
        _, g, acc0, lt0 = best
        order.append(g)
    return tuple(order)


def pick_policy(aucs: dict, baseline: str = "fixed") -> tuple[str, dict]:
    """The auto policy's rule: the candidate with the highest budget AUC, if its paired bootstrap difference to
    ``baseline`` has a 95% interval above 0 (clearly better on these images); otherwise ``baseline``.

    aucs : {name: {"auc": float, "boot": (n_boot,) resampled AUCs on shared resamples}} (:func:`engine.core.
    metrics.budget_aucs`), ``baseline`` among them. Keeping the static system order unless something beats it
    clearly is what keeps auto from losing to it in expectation on small, noisy dev sets. Equal AUCs go to the
    baseline, then to the name that comes first in ``aucs``. Returns (choice, {name: {"diff", "diff_ci95"}}):
    each candidate's AUC minus the baseline's, with its CI.
    """
    base = aucs[baseline]
    diffs = {}
    for k, v in aucs.items():
        d = np.asarray(v["boot"]) - np.asarray(base["boot"])
        diffs[k] = {"diff": float(v["auc"] - base["auc"]),
                    "diff_ci95": [float(x) for x in np.quantile(d, [0.025, 0.975])]}
    best = max(aucs, key=lambda k: (aucs[k]["auc"], k == baseline))
    choice = best if best == baseline or diffs[best]["diff_ci95"][0] > 0 else baseline
    return choice, diffs
