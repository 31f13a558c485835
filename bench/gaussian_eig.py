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

(Bhattacharyya and KL distances; :func:`engine.core.gaussian.information_bound`). The registered
``--policy model_eig_per_prompt`` asks the group with the largest I_BD per prompt; :class:`GaussianEIGPolicy` the
variants (I_BD not per prompt, I_KL per prompt). Over more than :data:`engine.core.gaussian.INFO_CLASSES` classes
the sums run over the image's most probable ones, renormalised.
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
from engine.core.channel_fit import fit_answer_channels, split_by_image
from engine.core.metrics import budget_grid
from policies.base import Policy, PolicyState, masked_argmax

from .channels import DEFAULT_PROBE, auc_rows, budget_curve, probe_preps, resample_weights
from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "gaussian_eig"
#: (label, information bound, per prompt); "G fixed" is the registered fixed policy and "G own EIG per prompt" the
#: registered model_eig_per_prompt, the others :class:`GaussianEIGPolicy`
CURVES = (("G fixed", None, False), ("G own EIG", "bhattacharyya", False),
          ("G own EIG per prompt", "bhattacharyya", True), ("G own EIG per prompt (KL)", "kl", True))
REGISTERED = {"G fixed": "fixed", "G own EIG per prompt": "model_eig_per_prompt"}


class GaussianEIGPolicy(Policy):
    """Asks the available group with the largest :func:`engine.core.gaussian.information_bound` of ``kind`` (per
    prompt with ``per_prompt``; ties to the lowest index): the variants the registered ``model_eig_per_prompt``
    (the Bhattacharyya bound, per prompt) is measured against. It keeps each image's asked groups itself, from its
    own choices (the loop asks what a policy chooses), so make a fresh one per run. Not registered."""

    name = "gaussian-eig"
    reads_eig = False  # the loop need not compute the channel's EIG

    def __init__(self, post: GP.GaussianPosterior, n_images: int, *, kind: str = "bhattacharyya",
                 per_prompt: bool = True):
        self.post, self.kind, self.per_prompt = post, kind, per_prompt
        self.sizes = np.asarray(post.sizes, dtype=np.float64)
        self.asked = np.zeros((int(n_images), len(self.sizes)), dtype=bool)

    def select(self, state: PolicyState) -> np.ndarray:
        imgs = np.asarray(state.images)
        log_post = np.log(np.maximum(np.asarray(state.post, dtype=np.float64), 1e-300))
        log_post -= logsumexp(log_post, axis=1, keepdims=True)
        info = GP.information_bound(self.post, self.asked[imgs], log_post, self.kind)
        choice = masked_argmax(info / self.sizes if self.per_prompt else info,
                               np.asarray(state.available, dtype=bool))
        self.asked[imgs, choice] = True
        return choice


def evaluate(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000, ci: float = 0.95,
             log=print) -> dict[str, Any]:
    """One pair: the Gaussian fitted on the dev half, every curve on the test half; each row's AUC against G fixed
    with a paired bootstrap interval of coverage ``ci`` (``minus_fixed_ci``)."""
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
        make = ((lambda name=REGISTERED[label]: name) if label in REGISTERED else
                (lambda k=kind, pp=per_prompt: GaussianEIGPolicy(post, test.n, kind=k, per_prompt=pp)))
        curves[label] = budget_curve(test, make, budgets, lam=ch.lams, channel=ch.channel(s.rule_matrix, s.option_counts),
                                     answer_model=post)
        secs[label] = time.perf_counter() - t0
        log(f"  {label}: {secs[label]:.1f} s")
    w = resample_weights(test.n, n_boot, seed)
    tail = (1 - ci) / 2
    boot = {k: auc_rows(w @ cor, w @ qq, q_full) for k, (cor, qq) in curves.items()}
    auc = {k: float(auc_rows(cor.mean(0)[None], qq.mean(0)[None], q_full)[0]) for k, (cor, qq) in curves.items()}
    rows = [{"label": k, "auc": auc[k], "seconds": secs[k],
             "minus_fixed": auc[k] - auc["G fixed"],
             "minus_fixed_ci": [float(x) for x in np.quantile(boot[k] - boot["G fixed"], [tail, 1 - tail])],
             "curve": [{"budget": b, "accuracy": float(cor[:, j].mean()), "mean_q": float(qq[:, j].mean())}
                       for j, b in enumerate(budgets)]}
            for k, (cor, qq) in curves.items()]
    return {"data": prep.data, "system": s.name, "n_classes": s.n_classes, "q_full": q_full, "model": prep.model_label,
            "n_dev": dev.n, "n_test": test.n, "temperature": post.temperature, "fit_seconds": fit_s, "rows": rows}


def report(results: dict[str, Any]) -> str:
    L = ["# The Gaussian posterior's own EIG against its fixed order (bench.gaussian_eig)", "",
         *C.run_lines(results), f"- model: {', '.join(sorted({r['model'] for r in results['pairs'].values()}))}", "",
         f"Normalised budget AUC on the test half (τ = 1); differences against G fixed with paired "
         f"{100 * results['ci']:g}% bootstrap CIs.", ""]
    heads = ["pair (test images)", "G fixed"] + [lab for lab, kind, _ in CURVES if kind is not None]
    body = []
    for key, r in results["pairs"].items():
        by = {x["label"]: x for x in r["rows"]}
        body.append([f"{key} ({r['n_test']})", f"{by['G fixed']['auc']:.3f}"] +
                    [f"{by[h]['auc']:.3f}, {by[h]['minus_fixed']:+.3f} {C.signed_ci(by[h]['minus_fixed_ci'])}"
                     for h in heads[2:]])
    L.append(C.md_table(heads, body))
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (results.json, report.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--ci", type=float, default=0.95,
                    help="coverage of the paired intervals (e.g. 0.975: a Bonferroni family of two at 95%%)")
    ap.add_argument("--probe", default=str(DEFAULT_PROBE), help="a trained probe folder (bench.probe train)")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache (bench.probe's)")
    ap.add_argument("--datasets", nargs="+", default=["sprites151", "jina15-gen1", "web150"])
    ap.add_argument("--systems", nargs="+", default=["pokemon15-gen1"])
    args = ap.parse_args(argv)
    if not 0 < args.ci < 1:
        ap.error(f"--ci {args.ci} is not a coverage; give one between 0 and 1, e.g. 0.95")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    preps, why = probe_preps(Path(args.probe), Path(args.cache_dir), limit=None, seed=args.seed,
                             datasets_only=args.datasets, systems_only=args.systems)
    if not preps:
        raise SystemExit(f"bench.gaussian_eig: no probe pair to run ({why})")
    pairs = {}
    for key, prep in preps.items():
        print(f"[gaussian_eig] {key}: {prep.n} images, N={prep.system.n_classes}, Q={prep.system.q_total}")
        pairs[key] = evaluate(prep, seed=args.seed, n_boot=args.boot, ci=args.ci)
    results = {"benchmark": "gaussian_eig", "command": C.command_line("bench.gaussian_eig", argv), "seed": args.seed,
               "n_boot": args.boot, "ci": args.ci, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), numpy only",
               "pairs": pairs, "seconds": time.perf_counter() - t0, "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    C.write_outputs(Path(args.out), results, report(results))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return results


if __name__ == "__main__":
    main()
