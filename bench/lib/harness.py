"""The benchmark harness: flags, one-time encoding, sweep points, outputs and plots.

The accuracy benchmarks (reproduce, policies, calibrate, speed, channels, ...) take
``--model --data --system --out DIR --seed``. The images
are encoded once (through :class:`engine.encoders.image_cache.ImageCache`, on disk under
``--cache-dir``), the (B, Q) similarities to every prompt of the system and the
(B, N) similarities to the class names are computed once (text embeddings
through :class:`engine.encoders.text_cache.TextCache`), and every sweep point is then
``classify_batch(ArraySource(...))`` on those arrays, with no model in the loop.

``text_encodes`` of a point is what a lazy run would have embedded: Σ K_g over
the groups asked by at least one image.

``--model simulator`` uses :class:`engine.SimulatedSource` instead of a model
(named "simulator (no model)" in every output).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import ArraySource, SimulatedSource, StopRule, classify_batch
from engine.common.files import json_safe, shared_data_root
from engine.core.adaptive import NO_STOP
from engine.core.metrics import normalised_auc_rows
from engine.core.scoring import Channel, build_channel
from engine.core.simulate import sample_classes
from engine.run.datasets import check_labels, load_dataset
from systems import AttributeSystem, baseline_system, build as _build, load_system

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = shared_data_root()
DATASETS = {
    "jina15": SHARED_DATA / "pokemon" / "jina15.csv",
    "flowers17": SHARED_DATA / "flowers17" / "labels.csv",
}
DEFAULT_OUT = REPO / "bench" / "out"
DEFAULT_CACHE = DEFAULT_OUT / "cache"
SIMULATOR = "simulator"
from engine.run.config import DEFAULT_EPS  # noqa: E402  (one default for the CLI and the benchmarks)

# simulator defaults (the same as bench.simulate)
SIM = {"margin": 0.05, "name_margin": 0.02, "noise": 0.02, "wrong_rate": 0.0, "logit_scale": 100.0, "images": 2000}

# the shuffled-rules control, re-exported for the benches
derangement, shuffled_system = _build.derangement, _build.shuffled_system


# --------------------------------------------------------------------------- flags
def add_common_args(ap: argparse.ArgumentParser, *, out: str) -> argparse.ArgumentParser:
    """The flags every benchmark shares."""
    ap.add_argument("--model", default="offline",
                    help="model string for engine.encoders.load_encoder (default 'offline', the weak ConSE stand-in, "
                         f"NOT CLIP), or '{SIMULATOR}' for simulated similarities (no model)")
    ap.add_argument("--data", default="jina15",
                    help=f"a dataset CSV or ImageFolder, or a short name {sorted(DATASETS)} (ignored by the simulator)")
    ap.add_argument("--system", default="pokemon15", help="a system JSON or shipped name")
    ap.add_argument("--out", default=str(DEFAULT_OUT / out), help="output folder (results.json, report.md, PNGs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="a seeded random subset of at most this many images")
    ap.add_argument("--split", default=None, help="keep only rows of this split")
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="image and text embedding cache")
    ap.add_argument("--logit-scale", type=float, default=None, help="λ (default: the model's own; simulator 100)")
    ap.add_argument("--eps", type=float, default=DEFAULT_EPS, help="rule noise ε of the Bayes scorer")
    ap.add_argument("--images", type=int, default=SIM["images"], help="simulator: number of images")
    ap.add_argument("--margin", type=float, default=SIM["margin"], help="simulator: true-option margin")
    ap.add_argument("--name-margin", type=float, default=SIM["name_margin"], help="simulator: true-name margin")
    ap.add_argument("--noise", type=float, default=SIM["noise"], help="simulator: similarity noise s.d.")
    ap.add_argument("--wrong-rate", type=float, default=SIM["wrong_rate"], help="simulator: wrong-answer rate")
    return ap


def model_label(model: str) -> str:
    """The honest display name of a model string (:func:`engine.encoders.registry.model_label`)."""
    if model == SIMULATOR:
        return "simulator (no model)"
    from engine.encoders.registry import model_label as label

    return label(model)


def short_model_label(model: str) -> str:
    if model == SIMULATOR:
        return "simulator (no model)"
    if model.startswith("offline"):
        return "offline stand-in (not CLIP)"
    return model


def resolve_data(data: str) -> Path:
    """A short name from DATASETS, or a path; a folder holding labels.csv means that CSV."""
    path = DATASETS.get(data, Path(data))
    return path / "labels.csv" if path.is_dir() and (path / "labels.csv").is_file() else path


# --------------------------------------------------------------------------- prepared arrays
@dataclass
class Prepared:
    """Everything a sweep needs, computed once.

    system : the AttributeSystem (C classes, G groups, Q prompts).
    truth : (B,) int true class index of each image.
    sims : (B, Q) similarities to every prompt of the system.
    base_sims : (B, C) similarities to the class-name prompts (baseline system).
    extra : B dicts of the data's other columns (source, split, ...).
    logit_scale : λ used unless a benchmark overrides it.
    """

    model: str
    model_label: str
    data: str
    system: AttributeSystem
    truth: np.ndarray
    sims: np.ndarray
    base_sims: np.ndarray
    extra: list[dict[str, str]]
    logit_scale: float
    eps: float = DEFAULT_EPS
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.truth)

    def subset(self, idx: np.ndarray) -> "Prepared":
        idx = np.asarray(idx, dtype=np.int64)
        return Prepared(self.model, self.model_label, self.data, self.system, self.truth[idx], self.sims[idx],
                        self.base_sims[idx], [self.extra[i] for i in idx], self.logit_scale, self.eps,
                        dict(self.meta, subset=len(idx)))


def prepare_simulated(system: AttributeSystem, *, images: int, seed: int, margin: float, name_margin: float,
                      noise: float, wrong_rate, logit_scale: float, eps: float = DEFAULT_EPS) -> Prepared:
    """Simulated similarities (no model) for ``images`` balanced images.

    wrong_rate : one rate, or (G,) per group (e.g. :func:`engine.core.simulate.heterogeneous_wrong_rates`);
    the class-name baseline gets their mean."""
    t0 = time.perf_counter()
    truth = sample_classes(images, system.n_classes, seed)
    src = SimulatedSource(system, truth, margin=margin, noise=noise, wrong_rate=wrong_rate, seed=seed)
    every = np.arange(images)
    sims = np.concatenate([src.similarities(every, g) for g in range(system.n_groups)], axis=1)
    base = baseline_system(system)
    bsrc = SimulatedSource(base, truth, margin=name_margin, noise=noise, wrong_rate=float(np.mean(wrong_rate)),
                           seed=seed)
    base_sims = bsrc.similarities(every, 0)
    meta = {"margin": margin, "name_margin": name_margin, "noise": noise,
            "wrong_rate": np.asarray(wrong_rate, dtype=float).tolist(),
            "seconds_prepare": time.perf_counter() - t0, "images_encoded": 0}
    return Prepared(SIMULATOR, model_label(SIMULATOR), "simulated", system, truth, sims,
                    base_sims, [{} for _ in range(images)], float(logit_scale), eps, meta)


def prepare_encoded(encoder: Any, system: AttributeSystem, data: str | Path, *, limit: int | None, seed: int,
                    split: str | None, cache_dir: str | Path | None, logit_scale: float | None = None,
                    eps: float = DEFAULT_EPS, model: str | None = None) -> Prepared:
    """Encode a dataset's images once (image cache) and every prompt once (text cache)."""
    from engine.encoders.image_cache import ImageCache
    from engine.encoders.text_cache import TextCache
    from engine.run.encoder_source import EncoderSource

    path = resolve_data(str(data))
    ds = load_dataset(path, split=split, limit=limit, seed=seed)
    ds, _ = check_labels(ds, system.classes)
    t0 = time.perf_counter()
    icache = ImageCache(encoder, cache_dir)
    emb = icache.encode([it.path for it in ds.items])
    t_img = time.perf_counter() - t0
    tcache = TextCache(encoder, cache_dir)
    t0 = time.perf_counter()
    sims = EncoderSource(encoder, tcache, system, emb).all_similarities()
    base_sims = EncoderSource(encoder, tcache, baseline_system(system), emb).all_similarities()
    t_txt = time.perf_counter() - t0
    truth = np.array([system.class_index(it.label) for it in ds.items], dtype=np.int64)
    name = model or encoder.name
    name_data = str(data) if str(data) in DATASETS else (path.parent.name if path.name == "labels.csv" else ds.name)
    meta = {"model_id": getattr(encoder, "model_id", name), "images_encoded": icache.encoded,
            "images_from_cache": icache.hits, "seconds_images": t_img, "seconds_texts": t_txt,
            "text_encodes_prepare": tcache.text_encodes, "data_path": str(path), "limit": limit, "split": split}
    lam = float(encoder.logit_scale if logit_scale is None else logit_scale)
    return Prepared(name, model_label(name), name_data, system, truth, sims, base_sims,
                    [dict(it.extra) for it in ds.items], lam, eps, meta)


