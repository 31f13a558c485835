"""The Gaussian few-shot posterior's own information gain as a question policy, against its fixed order (issue 26).

    python -m bench.gaussian_eig                                   # the three 10-class probe pairs
    python -m bench.gaussian_eig --datasets sprites151 --systems pokeapi-gen1

The loop's EIG policies read the tempered per-class answer channel, a naive-Bayes model of the answers, while the
Gaussian posterior (:mod:`engine.core.gaussian`) answers with correlated similarities. This measures the model's
own I(C; z_g | z_A) instead. Given the asked columns A, class c's similarities of group g are N(m_c, S/t) (t its
temperature), and the difference m_i − m_j = (μ_i − μ_j)_g − Σ_gA Σ_AA⁻¹ (μ_i − μ_j)_A does not depend on z_A: the
pairwise distances D_ij = δᵀ S⁻¹ δ depend on A and g only, and the information of a Gaussian mixture with one
covariance is bracketed in closed form (Kolchinsky & Tracey 2017, *Estimating mixture entropy with pairwise
distances*), with p the posterior now:

    I_BD = −Σ_i p_i log Σ_j p_j exp(−t·D_ij / 8)   ≤   I(C; z_g | z_A)   ≤   I_KL = −Σ_i p_i log Σ_j p_j exp(−t·D_ij / 2)

(Bhattacharyya and KL distances). :class:`GaussianEIGPolicy` asks the group with the largest I_BD (per prompt, or
not); over more than :data:`TOP_CLASSES` classes the sums run over the image's most probable ones, renormalised.
Each pair is split 50/50 by image (seed 0, stratified); the Gaussian is fitted on the dev half; every curve is a
budget sweep (τ = 1) on the test half through the engine's own loop; paired bootstrap CIs (1,000 resamples).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from engine.core import gaussian as GP
from engine.core.answer_models import _col_group
from engine.core.channel_fit import fit_answer_channels, split_by_image
from engine.core.metrics import budget_grid
from policies.base import Policy, PolicyState, masked_argmax

from .channels import DEFAULT_PROBE, auc_rows, budget_curve, probe_preps, resample_weights
from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "gaussian_eig"
TOP_CLASSES = 32  # classes an image's information sums over (its most probable)
FACTOR = {"bhattacharyya": 1 / 8, "kl": 1 / 2}  # D_ij's factor (times t) in the two pairwise estimators
CURVES = (("G fixed", None, False), ("G own EIG", "bhattacharyya", False),
          ("G own EIG per prompt", "bhattacharyya", True), ("G own EIG per prompt (KL)", "kl", True))


class PairwiseDistances:
    """D_ij^{g|A} (C, C) of a :class:`engine.core.gaussian.GaussianPosterior`, per (asked groups, g), cached."""

    def __init__(self, post: GP.GaussianPosterior):
        self.post, self.col_group, self.cache = post, _col_group(post.sizes), {}

    def __call__(self, asked: np.ndarray, g: int) -> np.ndarray:
        key = (np.asarray(asked, dtype=bool).tobytes(), int(g))
        if key not in self.cache:
            M = self.post.means
            A, Bg = np.asarray(asked, dtype=bool)[self.col_group], self.col_group == g
            KT, Sg = GP.conditional_blocks(self.post.cov, A, Bg)  # (|A|, K_g) Σ_AA⁻¹ Σ_Ag, g's covariance given A
            m = M[:, Bg] - M[:, A] @ KT  # the conditional means' part that differs between classes
            u = np.linalg.solve(GP.pd_cholesky(Sg), m.T).T  # (C, K_g) whitened conditional means
            sq = (u * u).sum(axis=1)
            self.cache[key] = np.maximum(sq[:, None] + sq[None, :] - 2.0 * u @ u.T, 0.0)
        return self.cache[key]


def pairwise_information(log_post: np.ndarray, dist: np.ndarray, temperature: float, kind: str = "bhattacharyya",
                         top: int = TOP_CLASSES) -> np.ndarray:
    """(n,) −Σ_i p_i log Σ_j p_j exp(−f·t·D_ij) for posteriors ``log_post`` (n, C) (normalised) and distances
    ``dist`` (C, C), f = :data:`FACTOR` [kind]: a lower (bhattacharyya) or upper (kl) bound on the information of
    the class mixture, in nats. Over more than ``top`` classes, each image's ``top`` most probable, renormalised."""
    lp = np.asarray(log_post, dtype=np.float64)
    n, C = lp.shape
    f = FACTOR[kind] * float(temperature)
    if C > top:
        keep = np.argpartition(-lp, top - 1, axis=1)[:, :top]
        lp = np.take_along_axis(lp, keep, axis=1)
        lp = lp - logsumexp(lp, axis=1, keepdims=True)
        D = dist[keep[:, :, None], keep[:, None, :]]  # (n, k, k)
    else:
        D = np.broadcast_to(dist, (n, C, C))
    inner = logsumexp(lp[:, None, :] - f * D, axis=2)  # (n, k): log Σ_j p_j exp(−f·t·D_ij)
    return np.maximum(-(np.exp(lp) * inner).sum(axis=1), 0.0)


