"""Evaluation: classify a labelled dataset through the run pipeline and summarise it.

- :func:`evaluate`: one configuration, any executor, optionally into a result store
  (``--out``, ``--resume``); the summary is written beside the shards, in the run folder, as
  ``_summary.json`` (:func:`engine.run.store.summary_path`).
- :func:`evaluate_configs`: several configurations on one dataset, each image embedded
  once (``twentyq compare``).
- :func:`summarise`: an :class:`EvalReport` from Results; every summary carries what is
  needed to reproduce it (the job's settings, the data spec and its hash).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.common.files import atomic_write_json, read_text_capped
from engine.core.metrics import (  # noqa: F401 (exact_ci: re-exported)
    CI_METHOD, accuracy_ci, exact_ci, per_class, top_confusions,
)
from engine.core.results import STOP_REASONS, Result
from engine.run.calibration_file import choice_dict, exclude_dev, policy_label, settle_value, target_choice
from engine.run.classifier import assemble, config_from
from engine.run.config import RunConfig
from engine.run.datasets import Dataset, DataSpec, Item
from engine.run.pipeline import Executor, Job, LocalExecutor, OutputSpec, open_store, run
from engine.run.store import SUMMARY, fingerprint


@dataclass
class EvalReport:
    """What ``evaluate`` returns; ``to_dict`` is the ``_summary.json`` (and ``compare --out``) JSON."""

    n: int
    accuracy: float
    ci95: tuple[float, float]  # exact (Clopper–Pearson) 95% interval of the accuracy, ``ci_method``
    acc5: float | None  # the true class among the top 5 (None when top_k < 5)
    mean_per_class_recall: float
    mean_q: float
    median_q: float
    text_encodes: int
    text_hits: int
    model: str
    system: str
    data: str
    mode: str
    policy: str | None
    tau: float | None
    delta: float | None
    budget: int | None
    shortlist: int | None
    scorer: str
    eps: float
    per_class: dict[str, dict[str, float]]
    confusion: list[dict]
    skipped: list[dict]
    stops: dict[str, int]
    seconds_embed: float  # loading and embedding the images (shared by every mode of one run)
    seconds_classify: float  # text embeddings, scoring and question selection for this mode
    by: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = True
    settings: dict[str, Any] = field(default_factory=dict)  # the job's settings, the data spec and hash
    # the calibration used (path, sha256, model, system hash, whether this mode applied it, dev images
    # excluded from what was scored), or None
    calibration: dict[str, Any] | None = None
    target: dict[str, Any] | None = None  # --target-accuracy: the τ chosen on dev and its dev figures
    # adaptive: the images that stopped on confidence (n, accuracy, exact 95% CI) and the others (n,
    # accuracy, their stop reasons), reported apart
    confident: dict[str, Any] | None = None
    not_confident: dict[str, Any] | None = None
    ci_method: str = CI_METHOD  # how ci95 (and every accuracy interval here) was computed
    settle: float | None = None  # adaptive: the settled stop's threshold used (--settle, "auto" resolved), or None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def data_settings(data: DataSpec, name: str, items: Sequence[Item]) -> dict[str, Any]:
    """The data spec and a hash of the rows it gave (paths and labels)."""
    spec = {k: v for k, v in asdict(data).items() if v is not None or k not in ("image_column", "label_column")}
    return {**spec, "name": name, "rows": len(items),
            "sha256": fingerprint({}, [it.path for it in items], [it.label for it in items])}


def stop_split(ok_results: Sequence[Result], correct: np.ndarray) -> tuple[dict, dict]:
    """Accuracy among the images that stopped on confidence (with an exact 95% CI) and among the others."""
    conf = np.array([r.stop == "confident" for r in ok_results], dtype=bool)
    k, n = int(correct[conf].sum()), int(conf.sum())
    others = [r.stop for r in ok_results if r.stop != "confident"]
    return ({"n": n, "accuracy": k / n if n else float("nan"), "ci95": list(exact_ci(k, n)),
             "ci_method": CI_METHOD},
            {"n": len(others), "accuracy": float(correct[~conf].mean()) if len(others) else float("nan"),
             "stops": {s: others.count(s) for s in sorted(set(others))}})


def calibration_summary(job: Job, excluded: int) -> dict[str, Any] | None:
    """What a summary records of the job's calibration (None without one)."""
    cal = job.calibration
    if cal is None:
        return None
    applied = job.config.mode in ("adaptive", "full")
    return {**cal.provenance(), "applied": applied, "excluded_dev_images": int(excluded),
            **({} if applied else {"note": f"mode {job.config.mode} scores the class names, uncalibrated"})}


