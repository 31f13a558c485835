"""The attribute probe (trained here; not CLIP): train it, evaluate it on Gen 1, or both.

    python -m bench.probe train --out bench/out/probe     # minutes on 2 CPU cores (features cached after)
    python -m bench.probe eval  --probe bench/out/probe   # Gen-1 benchmarks -> bench/out/probe/eval/
    python -m bench.probe all                             # train if absent, then eval
    python -m bench.probe verify-shipped                  # retrain; same tensors as the shipped probe?

The probe — "attribute probe trained here on Gen 2–3 sprites; not CLIP" — maps
frozen EfficientNet-Lite0 image features and frozen MiniLM text features into
a shared space with two small heads, trained contrastively on sprites of
species 152–386 against attribute captions that never name a species
(``bench/probe/data.py``, ``bench/probe/train.py``,
``engine/encoders/probe.py``). It exists so that real-pixel benchmarks can
show whether attribute questions help a model that does *not* know the class
names. It is for benchmarks only; see ``docs/probe.md``.

Outputs: ``DIR/probe.safetensors`` (< 2 MB), ``DIR/manifest.json`` (data hash,
seed, config, metrics, λ), ``DIR/training_manifest.json`` (every training image
path, species id and caption); the evaluation writes ``results.json``,
``report.md`` and plots under ``--eval-out`` (default ``DIR/eval``). Backbone
features are cached by file hash under ``--cache-dir`` (default
``bench/out/cache``). Nothing here is committed (``bench/out/`` is ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from bench.probe.data import build_training_data, image_features, require_data
from bench.probe.evaluate import TABLE_HEAD, findings, run, table_rows
from bench.probe.train import train
from engine.common.files import atomic_write_json
from engine.encoders.probe import MANIFEST_FILE, PROBE_LABEL, SHIPPED_DIR, WEIGHTS_FILE, ProbeBackbone, save_probe

from ..lib import harness as C
from .train import TrainConfig

DEFAULT_DIR = C.DEFAULT_OUT / "probe"
# Curve grids: fewer points than bench.policies' defaults, because each point on web150 × 151 classes
# (6,767 images) costs seconds, and `bench.probe all` must stay under 15 minutes on 2 CPU cores.
# τ = 1 is left out: it asks everything, the same point as the largest budget; with this probe even τ = 0.5
# asks nearly every question on 151 classes, so the budget sweep carries the curve. `random` keeps
# bench.policies' 5 seeds (its plot legend says so).
SWEEP = {"taus": (0.5, 0.9), "n_budgets": 9}
QUICK_SWEEP = {"taus": (0.5, 0.9), "n_budgets": 7}


def _log(msg: str) -> None:
    print(msg, flush=True)


def is_trained(folder: str | Path) -> bool:
    return (Path(folder) / WEIGHTS_FILE).is_file() and (Path(folder) / MANIFEST_FILE).is_file()


# --------------------------------------------------------------------------- train
def train_probe(out: str | Path, *, cfg: TrainConfig = TrainConfig(), cache_dir: str | Path | None = C.DEFAULT_CACHE,
                data: Any = None, backbone: Any = None, log=_log, command: str = "") -> dict[str, Any]:
    """Build the training set, extract (cached) features, train, and write the probe folder.

    data : a :class:`bench.probe.data.TrainingData` (default: the full set with
    ``cfg.seed``); backbone : a loaded ProbeBackbone (default: load one).
    Returns the manifest written to ``out/manifest.json``.
    """
    t0 = time.perf_counter()
    data = data if data is not None else build_training_data(seed=cfg.seed)
    log(f"[probe train] {PROBE_LABEL}: {data.meta['images']} images of {data.meta['species']} species "
        f"(152–386; {data.meta['val_species']} held out), {data.meta['captions']} captions; data sha256 "
        f"{data.sha256()[:16]}…")
    backbone = backbone or ProbeBackbone(device="cpu")
    img = image_features(backbone, [im["abs_path"] for im in data.images], cache_dir, log=log)
    groups = [g.prompts() for g in data.system.groups]
    with torch.inference_mode():
        backbone.text_features(data.captions + [t for ps in groups for t in ps])  # one batched pass
        txt = backbone.text_features(data.captions).cpu()
        prompts = [backbone.text_features(ps).cpu() for ps in groups]
    t_feat = time.perf_counter() - t0
    heads, metrics = train(data, img, txt, prompts, cfg, log=log)
    manifest = {
        "label": PROBE_LABEL, "what": "two heads over frozen EfficientNet-Lite0 penultimate features and frozen "
                                      "all-MiniLM-L6-v2 features; CLIP-style multi-positive contrastive loss",
        "seed": cfg.seed, "config": cfg.to_dict(), "data_sha256": data.sha256(), "data": data.meta,
        "val_species_ids": [int(data.species_ids[c]) for c in data.val_classes],
        "backbone": {"image": backbone.image_id, "text": backbone.text_id},
        "eval_logit_scale": metrics["eval_logit_scale"], "metrics": metrics,
        "seconds": {"features": t_feat, "train": metrics["seconds_train"], "total": time.perf_counter() - t0},
        "torch": torch.__version__, "command": command,
    }
    out = Path(out)
    save_probe(out, heads, manifest)
    atomic_write_json(out / "training_manifest.json", dict(data.manifest(), sha256=data.sha256()))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    v = metrics["val"]
    log(f"[probe train] wrote {out} ({manifest['weights_bytes'] / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s: "
        f"best epoch {metrics['best_epoch']}/{metrics['epochs_run']}, val loss {v['loss']:.4f}, val attribute "
        f"accuracy {v['attribute_accuracy']:.3f} (chance {metrics['chance_attribute_accuracy']:.3f}), "
        f"λ {metrics['eval_logit_scale']:.3g}")
    return manifest


# --------------------------------------------------------------------------- eval
def eval_probe(folder: str | Path, out: str | Path | None = None, *, cache_dir: str | Path | None = C.DEFAULT_CACHE,
               seed: int = 0, limit: int | None = None, quick: bool = False, log=_log,
               command: str = "") -> dict[str, Any]:
    """Evaluate a trained probe on Gen 1 (:func:`bench.probe.evaluate.run`); ``quick`` uses fewer sweep points."""
    from engine.encoders import load_encoder

    enc = load_encoder(f"probe:{folder}", device="cpu")
    sweep = QUICK_SWEEP if quick else SWEEP
    out = Path(out) if out is not None else Path(folder) / "eval"
    res = run(enc, enc.backbone, out, cache_dir=cache_dir, seed=seed, limit=limit, log=log, command=command, **sweep)
    log(f"[probe eval] wrote {out / 'report.md'} in {res['seconds']['total']:.0f} s")
    return res


def run_all(folder: str | Path = DEFAULT_DIR, out: str | Path | None = None, *, cfg: TrainConfig = TrainConfig(),
            cache_dir: str | Path | None = C.DEFAULT_CACHE, limit: int | None = None, quick: bool = False,
            log=_log, command: str = "") -> dict[str, Any]:
    """Train into ``folder`` if it holds no probe, then evaluate. Returns the evaluation results
    with ``train`` (the manifest) and ``trained_now`` added."""
    t0 = time.perf_counter()
    trained_now = not is_trained(folder)
    if trained_now:
        train_probe(folder, cfg=cfg, cache_dir=cache_dir, log=log, command=command)
    else:
        log(f"[probe] using the probe in {folder} (delete it to retrain)")
    res = eval_probe(folder, out, cache_dir=cache_dir, seed=cfg.seed, limit=limit, quick=quick, log=log,
                     command=command)
    res["train"] = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    res["train"]["metrics"].pop("history", None)
    res["trained_now"] = trained_now
    res["seconds_all"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- the shipped probe
def shipped_expectations(*, guard: bool = False) -> dict[str, Any]:
    """What ``python -m bench.probe train`` would train with today: the default config and the
    training set's data hash (no training, no images read; ``guard`` also runs the leak guard)."""
    cfg = TrainConfig()
    return {"config": cfg.to_dict(), "data_sha256": build_training_data(seed=cfg.seed, guard=guard).sha256()}


