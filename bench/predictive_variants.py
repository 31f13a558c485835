"""Two variants of issue 26's predictive machinery, against what ships: a policy and a stop rule.

    python -m bench.predictive_variants                      # the three 15-class probe pairs (not CLIP)
    python -m bench.predictive_variants --no-probe --quick   # the simulator, small (the test's run)

Issue 26 misses two targets: adaptive order beating fixed order with a CI excluding 0 on two probe pairs, and
the confidence stop reaching the full system's accuracy (within 2 points) at ≤ 50% of Q with τ chosen on dev.
This benchmark measures one idea aimed at each, with the few-shot posterior and predictive terms that
``calibrate --setting few-shot`` fits (:func:`bench.channels.fit_predictive_models`), fitted on the dev half:

- **error reduction** (a policy): the predictive EIG with the posterior's 0–1 risk in place of its entropy
  (:func:`engine.core.predictive.expected_error_reduction`): the budget curve scores accuracy, and the entropy
  also rewards reshuffling the mass among wrong classes. Budget AUC (τ = 1) against fixed order and against
  predictive eig, paired bootstrap CIs over test images.
- **stability stop** (a stop rule): stop when the predicted chance that the remaining groups leave the label
  unchanged (:func:`engine.core.predictive.label_stability`) is ≥ 1 − ε: it aims at the full system's label,
  as the target does, where the confidence stop aims at the truth. ε = 0.02 (the target's 2 points, not
  chosen), and ε chosen on cross-fitted dev paths (the largest on a grid at which ≥ 99% of dev images stop on
  their fold posterior's full label, as :func:`bench.channels.dev_tau` chooses τ). Against the confidence
  stop with τ from :func:`bench.channels.dev_tau`. Same policies' paths, test images.

Nothing is chosen on test images. Writes bench/out/predictive_variants/results.json and report.md.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.core import predictive as PR
from engine.core.adaptive import NO_STOP, classify_batch
from engine.core.arrays import NUMPY, Arrays
from engine.core.sources import ArraySource

from . import channels as CH
from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "predictive_variants"
EPS_GRID = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2)
POLICIES = (  # (label, model, policy): "few-shot" the LR posterior, "predictive" with the predictive EIG,
    # "error" with the expected error reduction
    ("fixed", "few-shot", "fixed"), ("predictive eig", "predictive", "eig"),
    ("predictive eig per prompt", "predictive", "eig_per_prompt"), ("error reduction", "error", "eig"),
    ("error reduction per prompt", "error", "eig_per_prompt"))
STOP_POLICIES = ("fixed", "predictive eig")


class ErrorReductionPosterior(PR.PredictivePosterior):
    """The few-shot posterior whose ``information_gain`` is the expected error reduction (clipped at 0), for
    the loop's ``answer_model``: every EIG-reading policy then chooses by it. Not offered by ``calibrate``."""

    def information_gain(self, log_post, xp: Arrays = NUMPY):
        T, valid = self.predictive.on(xp)
        gain = PR.expected_error_reduction(log_post, T, valid, max_classes=self.predictive.max_classes, xp=xp)
        return xp.maximum(gain, 0.0)


def step_states(sims: np.ndarray, system, policy, fitted: dict, answer_model, posterior
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image's states along its τ = 1 path: (log posteriors (B, G+1, C), asked (B, G+1, G) bool,
    q (B, G+1)); state 0 is the prior, state j after the j-th question (the loop asks every group at τ = 1)."""
    res = classify_batch(ArraySource(sims, system), system, policy, stop=NO_STOP, logit_scale=fitted["lams"],
                         channel=fitted["channel"], top_k=1, trace=True, answer_model=answer_model)
    index = {g.name: j for j, g in enumerate(system.groups)}
    B, G = len(sims), system.n_groups
    asked = np.zeros((B, G + 1, G), dtype=bool)
    for i, r in enumerate(res):
        if len(r.steps) != G:
            raise RuntimeError(f"image {i} asked {len(r.steps)} of {G} groups at τ = 1")
        for j, s in enumerate(r.steps, start=1):
            asked[i, j:, index[s.group]] = True
    L = np.stack([posterior.log_posterior(sims, asked[:, j]) for j in range(G + 1)], axis=1)
    return L, asked, asked @ np.asarray(system.option_counts)


def first_stop(hit: np.ndarray, correct: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct (B,), q (B,)) at each path's first state where ``hit`` (B, S) holds, else its last."""
    hit = hit.copy()
    hit[:, -1] = True
    j = hit.argmax(axis=1)
    rows = np.arange(len(j))
    return correct[rows, j].astype(float), q[rows, j].astype(float)