def summarise(results: Sequence[Result], items: Sequence[Item], job: Job, data: DataSpec, *,
              data_name: str, stats: dict[str, float], complete: bool = True, excluded: int = 0) -> EvalReport:
    """An EvalReport from Results aligned with their items; bad images are listed in ``skipped``.

    job, data : what ran on what (the model, system and RunConfig; the ``by`` column).
    stats : ``text_encodes``, ``text_hits``, ``seconds_embed``, ``seconds_classify`` (missing: unknown).
    excluded : the calibration's dev images left out of ``items`` (:func:`exclude_dev`).
    Its ``settings`` hold everything that reproduces it (the job's settings, the data spec).
    """
    from engine.encoders.registry import model_label

    config, by = job.config, data.by
    ok = [(r, it) for r, it in zip(results, items) if r.error is None]
    skipped = [{"image": r.image, "error": r.error} for r in results if r.error is not None]
    labels = [it.label for _, it in ok]
    preds = [r.label for r, _ in ok]
    correct = np.array([p == y for p, y in zip(preds, labels)], dtype=bool)
    top5 = np.array([y in [lab for lab, _ in r.top[:5]] for (r, _), y in zip(ok, labels)], dtype=bool)
    qs = np.array([r.q_spent for r, _ in ok], dtype=np.float64)
    breakdown = {}
    if by:
        groups: dict[str, list[bool]] = {}
        for (r, it), c in zip(ok, correct):
            groups.setdefault(it.extra.get(by, ""), []).append(bool(c))
        breakdown = {by: {k: {"n": len(v), "accuracy": float(np.mean(v)),
                              "ci95": list(accuracy_ci(np.array(v)))} for k, v in sorted(groups.items())}}
    classes = per_class(labels, preds)
    adaptive = config.mode == "adaptive"
    nan = float("nan")
    choice = target_choice(job.calibration, config, job.system) if adaptive else None
    confident, not_confident = stop_split([r for r, _ in ok], correct) if adaptive else (None, None)
    return EvalReport(
        n=len(ok), accuracy=float(correct.mean()) if ok else nan, ci95=accuracy_ci(correct),
        acc5=float(top5.mean()) if ok and config.top_k >= 5 else None,
        mean_per_class_recall=float(np.mean([c["accuracy"] for c in classes.values()])) if classes else nan,
        mean_q=float(qs.mean()) if ok else nan, median_q=float(np.median(qs)) if ok else nan,
        text_encodes=int(stats.get("text_encodes", 0)), text_hits=int(stats.get("text_hits", 0)),
        model=job.encoder.model, system=job.system.name, data=data_name, mode=config.mode, policy=policy_label(job.calibration, config) if adaptive else "fixed",
        tau=(choice.tau if choice is not None else config.tau) if adaptive else None, delta=config.delta if adaptive else None,
        budget=config.budget if adaptive else None, shortlist=config.shortlist if adaptive else None,
        scorer=config.scorer, eps=config.eps, per_class=classes, confusion=top_confusions(labels, preds),
        skipped=skipped, stops={s: sum(r.stop == s for r, _ in ok) for s in STOP_REASONS},
        seconds_embed=float(stats.get("seconds_embed", nan)), seconds_classify=float(stats.get("seconds_classify", nan)),
        by=breakdown, complete=complete,
        settings={**job.settings(), "data": data_settings(data, data_name, items),
                  "model_label": model_label(job.encoder.model)},
        calibration=calibration_summary(job, excluded), target=choice_dict(choice, config),
        confident=confident, not_confident=not_confident,
        settle=settle_value(job.calibration, config, job.system) if adaptive else None,
    )