def verify_shipped(*, cache_dir: str | Path | None = C.DEFAULT_CACHE, log=_log, work: str | Path | None = None
                   ) -> dict[str, Any]:
    """Retrain the probe with the shipped configuration into a temporary folder (or ``work``) and
    compare its ``weights_sha256``, ``data_sha256`` and config with the shipped manifest.

    Returns {"ok", "shipped", "retrained", "mismatches"}; ``ok`` is True when all three agree.
    """
    shipped = json.loads((SHIPPED_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="twentyq-probe-") as tmp:
        out = Path(work) if work is not None else Path(tmp) / "probe"
        cfg = TrainConfig(**shipped["config"])  # the shipped one; a differing default is reported below
        new = train_probe(out, cfg=cfg, cache_dir=cache_dir, log=log, command="python -m bench.probe verify-shipped")
    keys = ("weights_sha256", "data_sha256", "config")
    bad = [k for k in keys if new.get(k) != shipped.get(k)]
    if TrainConfig(**shipped["config"]) != TrainConfig():
        bad.append("config (shipped vs today's default)")
    res = {"ok": not bad, "mismatches": bad, "shipped": {k: shipped.get(k) for k in keys},
           "retrained": {k: new.get(k) for k in keys}}
    log(f"[verify-shipped] {'OK' if not bad else 'MISMATCH'}: retrained weights_sha256 "
        f"{new['weights_sha256'][:16]}… vs shipped {shipped['weights_sha256'][:16]}…"
        + (f"; differs in {', '.join(bad)}" if bad else "; data hash and config agree"))
    return res


# --------------------------------------------------------------------------- bench.all section
def summary_section(res: dict[str, Any], rel: str) -> list[str]:
    """Markdown lines for bench.all's "attribute probe (trained here)" section; ``rel`` is the eval
    folder relative to the summary."""
    t = res["train"]
    v = t["metrics"]["val"]
    L = ["\n## attribute probe (trained here)\n",
         f"Model: **{t['label']}**. Two small heads over frozen EfficientNet-Lite0 and MiniLM features, trained "
         f"contrastively on {t['data']['images']} sprites of {t['data']['species']} species (152–386) against "
         "attribute captions that never name a species; evaluated on Gen 1 only (species it never saw). "
         f"Held-out Gen 2–3 species: attribute accuracy {v['attribute_accuracy']:.3f} (chance "
         f"{t['metrics']['chance_attribute_accuracy']:.3f}); λ = {t['eval_logit_scale']:.3g}; data sha256 "
         f"{t['data_sha256'][:16]}…; seed {t['seed']}"
         + (f"; {res['limit']} images per dataset" if res.get("limit") else "") + ".\n",
         C.md_table(TABLE_HEAD, table_rows(res)), ""]
    L += [f"- {x}" for x in findings(res)]
    L.append(f"\nReport: [{rel}/report.md]({rel}/report.md) · curves: [{rel}/{res['curves']['plot']}]"
             f"({rel}/{res['curves']['plot']})")
    return L


# --------------------------------------------------------------------------- CLI
def _config_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("training (defaults are the shipped configuration)")
    for f in fields(TrainConfig):
        g.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_train = sub.add_parser("train", help="train the probe into --out")
    p_train.add_argument("--out", default=str(DEFAULT_DIR), help="probe folder (default bench/out/probe)")
    p_eval = sub.add_parser("eval", help="evaluate a trained probe on Gen 1")
    p_all = sub.add_parser("all", help="train if absent, then evaluate")
    p_ver = sub.add_parser("verify-shipped", help="retrain into a temporary folder and check the tensors equal the "
                                                  "probe shipped in engine/encoders/data/probe (exit 1 if not)")
    for p in (p_eval, p_all):
        p.add_argument("--probe", default=str(DEFAULT_DIR), help="probe folder (default bench/out/probe)")
        p.add_argument("--eval-out", default=None, help="evaluation output folder (default PROBE/eval)")
        p.add_argument("--limit", type=int, default=None, help="a seeded subset of this many images per dataset")
        p.add_argument("--quick", action="store_true", help="fewer τ and budget points in the curves")
    for p in (p_train, p_eval, p_all, p_ver):
        p.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="backbone feature cache")
    for p in (p_train, p_all):
        _config_args(p)
    p_eval.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cmd = C.command_line("bench.probe", argv)

    try:
        require_data()
        if args.cmd == "verify-shipped":
            return 0 if verify_shipped(cache_dir=args.cache_dir)["ok"] else 1
        if args.cmd == "train":
            train_probe(args.out, cfg=_config(args), cache_dir=args.cache_dir, command=cmd)
        elif args.cmd == "eval":
            eval_probe(args.probe, args.eval_out, cache_dir=args.cache_dir, seed=args.seed, limit=args.limit,
                       quick=args.quick, command=cmd)
        else:
            res = run_all(args.probe, args.eval_out, cfg=_config(args), cache_dir=args.cache_dir, limit=args.limit,
                          quick=args.quick, command=cmd)
            _log(f"[probe all] done in {res['seconds_all']:.0f} s")
    except (FileNotFoundError, ValueError) as e:
        print(f"bench.probe: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 — EncoderLoadError and friends: one line, not a traceback
        from engine.encoders import EncoderLoadError

        if isinstance(e, EncoderLoadError):
            print(f"bench.probe: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