def prepare_from_args(args: argparse.Namespace, encoder: Any = None) -> Prepared:
    """A Prepared from the common flags (loads the encoder unless one is given)."""
    system = load_system(args.system)
    if args.model == SIMULATOR:
        return prepare_simulated(system, images=args.images, seed=args.seed, margin=args.margin,
                                 name_margin=args.name_margin, noise=args.noise, wrong_rate=args.wrong_rate,
                                 logit_scale=args.logit_scale or SIM["logit_scale"], eps=args.eps)
    if encoder is None:
        encoder = load_model(args.model)
    return prepare_encoded(encoder, system, args.data, limit=args.limit, seed=args.seed, split=args.split,
                           cache_dir=args.cache_dir, logit_scale=args.logit_scale, eps=args.eps, model=args.model)


def load_model(model: str) -> Any:
    from engine.encoders import load_encoder

    return load_encoder(model, device="cpu")


# --------------------------------------------------------------------------- sweep points
@dataclass
class Point:
    """One classify_batch run over a Prepared.

    correct : (B,) bool; q : (B,) prompts spent; conf : (B,) confidence of the
    prediction; pred : (B,) predicted class index; stop : (B,) stop reasons;
    text_encodes : Σ K_g over the groups asked by any image.
    """

    correct: np.ndarray
    q: np.ndarray
    conf: np.ndarray
    pred: np.ndarray
    stop: list[str]
    text_encodes: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    @property
    def mean_q(self) -> float:
        return float(self.q.mean()) if len(self.q) else float("nan")


