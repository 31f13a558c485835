"""The Python API: ``Classifier`` ties an encoder, a system and the adaptive loop together.

>>> clf = Classifier(model="offline", system="pokemon15")          # doctest: +SKIP
>>> results = clf.classify(["a.png"], policy="eig", tau=0.9, budget=30)  # doctest: +SKIP
>>> report = clf.evaluate("labels.csv", mode="adaptive", policy="eig", tau=0.9)  # doctest: +SKIP

Stages (one module each): images are loaded (``engine.encoders.images``) and
embedded once per batch; the lazy text cache (``engine.encoders.text_cache``) embeds a
group's prompts the first time any image asks it; ``engine.run.encoder_source``
turns both into per-group similarities; ``engine.core.adaptive`` asks, scores and
stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from systems import AttributeSystem, baseline_system, load_system

from engine.core.adaptive import NO_STOP, StopRule, classify_batch
from engine.run.datasets import Dataset, check_labels, load_dataset
from engine.core.metrics import bootstrap_ci, per_class, top_confusions
from engine.core.results import STOP_REASONS, Result
from engine.run.config import DEFAULT_EPS, MODES, RunConfig  # noqa: F401  (re-exported)

@dataclass
class EvalReport:
    """What ``evaluate`` returns; ``to_dict`` is the ``--out`` JSON."""

    n: int
    accuracy: float
    ci95: tuple[float, float]
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
    budget: int | None
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


class Classifier:
    """An encoder and a system, ready to classify images.

    Parameters
    ----------
    model : model string for :func:`engine.encoders.load_encoder` (default ``"offline"``, the
        packaged weak stand-in, not CLIP), or pass ``encoder=`` directly.
    system : an AttributeSystem, a JSON path or a shipped name.
    device, dtype, batch_size, trust_remote_code : passed to the encoder loader.
    cache_dir : optional folder for the on-disk text-embedding cache.
    """

    def __init__(self, model: str = "offline", system: Any = "pokemon15", *, device: str = "auto",
                 dtype: str | None = None, batch_size: int | None = None, cache_dir: str | None = None,
                 trust_remote_code: bool = False, encoder: Any = None):
        from engine.encoders import load_encoder
        from engine.encoders.text_cache import TextCache

        self.system: AttributeSystem = load_system(system)
        self.encoder = encoder if encoder is not None else load_encoder(
            model, device=device, dtype=dtype, batch_size=batch_size, trust_remote_code=trust_remote_code)
        self.text_cache = TextCache(self.encoder, cache_dir=cache_dir)

    # ------------------------------------------------------------------ embedding
    def embed_images(self, images: Sequence[Any]) -> tuple[Any, np.ndarray, dict[int, str]]:
        """Load and embed images, skipping bad ones.

        An image that fails to load, or whose embedding comes back NaN/inf or
        zero, is a bad one.

        Returns (embeddings (n_good, D) on the encoder's device, indices (n_good,) of
        the good images, {index: error message} of the bad ones).
        """
        from engine.encoders.base import NONFINITE_IMAGE, nonfinite_rows
        from engine.encoders.images import ImageLoadError, load_image

        loaded, good, bad = [], [], {}
        for i, im in enumerate(images):
            try:
                loaded.append(load_image(im))
                good.append(i)
            except ImageLoadError as e:
                bad[i] = str(e)
        emb = self.encoder.encode_images(loaded)
        broken = nonfinite_rows(emb)
        if broken:  # caught at the boundary: the loop never sees a non-finite image embedding
            for j in broken:
                bad[good[j]] = f"{_image_name(images[good[j]])}: {NONFINITE_IMAGE}"
            keep = sorted(set(range(len(good))) - set(broken))
            emb = emb[keep]
            good = [good[j] for j in keep]
        return emb, np.asarray(good, dtype=np.int64), bad

    def classify_embedded(self, embeddings: Any, config: RunConfig, text_cache: Any = None) -> list[Result]:
        """Classify already-embedded images (n, D) under one configuration.

        ``text_cache`` defaults to the classifier's own (shared across calls).
        """
        from engine.run.encoder_source import EncoderSource

        if config.mode == "baseline":
            system, policy, stop = baseline_system(self.system), "fixed", NO_STOP
        elif config.mode == "full":
            system, policy, stop = self.system, "fixed", NO_STOP
        else:
            system, policy = self.system, config.policy
            stop = StopRule(config.tau, config.delta, config.budget)
        source = EncoderSource(self.encoder, text_cache or self.text_cache, system, embeddings)
        lam = self.encoder.logit_scale if config.logit_scale is None else config.logit_scale
        return classify_batch(source, system, policy, stop=stop, logit_scale=lam, eps=config.eps,
                              scorer=config.scorer, top_k=config.top_k,
                              shortlist_size=config.shortlist if config.mode == "adaptive" else None)

    def _merge(self, n: int, emb: Any, good: np.ndarray, bad: dict[int, str], config: RunConfig,
               text_cache: Any = None) -> list[Result]:
        """Results for n images in input order: the good ones classified, the bad ones failed."""
        out: list[Result | None] = [None] * n
        for j, r in zip(good, self.classify_embedded(emb, config, text_cache) if len(good) else []):
            out[j] = r
        for j, msg in bad.items():
            out[j] = Result.failed(msg)
        return out

    # ------------------------------------------------------------------ classify
    def iter_classify(self, images: Iterable[Any], config: RunConfig | None = None, *, chunk_size: int = 64,
                      names: Iterable[str] | None = None, progress: Callable[[int], None] | None = None,
                      **kw) -> Iterator[Result]:
        """Classify a stream of images chunk by chunk, yielding results in input order.

        A bad image yields a Result with ``error`` set; the rest go on. Only one
        chunk of images is in memory at a time.
        """
        config = config or RunConfig(**kw)
        names_it = iter(names) if names is not None else None
        chunk: list[Any] = []

        def flush(chunk):
            labels = [next(names_it) if names_it is not None else _image_name(im) for im in chunk]
            emb, good, bad = self.embed_images(chunk)
            for r, name in zip(self._merge(len(chunk), emb, good, bad, config), labels):
                r.image = name
                yield r
            if progress:
                progress(len(chunk))

        for im in images:
            chunk.append(im)
            if len(chunk) >= chunk_size:
                yield from flush(chunk)
                chunk = []
        if chunk:
            yield from flush(chunk)

    def classify(self, images: Sequence[Any] | Any, *, mode: str = "adaptive", policy: str = "eig",
                 tau: float = 0.9, delta: float = 0.0, budget: int | None = None, scorer: str = "bayes",
                 eps: float = DEFAULT_EPS, logit_scale: float | None = None, top_k: int = 5) -> list[Result]:
        """Classify images (paths or PIL images). One Result per image, in order."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        config = RunConfig(mode=mode, policy=policy, tau=tau, delta=delta, budget=budget, scorer=scorer,
                           eps=eps, logit_scale=logit_scale, top_k=top_k)
        return list(self.iter_classify(images, config))

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, data: str | Dataset, *, mode: str = "adaptive", policy: str = "eig", tau: float = 0.9,
                 delta: float = 0.0, budget: int | None = None, scorer: str = "bayes", eps: float = DEFAULT_EPS,
                 logit_scale: float | None = None, split: str | None = None, limit: int | None = None,
                 seed: int = 0, allow_missing: bool = False, by: str | None = None,
                 on_result: Callable[[Result, str], None] | None = None,
                 progress: Callable[[int], None] | None = None, chunk_size: int = 64) -> EvalReport:
        """Classify a labelled dataset and summarise.

        ``on_result(result, true_label)`` is called for every image as it is
        produced (the CLI streams them to disk); ``by`` names a data column to
        break accuracy down by (e.g. ``source``).
        """
        config = RunConfig(mode=mode, policy=policy, tau=tau, delta=delta, budget=budget, scorer=scorer,
                           eps=eps, logit_scale=logit_scale)
        ds = self.dataset(data, split=split, limit=limit, seed=seed, allow_missing=allow_missing)
        cb = (lambda k, r, item: on_result(r, item.label)) if on_result else None
        return self.evaluate_many(ds, [config], by=by, seed=seed, on_result=cb, progress=progress,
                                  chunk_size=chunk_size)[0]

    def dataset(self, data: str | Dataset, *, split: str | None = None, limit: int | None = None, seed: int = 0,
                allow_missing: bool = False) -> Dataset:
        """Load a dataset and check its labels against the system."""
        ds = data if isinstance(data, Dataset) else load_dataset(data, split=split, limit=limit, seed=seed)
        return check_labels(ds, self.system.classes, allow_missing=allow_missing)[0]

    def evaluate_many(self, ds: Dataset, configs: Sequence[RunConfig], *, by: str | None = None, seed: int = 0,
                      on_result: Callable[[int, Result, Any], None] | None = None,
                      progress: Callable[[int], None] | None = None, chunk_size: int = 64) -> list[EvalReport]:
        """Evaluate several configurations on one dataset, embedding each image once.

        ``on_result(k, result, item)`` is called as each result is produced, k
        being the index of its configuration. With several configurations each
        gets a text cache of its own, so its ``text_encodes`` count the prompts
        it needed, not what another mode happened to embed first.
        """
        from engine.encoders.text_cache import TextCache

        caches = [self.text_cache] if len(configs) == 1 else \
            [TextCache(self.encoder, cache_dir=self.text_cache.cache_dir) for _ in configs]
        rows: list[list[tuple[Result, Any]]] = [[] for _ in configs]
        encodes, hits, secs = [0] * len(configs), [0] * len(configs), [0.0] * len(configs)
        t_embed = 0.0
        items = list(ds.items)
        for start in range(0, len(items), chunk_size):
            chunk = items[start:start + chunk_size]
            t0 = time.perf_counter()
            emb, good, bad = self.embed_images([it.path for it in chunk])
            t_embed += time.perf_counter() - t0
            for k, config in enumerate(configs):
                cache = caches[k]
                e0, h0, t0 = cache.text_encodes, cache.hits, time.perf_counter()
                out = self._merge(len(chunk), emb, good, bad, config, cache)
                encodes[k] += cache.text_encodes - e0
                hits[k] += cache.hits - h0
                secs[k] += time.perf_counter() - t0
                for r, item in zip(out, chunk):
                    r.image = item.path
                    rows[k].append((r, item))
                    if on_result:
                        on_result(k, r, item)
            if progress:
                progress(len(chunk))
        return [summarise(rows[k], c, model=self.encoder.name, system=self.system.name, data=ds.name,
                          text_encodes=encodes[k], text_hits=hits[k], seconds_embed=t_embed,
                          seconds_classify=secs[k], by=by, seed=seed)
                for k, c in enumerate(configs)]