#: the counters a resumed run adds to those of the summary it found
RESUMED_STATS = ("text_encodes", "text_hits", "seconds_embed", "seconds_classify")


def earlier_stats(summary: Path) -> dict[str, float]:
    """The :data:`RESUMED_STATS` of an earlier run's summary (those it has, finite), or {} without one."""
    try:
        d = json.loads(read_text_capped(summary, what="run summary"))
    except (OSError, ValueError):
        return {}
    return {k: d[k] for k in RESUMED_STATS if isinstance(d.get(k), (int, float)) and np.isfinite(d[k])}


def evaluate(job: Job, data: DataSpec, *, executor: Executor, output: OutputSpec | None = None,
             progress: Callable[[int], None] | None = None, announce: Callable[[str], None] | None = None,
             dataset: Dataset | None = None, sources: dict[str, Any] | None = None,
             planned: Callable[[int], None] | None = None) -> EvalReport:
    """Classify ``data`` as ``job`` says, on ``executor``, and summarise every row.

    output : a result table; its run folder's ``_summary.json`` is written at the end, and on an
        interrupt (``complete: false``) before the interrupt goes on. ``output.resume`` finishes its run.
    announce : told how much of a resumed run was already done.
    dataset : ``data`` already loaded (``data.load(classes)``), so a caller that checked it first
        does not read it twice.
    sources : where the settings came from (the system, templates, descriptors, calibration files as
        named), recorded in the summary's ``settings["sources"]`` for ``report``; not in the fingerprint.
    planned : told, before any image is classified, how many images this run classifies: those scored
        (the calibration's dev images left out) less those a resumed run reads back; ``progress`` counts
        up to it.
    Returns the EvalReport of every row, resumed ones included. A resumed run's summary adds this run's
    ``text_encodes``, ``text_hits`` and seconds to those of the summary it found, so a resume that had
    nothing left to do keeps the earlier counts.
    """
    ds = dataset if dataset is not None else data.load(job.system.classes)
    items, excluded = exclude_dev(ds.items, job.calibration)  # nothing is scored on the calibration's dev images
    if excluded and announce:
        announce(f"calibration {job.calibration.where()}: {excluded} of {len(ds)} image(s) are its dev images; "
                 "they are left out of what is scored")
    settings = {**job.settings(), "data": data_settings(data, ds.name, items)}
    store = open_store(output, settings, items, [data.source], announce) if output is not None else None
    done_before = store.n_shards - len(store.pending()) if store else 0
    earlier = earlier_stats(store.root / SUMMARY) if done_before else {}  # done_before > 0 only with a store
    if planned is not None:
        planned(sum(len(store.rows_of(k)) for k in store.pending()) if store is not None else len(items))
    records: list[Result] = []

    def report(complete: bool) -> EvalReport:
        stats = dict(executor.stats)
        for k, v in earlier.items():  # the earlier runs of a resumed folder, plus this one
            stats[k] = stats.get(k, 0) + v
        rep = summarise(records, items, job, data, data_name=ds.name, stats=stats, complete=complete,
                        excluded=excluded)
        rep.settings["shards_resumed"] = done_before
        if sources:
            rep.settings["sources"] = dict(sources)
        return rep

    with store if store is not None else nullcontext():  # the folder stays locked until the summary is written
        try:
            records.extend(run(items, job, executor=executor, store=store, progress=progress))
        except KeyboardInterrupt:
            if store is not None:  # what the finished shards hold, marked incomplete
                done = sorted(store.done())
                records = store.read_all(done)
                items = [items[i] for k in done for i in store.rows_of(k)]
                atomic_write_json(store.root / SUMMARY, report(complete=False).to_dict())
            raise
        rep = report(complete=True)
        if store is not None:
            atomic_write_json(store.root / SUMMARY, rep.to_dict())
    return rep


