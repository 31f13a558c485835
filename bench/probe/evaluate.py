"""Evaluating the attribute probe on Gen 1 only: what attributes buy a model that never saw these species.

Datasets (Gen-1 species only; the probe trained on species 152–386):

- ``web150``: ``web150/labels.csv`` (web pictures); rows whose label is not a
  class of the system (``Alolan Sandslash``) are excluded and counted;
- ``sprites151``: every art style of species 1–151 in ``sprites386``;
- ``jina15-gen1``: the 10 Gen-1 species of ``jina15.csv`` (Absol, Aggron,
  Ampharos, Azumarill and Celebi are dropped: they are Gen 2–3).

Systems: ``pokemon15`` restricted to its 10 Gen-1 species
(``system.subset``), and the PokeAPI Gen-1 system (151 classes,
``pokeapi_system(generations=(1,), labels=<the dataset's labels>)``).

Each (dataset, system) pair runs :func:`bench.reproduce.run` (baseline = class
names, full system with the sum and Bayes scorers, adaptive ``eig`` at τ=0.9,
the shuffled-rules control, McNemar tests); ``web150`` × the 151-class system
also runs :func:`bench.policies.run` (accuracy against mean Q for every
registered policy and the oracle). Images are embedded once: backbone features
come from the on-disk cache keyed by file hash, the heads are applied once per
image, and every mode scores the same cached similarities.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.probe.data import TABLE_CSV
from engine import StopRule
from engine.authoring.pokeapi import pokeapi_system
from engine.run.datasets import Dataset, Item, check_labels, load_dataset
from policies import list_policies
from systems import AttributeSystem, baseline_system, load_system

from .. import policies, reproduce
from ..lib import harness as C
from .data import GEN1_MAX, JINA15_CSV, SPRITES_CSV, WEB150_CSV, csv_rows, image_features

JINA_NOT_GEN1 = ("Absol", "Aggron", "Ampharos", "Azumarill", "Celebi")
DATASET_NAMES = ("web150", "sprites151", "jina15-gen1")
SYSTEM_NAMES = ("pokemon15-gen1", "pokeapi-gen1")
MODES = ("baseline (class names)", "full system, Bayes scorer", "full system, sum scorer", "adaptive eig, τ=0.9")
BY = {"jina15-gen1": "source"}


# --------------------------------------------------------------------------- data and systems
def gen1_datasets() -> dict[str, Dataset]:
    """The three Gen-1 datasets, every row (labels not yet checked against any system)."""
    with open(SPRITES_CSV, newline="", encoding="utf-8") as f:
        sprites = [Item(str(SPRITES_CSV.parent / r["path"]), r["label"], {"style": r["style"], "source": "sprites"})
                   for r in csv.DictReader(f) if int(r["species_id"]) <= GEN1_MAX]
    web = [Item(p, lab, {"source": "web"}) for p, lab in csv_rows(WEB150_CSV)]
    jina = [it for it in load_dataset(JINA15_CSV).items if it.label not in JINA_NOT_GEN1]
    return {"web150": Dataset("web150", tuple(web)), "sprites151": Dataset("sprites151", tuple(sprites)),
            "jina15-gen1": Dataset("jina15-gen1", tuple(jina))}


def pair_dataset(ds: Dataset, system: AttributeSystem, *, limit: int | None, seed: int) -> tuple[Dataset, dict]:
    """The rows of ``ds`` whose label is a class of ``system`` (the rest are excluded and counted),
    then a seeded subset of at most ``limit`` of them."""
    kept, missing = check_labels(ds, system.classes, allow_missing=True)
    info = {"excluded_images": len(ds) - len(kept), "excluded_labels": missing, "limit": limit}
    if limit is not None and limit < len(kept):
        keep = np.sort(np.random.default_rng(seed).choice(len(kept), size=limit, replace=False))
        kept = Dataset(kept.name, tuple(kept.items[i] for i in keep))
    info["images"] = len(kept)
    return kept, info


def gen1_system(name: str, labels: list[str]) -> AttributeSystem:
    """``pokemon15-gen1`` (pokemon15's 10 Gen-1 species) or ``pokeapi-gen1`` aligned to ``labels``."""
    if name == "pokemon15-gen1":
        s = load_system("pokemon15")
        return s.subset([c for c in s.classes if c not in JINA_NOT_GEN1], name="pokemon15[gen1]")
    if name == "pokeapi-gen1":
        return pokeapi_system(TABLE_CSV, generations=(1,), labels=labels)
    raise ValueError(f"system {name!r}; choose one of {SYSTEM_NAMES}")


# --------------------------------------------------------------------------- prepared arrays
def prepare(encoder: Any, system: AttributeSystem, kept: Dataset, feats: dict[str, Any], *,
            data_name: str, info: dict[str, Any]) -> C.Prepared:
    """A :class:`bench.lib.harness.Prepared` for one (dataset, system) pair from cached backbone features.

    kept : the pair's rows (:func:`pair_dataset`); feats : {image path: (1280,) feature}.
    """
    import torch

    from engine.encoders.text_cache import TextCache
    from engine.run.encoder_source import EncoderSource

    f = torch.stack([feats[it.path] for it in kept.items])
    emb = encoder.embed_features(f)  # (B, D) unit rows
    tcache = TextCache(encoder)
    sims = EncoderSource(encoder, tcache, system, emb).all_similarities()
    base_sims = EncoderSource(encoder, tcache, baseline_system(system), emb).all_similarities()
    truth = np.array([system.class_index(it.label) for it in kept.items], dtype=np.int64)
    from engine.encoders.probe import PROBE_LABEL

    meta = {"model_id": encoder.model_id, "model_string": encoder.name, **info}
    return C.Prepared(PROBE_LABEL, f"{PROBE_LABEL} ({encoder.name})", data_name, system, truth, sims, base_sims,
                      [dict(it.extra) for it in kept.items], float(encoder.logit_scale), C.DEFAULT_EPS, meta)


# --------------------------------------------------------------------------- the run
def run(encoder: Any, backbone: Any, out: Path, *, cache_dir: str | Path | None, seed: int = 0,
        limit: int | None = None, taus=policies.TAUS, n_budgets: int = policies.N_BUDGETS,
        random_seeds=policies.RANDOM_SEEDS, log=print, command: str = "") -> dict[str, Any]:
    """Evaluate a loaded probe on every Gen-1 (dataset, system) pair; writes results.json and report.md."""
    t0 = time.perf_counter()
    out = Path(out)
    jobs = []
    for dname, ds in gen1_datasets().items():
        for sname in SYSTEM_NAMES:
            system = gen1_system(sname, ds.labels)
            kept, info = pair_dataset(ds, system, limit=limit, seed=seed)
            if len(kept):
                jobs.append((dname, sname, system, kept, info))
    paths = list(dict.fromkeys(it.path for *_, kept, _ in jobs for it in kept.items))
    log(f"[probe eval] backbone features of {len(paths)} Gen-1 images (cached by file hash)")
    f = image_features(backbone, paths, cache_dir, log=log)
    feats = dict(zip(paths, f))
    t_feat = time.perf_counter() - t0
    pairs, preps = {}, {}
    for dname, sname, system, kept, info in jobs:
        prep = prepare(encoder, system, kept, feats, data_name=dname, info=info)
        key = f"{dname}/{sname}"
        log(f"[probe eval] reproduce {key}: {prep.n} images, N={system.n_classes}, Q={system.q_total}")
        r = reproduce.run(prep, out / "reproduce" / dname / sname, seed=seed, by=BY.get(dname), command=command)
        pairs[key] = {"data": dname, "system": sname, "system_name": system.name, "n_classes": system.n_classes,
                      "q_full": system.q_total, **info, "reproduce": r}
        preps[key] = prep
    t_rep = time.perf_counter() - t0 - t_feat
    key = "web150/pokeapi-gen1"
    log(f"[probe eval] policies {key}")
    pol = policies.run(preps[key], out / "policies" / "web150" / "pokeapi-gen1", seed=seed, taus=taus,
                       n_budgets=n_budgets, random_seeds=random_seeds, command=command)
    t_pol = time.perf_counter() - t0 - t_feat - t_rep
    results = {"benchmark": "probe", "model": encoder.describe(), "seed": seed, "limit": limit,
               "command": command, "table": table(pairs, seed), "gap": gap(preps, seed),
               "answer_accuracy": {k: answer_accuracy(p) for k, p in preps.items() if k.endswith("pokeapi-gen1")},
               "curves": curve_summary(pol), "pairs": {k: _slim(v) for k, v in pairs.items()},
               "policies_registered": _registered(),
               "sweep": {"taus": list(taus), "n_budgets": n_budgets, "random_seeds": list(random_seeds)},
               "seconds": {"features": t_feat, "reproduce": t_rep, "policies": t_pol,
                           "total": time.perf_counter() - t0}}
    C.write_outputs(out, results, report(results, out))
    return results


def _registered() -> list[str]:
    names = sorted(list_policies())
    if set(names) != set(policies.POLICY_NAMES):
        raise RuntimeError(f"bench.policies sweeps {sorted(policies.POLICY_NAMES)} but the registry holds {names}; "
                           "update bench.policies.POLICY_NAMES")
    return names


def _slim(pair: dict[str, Any]) -> dict[str, Any]:
    r = pair["reproduce"]
    return {k: v for k, v in pair.items() if k != "reproduce"} | {
        "modes": r["modes"], "mcnemar": r["mcnemar"], "by": r["by"], "majority_class_rate": r["majority_class_rate"],
        "stops_adaptive": r["stops_adaptive"]}


def table(pairs: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One row per (dataset, system): each mode's accuracy, 95% CI and mean Q, the control and McNemar p."""
    rows = []
    for key, p in pairs.items():
        m = {x["mode"]: x for x in p["reproduce"]["modes"]}
        sh = {s: next(x for x in p["reproduce"]["modes"] if x["mode"].startswith(f"shuffled rules, {s}"))
              for s in ("sum", "Bayes")}
        mc = {(t["a"], t["b"]): t["p"] for t in p["reproduce"]["mcnemar"]}
        rows.append({"data": p["data"], "system": p["system"], "n": p["images"], "n_classes": p["n_classes"],
                     "q_full": p["q_full"], "excluded_images": p["excluded_images"],
                     **{mode: {"accuracy": m[mode]["accuracy"], "ci95": m[mode]["ci95"], "mean_q": m[mode]["mean_q"]}
                        for mode in MODES},
                     "shuffled_sum": {"accuracy": sh["sum"]["accuracy"], "sd": sh["sum"]["accuracy_sd"]},
                     "shuffled_bayes": {"accuracy": sh["Bayes"]["accuracy"], "sd": sh["Bayes"]["accuracy_sd"]},
                     "p_full_bayes_vs_baseline": mc[(MODES[1], MODES[0])],
                     "p_adaptive_vs_full_bayes": mc[(MODES[3], MODES[1])],
                     "chance": 1 / p["n_classes"], "majority_class_rate": p["reproduce"]["majority_class_rate"]})
    return rows


def gap(preps: dict[str, C.Prepared], seed: int, n_boot: int = 2000) -> list[dict[str, Any]]:
    """Accuracy on Gen-1 sprites minus accuracy on web150, per system and mode, with a 95% bootstrap CI."""
    out = []
    for sname in SYSTEM_NAMES:
        a, b = preps.get(f"sprites151/{sname}"), preps.get(f"web150/{sname}")
        if a is None or b is None:
            continue
        for mode, kw in (("baseline (class names)", {"baseline": True}), ("full system, Bayes scorer", {}),
                         ("adaptive eig, τ=0.9", {"policy": "eig", "stop": StopRule(tau=0.9)})):
            ca, cb = C.run_point(a, **kw).correct, C.run_point(b, **kw).correct
            rng = np.random.default_rng(seed)
            diffs = (ca[rng.integers(0, len(ca), (n_boot, len(ca)))].mean(1)
                     - cb[rng.integers(0, len(cb), (n_boot, len(cb)))].mean(1))
            out.append({"system": sname, "mode": mode, "sprites": float(ca.mean()), "web": float(cb.mean()),
                        "gap": float(ca.mean() - cb.mean()),
                        "ci95": [float(x) for x in np.quantile(diffs, [0.025, 0.975])],
                        "n_sprites": int(len(ca)), "n_web": int(len(cb))})
    return out


def answer_accuracy(prep: C.Prepared) -> dict[str, dict[str, float]]:
    """Per group: how often the probe's top option is an acceptable one (images the group applies to),
    against 1/K_g. Explains which questions the probe can answer on these images."""
    s, out = prep.system, {}
    for g, grp in enumerate(s.groups):
        o, k = int(s.offsets[g]), grp.n_options
        top = prep.sims[:, o:o + k].argmax(1)
        hit = [int(top[i]) in s.rules[c][g] for i, c in enumerate(prep.truth) if s.rules[c][g]]
        out[grp.name] = {"accuracy": float(np.mean(hit)) if hit else float("nan"), "chance": 1 / k, "n": len(hit),
                         "options": k}
    return out


def curve_summary(pol: dict[str, Any]) -> dict[str, Any]:
    return {"meta": {k: pol["meta"].get(k) for k in ("data", "system", "n_images", "n_classes", "q_full")},
            "full": pol["full"], "baseline": pol["baseline"], "no_questions": pol["no_questions"],
            "informative": pol["informative"], "summary": pol["summary"], "curves": pol["curves"],
            "plot": "policies/web150/pokeapi-gen1/accuracy_vs_q.png"}


# --------------------------------------------------------------------------- report
def _acc(x: dict[str, Any]) -> str:
    return f"{x['accuracy']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for r in results["table"]:
        rows.append([r["data"], f"{r['system']} (N={r['n_classes']}, Q={r['q_full']})", r["n"],
                     _acc(r[MODES[0]]), _acc(r[MODES[1]]), _acc(r[MODES[2]]),
                     f"{_acc(r[MODES[3]])}, Q {r[MODES[3]]['mean_q']:.1f}",
                     f"{r['shuffled_bayes']['accuracy']:.3f} ± {r['shuffled_bayes']['sd']:.3f}",
                     C.fmt_p(r["p_full_bayes_vs_baseline"]), f"{r['chance']:.3f} / {r['majority_class_rate']:.3f}"])
    return rows


TABLE_HEAD = ["data", "system", "n", "baseline (names)", "full (Bayes)", "full (sum)", "adaptive eig τ=0.9, mean Q",
              "shuffled rules (Bayes, ± sd)", "McNemar p full vs baseline", "chance / majority class"]


def findings(results: dict[str, Any]) -> list[str]:
    """One line per finding, from the numbers (no hand-written claims)."""
    f = []
    for r in results["table"]:
        b, fb, ad, sh = r[MODES[0]], r[MODES[1]], r[MODES[3]], r["shuffled_bayes"]
        beats = fb["accuracy"] > sh["accuracy"] + 2 * sh["sd"]
        f.append(f"{r['data']} × {r['system']} (N={r['n_classes']}, n={r['n']}): full system (Bayes) "
                 f"{_acc(fb)} vs class names {_acc(b)} (McNemar p={C.fmt_p(r['p_full_bayes_vs_baseline'])}); "
                 f"adaptive eig {ad['accuracy']:.3f} at mean Q {ad['mean_q']:.1f} of {r['q_full']}; shuffled rules "
                 f"{sh['accuracy']:.3f} ± {sh['sd']:.3f}, so the real rules "
                 f"{'beat' if beats else 'do NOT clearly beat'} meaningless ones; chance {r['chance']:.3f}.")
    for g in results["gap"]:
        f.append(f"sprites − web ({g['system']}, {g['mode']}): {g['sprites']:.3f} − {g['web']:.3f} = "
                 f"{g['gap']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}].")
    cv = results["curves"]
    summ = {x["policy"]: x for x in cv["summary"]}
    real = [p for p in summ if p != "oracle"]
    best = max(real, key=lambda p: summ[p]["auc_budget"])
    e = summ["eig"]
    f.append(f"curves (web150 × 151-class system): normalised AUC (budget sweep) best {best} "
             f"{summ[best]['auc_budget']:.3f}; eig {e['auc_budget']:.3f}, eig_per_prompt "
             f"{summ['eig_per_prompt']['auc_budget']:.3f}, top2 {summ['top2']['auc_budget']:.3f}, lookahead "
             f"{summ['lookahead']['auc_budget']:.3f}, fixed "
             f"{summ['fixed']['auc_budget']:.3f}, random {summ['random']['auc_budget']:.3f}, oracle "
             f"{summ['oracle']['auc_budget']:.3f}; eig within 1 pt of full at mean Q "
             + (f"{e['q_within_1pt']:.1f} of {cv['meta']['q_full']}" if e["q_within_1pt"] is not None
                else "never") + ("" if cv["informative"] else " (full system not clearly above guessing)") + ".")
    return f


def report(results: dict[str, Any], out: Path) -> str:
    m = results["model"]
    L = [f"# bench.probe eval — {m['label']}\n",
         f"- model: **{m['label']}** (`{m['model']}`, {m['model_id']}); λ = {m['logit_scale']:.3g} "
         "(fitted on held-out Gen 2–3 species), ε = 0.05",
         f"- training data sha256 {m.get('data_sha256')}, seed {m.get('seed')}",
         "- every image is Gen 1 (species 1–151); the probe never saw these species' images or names",
         f"- command: `{results['command']}`",
         f"- wall time: {results['seconds']['total']:.0f} s (features {results['seconds']['features']:.0f} s)\n",
         "## Results (accuracy [95% bootstrap CI])\n", C.md_table(TABLE_HEAD, table_rows(results)),
         "\n## Findings\n"]
    L += [f"- {x}" for x in findings(results)]
    L.append("\n## Gap: Gen-1 sprites against web150\n")
    L.append(C.md_table(["system", "mode", "sprites", "web", "gap [95% CI]"],
                        [[g["system"], g["mode"], f"{g['sprites']:.3f}", f"{g['web']:.3f}",
                          f"{g['gap']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"] for g in results["gap"]]))
    aa = results["answer_accuracy"]
    if aa:
        groups = list(next(iter(aa.values())))
        L.append("\n## Per-question answer accuracy, PokeAPI Gen-1 system (top option acceptable; chance 1/K)\n")
        L.append(C.md_table(["data"] + [f"{g} (1/{next(iter(aa.values()))[g]['options']})" for g in groups],
                            [[k.split("/")[0]] + [f"{v[g]['accuracy']:.3f}" for g in groups] for k, v in aa.items()]))
    L.append("\n## Accuracy against mean Q, web150 × PokeAPI Gen-1 system (every registered policy + oracle)\n")
    L.append(C.md_table(["policy", "norm. AUC (τ sweep)", "norm. AUC (budget sweep)",
                         "smallest mean Q within 1 pt of full"], policies.summary_rows(results["curves"])))
    L.append(f"\n![accuracy vs Q]({results['curves']['plot']})\n")
    L.append("Per-pair reports (McNemar tables, breakdowns, plots): "
             + ", ".join(f"[{k}](reproduce/{k}/report.md)" for k in results["pairs"]))
    return "\n".join(L) + "\n"