def stability_paths(L: np.ndarray, asked: np.ndarray, terms: PR.PredictiveTerms) -> np.ndarray:
    """(B, S) :func:`engine.core.predictive.label_stability` at every state of the paths."""
    T, valid = terms.padded()
    return np.stack([PR.label_stability(L[:, j], asked[:, j], T, valid) for j in range(L.shape[1])], axis=1)


def dev_eps(dev: C.Prepared, fitted: dict, label: str, *, margin: float = 0.01) -> dict[str, Any]:
    """ε for the stability stop on cross-fitted dev paths: each fold's images run through the posterior fitted on
    the other folds, their stability read from the other folds' terms, "correct" = that fold posterior's full
    label (:func:`bench.channels.fold_views`, as :func:`bench.channels.dev_tau`); the largest ε on :data:`EPS_GRID`
    at which ≥ 1 − ``margin`` of dev images agree (else the smallest)."""
    agree = {e: np.zeros(dev.n) for e in EPS_GRID}
    q = {e: np.zeros(dev.n) for e in EPS_GRID}
    model, pname = next((m, p) for lab, m, p in POLICIES if lab == label)
    for te, post, others, am in CH.fold_views(dev, fitted, predictive=model == "predictive"):
        L, asked, qq = step_states(dev.sims[te], dev.system, CH.make_policy(pname), fitted, am, post)
        agrees = L.argmax(axis=2) == L[:, -1].argmax(axis=1)[:, None]
        st = stability_paths(L, asked, others)
        for e in EPS_GRID:
            agree[e][te], q[e][te] = first_stop(st >= 1.0 - e - 1e-12, agrees, qq)
    ok = [e for e in EPS_GRID if agree[e].mean() >= 1.0 - margin - 1e-12]
    eps = max(ok) if ok else min(EPS_GRID)
    return {"eps": float(eps), "dev_agreement": float(agree[eps].mean()), "dev_mean_q": float(q[eps].mean())}


