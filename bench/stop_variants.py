"""Two stop variants for issue 26's last missed target, against what ships (the Gaussian posterior's stops).

    python -m bench.stop_variants                      # the three 15-class probe pairs (the probe, not CLIP)
    python -m bench.stop_variants --no-probe --quick   # the simulator, small (the test's run)

The target: adaptive order reaching the full system's accuracy (within 2 points) at ≤ 50% of Q, with every
threshold chosen on dev. Both variants were written down (idea, setting, expected result) before their first run,
and that run is what ``docs/channels.md`` reports; this module reproduces it.

- **value stop**: stop an image once asking every group left is expected to raise its top class's probability by
  at most ε (:func:`engine.core.gaussian.remaining_accuracy_gain`, under the Gaussian posterior's own tempered
  predictive). Under a calibrated model that is the accuracy the image gives up by stopping, whether or not its
  label would change, so unlike the shipped labels rule it may stop a hard image whose posterior stays flat.
  ε = 0.02 (the target's 2 points) and 0.01, fixed in advance: nothing is chosen, on dev or test.
- **temperature per asked count**: the Gaussian posterior's single temperature t (fitted on held-out full rows
  and random prefixes together) leaves early posteriors underconfident; here t_j, one per number of asked
  groups j ≥ 1, each fitted by the same held-out NLL on the held-out rows with j groups asked (each fold model's
  without its fold). Only the posterior is re-tempered (:class:`StepTemperedGaussian`); the settled bound, the
  gains and the information bound keep the single t. The stops' thresholds are then chosen on cross-fitted dev
  paths exactly as :func:`bench.channels.dev_tau` chooses them for what ships, and both run side by side.

Fitted on the dev half of each pair (:func:`bench.channels.fit_predictive_models`), every figure on the test
half, paired bootstrap CIs. Writes bench/out/stop_variants/results.json and report.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.special import log_softmax

from engine.core import gaussian as GP
from engine.core import stopping as STOP

from . import channels as CH
from . import predictive_variants as PV
from .lib import harness as C

DEFAULT_OUT = C.DEFAULT_OUT / "stop_variants"
CURVES = ("G fixed", "G eig per prompt", "G model eig per prompt")
VALUE_EPS = (0.02, 0.01)  # fixed before the first run


@dataclass(frozen=True)
class StepTemperedGaussian(GP.GaussianPosterior):
    """A :class:`engine.core.gaussian.GaussianPosterior` whose log posterior after j ≥ 1 asked groups is tempered by
    step_t[j] instead of the single temperature (which still tempers the prior and everything else)."""

    step_t: tuple = ()

    def log_posterior(self, sims: np.ndarray, asked: np.ndarray | None = None) -> np.ndarray:
        sims = np.asarray(sims, dtype=np.float64)
        asked = np.ones((len(sims), len(self.sizes)), dtype=bool) if asked is None else np.asarray(asked, dtype=bool)
        n = asked.sum(axis=1)
        logits = untempered(self).log_posterior(sims, asked)  # normalised at t = 1: a shift per row, gone below
        t = np.array([self.temperature if j == 0 else self.step_t[j] for j in n])
        return log_softmax(logits * t[:, None], axis=1)


def untempered(post: GP.GaussianPosterior) -> GP.GaussianPosterior:
    """``post`` as a plain GaussianPosterior at t = 1."""
    return GP.GaussianPosterior(**{f.name: getattr(post, f.name) for f in fields(GP.GaussianPosterior)
                                   if f.name != "temperature"}, temperature=1.0)


def step_temperatures(parts: list, n_groups: int) -> tuple:
    """(None, t_1, …, t_G): per asked count j, the t minimising the held-out NLL of the rows with j groups asked.
    parts: (logits at t = 1 (R, C), truth (R,), asked count (R,)) per fold."""
    out = [None]
    for j in range(1, n_groups + 1):
        out.append(GP._fit_temperature([(ll[n == j], y[n == j]) for ll, y, n in parts if (n == j).any()]))
    return tuple(out)


def heldout_rows(dev: C.Prepared, fitted: dict[str, Any], seed: int) -> list:
    """Per fold: (logits at t = 1 (R, C), truth (R,), asked count (R,)) of the held-out rows
    :func:`engine.core.gaussian.fit_gaussian_posterior` fitted its single t on
    (:func:`engine.core.gaussian.temperature_rows`, with the fit's seed), each scored by the fold model fitted
    without them."""
    rows = GP.temperature_rows(dev.sims, dev.truth, fitted["terms"].folds, fitted["G_folds"], seed=seed)
    return [(ll, y, asked.sum(axis=1)) for ll, y, asked in rows]


def with_step_temperatures(dev: C.Prepared, fitted: dict[str, Any], seed: int) -> dict[str, Any]:
    """``fitted`` (fitted with ``seed``) with "G" and "G_folds" re-tempered per asked count on
    :func:`heldout_rows`; fold j's model without fold j's rows."""
    G = dev.system.n_groups
    parts = heldout_rows(dev, fitted, seed)

    def tempered(post, t):
        return StepTemperedGaussian(**{f.name: getattr(post, f.name) for f in fields(GP.GaussianPosterior)}, step_t=t)

    step_t = step_temperatures(parts, G)
    return {**fitted, "G": tempered(fitted["G"], step_t), "step_t": list(step_t[1:]),
            "G_folds": tuple(tempered(p, step_temperatures(parts[:j] + parts[j + 1:], G))
                             for j, p in enumerate(fitted["G_folds"]))}


def value_stops(prep: C.Prepared, fitted: dict[str, Any], *, seed: int, n_boot: int) -> dict[str, Any]:
    """The value stop at each ε of :data:`VALUE_EPS` along each curve's τ = 1 test paths, with the mean predicted
    and realised gain of asking the rest after each question. ``fitted``: what
    :func:`bench.channels.evaluate_predictive` fitted on the dev half of ``prep``'s split with ``seed``."""
    s = prep.system
    test = prep.subset(CH.split_by_image(prep.truth, 0.5, seed)[1])
    G = fitted["G"]
    w = CH.resample_weights(test.n, n_boot, seed)
    rows = []
    for label in CURVES:
        pname = next(p for lab, _, p in CH.PRED_CURVES if lab == label)
        L, asked, q = PV.step_states(test.sims, s, CH.make_policy(pname), fitted, G, G)
        B, S1 = L.shape[:2]
        label_at = L.argmax(axis=2)
        correct = (label_at == test.truth[:, None]).astype(float)
        gain = np.stack([GP.remaining_accuracy_gain(G, test.sims, asked[:, j], L[:, j]) for j in range(S1)], axis=1)
        for eps in VALUE_EPS:
            j = STOP.first_stop(1.0 - gain, 1.0 - eps)
            r = np.arange(B)
            diff = correct[r, j] - correct[:, -1]
            rows.append({"policy": label, "eps": eps, "full": float(correct[:, -1].mean()),
                         "accuracy": float(correct[r, j].mean()), "frac_q": float(q[r, j].mean() / s.q_total),
                         "minus_full": float(diff.mean()),
                         "minus_full_ci95": [float(x) for x in np.quantile(w @ diff, [0.025, 0.975])],
                         "labels_kept": float((label_at[r, j] == label_at[:, -1]).mean()),
                         "predicted_gain": gain.mean(axis=0).tolist(),
                         "realised_gain": (correct[:, -1].mean() - correct.mean(axis=0)).tolist(),
                         "max_p": np.exp(L.max(axis=2)).mean(axis=0).tolist(),
                         "accuracy_by_step": correct.mean(axis=0).tolist()})
    return {"rows": rows}


def evaluate(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000, log=print) -> dict[str, Any]:
    """Both variants on one pair, what ships beside the temperature variant in the same run."""
    kw = dict(seed=seed, n_budgets=n_budgets, n_boot=n_boot, log=log, curves=CURVES)
    t0 = time.perf_counter()
    shipped = {}

    def keep(dev: C.Prepared, fitted: dict[str, Any]) -> dict[str, Any]:  # for the value stop: fitted once
        shipped.update(fitted)
        return fitted

    ships = CH.evaluate_predictive(prep, **kw, refit=keep)
    steps = {}

    def refit(dev: C.Prepared, fitted: dict[str, Any]) -> dict[str, Any]:
        out = with_step_temperatures(dev, fitted, seed)
        steps.update(single=fitted["G"].temperature, t=out["step_t"])
        return out

    stepped = CH.evaluate_predictive(prep, **kw, refit=refit)
    t1 = time.perf_counter()
    value = value_stops(prep, shipped, seed=seed, n_boot=n_boot)
    return {"data": prep.data, "system": prep.system.name, "model": prep.model_label, "q_full": prep.system.q_total,
            "n_dev": ships["n_dev"], "n_test": ships["n_test"], "temperatures": steps,
            "ships": ships["stops"], "step_temperature": stepped["stops"], "value": value["rows"],
            "seconds": {"temperature": t1 - t0, "value": time.perf_counter() - t1}}


def report(results: dict[str, Any]) -> str:
    iv = C.signed_ci
    L = CH.variant_report_head("bench.stop_variants — a value stop and a temperature per asked count (issue 26)", results)
    for key, r in results["pairs"].items():
        t = r["temperatures"]
        L.append(f"\n## {key} ({r['model']})\n")
        L.append(f"- Q={r['q_full']}; {r['n_dev']} dev / {r['n_test']} test; single t {t['single']:.3f}, per asked "
                 f"count {', '.join(f'{x:.3f}' for x in t['t'])}\n")
        L.append("Thresholds from cross-fitted dev paths (the labels rule that ships), test figures:\n")
        rows = []
        for a, b in zip(r["ships"], r["step_temperature"]):
            rows.append([a["policy"], a["stop"]] + [f"{x['tau']:g} → {x['accuracy']:.3f} at {100 * x['frac_q']:.0f}% "
                                                   f"({x['minus_full']:+.3f} {iv(x['minus_full_ci95'])})"
                                                   for x in (a, b)])
        L.append(C.md_table(["policy", "stop", "single t (what ships)", "t per asked count"], rows))
        L.append("\nValue stop (ε fixed in advance), test figures:\n")
        L.append(C.md_table(["policy", "ε", "full system", "accuracy", "% of Q", "− full [95% CI]", "labels kept",
                             "predicted gain of the rest, after 0…G questions", "realised gain"],
                            [[x["policy"], f"{x['eps']:g}", f"{x['full']:.3f}", f"{x['accuracy']:.3f}",
                              f"{100 * x['frac_q']:.0f}%", f"{x['minus_full']:+.3f} {iv(x['minus_full_ci95'])}",
                              f"{x['labels_kept']:.3f}", " ".join(f"{v:.3f}" for v in x["predicted_gain"]),
                              " ".join(f"{v:.3f}" for v in x["realised_gain"])] for x in r["value"]]))
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return CH.variant_main("stop_variants", __doc__, evaluate, report, DEFAULT_OUT, argv)


if __name__ == "__main__":
    main()