def run_point(prep: Prepared, policy: Any = "fixed", stop: StopRule = NO_STOP, *, scorer: str = "bayes",
              system: AttributeSystem | None = None, baseline: bool = False, logit_scale: float | None = None,
              eps: float | None = None, channel: Channel | None = None, answer_model: Any = None) -> Point:
    """Run the adaptive loop once over the prepared arrays.

    ``baseline=True`` scores the class names (one group, Q = N). ``system``
    overrides the rules (same groups and options, e.g. the shuffled control). ``answer_model``: a few-shot
    posterior (:mod:`engine.core.answer_models`) the loop reports and stops on.
    """
    lam = prep.logit_scale if logit_scale is None else logit_scale
    eps = prep.eps if eps is None else eps
    if baseline:
        system, sims = baseline_system(prep.system), prep.base_sims
    else:
        system, sims = (system or prep.system), prep.sims
    t0 = time.perf_counter()
    res = classify_batch(ArraySource(sims, system), system, policy, stop=stop, logit_scale=lam, eps=eps,
                         scorer=scorer, top_k=1, channel=channel, answer_model=answer_model)
    secs = time.perf_counter() - t0
    pred = np.array([system.class_index(r.label) for r in res], dtype=np.int64)
    asked = {s.group for r in res for s in r.steps}
    k = {g.name: g.n_options for g in system.groups}
    return Point(correct=pred == prep.truth, q=np.array([r.q_spent for r in res], dtype=np.float64),
                 conf=np.array([r.confidence for r in res]), pred=pred, stop=[r.stop for r in res],
                 text_encodes=int(sum(k[g] for g in asked)), seconds=secs)