class GaussianEIGPolicy(Policy):
    """Asks the available group with the largest :func:`pairwise_information` (per prompt with ``per_prompt``;
    ties to the lowest index). It keeps each image's asked groups itself, from its own choices (the loop asks
    what a policy chooses), so make a fresh one per run. Not registered."""

    name = "gaussian-eig"
    reads_eig = False  # the loop need not compute the channel's EIG

    def __init__(self, post: GP.GaussianPosterior, n_images: int, *, kind: str = "bhattacharyya",
                 per_prompt: bool = True):
        self.post, self.kind, self.per_prompt = post, kind, per_prompt
        self.sizes = np.asarray(post.sizes, dtype=np.float64)
        self.dist = PairwiseDistances(post)
        self.asked = np.zeros((int(n_images), len(self.sizes)), dtype=bool)

    def select(self, state: PolicyState) -> np.ndarray:
        imgs = np.asarray(state.images)
        avail = np.asarray(state.available, dtype=bool)
        log_post = np.log(np.maximum(np.asarray(state.post, dtype=np.float64), 1e-300))
        log_post -= logsumexp(log_post, axis=1, keepdims=True)
        score = np.full(avail.shape, -np.inf)
        for a, _, rows in GP.asked_sets(self.asked[imgs], self.post.sizes):
            for g in np.nonzero(~a)[0]:
                info = pairwise_information(log_post[rows], self.dist(a, g), self.post.temperature, self.kind)
                score[rows, g] = info / self.sizes[g] if self.per_prompt else info
        choice = masked_argmax(score, avail)
        self.asked[imgs, choice] = True
        return choice


def evaluate(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000, log=print) -> dict[str, Any]:
    s = prep.system
    q_full = float(s.q_total)
    dev_i, test_i = split_by_image(prep.truth, 0.5, seed)
    dev, test = prep.subset(dev_i), prep.subset(test_i)
    t0 = time.perf_counter()
    post = GP.fit_gaussian_posterior(dev.sims, dev.truth, s.option_counts, s.n_classes, seed=seed).posterior
    # the loop records each step's answer with λ_g and needs a channel; neither touches the Gaussian's posterior
    ch = fit_answer_channels(dev.sims, dev.truth, s.rule_matrix, s.option_counts, lam0=prep.logit_scale, eps=prep.eps)
    fit_s = time.perf_counter() - t0
    budgets = budget_grid(int(q_full), n_budgets)
    curves, secs = {}, {}
    for label, kind, per_prompt in CURVES:
        t0 = time.perf_counter()
        make = ((lambda: "fixed") if kind is None else
                (lambda k=kind, pp=per_prompt: GaussianEIGPolicy(post, test.n, kind=k, per_prompt=pp)))
        curves[label] = budget_curve(test, make, budgets, lam=ch.lams, channel=ch.channel(s.rule_matrix, s.option_counts),
                                     answer_model=post)
        secs[label] = time.perf_counter() - t0
        log(f"  {label}: {secs[label]:.1f} s")
    w = resample_weights(test.n, n_boot, seed)
    boot = {k: auc_rows(w @ cor, w @ qq, q_full) for k, (cor, qq) in curves.items()}
    auc = {k: float(auc_rows(cor.mean(0)[None], qq.mean(0)[None], q_full)[0]) for k, (cor, qq) in curves.items()}
    rows = [{"label": k, "auc": auc[k], "seconds": secs[k],
             "minus_fixed": auc[k] - auc["G fixed"],
             "minus_fixed_ci95": [float(x) for x in np.quantile(boot[k] - boot["G fixed"], [0.025, 0.975])],
             "curve": [{"budget": b, "accuracy": float(cor[:, j].mean()), "mean_q": float(qq[:, j].mean())}
                       for j, b in enumerate(budgets)]}
            for k, (cor, qq) in curves.items()]
    return {"data": prep.data, "system": s.name, "n_classes": s.n_classes, "q_full": q_full, "model": prep.model_label,
            "n_dev": dev.n, "n_test": test.n, "temperature": post.temperature, "fit_seconds": fit_s, "rows": rows}


def report(results: dict[str, Any]) -> str:
    L = ["# The Gaussian posterior's own EIG against its fixed order (bench.gaussian_eig)", "",
         *C.run_lines(results), f"- model: {', '.join(sorted({r['model'] for r in results['pairs'].values()}))}", "",
         "Normalised budget AUC on the test half (τ = 1); differences against G fixed with paired 95% bootstrap CIs.", ""]
    heads = ["pair (test images)", "G fixed"] + [lab for lab, kind, _ in CURVES if kind is not None]
    body = []
    for key, r in results["pairs"].items():
        by = {x["label"]: x for x in r["rows"]}
        body.append([f"{key} ({r['n_test']})", f"{by['G fixed']['auc']:.3f}"] +
                    [f"{by[h]['auc']:.3f}, {by[h]['minus_fixed']:+.3f} {C.signed_ci(by[h]['minus_fixed_ci95'])}"
                     for h in heads[2:]])
    L.append(C.md_table(heads, body))
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (results.json, report.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--probe", default=str(DEFAULT_PROBE), help="a trained probe folder (bench.probe train)")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache (bench.probe's)")
    ap.add_argument("--datasets", nargs="+", default=["sprites151", "jina15-gen1", "web150"])
    ap.add_argument("--systems", nargs="+", default=["pokemon15-gen1"])
    args = ap.parse_args(argv)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    preps, why = probe_preps(Path(args.probe), Path(args.cache_dir), limit=None, seed=args.seed,
                             datasets_only=args.datasets, systems_only=args.systems)
    if not preps:
        raise SystemExit(f"bench.gaussian_eig: no probe pair to run ({why})")
    pairs = {}
    for key, prep in preps.items():
        print(f"[gaussian_eig] {key}: {prep.n} images, N={prep.system.n_classes}, Q={prep.system.q_total}")
        pairs[key] = evaluate(prep, seed=args.seed, n_boot=args.boot)
    results = {"benchmark": "gaussian_eig", "command": C.command_line("bench.gaussian_eig", argv), "seed": args.seed,
               "n_boot": args.boot, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), numpy only",
               "pairs": pairs, "seconds": time.perf_counter() - t0, "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    C.write_outputs(Path(args.out), results, report(results))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return results


if __name__ == "__main__":
    main()