def summarise(rows: list[tuple[Result, Any]], config: RunConfig, *, model: str, system: str, data: str,
              text_encodes: int, text_hits: int, seconds_embed: float, seconds_classify: float,
              by: str | None = None, seed: int = 0,
              complete: bool = True) -> EvalReport:
    """An EvalReport from (result, dataset item) pairs; bad images are listed in ``skipped``."""
    ok = [(r, it) for r, it in rows if r.error is None]
    skipped = [{"image": r.image, "error": r.error} for r, it in rows if r.error is not None]
    labels = [it.label for _, it in ok]
    preds = [r.label for r, _ in ok]
    correct = np.array([p == y for p, y in zip(preds, labels)], dtype=bool)
    qs = np.array([r.q_spent for r, _ in ok], dtype=np.float64)
    breakdown = {}
    if by:
        groups: dict[str, list[bool]] = {}
        for (r, it), c in zip(ok, correct):
            groups.setdefault(it.extra.get(by, ""), []).append(bool(c))
        breakdown = {by: {k: {"n": len(v), "accuracy": float(np.mean(v)),
                              "ci95": list(bootstrap_ci(np.array(v), seed=seed))} for k, v in sorted(groups.items())}}
    adaptive = config.mode == "adaptive"
    return EvalReport(
        n=len(ok), accuracy=float(correct.mean()) if len(ok) else float("nan"),
        ci95=bootstrap_ci(correct, seed=seed),
        mean_q=float(qs.mean()) if len(ok) else float("nan"),
        median_q=float(np.median(qs)) if len(ok) else float("nan"),
        text_encodes=text_encodes, text_hits=text_hits, model=model, system=system, data=data,
        mode=config.mode, policy=config.policy if adaptive else "fixed",
        tau=config.tau if adaptive else None, budget=config.budget if adaptive else None,
        scorer=config.scorer, eps=config.eps,
        per_class=per_class(labels, preds), confusion=top_confusions(labels, preds), skipped=skipped,
        stops={s: sum(r.stop == s for r, _ in ok) for s in STOP_REASONS},
        seconds_embed=seconds_embed, seconds_classify=seconds_classify, by=breakdown, complete=complete,
    )


def _image_name(im: Any) -> str:
    if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
        return str(im)
    return getattr(im, "filename", None) or f"<{type(im).__name__}>"