def evaluate(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000, log=print) -> dict[str, Any]:
    """Both variants on one pair: fitted on the dev half, measured on the test half (paired bootstrap CIs)."""
    s = prep.system
    q_full = float(s.q_total)
    dev_i, test_i = CH.split_by_image(prep.truth, 0.5, seed)
    dev, test = prep.subset(dev_i), prep.subset(test_i)
    fitted = CH.fit_predictive_models(dev, seed=seed, log=log)
    post = fitted["posterior"]
    models = {"few-shot": post, "predictive": fitted["predictive"],
              "error": ErrorReductionPosterior(post, fitted["terms"])}
    budgets = CH.budget_grid(int(q_full), n_budgets)
    w = CH.resample_weights(test.n, n_boot, seed)

    def ci(x):
        return [float(v) for v in np.quantile(x, [0.025, 0.975])]

    curves = {}
    for label, model, pname in POLICIES:
        t0 = time.perf_counter()
        curves[label] = CH.budget_curve(test, lambda p=pname: CH.make_policy(p), budgets, lam=fitted["lams"],
                                        channel=fitted["channel"], answer_model=models[model])
        log(f"  {label}: {time.perf_counter() - t0:.1f} s")
    boot = {k: CH.auc_rows(w @ c, w @ q, q_full) for k, (c, q) in curves.items()}
    auc = {k: float(CH.auc_rows(c.mean(0)[None], q.mean(0)[None], q_full)[0]) for k, (c, q) in curves.items()}
    diffs = [{"a": a, "b": b, "diff": auc[a] - auc[b], "ci95": ci(boot[a] - boot[b])}
             for a in ("predictive eig", "predictive eig per prompt", "error reduction", "error reduction per prompt")
             for b in ("fixed", "predictive eig") if a != b]

    full = post.log_posterior(test.sims).argmax(axis=1) == test.truth
    boot_full = w @ full.astype(float)
    stops = []
    for label in STOP_POLICIES:
        model, pname = next((m, p) for lab, m, p in POLICIES if lab == label)
        L, asked, qq = step_states(test.sims, s, CH.make_policy(pname), fitted, models[model], post)
        correct = L.argmax(axis=2) == test.truth[:, None]
        conf = np.exp(L.max(axis=2))
        st = stability_paths(L, asked, fitted["terms"])
        tau = CH.dev_tau(dev, fitted, label)
        chosen = dev_eps(dev, fitted, label)
        for rule, x, hit in (("confidence, τ from dev", tau["tau"], conf >= tau["tau"] - 1e-12),
                             ("stability, ε = 0.02", 0.02, st >= 0.98 - 1e-12),
                             ("stability, ε from dev", chosen["eps"], st >= 1.0 - chosen["eps"] - 1e-12)):
            cor, q = first_stop(hit, correct, qq)
            stops.append({"policy": label, "rule": rule, "threshold": float(x), "accuracy": float(cor.mean()),
                          "mean_q": float(q.mean()), "frac_q": float(q.mean() / q_full),
                          "minus_full": float(cor.mean() - full.mean()), "minus_full_ci95": ci(w @ cor - boot_full),
                          "dev": tau if rule.startswith("confidence") else chosen if "dev" in rule else None})
    return {"data": prep.data, "system": s.name, "model": prep.model_label, "n_classes": s.n_classes,
            "q_full": q_full, "n_dev": dev.n, "n_test": test.n, "budgets": budgets,
            "full": {"accuracy": float(full.mean()), "ci95": ci(boot_full)},
            "auc": {k: {"value": v, "ci95": ci(boot[k])} for k, v in auc.items()}, "diffs": diffs, "stops": stops}


def report(results: dict[str, Any]) -> str:
    iv = C.signed_ci
    L = CH.variant_report_head("bench.predictive_variants — error reduction (a policy) and a stability stop (issue 26)", results)
    for key, r in results["pairs"].items():
        L.append(f"\n## {key} ({r['model']})\n")
        L.append(f"- N={r['n_classes']}, Q={r['q_full']:.0f}; {r['n_dev']} dev / {r['n_test']} test; full system "
                 f"{r['full']['accuracy']:.3f} {iv(r['full']['ci95'])}\n")
        d = {(x["a"], x["b"]): x for x in r["diffs"]}
        rows = []
        for k, v in r["auc"].items():
            rows.append([k, f"{v['value']:.3f}",
                         "" if (k, "fixed") not in d else f"{d[(k, 'fixed')]['diff']:+.3f} {iv(d[(k, 'fixed')]['ci95'])}",
                         "" if (k, "predictive eig") not in d else
                         f"{d[(k, 'predictive eig')]['diff']:+.3f} {iv(d[(k, 'predictive eig')]['ci95'])}"])
        L.append(C.md_table(["policy", "budget AUC", "− fixed [95% CI]", "− predictive eig [95% CI]"], rows))
        L.append("")
        L.append(C.md_table(["policy", "stop rule", "threshold", "test accuracy", "mean Q (% of Q)",
                             "− full [95% CI]", "dev agreement, dev % of Q"],
                            [[x["policy"], x["rule"], f"{x['threshold']:g}", f"{x['accuracy']:.3f}",
                              f"{x['mean_q']:.1f} ({100 * x['frac_q']:.0f}%)",
                              f"{x['minus_full']:+.3f} {iv(x['minus_full_ci95'])}",
                              "–" if x["dev"] is None else
                              f"{x['dev']['dev_agreement']:.3f}, {100 * x['dev']['dev_mean_q'] / r['q_full']:.0f}%"]
                             for x in r["stops"]]))
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return CH.variant_main("predictive_variants", __doc__, evaluate, report, DEFAULT_OUT, argv)


if __name__ == "__main__":
    main()
