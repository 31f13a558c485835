"""Zero-shot calibration moved to other classes: fitted on Gen 2–3 sprites, used on Gen 1 sprites.

    python -m bench.transfer                    # the shipped probe (not CLIP)
    python -m bench.transfer --model offline    # the offline stand-in

What it measures (issue 26, item 1's zero-shot setting): a calibration made by ``calibrate`` with
``--setting zero-shot`` for ``pokemon15`` on the sprites of its 5 species that ``pokemon15_gen1`` lacks
(Absol, Aggron, Ampharos, Azumarill, Celebi: Gen 2–3), moved by ``Classifier(..., calibration=...)`` to
``pokemon15_gen1`` (the same questions, 10 Gen-1 species; engine.run.calibration_file.Calibration.for_system),
against no calibration, on the Gen-1 sprites of those 10 species: every one (none is used to fit) and the
test half of the main job's split (seed 0, the images the shipped few-shot calibration never saw). Both
runs classify the same embeddings, so the differences are paired: 95% CIs from a bootstrap over images.
A reference line: a zero-shot calibration of ``pokemon15_gen1`` fitted on its own dev half (what in-class
dev images would buy in the same setting).

Overlap to know: the probe was trained on every Gen 2–3 species but 24 (engine/encoders/data/probe/
manifest.json, ``val_species_ids``); the 5 source species are all training species, so the source
sprites are the probe's training images, on which it answers better than on unseen species. The fit's
held-out check (3 folds of the source fit part) cannot see that.

Nothing is tuned on Gen-1 images. Writes bench/out/transfer/<model>/results.json and report.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.channel_fit import split_by_image
from engine.run.calibration_file import calibrate, image_sha256, save_calibration
from engine.run.config import EncoderSpec, RunConfig
from engine.run.datasets import DataSpec
from systems import load_system

from .lib import harness as C

SOURCE_SYSTEM, TARGET_SYSTEM = "pokemon15", "pokemon15_gen1"
SPRITES = "pokemon/sprites386/labels.csv"
N_BOOT = 2000
CONFIGS = {"full system": {"mode": "full"}, "adaptive eig τ=0.9": {"policy": "eig", "tau": 0.9}}


def source_csv(out: Path, sprites: Path, classes: list[str]) -> Path:
    """A CSV of the sprites of ``classes`` (absolute paths), for ``calibrate``."""
    rows = [r for r in csv.DictReader(sprites.open()) if r["label"] in classes]
    path = out / "source.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "style"])
        w.writerows([(str(sprites.parent / r["path"]), r["label"], r["style"]) for r in rows])
    return path


def paired(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Mean of b − a (per-image 0/1 or numbers) with a 95% bootstrap CI over images (the same resamples for both)."""
    d = np.asarray(b, float) - np.asarray(a, float)
    idx = np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    return {"diff": float(d.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}


def accuracy_ci(x: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    idx = np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))
    boots = np.asarray(x, float)[idx].mean(axis=1)
    return [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def outcomes(clf: Any, emb: Any, labels: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{config: {correct (B,) bool, q (B,)}} of every config of :data:`CONFIGS` on embedded images."""
    out = {}
    for name, kw in CONFIGS.items():
        res = clf.classify_embedded(emb, RunConfig(**kw))
        out[name] = {"correct": np.array([r.label == y for r, y in zip(res, labels)]),
                     "q": np.array([r.q_spent for r in res], float)}
    return out


def run(model: str, out: Path, *, seed: int = 0, dev_fraction: float = 0.9,
        log=print) -> dict[str, Any]:
    from engine.run.classifier import Classifier

    t0, load0 = time.perf_counter(), os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    src_sys, tgt_sys = load_system(SOURCE_SYSTEM), load_system(TARGET_SYSTEM)
    gen23 = [c for c in src_sys.classes if c not in tgt_sys.classes]
    sprites = C.SHARED_DATA / SPRITES
    if not sprites.is_file():
        raise SystemExit(f"bench.transfer: {sprites} is missing (../shared/data); nothing to measure")
    src_clf = Classifier(EncoderSpec(model=model), src_sys)
    enc = src_clf.encoder
    cal = calibrate(src_clf, DataSpec(str(source_csv(out, sprites, gen23))), dev_fraction=dev_fraction, seed=seed,
                    setting="zero-shot")
    cal = save_calibration(cal, out / "zero-shot.gen23.cal.json")
    log(f"[transfer] calibrated on {cal.dev['n_images']} Gen 2–3 sprites of {gen23}: rule channel "
        f"{cal.decision['rule_channel']}")

    # the Gen-1 sprites of the target's species: every one, and the main job's test half
    ds = DataSpec(str(sprites), allow_missing=True).load(tgt_sys.classes)
    items = list(ds.items)
    labels = [it.label for it in items]
    truth = np.array([tgt_sys.class_index(y) for y in labels])
    dev_idx, test_idx = split_by_image(truth, 0.5, 0)
    plain = Classifier(EncoderSpec(model=model), tgt_sys, encoder=enc)
    moved = Classifier(EncoderSpec(model=model), tgt_sys, encoder=enc, calibration=cal)
    emb, good, bad = plain.images.embed([it.path for it in items])
    if bad:
        raise SystemExit(f"bench.transfer: {len(bad)} Gen-1 sprite(s) could not be read: {list(bad.values())[:2]}")
    runs = {"uncalibrated": outcomes(plain, emb, labels), "moved from Gen 2–3": outcomes(moved, emb, labels)}

    # reference: a zero-shot calibration fitted on the target's own dev half (scored on the test half only)
    dev_csv = out / "gen1_dev.csv"
    with dev_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([(items[i].path, labels[i]) for i in range(len(items))])
    own = calibrate(plain, DataSpec(str(dev_csv)), dev_fraction=0.5, seed=0, setting="zero-shot")
    own_clf = Classifier(EncoderSpec(model=model), tgt_sys, encoder=enc, calibration=own)
    own_dev = set(own.dev["image_sha256"])

    own_test = np.array([i for i in range(len(items)) if image_sha256(items[i]) not in own_dev])
    assert np.array_equal(own_test, test_idx), "the reference's test half should be the main job's"
    runs["own Gen-1 dev half (reference)"] = outcomes(own_clf, emb, labels)

    scopes = {"every Gen-1 sprite": np.arange(len(items)), "test half (seed 0)": test_idx}
    table = {}
    for scope, idx in scopes.items():
        for cname in CONFIGS:
            base = runs["uncalibrated"][cname]["correct"][idx]
            for rname, r in runs.items():
                if rname.endswith("(reference)") and scope != "test half (seed 0)":
                    continue
                c = r[cname]["correct"][idx]
                table[f"{scope} | {cname} | {rname}"] = {
                    "n": int(len(idx)), "accuracy": float(c.mean()), "ci95": accuracy_ci(c),
                    "mean_q": float(r[cname]["q"][idx].mean()),
                    **({} if rname == "uncalibrated" else {"minus_uncalibrated": paired(base, c)})}
    ch = cal.channels
    results = {
        "benchmark": "transfer", "model": model, "model_id": str(enc.model_id), "seed": seed,
        "source": {"system": SOURCE_SYSTEM, "classes": gen23, "dev_images": cal.dev["n_images"],
                   "fit_images": int(cal.dev["n_images"]), "dev_fraction": dev_fraction,
                   "decision": cal.decision,
                   "groups": {g: {"lam": float(ch.lams[i]), "reliability": None if np.isnan(ch.reliability[i])
                                  else float(ch.reliability[i])} for i, g in enumerate(cal.groups)},
                   "lam0": cal.lam0},
        "target": {"system": TARGET_SYSTEM, "images": len(items), "test_half": int(len(test_idx)),
                   "own_reference_rule_channel": own.decision["rule_channel"]},
        "table": table, "n_boot": N_BOOT,
        "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time(),
        "load_average_start": load0, "load_average_end": os.getloadavg(),
        "command": f"python -m bench.transfer --model {model}",
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(report(results))
    return results


def report(r: dict[str, Any]) -> str:
    s = r["source"]
    lines = [f"# Zero-shot calibration moved from Gen 2–3 to Gen 1 ({r['model']})", "",
             f"`{r['command']}`: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, load average "
             f"{r['load_average_start'][0]:.1f} → {r['load_average_end'][0]:.1f}", "",
             f"Source: {s['system']} on {s['dev_images']} sprites of {', '.join(s['classes'])} "
             f"({s['fit_images']} fitted on, all of them; τ-side choices cross-fitted); kept rule channel: **{s['decision']['rule_channel']}**; held-out (3 folds "
             "of the fit part):", "", "| candidate | accuracy | NLL |", "|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.3f} | {v['nll']:.3f} |" for k, v in s["decision"]["heldout"].items()]
    lines += ["", "| group | λ_g | reliability |", "|---|---|---|"]
    lines += [f"| {g} | {v['lam']:.3g} | {'-' if v['reliability'] is None else format(v['reliability'], '.2f')} |"
              for g, v in s["groups"].items()]
    lines += ["", f"λ of the model: {s['lam0']:g}. Target: {r['target']['system']}, {r['target']['images']} Gen-1 "
              f"sprites ({r['target']['test_half']} in the test half). The reference (a zero-shot calibration fitted "
              f"on the other, dev half of the Gen-1 sprites) kept: {r['target']['own_reference_rule_channel']}.", "",
              "| images | run | calibration | accuracy [95% CI] | mean Q | − uncalibrated [95% CI, paired] |",
              "|---|---|---|---|---|---|"]
    for key, v in r["table"].items():
        scope, cname, rname = key.split(" | ")
        d = v.get("minus_uncalibrated")
        dd = "" if d is None else f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        lines.append(f"| {scope} ({v['n']}) | {cname} | {rname} | {v['accuracy']:.3f} [{v['ci95'][0]:.3f}, "
                     f"{v['ci95'][1]:.3f}] | {v['mean_q']:.1f} | {dd} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="probe", help="probe (the shipped probe, not CLIP) or offline (default: %(default)s)")
    ap.add_argument("--out", default=None, help="output folder (default: bench/out/transfer/MODEL)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out or f"bench/out/transfer/{args.model}")
    res = run(args.model, out, seed=args.seed)
    print(report(res))
    return res


if __name__ == "__main__":
    main()