def channel_for(prep: Prepared, eps: float | None = None) -> Channel:
    s = prep.system
    return build_channel(s.rule_matrix, s.option_counts, prep.eps if eps is None else eps)


# --------------------------------------------------------------------------- curves
def normalised_auc(qs: np.ndarray, accs: np.ndarray, q_full: float, acc_at_zero: float) -> float:
    """Area under accuracy-vs-mean-Q over [0, q_full], divided by q_full.

    qs, accs : (m,) the curve's points (any order). The curve starts at
    (0, acc_at_zero), is linear between points sorted by Q, and is held flat
    after its last point up to q_full. Points beyond q_full are clipped.
    A classifier that is always right at every Q scores 1 (:func:`engine.core.metrics.normalised_auc_rows`
    with the point (0, acc_at_zero) put first).
    """
    if q_full <= 0:
        return float("nan")
    acc = np.r_[acc_at_zero, np.asarray(accs, dtype=np.float64)][None]
    q = np.r_[0.0, np.asarray(qs, dtype=np.float64)][None]
    return float(normalised_auc_rows(acc, q, q_full)[0])  # the one AUC: the auto policy's and bench.channels'


def q_within(qs: np.ndarray, accs: np.ndarray, target: float) -> float | None:
    """Smallest mean Q among points with accuracy >= target; None if none."""
    qs, accs = np.asarray(qs, dtype=np.float64), np.asarray(accs, dtype=np.float64)
    ok = accs >= target - 1e-12
    return float(qs[ok].min()) if ok.any() else None


# --------------------------------------------------------------------------- outputs
def command_line(module: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "python -m " + module + (" " + shlex.join(args) if args else "")


def write_outputs(out: Path, results: dict[str, Any], report: str) -> None:
    """results.json and report.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=1, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (out / "report.md").write_text(report, encoding="utf-8")


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return "—" if not math.isfinite(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def meta_block(prep: Prepared, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    s = prep.system
    return {"model": prep.model, "model_label": prep.model_label, "data": prep.data, "system": s.name,
            "n_images": prep.n, "n_classes": s.n_classes, "n_groups": s.n_groups, "q_full": s.q_total,
            "logit_scale": prep.logit_scale, "eps": prep.eps, **prep.meta, **(extra or {})}


def run_lines(results: dict[str, Any]) -> list[str]:
    """The command and machine lines of a benchmark report from its results (``command``, ``machine``, ``seconds``,
    ``load`` [start, end], and ``cpu_seconds`` when the benchmark measured it)."""
    cpu = f", CPU {results['cpu_seconds']:.0f} s" if "cpu_seconds" in results else ""
    return [f"- command: `{results['command']}`",
            f"- machine: {results['machine']}; wall time {results['seconds']:.0f} s{cpu}; load average at start / end "
            f"{results['load'][0]} / {results['load'][1]}"]


def signed_ci(ci95) -> str:
    """A difference's 95% interval as "[−0.012, +0.034]"."""
    return f"[{ci95[0]:+.3f}, {ci95[1]:+.3f}]"


def report_header(title: str, prep: Prepared, command: str) -> str:
    s = prep.system
    return (f"# {title}\n\n"
            f"- model: **{prep.model_label}**\n- data: {prep.data} ({prep.n} images)\n"
            f"- system: {s.name} (N={s.n_classes}, G={s.n_groups}, Q={s.q_total})\n"
            f"- λ = {prep.logit_scale:g}, ε = {prep.eps:g}\n- command: `{command}`\n")


# --------------------------------------------------------------------------- plots
def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_title(what: str, prep: Prepared) -> str:
    return f"{what}\n{short_model_label(prep.model)} · {prep.data} · {prep.system.name}"


def save_fig(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path.name