def evaluate_configs(classifier: Any, data: DataSpec, configs: Sequence[RunConfig], *, chunk_size: int = 64,
                     progress: Callable[[int], None] | None = None, dataset: Dataset | None = None
                     ) -> list[EvalReport]:
    """Evaluate several configurations on one dataset, embedding each image once (``compare``).

    Each configuration gets a text cache of its own, so its ``text_encodes`` count the prompts
    it needed, not what another mode happened to embed first.
    """
    from engine.encoders.text_cache import TextCache

    cal = getattr(classifier, "calibration", None)
    ds = dataset if dataset is not None else data.load(classifier.system.classes)
    items, excluded = exclude_dev(ds.items, cal)  # nothing is scored on the calibration's dev images
    caches = [TextCache(classifier.encoder, cache_dir=classifier.spec.cache_dir) for _ in configs]
    records: list[list[Result]] = [[] for _ in configs]
    secs = [0.0] * len(configs)
    t_embed = 0.0
    for start in range(0, len(items), chunk_size):
        chunk = items[start:start + chunk_size]
        t0 = time.perf_counter()
        emb, good, bad = classifier.images.embed([it.source for it in chunk], [it.path for it in chunk])
        t_embed += time.perf_counter() - t0
        for k, config in enumerate(configs):
            t0 = time.perf_counter()
            results = classifier.classify_embedded(emb, config, caches[k]) if len(good) else []
            secs[k] += time.perf_counter() - t0
            named = assemble([it.path for it in chunk], good, results, bad)
            for r, it in zip(named, chunk):
                r.true_label = it.label
            records[k] += named
        if progress:
            progress(len(chunk))
    reports = []
    for k, config in enumerate(configs):
        stats = {"text_encodes": caches[k].text_encodes, "text_hits": caches[k].hits, "seconds_embed": t_embed,
                 "seconds_classify": secs[k]}
        reports.append(summarise(records[k], items, Job(classifier.spec, classifier.system, config, cal), data,
                                 data_name=ds.name, stats=stats, excluded=excluded))
    return reports


def evaluate_classifier(classifier: Any, data: Any, config: RunConfig | None = None, *,
                        output: OutputSpec | str | None = None, progress: Callable[[int], None] | None = None,
                        **settings) -> EvalReport:
    """Evaluate a loaded :class:`Classifier` on labelled images, in this process.

    data : a CSV or ImageFolder path, or a :class:`DataSpec`. ``settings`` are RunConfig fields
        and DataSpec fields (``split``, ``limit``, ``seed``, ``allow_missing``, ``by``; ``seed``
        sets both), when not given as ``config`` / a DataSpec.
    output : a result table (``NAME.jsonl``, ``NAME.parquet`` or ``NAME.csv``), or an :class:`OutputSpec`.
    """
    data_fields = set(DataSpec.__dataclass_fields__) - {"source"}
    data_kw = {k: settings.pop(k) for k in list(settings) if k in data_fields and k != "seed"}
    if "seed" in settings:
        data_kw["seed"] = settings["seed"]
    spec = data if isinstance(data, DataSpec) else DataSpec(source=str(data), **data_kw)
    job = Job(classifier.spec, classifier.system, config_from(config, settings),
              getattr(classifier, "calibration", None))
    if isinstance(output, str):
        output = OutputSpec(output)
    return evaluate(job, spec, executor=LocalExecutor(classifier), output=output, progress=progress)
