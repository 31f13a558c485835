"""The Python API: a ``Classifier`` is an encoder and a system, ready to classify images.

>>> clf = Classifier("offline", system="pokemon15")                       # doctest: +SKIP
>>> results = clf.classify(["a.png"], policy="eig", tau=0.9, budget=30)    # doctest: +SKIP
>>> report = evaluate_classifier(clf, "labels.csv", policy="eig", tau=0.9)  # doctest: +SKIP

One image's path (see docs/ARCHITECTURE.md): :meth:`Classifier.classify_items` decodes
(in decode worker processes, the next chunk while this one is classified: :meth:`classify_chunks`)
and embeds a chunk of images once (:func:`engine.encoders.base.encode_images_tolerant`:
a bad image becomes that image's error), then :meth:`classify_embedded` runs the adaptive
loop (:func:`engine.core.adaptive.classify_batch`, or its torch backend on the embeddings' device:
``RunConfig.engine``, :func:`engine.run.engines.classify`) over an :class:`EncoderSource`, whose
text cache embeds a group's prompts the first time any image asks it. Every executor of
the run pipeline (:mod:`engine.run.pipeline`) calls ``classify_items``; evaluation
(:func:`engine.run.evaluation.evaluate_classifier`) lives above, in :mod:`engine.run.evaluation`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from engine.core.adaptive import NO_STOP, StopRule
from engine.core.results import Result
from engine.run.config import EncoderSpec, RunConfig
from engine.run.datasets import Item
from engine.run.engines import classify
from systems import AttributeSystem, baseline_system, load_system

#: RunConfig's fields, so that ``classify(..., tau=0.8)`` builds one
CONFIG_FIELDS = frozenset(RunConfig.__dataclass_fields__)


def config_from(config: RunConfig | None, kw: dict[str, Any]) -> RunConfig:
    """``config``, or a RunConfig built from keyword settings (not both)."""
    if config is not None and kw:
        raise TypeError(f"pass a RunConfig or keyword settings, not both (got {sorted(kw)})")
    unknown = set(kw) - CONFIG_FIELDS
    if "labels" in unknown:
        raise TypeError("labels are the classes, not a setting: use engine.zero_shot(image, labels=[...]) or "
                        "Classifier(model, system=[...labels])")
    if unknown:
        raise TypeError(f"unknown setting(s) {sorted(unknown)}; RunConfig takes {sorted(CONFIG_FIELDS)}")
    return config if config is not None else RunConfig(**kw)


class Classifier:
    """An encoder and a system, ready to classify images.

    Parameters
    ----------
    model : an :class:`EncoderSpec`, or a model string for one (default ``"offline"``, the
        packaged weak stand-in, not CLIP); ``**encoder_options`` are the spec's other fields
        (``device``, ``dtype``, ``batch_size``, ``cache_dir``, ``trust_remote_code``, ``revision`` and the
        speed-only ``text_buckets``, ``warm_up``, ``eager_prompts``, ``compile_text``, ``decode_workers``,
        ``preprocess``).
    system : an AttributeSystem, a JSON path, a shipped name, or a list of class names (plain labels:
        :func:`systems.build.labels_system`, prompt "a photo of a {}."; classify them with
        ``mode="baseline", eps=0`` for plain zero-shot, or use :func:`engine.zero_shot`).
    encoder : an already loaded encoder (then ``model`` only names it).
    calibration : a :class:`engine.run.calibration_file.Calibration` or the path of one (``twentyq
        calibrate``): the adaptive and full modes then use its λ_g and answer channel for the Bayes
        update, EIG and stopping, and ``RunConfig.target_accuracy`` becomes usable. Refused
        (CalibrationMismatch) when fitted for another model or system, except that a zero-shot one moves to a
        system with other classes and the same questions (:meth:`Calibration.for_system`).
    """

    def __init__(self, model: str | EncoderSpec = "offline", system: Any = "pokemon15", *, encoder: Any = None,
                 calibration: Any = None, **encoder_options):
        from engine.encoders.base import PromptTruncatedWarning, check_prompt_lengths
        from engine.encoders.text_cache import TextCache

        self.spec = model if isinstance(model, EncoderSpec) else EncoderSpec(model=model, **encoder_options)
        if isinstance(model, EncoderSpec) and encoder_options:
            raise TypeError("pass an EncoderSpec or encoder options, not both")
        from engine.run.calibration_file import as_calibration

        if isinstance(system, (list, tuple)):  # plain labels: the class-name system (engine.zero_shot's)
            from systems.build import labels_system

            system = labels_system(list(system), source="system=[labels]")
        self.system: AttributeSystem = load_system(system)
        self.calibration = as_calibration(calibration)
        if self.calibration is not None:  # checked before the model loads; moved when the system has other classes
            self.calibration = self.calibration.for_system(self.system)
        self.encoder = encoder if encoder is not None else self.spec.load()
        self._channel = self._answer_model = None
        self._taus: dict[tuple, Any] = {}
        if self.calibration is not None:
            self.calibration.check(self.system, str(self.encoder.model_id), self.spec.model)
            self._channel = self.calibration.channel(self.system)
            self._answer_model = self.calibration.answer_model(self.system)
        self.text_cache = TextCache(self.encoder, cache_dir=self.spec.cache_dir)
        for msg in check_prompt_lengths(self.encoder, self.system):  # a template the tokenizer cuts off
            warnings.warn(msg, PromptTruncatedWarning, stacklevel=2)
        self.seconds = {"embed": 0.0, "classify": 0.0}  # time spent so far, for reports
        self._loader: Any = None  # the decode workers' ImageLoader, started on first use (image_loader)
        self.prompt_mode = self.embed_eagerly(self.spec.eager_prompts)

    def embed_eagerly(self, mode: str = "auto") -> str:
        """Embed every group's prompts now ("eager") or leave each group to its first ask ("lazy").

        ``mode`` "auto" asks :func:`engine.encoders.text_shapes.prompt_policy` (eager on CUDA when
        the system's prompts fit in two text batches). The class-name group, which the shortlist
        asks a few names of, stays lazy either way. Eager prompts go through the text cache, so
        ``text_encodes`` counts them when they are embedded and later asks count as hits.
        Returns the mode applied.
        """
        from engine.encoders.text_shapes import prompt_policy

        prompts = eager_prompt_list(self.system)
        device = getattr(getattr(self.encoder, "device", None), "type", "cpu")
        size = getattr(self.encoder, "text_batch_size", None) or getattr(self.encoder, "batch_size", None) or 32
        chosen = prompt_policy(device, len(prompts), int(size), mode)
        before = self.text_cache.text_encodes
        if chosen == "eager" and prompts:
            self.text_cache.embed(prompts)
        self.load_encodes = getattr(self, "load_encodes", 0) + self.text_cache.text_encodes - before
        return chosen

    def claim_load_encodes(self) -> int:
        """The prompts embedded while the classifier loaded (eager prompts), for a run's ``text_encodes``:
        the first caller gets them, later ones 0, so each is counted in exactly one run."""
        n, self.load_encodes = self.load_encodes, 0
        return n

    def target_choice(self, config: RunConfig) -> Any:
        """The :class:`engine.core.calibration.TauChoice` for ``config.target_accuracy`` (None without one),
        from the calibration's dev paths of the config's policy and budget (memoised)."""
        from engine.run.calibration_file import target_choice

        if config.target_accuracy is None:
            return None
        key = (config.policy, float(config.target_accuracy), config.budget, config.seed)  # seed: random's check
        if key not in self._taus:
            self._taus[key] = target_choice(self.calibration, config, self.system)
        return self._taus[key]

    def calibrated(self, config: RunConfig) -> bool:
        """Whether runs of ``config`` use the calibration (it fits the attribute system: adaptive and full)."""
        return self.calibration is not None and config.mode in ("adaptive", "full")

    def check_calibrated(self, config: RunConfig) -> None:
        """A CalibrationError (one line, the fix) for settings the calibration cannot serve: a few-shot
        posterior needs the bayes scorer and no shortlist; a calibration moved to other classes has no auto choice,
        dev order or τ table. Called before any work (the server) and by the loop."""
        if self.calibrated(config) and config.mode == "adaptive" and self.calibration.moved_to:
            from engine.run.calibration_file import resolve_policy

            resolve_policy(self.calibration, config)  # auto, dev-order: refused by name
            self.target_choice(config)  # a target accuracy: likewise
        if not self.calibrated(config) or self._answer_model is None:
            return
        if config.scorer != "bayes" or (config.mode == "adaptive" and config.shortlist):
            from engine.run.calibration_file import CalibrationError

            raise CalibrationError(f"calibration {self.calibration.where()} is few-shot: its posterior needs the "
                                   "bayes scorer and no --shortlist; drop --scorer sum / --shortlist, or make a "
                                   "zero-shot one with 'twentyq calibrate --setting zero-shot'")

    # ------------------------------------------------------------------ image input
    @property
    def image_loader(self) -> Any:
        """The :class:`engine.encoders.image_pool.ImageLoader` of the fast image path (decode workers,
        GPU decode; ``spec.decode_workers`` processes, started on first use), or None when the encoder
        has no fast plan (its own processor, or ``preprocess_mode="processor"``)."""
        fast_plan = getattr(self.encoder, "fast_plan", None)
        plan = fast_plan() if callable(fast_plan) else None
        if plan is None:
            return None
        if self._loader is None or self._loader.plan != plan:
            from engine.encoders.image_pool import ImageLoader

            if self._loader is not None:
                self._loader.close()
            self._loader = ImageLoader(plan, self.spec.workers(), device=self.encoder.device)
        return self._loader

    def submit_images(self, images: Sequence[Any], names: Sequence[str] | None = None) -> Any:
        """Start decoding ``images`` in the background (fast path); None when they are decoded at embed time.
        Pass the returned handle to :meth:`embed_images` as ``pending``."""
        loader = self.image_loader
        return loader.submit(images, names) if loader is not None else None

    def close(self) -> None:
        """Stop the decode workers (a later call starts them again)."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None

    # ------------------------------------------------------------------ embedding
    def embed_images(self, images: Sequence[Any], names: Sequence[str] | None = None, *, pending: Any = None
                     ) -> tuple[Any, np.ndarray, dict[int, str]]:
        """Load and embed images, skipping bad ones (:func:`engine.encoders.base.encode_images_tolerant`).

        images : paths, PIL images or encoded bytes; ``names`` what errors call them.
        pending : what :meth:`submit_images` returned for these images (their decoding started earlier).
        Returns (embeddings (n_good, D) on the encoder's device, indices (n_good,) of the
        good images, {index: one-line error} of the bad ones). An image that fails to load,
        or whose embedding comes back NaN/inf or zero, is a bad one.
        """
        from engine.encoders.base import embed_decoded, encode_images_tolerant
        from engine.encoders.images import image_label

        t0 = time.perf_counter()
        try:
            if pending is not None:
                labels = [str(n) for n in names] if names is not None else [image_label(im) for im in images]
                return embed_decoded(self.encoder, pending.result(), labels)
            return encode_images_tolerant(self.encoder, images, names, loader=self.image_loader)
        finally:
            self.seconds["embed"] += time.perf_counter() - t0

    def classify_embedded(self, embeddings: Any, config: RunConfig, text_cache: Any = None, *,
                          trace: bool = False) -> list[Result]:
        """Classify already-embedded images (n, D) under one configuration; n Results in row order.

        ``text_cache`` defaults to the classifier's own (shared across calls). ``trace`` keeps the
        top-k after each step on each step (``Step.top``; see ``classify_batch``); it is not a
        setting of the run (not in RunConfig, so no fingerprint changes), only how much is reported.
        """
        from engine.run.calibration_file import resolve_policy
        from engine.run.encoder_source import EncoderSource

        t0 = time.perf_counter()
        if config.mode in ("baseline", "descriptors"):
            system, policy, stop = baseline_system(self.system), "fixed", NO_STOP
        elif config.mode == "full":
            system, policy, stop = self.system, "fixed", NO_STOP
        else:
            system, policy, stop = self.system, resolve_policy(self.calibration, config), config.stop_rule()
            choice = self.target_choice(config)
            if choice is not None:
                stop = StopRule(choice.tau, config.delta, config.budget)
        pooled = pooled_groups(system, config)
        source = EncoderSource(self.encoder, text_cache or self.text_cache, system, embeddings, pooled)
        lam = self.encoder.logit_scale if config.logit_scale is None else config.logit_scale
        channel = answer_model = None
        if self.calibrated(config):
            if config.logit_scale is not None:
                raise ValueError("a calibration sets λ per group; drop logit_scale (--logit-scale) or the calibration")
            lam, channel, answer_model = self.calibration.lams, self._channel, self._answer_model
            self.check_calibrated(config)
        try:
            results = classify(source, system, policy, engine=config.engine, stop=stop, logit_scale=lam,
                                     eps=config.eps, channel=channel, scorer=config.scorer, top_k=config.top_k,
                                     shortlist_size=config.shortlist if config.mode == "adaptive" else None,
                                     trace=trace, answer_model=answer_model)
            for r in results if pooled else ():
                if r.error is None:  # every image asked the one pooled group: Q is its prompts
                    r.q_spent = pooled[0].n_prompts
                    for step in r.steps if trace else ():
                        step.q_spent = pooled[0].n_prompts
            return results
        finally:
            self.seconds["classify"] += time.perf_counter() - t0

    def classify_inputs(self, images: Sequence[Any], config: RunConfig, names: Sequence[str] | None = None,
                        text_cache: Any = None) -> list[Result]:
        """One Result per image, in input order: the good ones classified, the bad ones failed.

        The one classification path: every executor, the API and the server come through here
        (or through its two halves, :meth:`embed_images` and :meth:`classify_embedded`).
        """
        return next(self.classify_chunks([(images, names)], config, text_cache))

    def classify_chunks(self, chunks: Iterable[tuple[Sequence[Any], Sequence[str] | None]], config: RunConfig,
                        text_cache: Any = None) -> Iterator[list[Result]]:
        """:meth:`classify_inputs` over a stream of ``(images, names)`` chunks, one list of Results per chunk.

        Pipelined: chunk i+1 is handed to the decode workers (and, on CUDA, copied to the device
        from pinned memory on a side stream) before chunk i is embedded and classified, so
        decoding overlaps the model and the engine. With no fast path (or 0 workers) each
        chunk is decoded when it is embedded, as before.
        """
        it = iter(chunks)

        def start(chunk):
            if chunk is None:
                return None
            images, names = list(chunk[0]), chunk[1]
            given = names is not None
            labels = [str(n) for n in names] if given else [image_name(im) for im in images]
            errs = labels if given else None
            return images, labels, errs, self.submit_images(images, errs)

        nxt = start(next(it, None))
        while nxt is not None:
            images, labels, errs, pending = nxt
            nxt = start(next(it, None))  # i+1 decodes while i is on the model and in the engine
            emb, good, bad = self.embed_images(images, errs, pending=pending)
            results = self.classify_embedded(emb, config, text_cache) if len(good) else []
            yield assemble(labels, good, results, bad)

    def classify_items(self, items: Sequence[Item], config: RunConfig, text_cache: Any = None) -> list[Result]:
        """:meth:`classify_inputs` for dataset items (files, or encoded bytes named by ``path``)."""
        return self.classify_inputs([it.source for it in items], config, [it.path for it in items], text_cache)

    # ------------------------------------------------------------------ classify
    def iter_classify(self, images: Iterable[Any], config: RunConfig | None = None, *, chunk_size: int = 64,
                      names: Iterable[str] | None = None, progress: Callable[[int], None] | None = None,
                      **settings) -> Iterator[Result]:
        """Classify a stream of images chunk by chunk, yielding results in input order.

        ``settings`` are RunConfig fields when no ``config`` is given. A bad image yields a
        Result with ``error`` set; the rest go on. Only one chunk of images is in memory.
        """
        config = config_from(config, settings)
        names_it = iter(names) if names is not None else None

        def chunks():
            chunk: list[Any] = []
            for im in images:
                chunk.append(im)
                if len(chunk) >= chunk_size:
                    yield chunk, [next(names_it) if names_it is not None else image_name(x) for x in chunk]
                    chunk = []
            if chunk:
                yield chunk, [next(names_it) if names_it is not None else image_name(x) for x in chunk]

        for results in self.classify_chunks(chunks(), config):
            yield from results
            if progress:
                progress(len(results))

    def classify(self, images: Sequence[Any] | Any, config: RunConfig | None = None, **settings) -> list[Result]:
        """Classify images (paths or PIL images). One Result per image, in order.

        ``settings`` are RunConfig fields (``mode``, ``policy``, ``tau``, ``budget``,
        ``shortlist``, ``top_k``, ``seed``...) when no ``config`` is given.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        return list(self.iter_classify(images, config_from(config, settings)))


def spec_for_run(spec: EncoderSpec, config: RunConfig) -> EncoderSpec:
    """The encoder settings for runs of ``config``: eager prompts only where the run asks the system's own
    group prompts (adaptive or full, no template ensemble or descriptors); a baseline or descriptors run
    embedding them at load would be work and ``text_encodes`` the run never asked for."""
    asks_system = config.mode in ("adaptive", "full") and not config.templates and config.descriptors is None
    return spec if asks_system or spec.eager_prompts == "lazy" else replace(spec, eager_prompts="lazy")


def eager_prompt_list(system: AttributeSystem) -> list[str]:
    """Every distinct prompt of the system's groups, in group order, but the class-name group's."""
    from systems.build import BASELINE_GROUP

    return list(dict.fromkeys(p for g in system.groups if g.name != BASELINE_GROUP for p in g.prompts()))


def pooled_groups(system: AttributeSystem, config: RunConfig) -> list[Any]:
    """The groups of ``system`` (the one the mode asks) that pool several prompts per option:
    a template ensemble or the descriptors, else none."""
    if config.templates:
        return [template_pool(system, config.templates)]
    if config.descriptors is not None:
        return [descriptor_pool(system, config.descriptors, config.descriptor_style or "dclip")]
    return []


def template_pool(system: AttributeSystem, templates: Sequence[str]) -> Any:
    """The template ensemble of a one-group (class-name) system: each class's T prompts,
    pooled by mean embedding (see :class:`engine.run.encoder_source.PooledGroup`)."""
    from engine.run.encoder_source import PooledGroup

    opts = system.groups[0].options
    return PooledGroup(0, tuple(tuple(t.replace("{}", o) for t in templates) for o in opts), "mean_embedding")


def descriptor_pool(system: AttributeSystem, descriptors: Any, style: str = "dclip") -> Any:
    """Classification by description over a class-name system: each class's prompts in ``style``
    (:func:`systems.descriptors.descriptor_prompts`), pooled as that style's scorer does (DCLIP and
    WaffleCLIP: mean similarity; CuPL: mean embedding). A DescriptorError names every class of the
    system the descriptors leave out."""
    from engine.run.encoder_source import PooledGroup
    from systems.descriptors import POOLING, DescriptorError, descriptor_prompts

    descs = dict(descriptors)
    missing = [c for c in system.classes if c not in descs]
    if missing:
        raise DescriptorError("descriptors", f"they give nothing for {len(missing)} class(es) of system "
                              f"{system.name!r}: {', '.join(map(repr, missing))}; add them to the descriptor file")
    return PooledGroup(0, tuple(descriptor_prompts(c, descs[c], style) for c in system.classes), POOLING[style])


def assemble(names: Sequence[str], good: np.ndarray, results: Sequence[Result], bad: dict[int, str]) -> list[Result]:
    """Results for every input in order: ``results`` for the ``good`` rows, failures for the ``bad``
    ones; each named by ``names``."""
    out: list[Result | None] = [None] * len(names)
    for j, r in zip(good, results):
        out[j] = r
    for j, msg in bad.items():
        out[j] = Result.failed(msg)
    for r, name in zip(out, names):
        r.image = name
    return out


def image_name(im: Any) -> str:
    """A display name for an image input: its path, a PIL image's filename, or its type."""
    if isinstance(im, str) or hasattr(im, "__fspath__"):
        return str(im)
    if isinstance(im, (bytes, bytearray, memoryview)):
        return f"<{len(im):,} bytes>"
    return getattr(im, "filename", None) or f"<{type(im).__name__}>"
