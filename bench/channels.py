"""Per-group answer channels against today's single channel: budget curves per policy, on test images only.

    python -m bench.channels                 # the simulator and every probe pair (992 s + 676 s in two parts
                                             # on the shared 2-core machine at load 8–11; see docs/channels.md)
    python -m bench.channels --quick         # small sizes (the test's smoke run)
    python -m bench.channels --no-probe      # the simulator only
    python -m bench.channels --answer-models # rule channel vs per-class channel vs few-shot posterior, and the
                                             # plain few-shot LR baselines (issue 26; docs/channels.md)
    python -m bench.channels --predictive    # the predictive EIG of the few-shot posterior vs channel EIG and fixed
                                             # order, design D, the confidence stop (issue 26; docs/channels.md)

Pairs: the simulator with heterogeneous group reliabilities (pokemon15, per-group wrong-answer rates
spread over [0, 0.6] by :func:`engine.core.simulate.heterogeneous_wrong_rates`), and the attribute
probe's Gen-1 pairs (:mod:`bench.probe.evaluate`: web150, Gen-1 sprites, jina15 Gen-1 rows, each with
pokemon15's 10 Gen-1 species and the 151-class PokeAPI Gen-1 system). The probe part needs a trained
probe (``--probe``, default the shipped one, ``engine/encoders/data/probe``) and its cached backbone features (``--cache-dir``); when
either is missing it is skipped and the report says so.

Every pair's images are split 50/50 by image (seeded). The calibrated channels are fitted on the dev
half only (:func:`engine.core.channel_fit.fit_answer_channels`: λ_g, confusion M_g, reliability w_g);
everything reported is measured on the test half. For each channel ("single": today's λ, ε; and
"calibrated") and each policy (fixed, random over seeds, eig, eig_per_prompt, lookahead, and the
oracle of :mod:`bench.policies`), the budget sweep (τ = 1, budgets 0..Q) gives accuracy against mean Q;
from it the normalised AUC (:func:`bench.lib.harness.normalised_auc`) and the smallest mean Q within 1 point
of the full system (same channel, every group). 95% CIs resample the test images (paired: the same
resample for every curve), for each AUC and for the AUC differences of calibrated eig / lookahead minus
calibrated fixed and random, and minus today's (single-channel) fixed and random.

Targets (issue 16): (a) on every pair, calibrated eig or lookahead has a higher normalised AUC than
fixed and random, by more than the difference's CI half-width; (b) on web150 × 151 classes, within
1 point of the full system at no more than 50% of the full Q. Each is reported met or not, and by how much.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.special import log_softmax

from engine import StopRule
from engine.core import answer_models as AM, gaussian as GP, predictive as PR, stopping as STOP
from engine.core.channel_fit import fit_answer_channels, split_by_image  # the one split helper: stratified by class
from engine.core.metrics import accuracy_ci, bootstrap_weights, budget_aucs, budget_grid, normalised_auc_rows
from engine.core.scoring import build_channel, expected_information_gain
from engine.core.simulate import heterogeneous_wrong_rates
from engine.encoders.probe import SHIPPED_DIR
from engine.run.calibration_file import StopPaths, fit_answer_model, trace_stop_paths
from policies import Policy, PolicyState, get_policy
from policies.base import masked_argmax
from policies.experimental import BudgetPlanPolicy
from systems import load_system

from .lib import harness as C
from .lib.oracle import OraclePolicy, oracle_orders

POLICIES = ("fixed", "random", "eig", "eig_per_prompt", "lookahead", "oracle")
CHANNELS = ("single", "calibrated")
CONTENDERS = ("eig", "lookahead")  # the policies the targets are about (calibrated channel)
DEFAULT_PROBE = SHIPPED_DIR  # the shipped probe: bit-identical to `python -m bench.probe train` (tests/test_shipped_probe.py)
DEFAULT_OUT = C.DEFAULT_OUT / "channels"
SIM_SYSTEM = "pokemon15"
SIM_WRONG = (0.0, 0.6)


# --------------------------------------------------------------------------- pieces
def budget_curve(prep: C.Prepared, make_policy, budgets: list[int], *, lam, channel, answer_model=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image outcomes along a budget sweep (τ = 1); ``answer_model``: a few-shot posterior the loop
    reports on (a calibration's :meth:`answer_model`), else the channel's Bayes update.

    Returns correct (B, nb) float and q (B, nb) float: image i right / prompts spent at budget b.
    """
    correct = np.zeros((prep.n, len(budgets)))
    q = np.zeros((prep.n, len(budgets)))
    for j, b in enumerate(budgets):
        pt = C.run_point(prep, make_policy(), StopRule(budget=int(b)), logit_scale=lam, channel=channel,
                         answer_model=answer_model)
        correct[:, j], q[:, j] = pt.correct, pt.q
    return correct, q


def auc_rows(acc: np.ndarray, mq: np.ndarray, q_full: float) -> np.ndarray:
    """Normalised AUC of many curves at once: :func:`engine.core.metrics.normalised_auc_rows` (the one the auto
    policy's choice uses). acc, mq : (R, nb), column 0 budget 0. Returns (R,)."""
    return normalised_auc_rows(acc, mq, q_full)


def resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) bootstrap weights: :func:`engine.core.metrics.bootstrap_weights`."""
    return bootstrap_weights(n, n_boot, seed)


def evaluate_pair(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000,
                  random_seeds=(0, 1, 2), prior_strength: float = 10.0, log=print) -> dict[str, Any]:
    """Fit channels on the dev half of ``prep``, sweep every (channel, policy) on the test half; CIs by bootstrap."""
    s = prep.system
    q_full = float(s.q_total)
    dev_i, test_i = split_by_image(prep.truth, 0.5, seed)
    dev, test = prep.subset(dev_i), prep.subset(test_i)
    t0 = time.perf_counter()
    fit = fit_answer_channels(dev.sims, dev.truth, s.rule_matrix, s.option_counts, lam0=prep.logit_scale,
                              eps=prep.eps, prior_strength=prior_strength)
    t_fit = time.perf_counter() - t0
    settings = {"single": (prep.logit_scale, C.channel_for(test)),
                "calibrated": (fit.lams, fit.channel(s.rule_matrix, s.option_counts))}
    budgets = budget_grid(int(q_full), n_budgets)
    orders = oracle_orders(s, test.truth)
    curves, timing, full = {}, {}, {}
    for cname, (lam, ch) in settings.items():
        pt = C.run_point(test, "fixed", logit_scale=lam, channel=ch)
        full[cname] = {"accuracy": pt.accuracy, "ci95": list(accuracy_ci(pt.correct))}
        for pname in POLICIES:
            t1 = time.perf_counter()
            if pname == "random":
                runs = [budget_curve(test, lambda sd=sd: get_policy("random", seed=seed * 1000 + sd), budgets,
                                     lam=lam, channel=ch) for sd in random_seeds]
                cor, qq = np.mean([r[0] for r in runs], axis=0), np.mean([r[1] for r in runs], axis=0)
            elif pname == "oracle":
                cor, qq = budget_curve(test, lambda: OraclePolicy(orders), budgets, lam=lam, channel=ch)
            else:
                cor, qq = budget_curve(test, lambda n=pname: get_policy(n), budgets, lam=lam, channel=ch)
            curves[(cname, pname)] = (cor, qq)
            timing[f"{cname}/{pname}"] = time.perf_counter() - t1
    log(f"  fitted on {dev.n} dev images in {t_fit:.1f} s; swept {len(curves)} curves on {test.n} test images in "
        f"{sum(timing.values()):.0f} s")
    aucs = budget_aucs(curves, q_full, n_boot=n_boot, seed=seed)  # paired bootstrap over the test images
    boot = {k: a["boot"] for k, a in aucs.items()}  # (n_boot,) each, the same resamples for every curve
    rows = []
    for (cname, pname), (cor, qq) in curves.items():
        auc = aucs[(cname, pname)]["auc"]
        target = full[cname]["accuracy"] - 0.01
        qw = C.q_within(qq.mean(0), cor.mean(0), target)
        rows.append({"channel": cname, "policy": pname, "auc": auc,
                     "auc_ci95": aucs[(cname, pname)]["ci95"],
                     "q_within_1pt": qw, "q_within_1pt_frac": None if qw is None else qw / q_full,
                     "seconds": timing[f"{cname}/{pname}"],
                     "curve": [{"budget": b, "accuracy": float(cor[:, j].mean()), "mean_q": float(qq[:, j].mean())}
                               for j, b in enumerate(budgets)]})
    diffs = []
    for a in CONTENDERS:
        for bch in CHANNELS:
            for b in ("fixed", "random"):
                d = boot[("calibrated", a)] - boot[(bch, b)]
                point = next(r["auc"] for r in rows if r["channel"] == "calibrated" and r["policy"] == a) - \
                    next(r["auc"] for r in rows if r["channel"] == bch and r["policy"] == b)
                lo, hi = np.quantile(d, [0.025, 0.975])
                diffs.append({"a": f"calibrated {a}", "b": f"{bch} {b}", "diff": float(point),
                              "ci95": [float(lo), float(hi)], "half_width": float((hi - lo) / 2),
                              "clear": bool(point > (hi - lo) / 2 and lo > 0)})
    return {"data": prep.data, "system": s.name, "n_classes": s.n_classes, "n_groups": s.n_groups, "q_full": q_full,
            "model": prep.model_label, "n_dev": dev.n, "n_test": test.n, "budgets": budgets,
            "lambda_single": prep.logit_scale, "eps": prep.eps,
            "fit": {"prior_strength": prior_strength, "lams": fit.lams.tolist(), "reliability": fit.reliability.tolist(), "n_dev": fit.n_dev.tolist(),
                    "groups": [g.name for g in s.groups], "seconds": t_fit},
            "full": full, "rows": rows, "diffs": diffs, "target_a": target_a(diffs)}


def target_a(diffs: list[dict]) -> dict[str, Any]:
    """Target (a) for one pair: some contender (calibrated eig or lookahead) beats calibrated fixed AND random
    by more than each difference's CI half-width. Also reported: the same against today's single channel."""
    out = {}
    for bch in CHANNELS:
        per = {}
        for a in CONTENDERS:
            ds = [d for d in diffs if d["a"] == f"calibrated {a}" and d["b"].startswith(bch)]
            # margin: how far the weaker of the two differences clears its half-width (negative: short of it)
            margin = min(d["diff"] - d["half_width"] for d in ds)
            per[a] = {"met": all(d["clear"] for d in ds), "margin": float(margin),
                      "shortfall": float(max(-margin, 0.0))}
        best = max(per, key=lambda a: per[a]["margin"])
        out[f"vs_{bch}"] = {"met": any(v["met"] for v in per.values()), "best": best, "per_policy": per}
    return out


# --------------------------------------------------------------------------- fit variants, on dev only
FIT_VARIANTS = {"default (α=10, λ_g, w_g)": {},
                "α=50": {"prior_strength": 50.0},
                "no λ_g (global λ)": {"fit_lams": False},
                "no reliability w_g": {"fit_reliability": False},
                "α=50, global λ": {"prior_strength": 50.0, "fit_lams": False}}


def dev_variants(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 7, policies=("fixed", "eig", "lookahead"),
                 log=print) -> list[dict[str, Any]]:
    """Obvious variants of the channel fit, compared on the DEV half only: fit on one half of the dev images,
    budget-curve AUC on the other half (the test half is never read). Returns one row per variant."""
    s = prep.system
    dev_i, _ = split_by_image(prep.truth, 0.5, seed)
    dev = prep.subset(dev_i)
    a_i, b_i = split_by_image(dev.truth, 0.5, seed + 1)
    a, b = dev.subset(a_i), dev.subset(b_i)
    budgets = budget_grid(s.q_total, n_budgets)
    rows = []
    for name, kw in FIT_VARIANTS.items():
        fit = fit_answer_channels(a.sims, a.truth, s.rule_matrix, s.option_counts, lam0=prep.logit_scale,
                                  eps=prep.eps, **kw)
        ch = fit.channel(s.rule_matrix, s.option_counts)
        row = {"variant": name, "full": C.run_point(b, "fixed", logit_scale=fit.lams, channel=ch).accuracy}
        for p in policies:
            cor, qq = budget_curve(b, lambda p=p: get_policy(p), budgets, lam=fit.lams, channel=ch)
            row[p] = float(auc_rows(cor.mean(0)[None], qq.mean(0)[None], float(s.q_total))[0])
        rows.append(row)
    log(f"  dev variants: {len(rows)} fits on {a.n} / scored on {b.n} dev images")
    return rows


# --------------------------------------------------------------------------- cost of one step
COST_SIZES = ((151, 8, 1000), (1000, 50, 1000))  # (N classes, G groups, n images)


def policy_cost(sizes=COST_SIZES, *, seed: int = 0, policies=("eig", "eig_per_prompt", "lookahead")
                ) -> list[dict[str, Any]]:
    """Seconds for one ``select`` over n images, per policy, on random systems of N classes and G groups
    (K_g uniform in 2..11, one acceptable option per class, ε = 0.05) and sparse random posteriors; the
    EIG is computed once outside (the loop does that for every policy). One run each, side by side."""
    from policies import PolicyState

    rng = np.random.default_rng(seed)
    out = []
    for n_cls, G, n in sizes:
        k = rng.integers(2, 12, size=G)
        offs = np.r_[0, np.cumsum(k)[:-1]]
        r = np.zeros((n_cls, int(k.sum())), dtype=bool)
        for g in range(G):
            r[np.arange(n_cls), offs[g] + rng.integers(0, k[g], n_cls)] = True
        ch = build_channel(r, k, 0.05)
        post = rng.dirichlet(np.full(n_cls, 0.1), size=n)
        st = PolicyState(post=post, eig=expected_information_gain(post, ch), available=np.ones((n, G), bool),
                         budget_left=np.full(n, np.inf), images=np.arange(n), channel=ch)
        row = {"n_classes": n_cls, "n_groups": G, "q": int(k.sum()), "n_images": n}
        t = time.perf_counter()
        expected_information_gain(post, ch)
        row["eig_computation"] = time.perf_counter() - t  # what every step of the loop pays anyway
        for name in policies:
            pol = get_policy(name)
            t = time.perf_counter()
            pol.select(st)
            row[name] = time.perf_counter() - t
        out.append(row)
    return out


# --------------------------------------------------------------------------- pairs
def simulator_prep(*, images: int, seed: int) -> C.Prepared:
    """The simulator with heterogeneous per-group reliabilities (pokemon15)."""
    system = load_system(SIM_SYSTEM)
    wr = heterogeneous_wrong_rates(system.n_groups, low=SIM_WRONG[0], high=SIM_WRONG[1], seed=seed)
    prep = C.prepare_simulated(system, images=images, seed=seed, margin=C.SIM["margin"],
                               name_margin=C.SIM["name_margin"], noise=C.SIM["noise"], wrong_rate=wr,
                               logit_scale=C.SIM["logit_scale"])
    prep.data = f"simulated, wrong rates {SIM_WRONG[0]}–{SIM_WRONG[1]} per group"
    return prep


def gen1_preps(probe: Path | None, cache_dir: Path, *, sim_images: int, quick: bool, seed: int, log=print
               ) -> tuple[dict[str, C.Prepared], str | None]:
    """The simulator × pokemon15 pair, plus (``probe`` given) the probe's pokemon15-gen1 pairs, as the target-accuracy
    and auto-policy benches use them. Returns ({pair: Prepared}, why probe pairs were skipped or None)."""
    preps = {"simulator × pokemon15": simulator_prep(images=400 if quick else sim_images, seed=seed)}
    if probe is None:
        return preps, "--no-probe"
    more, skipped = probe_preps(Path(probe), Path(cache_dir), limit=200 if quick else None, seed=seed, log=log,
                                systems_only=["pokemon15-gen1"])
    preps.update(more)
    return preps, skipped


def probe_preps(probe: Path, cache_dir: Path, *, limit: int | None, seed: int, log=print, datasets_only=None,
                systems_only=None) -> tuple[dict[str, C.Prepared], str | None]:
    """Every Gen-1 (dataset, system) pair of :mod:`bench.probe.evaluate`, from cached features; or ({}, why skipped).

    datasets_only : None, or the dataset names to keep (web150, sprites151, jina15-gen1)."""
    if not (Path(probe) / "probe.safetensors").is_file():
        return {}, f"no trained probe at {probe} (run 'python -m bench.probe train --probe {probe}')"
    try:
        from .probe import evaluate as PE
        from .probe.data import image_features

        datasets = PE.gen1_datasets()
    except (FileNotFoundError, OSError) as e:
        return {}, f"the Gen-1 probe data is not available ({e})"
    from engine.encoders import load_encoder

    enc = load_encoder(f"probe:{probe}", device="cpu")
    jobs = []
    for dname, ds in datasets.items():
        if datasets_only and dname not in datasets_only:
            continue
        for sname in PE.SYSTEM_NAMES:
            if systems_only and sname not in systems_only:
                continue
            system = PE.gen1_system(sname, ds.labels)
            kept, info = PE.pair_dataset(ds, system, limit=limit, seed=seed)
            if len(kept):
                jobs.append((dname, sname, system, kept, info))
    paths = list(dict.fromkeys(it.path for *_, kept, _ in jobs for it in kept.items))
    log(f"[channels] backbone features of {len(paths)} Gen-1 images from the cache {cache_dir}")
    feats = dict(zip(paths, image_features(enc.backbone, paths, cache_dir, log=log)))
    out = {}

    for dname, sname, system, kept, info in jobs:
        prep = PE.prepare(enc, system, kept, feats, data_name=dname, info=info)
        # the probe's own image embeddings (B, D): the few-shot baseline without any attribute system
        emb = enc.embed_features(torch.stack([feats[it.path] for it in kept.items]))
        prep.meta["image_embeddings"] = np.asarray(emb.detach().cpu().numpy(), dtype=np.float64)
        out[f"{dname} × {sname}"] = prep
    return out, None


# --------------------------------------------------------------------------- answer models (issue 26)
AM_POLICIES = ("fixed", "eig", "oracle")
AM_MODELS = ("rule", "per-class", "few-shot", "few-shot LR", "few-shot Gaussian")  # fit_models' keys, in order


def fit_models(dev: C.Prepared, *, seed: int = 0) -> dict[str, Any]:
    """The three answer models, fitted on dev images only.

    rule : today's calibrated rule channel (:func:`fit_answer_channels`, α = 10);
    per-class : P_g(k|c), class c's mean soft answer shrunk to the rule channel with α = 5, the loop's update;
    few-shot : what ``twentyq calibrate --setting few-shot`` fits (:func:`engine.run.calibration_file.fit_answer_model`:
    the Gaussian posterior when it beats the group-masked LR on held-out dev, else the LR, with the tempered per-class
    channel for EIG; or the rule channel if neither beats it on held-out dev images);
    few-shot LR, few-shot Gaussian : the same with ``posterior="lr"`` / ``"gaussian"`` (each still kept only when it
    beats the rule channel on held-out dev).
    Returns {name: (λ, channel, answer_model or None)} and the few-shot decision.
    """
    s = dev.system
    r, sizes = s.rule_matrix, s.option_counts
    rule = fit_answer_channels(dev.sims, dev.truth, r, sizes, lam0=dev.logit_scale, eps=dev.eps)
    rule_ch = rule.channel(r, sizes)
    P = AM.per_class_channel(AM.soft_answers(dev.sims, sizes, rule.lams), dev.truth, rule_ch.P, AM.PER_CLASS_ALPHA)
    models = {"rule": (rule.lams, rule_ch, None),
              "per-class": (rule.lams, AM.channel_from_P(P, r, sizes, dev.eps), None)}
    decisions, beta = {}, None
    for name, posterior in (("few-shot", "auto"), ("few-shot LR", "lr"), ("few-shot Gaussian", "gaussian")):
        ch, few, decisions[name], _ = fit_answer_model(dev.sims, dev.truth, s, lam0=dev.logit_scale, eps=dev.eps,
                                                       setting="few-shot", seed=seed, posterior=posterior)
        if few is not None:
            models[name] = (ch.lams, few.channel(r, sizes, dev.eps), few.posterior)
            beta = few.beta.tolist() if name == "few-shot" else beta
        else:
            models[name] = (ch.lams, ch.channel(r, sizes), None)
    return {"models": models, "decision": decisions["few-shot"], "beta": beta}


def plain_lr(x_dev: np.ndarray, y_dev: np.ndarray, x_test: np.ndarray, n_classes: int, seed: int = 0
             ) -> tuple[np.ndarray, float]:
    """A plain multinomial LR (standardised features, L2 strength by 3-fold CV on dev): test predictions (B,) and
    the strength chosen. The same fit as the few-shot posterior's full-system head (:func:`engine.core.
    answer_models.fit_plain_lr`)."""
    (mean, scale, W, b), reg, _, _ = AM.fit_plain_lr(x_dev, y_dev, n_classes, seed=seed)
    return (((x_test - mean) / scale) @ W.T + b).argmax(axis=1), reg


def evaluate_answer_models(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000,
                           log=print) -> dict[str, Any]:
    """Rule channel, per-class channel and few-shot posterior on one pair, and the few-shot baselines.

    Fit on the dev half (stratified by class, seeded), everything measured on the test half: full-system
    accuracy, budget sweeps (τ = 1) of fixed / eig / oracle with their normalised AUC, paired bootstrap CIs
    over test images; the baselines are a plain LR on the same Q similarities and on the image embeddings
    (no attribute system), trained on the same dev images.
    """
    s = prep.system
    q_full = float(s.q_total)
    dev_i, test_i = split_by_image(prep.truth, 0.5, seed)
    dev, test = prep.subset(dev_i), prep.subset(test_i)
    t0 = time.perf_counter()
    fitted = fit_models(dev, seed=seed)
    t_fit = time.perf_counter() - t0
    budgets = budget_grid(int(q_full), n_budgets)
    orders = oracle_orders(s, test.truth)
    correct_full, curves, same = {}, {}, {}
    for name, (lam, ch, am) in fitted["models"].items():
        twin = next((k for k, v in fitted["models"].items() if k in same and am is not None and v[2] is not None
                     and type(v[2]) is type(am) and v[2].to_dict() == am.to_dict()), None)
        if twin is not None:  # calibrate's choice is one of the named posteriors: the same model, run once
            same[name] = twin
            correct_full[name] = correct_full[twin]
            curves.update({(name, p): curves[(twin, p)] for p in AM_POLICIES})
            continue
        same[name] = name
        correct_full[name] = C.run_point(test, "fixed", logit_scale=lam, channel=ch, answer_model=am).correct
        for pname in AM_POLICIES:
            pol = (lambda: OraclePolicy(orders)) if pname == "oracle" else (lambda n=pname: get_policy(n))
            cor = np.zeros((test.n, len(budgets)))
            qq = np.zeros((test.n, len(budgets)))
            for j, b in enumerate(budgets):
                pt = C.run_point(test, pol(), StopRule(budget=int(b)), logit_scale=lam, channel=ch, answer_model=am)
                cor[:, j], qq[:, j] = pt.correct, pt.q
            curves[(name, pname)] = (cor, qq)
    base = {}
    pred, reg = plain_lr(dev.sims, dev.truth, test.sims, s.n_classes, seed)
    base["LR on the same similarities"] = (pred == test.truth, reg)
    emb = prep.meta.get("image_embeddings")
    if emb is not None:
        emb = np.asarray(emb, dtype=np.float64)
        pred, reg = plain_lr(emb[dev_i], dev.truth, emb[test_i], s.n_classes, seed)
        base["LR on the image embeddings (no attribute system)"] = (pred == test.truth, reg)
    seconds = time.perf_counter() - t0
    log(f"  answer models: fitted on {dev.n} dev images in {t_fit:.1f} s; {test.n} test images; {seconds:.0f} s")
    w = resample_weights(test.n, n_boot, seed)  # (n_boot, B), the same resample for every figure
    boot_acc = {k: w @ v.astype(float) for k, v in correct_full.items()}
    boot_acc.update({k: w @ v[0].astype(float) for k, v in base.items()})
    boot_auc = {k: auc_rows(w @ cor, w @ qq, q_full) for k, (cor, qq) in curves.items()}

    def ci(x):
        return [float(v) for v in np.quantile(x, [0.025, 0.975])]

    acc = {k: float(v.mean()) for k, v in correct_full.items()}
    acc.update({k: float(v[0].mean()) for k, v in base.items()})
    rows = []
    for (name, pname), (cor, qq) in curves.items():
        auc = float(auc_rows(cor.mean(0)[None], qq.mean(0)[None], q_full)[0])
        qw = C.q_within(qq.mean(0), cor.mean(0), acc[name] - 0.01)
        rows.append({"model": name, "policy": pname, "auc": auc, "auc_ci95": ci(boot_auc[(name, pname)]),
                     "q_within_1pt": qw, "q_within_1pt_frac": None if qw is None else qw / q_full,
                     "curve": [{"budget": b, "accuracy": float(cor[:, j].mean()), "mean_q": float(qq[:, j].mean())}
                               for j, b in enumerate(budgets)]})
    lr_key = "LR on the same similarities"

    auc = {(r["model"], r["policy"]): r["auc"] for r in rows}

    def diff(a, b, boot):
        """a − b on the test images, and its paired bootstrap CI (accuracy for names, AUC for (model, policy))."""
        point = acc if boot is boot_acc else auc
        name = (lambda k: k if isinstance(k, str) else f"{k[0]} {k[1]}")
        return {"a": name(a), "b": name(b), "diff": point[a] - point[b], "ci95": ci(boot[a] - boot[b])}

    diffs = [diff("few-shot", "rule", boot_acc), diff("per-class", "rule", boot_acc),
             diff("few-shot", lr_key, boot_acc), diff("few-shot Gaussian", "few-shot LR", boot_acc),
             diff("few-shot Gaussian", lr_key, boot_acc),
             diff(("few-shot Gaussian", "fixed"), ("few-shot LR", "fixed"), boot_auc),
             diff(("few-shot Gaussian", "eig"), ("few-shot Gaussian", "fixed"), boot_auc),
             diff(("few-shot", "fixed"), ("rule", "fixed"), boot_auc),
             diff(("few-shot", "eig"), ("rule", "fixed"), boot_auc),
             diff(("few-shot", "eig"), ("few-shot", "fixed"), boot_auc),
             diff(("per-class", "fixed"), ("rule", "fixed"), boot_auc)]
    dec = fitted["decision"]
    return {"data": prep.data, "system": s.name, "n_classes": s.n_classes, "n_groups": s.n_groups, "q_full": q_full,
            "model": prep.model_label, "n_dev": dev.n, "n_test": test.n, "budgets": budgets,
            "classes_with_dev_images": int(len(np.unique(dev.truth))), "seconds": seconds, "fit_seconds": t_fit,
            "full": {k: {"accuracy": acc[k], "ci95": ci(boot_acc[k])} for k in acc},
            "baseline_reg": {k: v[1] for k, v in base.items()},
            "decision": {k: dec[k] for k in ("setting", "posterior", "rule_channel", "heldout")},
            "posterior_cv": dec.get("posterior_cv"), "beta": fitted["beta"], "rows": rows, "diffs": diffs}


def answer_model_report(results: dict[str, Any]) -> str:
    L = ["# bench.channels --answer-models — rule channel, per-class channel and few-shot posteriors (issue 26)\n",
         *C.run_lines(results),
         f"- split: 50/50 by image, stratified by class, seed {results['seed']} (engine.core.channel_fit.split_by_image); "
         "every model and baseline fitted on the dev half only; every figure on the test half",
         f"- bootstrap: {results['n_boot']} resamples of the test images, the same for every figure (paired)\n"]
    head = ["pair (test images)", "classes with dev images", "LR, same similarities", "LR, image embeddings",
            "rule channel", "per-class channel", "few-shot LR", "few-shot Gaussian", "few-shot (calibrate)",
            "few-shot − rule [95% CI]", "few-shot − LR same sims [95% CI]", "Gaussian − few-shot LR [95% CI]"]
    rows = []
    for key, res in results["pairs"].items():
        f = res["full"]
        d = {(x["a"], x["b"]): x for x in res["diffs"]}

        def cell(k):
            return "–" if k not in f else f"{f[k]['accuracy']:.3f} [{f[k]['ci95'][0]:.3f}, {f[k]['ci95'][1]:.3f}]"

        def dcell(a, b):
            x = d[(a, b)]
            return f"{x['diff']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"

        rows.append([f"{key} ({res['n_test']})", f"{res['classes_with_dev_images']} of {res['n_classes']}",
                     cell("LR on the same similarities"), cell("LR on the image embeddings (no attribute system)"),
                     cell("rule"), cell("per-class"), cell("few-shot LR"), cell("few-shot Gaussian"), cell("few-shot"),
                     dcell("few-shot", "rule"), dcell("few-shot", "LR on the same similarities"),
                     dcell("few-shot Gaussian", "few-shot LR")])
    L.append("## Full system (every group asked), test accuracy [95% CI]\n")
    L.append(C.md_table(head, rows))
    L.append("\n## Budget sweeps: normalised AUC [95% CI]; Q within 1 point of the same model's full system\n")
    for key, res in results["pairs"].items():
        L.append(f"\n### {key}\n")
        L.append(f"- N={res['n_classes']}, G={res['n_groups']}, Q={res['q_full']:.0f}; {res['n_dev']} dev / "
                 f"{res['n_test']} test; budgets {res['budgets']}; fit {res['fit_seconds']:.1f} s")
        L.append(f"- few-shot decision: setting {res['decision']['setting']}; posterior {res['decision']['posterior']}; "
                 f"rule channel {res['decision']['rule_channel']}; β {res['beta']}")
        L.append("- held-out dev (3 folds): " + "; ".join(f"{k} {v['accuracy']:.3f} / NLL {v['nll']:.3f}"
                                                          for k, v in res["decision"]["heldout"].items()) + "\n")
        L.append(C.md_table(["model", "policy", "norm. AUC [95% CI]", "Q within 1 pt of full (% of Q)"],
                            [[r["model"], r["policy"], f"{r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]",
                              "not reached" if r["q_within_1pt"] is None else
                              f"{r['q_within_1pt']:.1f} ({100 * r['q_within_1pt_frac']:.0f}%)"] for r in res["rows"]]))
        L.append("")
        L.append(C.md_table(["difference (paired)", "value [95% CI]"],
                            [[f"{x['a']} − {x['b']}", f"{x['diff']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"]
                             for x in res["diffs"]]))
    return "\n".join(L) + "\n"


def run_answer_models(out: Path, preps: dict[str, C.Prepared], *, seed: int = 0, n_boot: int = 1000,
                      n_budgets: int = 9, log=print, command: str = "") -> dict[str, Any]:
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    pairs = {}
    for key, prep in preps.items():
        log(f"[channels --answer-models] {key}: {prep.n} images, N={prep.system.n_classes}, Q={prep.system.q_total}")
        pairs[key] = evaluate_answer_models(prep, seed=seed, n_boot=n_boot, n_budgets=n_budgets, log=log)
    results = {"benchmark": "channels --answer-models", "command": command, "seed": seed, "n_boot": n_boot,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), numpy only",
               "pairs": pairs, "seconds": time.perf_counter() - t0,
               "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    C.write_outputs(Path(out), results, answer_model_report(results))
    return results


# --------------------------------------------------------------------------- predictive EIG (issue 26)
PRED_CURVES = (  # (label, model, policy): model "few-shot" the LR posterior (channel EIG: the tempered per-class
    # channel), "predictive" the same posterior with the predictive EIG, "D" the tempered per-class channel as posterior
    ("fixed", "few-shot", "fixed"), ("eig", "few-shot", "eig"), ("eig per prompt", "few-shot", "eig_per_prompt"),
    ("predictive eig", "predictive", "eig"), ("predictive eig per prompt", "predictive", "eig_per_prompt"),
    ("budget plan", "few-shot", "budget_plan"), ("predictive budget plan", "predictive", "budget_plan"),
    ("oracle", "few-shot", "oracle"), ("posterior oracle", "few-shot", "posterior-oracle"),
    ("D fixed", "D", "fixed"), ("D eig per prompt", "D", "eig_per_prompt"),
    ("G fixed", "G", "fixed"), ("G eig", "G", "eig"), ("G eig per prompt", "G", "eig_per_prompt"),
    ("G accuracy per prompt", "G", "accuracy_per_prompt"), ("accuracy per prompt", "few-shot", "accuracy_per_prompt"),
    ("G model eig per prompt", "G", "model_eig_per_prompt"))
PRED_ADAPTIVE = ("eig", "eig per prompt", "predictive eig", "predictive eig per prompt", "budget plan",
                 "predictive budget plan", "accuracy per prompt")
PRED_STOPS = ("fixed", "eig per prompt", "predictive eig", "predictive eig per prompt",  # confidence-stop rows
              "accuracy per prompt", "G fixed", "G eig per prompt", "G accuracy per prompt", "G model eig per prompt")


class PosteriorOracle(Policy):
    """Knows each image's true class and similarities: asks the available group that raises the posterior's
    log-probability of the true class most per prompt (greedy). The headroom of question order for *this*
    posterior (the rule oracle of :mod:`bench.policies` ranks groups by the rules). Not registered."""

    name = "posterior-oracle"

    def __init__(self, model, sims: np.ndarray, truth: np.ndarray, sizes):
        self.model, self.sims, self.truth = model, np.asarray(sims), np.asarray(truth)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(self.sizes)[:-1]]

    def select(self, state: PolicyState) -> np.ndarray:
        imgs = np.asarray(state.images)
        rows = np.arange(len(imgs))
        L = np.log(np.maximum(np.asarray(state.post), 1e-300))
        t = self.truth[imgs]
        score = np.full(state.available.shape, -np.inf)
        for g, (o, k) in enumerate(zip(self.offsets, self.sizes)):
            lp = log_softmax(L + self.model.group_loglik(g, self.sims[imgs][:, o:o + k]), axis=1)
            score[:, g] = (lp[rows, t] - L[rows, t]) / k
        return masked_argmax(score, np.asarray(state.available))
TAU_GRID = tuple(np.round(np.r_[np.linspace(0.3, 0.9, 13), 0.925, 0.95, 0.975, 0.99, 1.0], 4))
SETTLE_GRID = (*STOP.SETTLE_GRID, 1.0)  # the settled stop's: what `--settle auto` tries, and never


def make_policy(name: str):
    """A registered policy by name, or budget_plan (:class:`policies.experimental.BudgetPlanPolicy`)."""
    return BudgetPlanPolicy() if name == "budget_plan" else get_policy(name)


def tau_stop(paths, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(correct (B,), q (B,)) of traced τ=1 paths (:class:`engine.run.calibration_file.PolicyPaths`) stopped at the
    first point (the prior included) whose confidence is ≥ τ, else at their last step (τ = 1: never stopped early):
    what the loop with this τ does, since a path does not depend on τ (:func:`engine.core.stopping.first_stop`)."""
    first = STOP.first_stop(paths.conf, tau)
    rows = np.arange(len(first))
    return paths.correct[rows, first].astype(float), paths.q[rows, first].astype(float)


def fit_predictive_models(dev: C.Prepared, *, seed: int = 0, log=print, max_classes: int | None = None,
                          max_per_class: int | None = None, n_folds: int = AM.N_FOLDS) -> dict[str, Any]:
    """What the predictive section compares, fitted on dev images only.

    The rule channel, posterior and per-class channel are what :func:`engine.run.calibration_file.fit_answer_model`
    fits with ``setting="few-shot", posterior="lr"`` (the group-masked LR, whose per-group terms the predictive
    needs); "G" is the Gaussian posterior (:mod:`engine.core.gaussian`) and "G_folds" its fold posteriors, on the
    same folds. Where it would keep the rule channel (the LR not better on held-out dev: the
    simulator), the LR posterior and the per-class channel are fitted the same way anyway, and ``kept`` says so.
    The predictive: out-of-fold terms of the dev images (:func:`engine.core.predictive.fit_predictive`,
    ``n_folds`` folds (what ships: 3), the posterior's L2 strength); the Gaussian's fold posteriors on the same folds.
    """
    s = dev.system
    r, sizes = s.rule_matrix, s.option_counts
    t0 = time.perf_counter()
    ch, few, decision, _ = fit_answer_model(dev.sims, dev.truth, s, lam0=dev.logit_scale, eps=dev.eps,
                                         setting="few-shot", seed=seed, posterior="lr")
    kept = decision["posterior"]
    if few is None or few.posterior is None:
        post = AM.fit_few_shot_posterior(dev.sims, dev.truth, sizes, s.n_classes, seed=seed).posterior
        P, beta = AM.fit_per_class_tempered(dev.sims, dev.truth, sizes, ch.lams, ch.channel(r, sizes).P, seed=seed)
        few = AM.FewShotModel(posterior=post, P=P, beta=beta, alpha=AM.PER_CLASS_ALPHA,
                              n_dev=np.bincount(dev.truth, minlength=s.n_classes), sizes=np.asarray(sizes))
    t1 = time.perf_counter()
    terms = PR.fit_predictive(dev.sims, dev.truth, sizes, s.n_classes, reg=few.posterior.reg, seed=seed,
                              n_folds=n_folds)
    if max_classes is not None or max_per_class is not None:
        import dataclasses

        terms = dataclasses.replace(terms, max_classes=max_classes or terms.max_classes,
                                    max_per_class=max_per_class or terms.max_per_class, _padded={})
    t2 = time.perf_counter()
    gauss = GP.fit_gaussian_posterior(dev.sims, dev.truth, sizes, s.n_classes, seed=seed, n_folds=n_folds)
    if not np.array_equal(gauss.folds, terms.folds):
        raise RuntimeError("the Gaussian posterior's folds differ from the predictive's")  # both stratified_folds
    log(f"  few-shot fit {t1 - t0:.1f} s, predictive terms (3 fold refits) {t2 - t1:.1f} s, Gaussian "
        f"{time.perf_counter() - t2:.1f} s")
    tempered = few.channel(r, sizes, dev.eps)
    return {"lams": ch.lams, "channel": tempered, "posterior": few.posterior, "terms": terms,
            "predictive": PR.PredictivePosterior(few.posterior, terms),
            "D": PR.TemperedChannelPosterior(few.P, few.beta, ch.lams, sizes), "beta": few.beta.tolist(),
            "G": gauss.posterior, "G_folds": gauss.fold_posteriors,
            "kept": kept, "fit_seconds": t1 - t0, "predictive_seconds": t2 - t1}


def fold_views(dev: C.Prepared, fitted: dict[str, Any], *, predictive: bool, gaussian: bool = False):
    """The cross-fitted views of the dev images, one per fold of the predictive terms: (the fold's rows (M,) bool,
    the posterior fitted on the other folds, the other folds' terms, the answer model the loop gets: that
    posterior, with the other folds' predictive EIG when ``predictive``). With ``gaussian``, the posterior is the
    Gaussian one fitted on the other folds (the same folds). What :func:`dev_tau` and
    ``bench.predictive_variants.dev_eps`` choose their thresholds on."""
    terms = fitted["terms"]
    for j, f in enumerate(np.unique(terms.folds)):
        post, others = (fitted["G_folds"][j] if gaussian else terms.posteriors[j]), terms.without_fold(j)
        yield terms.folds == f, post, others, (PR.PredictivePosterior(post, others) if predictive else post)


def choose_on_accuracy(stat: np.ndarray, correct: np.ndarray, q: np.ndarray, *, grid, margin: float) -> dict:
    """The ``--stop-rule accuracy`` variant of :func:`engine.core.stopping.choose_threshold`: the smallest threshold
    on ``grid`` from which on every threshold keeps the share of paths right at their stop at least the share right
    without the stop minus ``margin`` (accuracy, where choose_threshold asks for the same label), 1 when none does or
    it saves no prompt. stat, q : (B, S); correct : (B, S) bool, False after a path's last point."""
    rows = np.arange(stat.shape[0])
    base = STOP.first_stop(stat, 1.0)
    acc_without, q_without = correct[rows, base].mean(), q[rows, base].mean()
    table = []
    for t in STOP.thresholds_tried(grid):
        at = STOP.first_stop(stat, t)
        table.append((t, float(correct[rows, at].mean()), float(q[rows, at].mean())))
    j = STOP.smallest_passing([acc >= acc_without - margin - 1e-12 for _, acc, _ in table],
                              [mq for _, _, mq in table], q_without)
    t, acc, mq = table[j]
    return {"tau": t, "dev_agreement": acc - float(acc_without), "dev_mean_q": mq}


def dev_tau(dev: C.Prepared, fitted: dict[str, Any], policy: str, *, margin: float = STOP.STOP_MARGIN,
            settled: bool = False, rule: str = "labels") -> dict[str, Any]:
    """τ for the confidence stop on :data:`TAU_GRID` (with ``settled``, the threshold of the settled stop,
    ``StopRule.settle``, on :data:`SETTLE_GRID`; the Gaussian policies only), chosen on cross-fitted dev paths
    (:func:`fold_views`): each fold's dev images run through the posterior fitted on the other folds (the
    predictive's fold posteriors), with the predictive of the other folds' images; the threshold is
    :func:`engine.core.stopping.choose_threshold`'s (what ``--settle auto`` uses): the smallest from which on every
    threshold leaves at least 1 − ``margin`` of the dev images on the label their path ends with, that fold
    posterior's full-system label. Agreement transfers to the posterior fitted on all of dev better than accuracy
    does: the fold posteriors are weaker. (The other folds' terms come from posteriors that saw this fold's images:
    a mild leak into which question is asked, none into the posterior that answers.) With ``rule="accuracy"``,
    :func:`choose_on_accuracy` instead (dev_agreement is then the dev accuracy at the threshold minus without it, and
    the report's column says so)."""
    pol = next(p for lab, _, p in PRED_CURVES if lab == policy)
    parts = []
    for te, _, _, am in fold_views(dev, fitted, predictive=policy.startswith("predictive"),
                                   gaussian=policy.startswith("G ")):
        parts.append((te, trace_stop_paths(dev.sims[te], dev.system, make_policy(pol), fitted["lams"],
                                           fitted["channel"], am, settled=settled)))
    p = StopPaths.stack(parts, dev.n)
    if rule == "accuracy":
        pp = p.policy_paths(dev.truth, settled)
        return choose_on_accuracy(pp.conf, pp.correct, pp.q, grid=SETTLE_GRID if settled else TAU_GRID, margin=margin)
    choice = STOP.choose_threshold(p.bound if settled else p.conf, p.label, p.q,
                                   grid=SETTLE_GRID if settled else TAU_GRID, margin=margin)
    return {"tau": choice.threshold, "dev_agreement": choice.agreement, "dev_mean_q": choice.mean_q}


def evaluate_predictive(prep: C.Prepared, *, seed: int = 0, n_budgets: int = 9, n_boot: int = 1000,
                        log=print, max_classes: int | None = None, max_per_class: int | None = None,
                        curves: tuple[str, ...] | None = None, stop_margin: float = STOP.STOP_MARGIN,
                        n_folds: int = AM.N_FOLDS, stop_rule: str = "labels",
                        refit: Callable[[C.Prepared, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Few-shot posterior under fixed order, channel eig / eig per prompt and predictive eig / eig per prompt, the
    oracle, and design D (fixed, eig per prompt): budget sweeps (τ = 1) on the test half, paired bootstrap CIs
    against fixed; the confidence stop with τ chosen on cross-fitted dev paths. max_classes, max_per_class: the
    predictive's k and S cap (default: engine.core.predictive's). curves: the labels of :data:`PRED_CURVES` to run
    (default all; "fixed" always). stop_margin, n_folds: the share of dev labels a dev threshold may change and
    the folds its cross-fitted paths come from (default: what ships, 1% and 3). refit: a variant's change to the
    fitted models, called with (dev, fitted) before anything is traced (``bench.stop_variants``); None for what
    ships."""
    s = prep.system
    q_full = float(s.q_total)
    dev_i, test_i = split_by_image(prep.truth, 0.5, seed)
    dev, test = prep.subset(dev_i), prep.subset(test_i)
    fitted = fit_predictive_models(dev, seed=seed, log=log, max_classes=max_classes, max_per_class=max_per_class,
                                   n_folds=n_folds)
    if refit is not None:
        fitted = refit(dev, fitted)
    half = int(q_full) // 2  # the issue's "≤ 50% of Q" as a budget (on the grid already for 9 budgets of Q 56 or 77)
    budgets = sorted(set(budget_grid(int(q_full), n_budgets)) | {half})
    orders = oracle_orders(s, test.truth)
    models = {"few-shot": fitted["posterior"], "predictive": fitted["predictive"], "D": fitted["D"], "G": fitted["G"]}
    wanted = [c for c in PRED_CURVES if curves is None or c[0] in curves or c[0] == "fixed"]
    curves, secs = {}, {}
    for label, model, pname in wanted:
        t0 = time.perf_counter()
        make = ((lambda: OraclePolicy(orders)) if pname == "oracle" else
                (lambda: PosteriorOracle(fitted["posterior"], test.sims, test.truth, s.option_counts))
                if pname == "posterior-oracle" else (lambda n=pname: make_policy(n)))
        curves[label] = budget_curve(test, make, budgets, lam=fitted["lams"], channel=fitted["channel"],
                                     answer_model=models[model])
        secs[label] = time.perf_counter() - t0
        log(f"  {label}: {secs[label]:.1f} s")
    full = {m: C.run_point(test, "fixed", logit_scale=fitted["lams"], channel=fitted["channel"],
                           answer_model=models[m]).correct.astype(float) for m in ("few-shot", "D", "G")}
    w = resample_weights(test.n, n_boot, seed)

    def ci(x):
        return [float(v) for v in np.quantile(x, [0.025, 0.975])]

    boot = {k: auc_rows(w @ cor, w @ qq, q_full) for k, (cor, qq) in curves.items()}
    auc = {k: float(auc_rows(cor.mean(0)[None], qq.mean(0)[None], q_full)[0]) for k, (cor, qq) in curves.items()}
    rows = []
    at_half = budgets.index(half)  # a fixed budget: nothing to choose
    for label, model, _ in wanted:
        cor, qq = curves[label]
        own = full[model if model in ("D", "G") else "few-shot"]
        qw2 = C.q_within(qq.mean(0), cor.mean(0), own.mean() - 0.02)
        hc, hq = cor[:, at_half], qq[:, at_half]
        rows.append({"label": label, "auc": auc[label], "auc_ci95": ci(boot[label]), "seconds": secs[label],
                     "q_within_2pt": qw2, "q_within_2pt_frac": None if qw2 is None else qw2 / q_full,
                     "half_budget": {"budget": half, "accuracy": float(hc.mean()), "mean_q": float(hq.mean()),
                                     "minus_lr": float(hc.mean() - full["few-shot"].mean()),
                                     "minus_lr_ci95": ci(w @ hc - w @ full["few-shot"]),
                                     "minus_own_full": float(hc.mean() - own.mean()),
                                     "minus_own_full_ci95": ci(w @ hc - w @ own)},
                     "curve": [{"budget": b, "accuracy": float(cor[:, j].mean()), "mean_q": float(qq[:, j].mean())}
                               for j, b in enumerate(budgets)]})
    diffs = [{"a": a, "b": b, "diff": auc[a] - auc[b], "ci95": ci(boot[a] - boot[b])}
             for a, b in [(x, "fixed") for x in PRED_ADAPTIVE + ("oracle", "posterior oracle")] +
             [("D eig per prompt", "D fixed"), ("D eig per prompt", "fixed"), ("G eig", "G fixed"),
              ("G eig per prompt", "G fixed"), ("G accuracy per prompt", "G fixed"), ("G model eig per prompt", "G fixed"),
              ("G fixed", "fixed"),
              ("predictive eig per prompt", "eig per prompt"), ("predictive eig", "eig")] if a in curves and b in curves]
    # the confidence stop: τ on cross-fitted dev paths, then the test paths cut at it
    stops = []  # the confidence stop of each PRED_STOPS curve, then the settled stop of each Gaussian one
    for label, settled in [(x, False) for x in PRED_STOPS if x in curves] + \
            [(x, True) for x in PRED_STOPS if x in curves and x.startswith("G ")]:
        t0 = time.perf_counter()
        chosen = dev_tau(dev, fitted, label, settled=settled, margin=stop_margin, rule=stop_rule)
        model, pname = next((m, p) for lab, m, p in PRED_CURVES if lab == label)
        acc_full = full["G" if model == "G" else "few-shot"]  # the full system of the posterior that stops
        boot_full = w @ acc_full
        traced = trace_stop_paths(test.sims, s, make_policy(pname), fitted["lams"], fitted["channel"],
                                  models[model], settled=settled)
        paths = traced.policy_paths(test.truth, settled)
        cor, qq = tau_stop(paths, chosen["tau"])
        # no stop that keeps every test image on its full-system label spends less along this order
        hindsight_q = float(traced.q[np.arange(test.n), STOP.hindsight_stop(traced.label)].mean())
        grid = SETTLE_GRID if settled else TAU_GRID
        sweep = [(float(np.mean(tau_stop(paths, t)[1])), float(np.mean(tau_stop(paths, t)[0]))) for t in grid]
        qw = C.q_within(np.array([a for a, _ in sweep]), np.array([b for _, b in sweep]), acc_full.mean() - 0.02)
        stops.append({"policy": label, "stop": "settled" if settled else "confident", **chosen,
                      "full": float(acc_full.mean()), "accuracy": float(cor.mean()),
                      "mean_q": float(qq.mean()),
                      "frac_q": float(qq.mean() / q_full), "minus_full": float(cor.mean() - acc_full.mean()),
                      "minus_full_ci95": ci(w @ cor - boot_full),
                      "test_sweep_q_within_2pt_frac": None if qw is None else qw / q_full,
                      "hindsight_frac_q": hindsight_q / q_full,
                      "seconds": time.perf_counter() - t0})
    return {"data": prep.data, "system": s.name, "n_classes": s.n_classes, "n_groups": s.n_groups, "q_full": q_full,
            "sizes": [int(k) for k in s.option_counts], "model": prep.model_label, "n_dev": dev.n, "n_test": test.n,
            "budgets": budgets, "kept": fitted["kept"], "beta": fitted["beta"],
            "fit_seconds": fitted["fit_seconds"], "predictive_seconds": fitted["predictive_seconds"],
            "full": {m: {"accuracy": float(v.mean()), "ci95": ci(w @ v)} for m, v in full.items()},
            "rows": rows, "diffs": diffs, "stops": stops}


def variant_main(name: str, description: str, evaluate: Callable[..., dict[str, Any]],
                 report: Callable[[dict[str, Any]], str], default_out: Path, argv: list[str] | None) -> dict[str, Any]:
    """The command line of a benchmark that measures variants on the probe pairs (or the simulator), one pair at a
    time: ``evaluate(prep, seed=, n_budgets=, n_boot=)`` per pair, then results.json and ``report``'s report.md
    under --out (``bench.predictive_variants``, ``bench.stop_variants``)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(default_out), help="output folder (results.json, report.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="300 simulated images, 4 budgets, 200 resamples")
    ap.add_argument("--no-probe", action="store_true", help="the simulator instead of the probe pairs")
    ap.add_argument("--probe", default=str(DEFAULT_PROBE), help="a trained probe folder (bench.probe train)")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache (bench.probe's)")
    ap.add_argument("--datasets", nargs="+", default=["sprites151", "jina15-gen1", "web150"])
    ap.add_argument("--systems", nargs="+", default=["pokemon15-gen1"])
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    if args.no_probe:
        preps = {"simulator × " + SIM_SYSTEM: simulator_prep(images=300 if args.quick else 2000, seed=args.seed)}
    else:
        preps, why = probe_preps(Path(args.probe), Path(args.cache_dir), limit=None, seed=args.seed,
                                 datasets_only=args.datasets, systems_only=args.systems)
        if not preps:
            raise SystemExit(f"bench.{name}: no probe pair to run ({why}); try --no-probe")
    n_boot = min(args.boot, 200) if args.quick else args.boot
    pairs = {}
    for key, prep in preps.items():
        print(f"[{name}] {key}: {prep.n} images, N={prep.system.n_classes}, Q={prep.system.q_total}")
        pairs[key] = evaluate(prep, seed=args.seed, n_budgets=4 if args.quick else 9, n_boot=n_boot)
    results = {"benchmark": name, "command": C.command_line(f"bench.{name}", argv),
               "seed": args.seed, "n_boot": n_boot,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), numpy only",
               "pairs": pairs, "seconds": time.perf_counter() - t0,
               "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    C.write_outputs(Path(args.out), results, report(results))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return results


def variant_report_head(title: str, results: dict[str, Any]) -> list[str]:
    """The first lines of a :func:`variant_main` benchmark's report.md: its title, command and machine, and how
    the pairs were split and resampled."""
    return [f"# {title}\n", *C.run_lines(results),
            "- split: 50/50 by image, stratified; fitted and chosen on dev only; every figure on test; "
            f"{results['n_boot']} paired bootstrap resamples\n"]


def predictive_report(results: dict[str, Any]) -> str:
    iv = C.signed_ci
    L = ["# bench.channels --predictive — an information gain that predicts the few-shot posterior (issue 26)\n",
         *C.run_lines(results),
         f"- split: 50/50 by image, stratified, seed {results['seed']}; fitted on dev only; every figure on test",
         f"- bootstrap: {results['n_boot']} resamples of the test images, the same for every figure (paired)\n"]
    for key, res in results["pairs"].items():
        d = {(x["a"], x["b"]): x for x in res["diffs"]}
        L.append(f"\n## {key}\n")
        L.append(f"- N={res['n_classes']}, G={res['n_groups']}, K_g {res['sizes']}, Q={res['q_full']:.0f}; "
                 f"{res['n_dev']} dev / {res['n_test']} test; budgets {res['budgets']}")
        L.append(f"- calibrate --setting few-shot keeps: {res['kept']}; β {[round(b, 2) for b in res['beta']]}; fits "
                 f"{res['fit_seconds']:.1f} s + predictive {res['predictive_seconds']:.1f} s")
        L.append(f"- full system (test): few-shot posterior {res['full']['few-shot']['accuracy']:.3f}, "
                 f"D {res['full']['D']['accuracy']:.3f}, G (the Gaussian posterior) {res['full']['G']['accuracy']:.3f}\n")
        L.append(C.md_table(["curve", "norm. AUC [95% CI]", "− fixed [95% CI]", "Q within 2 pt of full (% of Q)", "s"],
                            [[r["label"], f"{r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]",
                              (f"vs D fixed {d[(r['label'], 'D fixed')]['diff']:+.3f} "
                               f"{iv(d[(r['label'], 'D fixed')]['ci95'])}" if (r["label"], "D fixed") in d else
                               f"vs G fixed {d[(r['label'], 'G fixed')]['diff']:+.3f} "
                               f"{iv(d[(r['label'], 'G fixed')]['ci95'])}" if (r["label"], "G fixed") in d else
                               f"{d[(r['label'], 'fixed')]['diff']:+.3f} {iv(d[(r['label'], 'fixed')]['ci95'])}"
                               if (r["label"], "fixed") in d else ""),
                              "not reached" if r["q_within_2pt"] is None else
                              f"{r['q_within_2pt']:.1f} ({100 * r['q_within_2pt_frac']:.0f}%)", f"{r['seconds']:.0f}"]
                             for r in res["rows"]]))
        h = res["rows"][0]["half_budget"]["budget"]
        L.append(f"\nAt half the prompts (budget {h} of {res['q_full']:.0f}, a fixed budget: nothing chosen), against the "
                 f"few-shot LR's full system ({res['full']['few-shot']['accuracy']:.3f}, the plain LR on the same "
                 "similarities) and against the curve's own posterior with every group asked:\n")
        L.append(C.md_table(["curve", "accuracy", "mean Q (% of Q)", "− LR's full system [95% CI]",
                             "− own full system [95% CI]"],
                            [[r["label"], f"{x['accuracy']:.3f}", f"{x['mean_q']:.1f} ({100 * x['mean_q'] / res['q_full']:.0f}%)",
                              f"{x['minus_lr']:+.3f} {iv(x['minus_lr_ci95'])}",
                              f"{x['minus_own_full']:+.3f} {iv(x['minus_own_full_ci95'])}"]
                             for r in res["rows"] for x in [r["half_budget"]]]))
        L.append("")
        for a, b in (("predictive eig per prompt", "eig per prompt"), ("predictive eig", "eig"), ("D eig per prompt", "fixed"),
                     ("G fixed", "fixed")):
            if (a, b) not in d:
                continue
            x = d[(a, b)]
            L.append(f"- {a} − {b}: {x['diff']:+.3f} {iv(x['ci95'])}")
        margin = results.get("stop_margin", STOP.STOP_MARGIN)
        on_accuracy = results.get("stop_rule") == "accuracy"
        keeps = (f"the dev accuracy no more than {100 * margin:g} point(s) below the accuracy without the stop"
                 if on_accuracy else f"≥ {100 * (1 - margin):g}% of dev images on the full system's label")
        L.append(f"\nStopping early (the threshold chosen on {results.get('n_folds', AM.N_FOLDS)}-fold cross-fitted "
                 f"dev paths: the smallest from which on every threshold keeps {keeps}). confident: max posterior ≥ τ; "
                 "settled: the Gaussian model's lower bound on P(label unchanged if every question left were asked) ≥ "
                 "settle. hindsight bound: the mean Q of each test image's first point on its full-system label "
                 "along this order, no more than any stop that keeps every one of those labels spends:\n")
        L.append(C.md_table(["policy", "stop", "threshold (dev)",
                             "dev accuracy − without the stop" if on_accuracy else "dev agreement with full",
                             "full system",
                             "test accuracy", "mean Q (% of Q)", "− full system [95% CI]",
                             "test sweep: within 2 pt at % of Q", "hindsight bound (% of Q)"],
                            [[x["policy"], x.get("stop", "confident"), f"{x['tau']:.3f}", f"{x['dev_agreement']:.3f}",
                              f"{x['full']:.3f}",
                              f"{x['accuracy']:.3f}", f"{x['mean_q']:.1f} ({100 * x['frac_q']:.0f}%)",
                              f"{x['minus_full']:+.3f} {iv(x['minus_full_ci95'])}",
                              "–" if x["test_sweep_q_within_2pt_frac"] is None else
                              f"{100 * x['test_sweep_q_within_2pt_frac']:.0f}%",
                              f"{100 * x['hindsight_frac_q']:.0f}%"] for x in res["stops"]]))
    return "\n".join(L) + "\n"


def run_predictive(out: Path, preps: dict[str, C.Prepared], *, seed: int = 0, n_boot: int = 1000,
                   n_budgets: int = 9, log=print, command: str = "", max_classes: int | None = None,
                   max_per_class: int | None = None, curves: tuple[str, ...] | None = None,
                   stop_margin: float = STOP.STOP_MARGIN, n_folds: int = AM.N_FOLDS,
                   stop_rule: str = "labels") -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()[0]
    pairs = {}
    for key, prep in preps.items():
        log(f"[channels --predictive] {key}: {prep.n} images, N={prep.system.n_classes}, Q={prep.system.q_total}")
        pairs[key] = evaluate_predictive(prep, seed=seed, n_boot=n_boot, n_budgets=n_budgets, log=log,
                                         max_classes=max_classes, max_per_class=max_per_class, curves=curves,
                                         stop_margin=stop_margin, n_folds=n_folds, stop_rule=stop_rule)
    results = {"benchmark": "channels --predictive", "command": command, "seed": seed, "n_boot": n_boot,
               "stop_margin": stop_margin, "n_folds": n_folds, "stop_rule": stop_rule,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), numpy only",
               "pairs": pairs, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
               "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    C.write_outputs(Path(out), results, predictive_report(results))
    return results


# --------------------------------------------------------------------------- outputs
STYLE = {"fixed": ("tab:gray", "s"), "random": ("tab:brown", "v"), "eig": ("tab:blue", "o"),
         "eig_per_prompt": ("tab:green", "^"), "lookahead": ("tab:orange", "P"), "oracle": ("k", "*")}


def plot_pair(res: dict[str, Any], path: Path) -> str:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, cname in zip(axes, CHANNELS):
        for r in (x for x in res["rows"] if x["channel"] == cname):
            col, mk = STYLE[r["policy"]]
            pts = sorted(r["curve"], key=lambda p: p["mean_q"])
            ax.plot([p["mean_q"] for p in pts], [p["accuracy"] for p in pts], "--" if r["policy"] == "oracle" else "-",
                    color=col, marker=mk, ms=4, lw=1.4, label=f"{r['policy']} (AUC {r['auc']:.3f})")
        f = res["full"][cname]["accuracy"]
        ax.plot([res["q_full"]], [f], "r*", ms=13, label=f"full system {f:.3f}")
        ax.axhline(f - 0.01, color="r", ls=":", lw=0.8)
        ax.set_title(f"{cname} channel" + (" (today's λ, ε)" if cname == "single" else " (fitted on dev)"),
                     fontsize=10)
        ax.set_xlabel("mean Q (prompts per image), budget sweep")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel(f"top-1 accuracy, {res['n_test']} test images")
    fig.suptitle(f"{res['model']} · {res['data']} · {res['system']} (N={res['n_classes']}, Q={res['q_full']:.0f})",
                 fontsize=10)
    return C.save_fig(fig, path)


def _slug(key: str) -> str:
    return key.replace(" × ", "__").replace(" ", "_").replace(",", "").replace("–", "-").replace("/", "_")


def pair_table(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        qw = r["q_within_1pt"]
        rows.append([r["channel"], r["policy"], f"{r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]",
                     "not reached" if qw is None else f"{qw:.1f} ({100 * r['q_within_1pt_frac']:.0f}%)",
                     f"{r['seconds']:.1f}"])
    return C.md_table(["channel", "policy", "norm. AUC [95% CI]", "Q within 1 pt of full (% of Q)", "s"], rows)


def diff_table(res: dict[str, Any]) -> str:
    return C.md_table(["AUC difference", "value [95% CI]", "CI half-width", "clear?"],
                      [[f"{d['a']} − {d['b']}", f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]",
                        f"{d['half_width']:.4f}", "yes" if d["clear"] else "no"] for d in res["diffs"]])


def target_b(results: dict[str, Any]) -> dict[str, Any]:
    key = "web150 × pokeapi-gen1"
    if key not in results["pairs"]:
        return {"pair": key, "evaluated": False}
    res = results["pairs"][key]
    best = None
    for r in res["rows"]:
        if r["channel"] == "calibrated" and r["policy"] in CONTENDERS and r["q_within_1pt"] is not None:
            if best is None or r["q_within_1pt"] < best["q_within_1pt"]:
                best = r
    if best is None:
        return {"pair": key, "evaluated": True, "met": False, "frac": None, "policy": None}
    return {"pair": key, "evaluated": True, "met": best["q_within_1pt_frac"] <= 0.5, "frac": best["q_within_1pt_frac"],
            "q": best["q_within_1pt"], "policy": best["policy"]}


def report(results: dict[str, Any]) -> str:
    L = ["# bench.channels — per-group answer channels against today's single channel\n",
         f"- command: `{results['command']}`",
         f"- machine: {results['machine']}; wall time {results['seconds']:.0f} s",
         f"- split: 50/50 by image, seed {results['seed']}; channels fitted on dev only; every figure on test images",
         f"- channel fit: prior strength α = {results['prior_strength']:g} (λ_g and w_g fitted)",
         f"- bootstrap: {results['n_boot']} resamples of the test images (paired across curves)",
         "- policies: fixed, random (mean of 3 seeds), eig, eig_per_prompt, lookahead (two-step, per prompt), oracle "
         "(knows the true class; bounds question order)\n"]
    if results.get("probe_skipped"):
        L.append(f"**Probe pairs skipped:** {results['probe_skipped']}\n")
    L.append("## Targets\n")
    rows = []
    for key, res in results["pairs"].items():
        ta = res["target_a"]
        for bch in CHANNELS:
            t = ta[f"vs_{bch}"]
            rows.append([key, f"{bch} fixed & random", "met" if t["met"] else "NOT met", t["best"],
                         f"{t['per_policy'][t['best']]['margin']:+.4f}"])
    L.append("(a) calibrated eig or lookahead beats fixed and random in normalised AUC by more than the "
             "difference's 95% CI half-width (against the same calibrated channel, and against today's single "
             "channel):\n")
    L.append(C.md_table(["pair", "against", "target (a)", "best contender",
                         "margin: min over fixed, random of (AUC diff − CI half-width)"], rows))
    tb = results["target_b"]
    if tb["evaluated"]:
        L.append(f"\n(b) web150 × 151 classes within 1 pt of full at ≤ 50% of Q: **{'met' if tb['met'] else 'NOT met'}**"
                 + ("" if tb["frac"] is None else f" (best: {tb['policy']} at {100 * tb['frac']:.0f}% of Q)")
                 + ("" if tb["met"] else (" — never within 1 pt on the budget grid" if tb["frac"] is None
                                          else f", {100 * (tb['frac'] - 0.5):.0f} points of Q over")) + "\n")
    else:
        L.append("\n(b) web150 × 151 classes: not evaluated (probe pairs skipped)\n")
    L.append("\n## Cost of one policy step (select over n images; seconds, one run, side by side)\n")
    L.append(C.md_table(["N classes", "G", "Q", "n images", "EIG of all groups (every step)", "eig select",
                         "lookahead select", "lookahead / EIG"],
                        [[c["n_classes"], c["n_groups"], c["q"], c["n_images"], f"{c['eig_computation']:.4f}",
                          f"{c['eig']:.4f}", f"{c['lookahead']:.3f}",
                          f"{c['lookahead'] / max(c['eig_computation'], 1e-9):.0f}×"] for c in results["policy_cost"]]))
    for key, res in results["pairs"].items():
        L.append(f"\n## {key}\n")
        L.append(f"- model: {res['model']}; N={res['n_classes']}, G={res['n_groups']}, Q={res['q_full']:.0f}; "
                 f"{res['n_dev']} dev / {res['n_test']} test images; budgets {res['budgets']}")
        L.append(f"- full system (test): single {res['full']['single']['accuracy']:.3f} "
                 f"[{res['full']['single']['ci95'][0]:.3f}, {res['full']['single']['ci95'][1]:.3f}], calibrated "
                 f"{res['full']['calibrated']['accuracy']:.3f} [{res['full']['calibrated']['ci95'][0]:.3f}, "
                 f"{res['full']['calibrated']['ci95'][1]:.3f}]")
        fit = res["fit"]
        L.append("- fitted on dev: " + ", ".join(f"{g} λ {la:.3g} w {w:.2f}" for g, la, w in
                                                 zip(fit["groups"], fit["lams"], fit["reliability"]))
                 + f" (single λ {res['lambda_single']:.3g}, ε {res['eps']:g})\n")
        L.append(pair_table(res))
        L.append("")
        L.append(diff_table(res))
        L.append(f"\n![{key}]({res['plot']})\n")
        if res.get("dev_variants"):
            L.append("Fit variants, on dev images only (fit on half of dev, normalised AUC on the other half):\n")
            pols = [k for k in res["dev_variants"][0] if k not in ("variant", "full")]
            L.append(C.md_table(["variant", "full system"] + [f"AUC {p}" for p in pols],
                                [[v["variant"], v["full"]] + [v[p] for p in pols] for v in res["dev_variants"]]))
    return "\n".join(L) + "\n"


def run(out: Path, *, seed: int = 0, quick: bool = False, probe: Path | None = DEFAULT_PROBE,
        cache_dir: Path = C.DEFAULT_CACHE, n_boot: int = 1000, datasets=None, systems=None,
        dev_check: bool = True, prior_strength: float = 10.0, log=print,
        command: str = "") -> dict[str, Any]:
    t0 = time.perf_counter()
    images, n_budgets, limit = (300, 4, 200) if quick else (2000, 9, None)
    n_boot = min(n_boot, 200) if quick else n_boot
    preps = {"simulator × " + SIM_SYSTEM: simulator_prep(images=images, seed=seed)}
    skipped = None
    if probe is None:
        skipped = "--no-probe"
    else:
        more, skipped = probe_preps(Path(probe), Path(cache_dir), limit=limit, seed=seed, log=log,
                                    datasets_only=datasets, systems_only=systems)
        preps.update(more)
    pairs = {}
    for key, prep in preps.items():
        log(f"[channels] {key}: {prep.n} images, N={prep.system.n_classes}, Q={prep.system.q_total}")
        res = evaluate_pair(prep, seed=seed, n_budgets=n_budgets, n_boot=n_boot,
                            prior_strength=prior_strength, log=log)
        res["plot"] = plot_pair(res, Path(out) / f"{_slug(key)}.png")
        if dev_check and prep.system.n_classes <= 20:  # the small systems only: seconds each
            res["dev_variants"] = dev_variants(prep, seed=seed, log=log)
        pairs[key] = res

    results = {"benchmark": "channels", "command": command, "seed": seed, "quick": quick, "n_boot": n_boot,
               "prior_strength": prior_strength,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), numpy only",
               "probe": None if probe is None else str(probe), "probe_skipped": skipped, "pairs": pairs}
    results["target_b"] = target_b(results)
    results["policy_cost"] = policy_cost(((151, 8, 200),) if quick else COST_SIZES, seed=seed)
    results["seconds"] = time.perf_counter() - t0
    C.write_outputs(Path(out), results, report(results))
    return results



def _section_preps(args) -> dict:
    """The simulator and probe pairs the --answer-models and --predictive sections run on, as the flags say."""
    images, limit = (300, 200) if args.quick else (2000, None)
    preps = {} if args.no_simulator else {"simulator × " + SIM_SYSTEM: simulator_prep(images=images, seed=args.seed)}
    if not args.no_probe:
        more, why = probe_preps(Path(args.probe), Path(args.cache_dir), limit=limit, seed=args.seed,
                                datasets_only=args.datasets, systems_only=args.systems)
        if why:
            print(f"[channels] probe pairs skipped: {why}")
        preps.update(more)
    return preps

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (results.json, report.md, PNGs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes: 300 simulated images, ≤200 per probe pair, "
                                                        "4 budgets, 200 bootstrap resamples")
    ap.add_argument("--probe", default=str(DEFAULT_PROBE), help="a trained probe folder (bench.probe train)")
    ap.add_argument("--no-probe", action="store_true", help="the simulator only")
    ap.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache, keyed by file hash "
                    "(the one bench.probe fills; images in it are not re-encoded)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--systems", nargs="+", default=None, help="probe systems to run (default: both of "
                    "pokemon15-gen1 pokeapi-gen1)")
    ap.add_argument("--prior-strength", type=float, default=10.0,
                    help="α of fit_answer_channels (choose it on dev: see the dev fit variants)")
    ap.add_argument("--no-dev-check", action="store_true", help="skip the dev-only fit variants")
    ap.add_argument("--datasets", nargs="+", default=None, help="probe datasets to run (default: all of "
                    "web150 sprites151 jina15-gen1)")
    ap.add_argument("--no-simulator", action="store_true", help="with --answer-models or --predictive: the probe pairs only")
    ap.add_argument("--budgets", type=int, default=9, help="with --answer-models or --predictive: budget points "
                                                          "from 0 to Q, ⌊Q/2⌋ added with --predictive (default: "
                                                          "%(default)s)")
    ap.add_argument("--answer-models", action="store_true",
                    help="compare the rule channel, the per-class channel and the few-shot posterior (and the plain "
                         "few-shot LR baselines) instead of the per-policy sweep (issue 26)")
    ap.add_argument("--predictive", action="store_true",
                    help="the predictive information gain of the few-shot posterior against channel EIG and fixed order, "
                         "design D, and the confidence stop (issue 26; its own section, docs/channels.md)")
    ap.add_argument("--pred-classes", type=int, default=None, help="with --predictive: classes weighed per image "
                    "(engine.core.predictive.MAX_CLASSES unless given)")
    ap.add_argument("--pred-per-class", type=int, default=None, help="with --predictive: dev samples kept per class "
                    "(engine.core.predictive.MAX_PER_CLASS unless given)")
    ap.add_argument("--pred-curves", nargs="+", default=None, help="with --predictive: only these curves (labels of "
                    "PRED_CURVES, e.g. 'predictive eig per prompt'; fixed always runs)")
    ap.add_argument("--stop-margin", type=float, default=STOP.STOP_MARGIN, help="with --predictive: the share of dev "
                    "labels a stop's dev threshold may change (default: %(default)s, what --settle auto uses)")
    ap.add_argument("--stop-rule", choices=("labels", "accuracy"), default="labels", help="with --predictive: a dev "
                    "threshold keeps the labels ('labels', what --settle auto does) or the accuracy (within the margin)")
    ap.add_argument("--folds", type=int, default=AM.N_FOLDS, help="with --predictive: folds of the cross-fitted dev "
                    "paths the thresholds are chosen on (default: %(default)s, what calibrate uses)")
    args = ap.parse_args(argv)
    if not (0.0 <= args.stop_margin < 1.0 and args.folds >= 2):
        ap.error(f"--stop-margin must be in [0, 1) and --folds at least 2, got {args.stop_margin} and {args.folds}")
    if args.predictive:  # the predictive section (issue 26), apart from --answer-models
        preps = _section_preps(args)
        out = Path(args.out) / "predictive" if args.out == str(DEFAULT_OUT) else Path(args.out)
        res = run_predictive(out, preps, seed=args.seed, n_boot=min(args.boot, 200) if args.quick else args.boot,
                             n_budgets=4 if args.quick else args.budgets, command=C.command_line("bench.channels", argv),
                             max_classes=args.pred_classes, max_per_class=args.pred_per_class,
                             curves=None if args.pred_curves is None else tuple(args.pred_curves),
                             stop_margin=args.stop_margin, n_folds=args.folds, stop_rule=args.stop_rule)
        print((out / "report.md").read_text(encoding="utf-8"))
        return res
    if args.answer_models:
        preps = _section_preps(args)
        res = run_answer_models(Path(args.out), preps, seed=args.seed, n_boot=min(args.boot, 200) if args.quick
                                else args.boot, n_budgets=4 if args.quick else args.budgets,
                                command=C.command_line("bench.channels", argv))
        print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
        return res
    res = run(Path(args.out), seed=args.seed, quick=args.quick, probe=None if args.no_probe else Path(args.probe),
              cache_dir=Path(args.cache_dir), n_boot=args.boot, datasets=args.datasets, systems=args.systems,
              dev_check=not args.no_dev_check, prior_strength=args.prior_strength,
              command=C.command_line("bench.channels", argv))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return res


if __name__ == "__main__":
    main()
