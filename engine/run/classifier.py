"""The Python API: a ``Classifier`` is an encoder and a system, ready to classify images.

>>> clf = Classifier("offline", system="pokemon15")                       # doctest: +SKIP
>>> results = clf.classify(["a.png"], policy="eig", tau=0.9, budget=30)    # doctest: +SKIP
>>> report = evaluate_classifier(clf, "labels.csv", policy="eig", tau=0.9)  # doctest: +SKIP

One image's path (see docs/ARCHITECTURE.md): :meth:`Classifier.iter_classify` hands chunk i+1 to
the decode workers before chunk i is embedded (:class:`engine.run.image_input.ImageEmbedder`:
a bad image becomes that image's error), then :meth:`Classifier.classify_embedded` runs the
adaptive loop (:func:`engine.core.adaptive.classify_batch`, or its torch backend on the
embeddings' device: ``RunConfig.engine``, :func:`engine.run.engines.classify`) over an
:class:`EncoderSource`, whose text cache embeds a group's prompts the first time any image asks
it. Each image's :class:`Result` is built once there and goes as it is to the store and the CLI.
Every executor of the run pipeline (:mod:`engine.run.pipeline`) calls ``iter_classify``;
evaluation (:func:`engine.run.evaluation.evaluate_classifier`) lives above, in
:mod:`engine.run.evaluation`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from engine.core.results import Result
from engine.run.calibrated import CalibrationUse, load_parts
from engine.run.config import EncoderSpec, RunConfig
from engine.run.engines import classify
from engine.run.image_input import ImageEmbedder
from engine.run.prompts import embed_eagerly, pooled_groups

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

    The three entry points that classify (there are no others):

    - :meth:`classify` ``(images, config=None, *, names=None, **settings) -> list[Result]``: a list in,
      a list out (the Python API of README and docs/usage.md);
    - :meth:`iter_classify` ``(images, config=None, *, chunk_size, names, progress, cut_at, **settings)
      -> Iterator[Result]``: a stream, one chunk in memory, the next chunk decoding while this one is
      classified (the run pipeline's executors, the benchmarks);
    - :meth:`classify_embedded` ``(embeddings, config, text_cache=None, *, trace=False) -> list[Result]``:
      images embedded already, by ``clf.images.embed(images)`` (the server's batcher and ``compare``
      embed once and classify under several settings).

    Its parts live in collaborators: ``images`` (:class:`engine.run.image_input.ImageEmbedder`: the
    decode workers and the tolerant embedder), ``calibration_use``
    (:class:`engine.run.calibrated.CalibrationUse`: the channel, the few-shot model, policies, stop
    rules and the τ cache), :func:`engine.run.calibrated.load_parts` (model, system and calibration
    loading) and :mod:`engine.run.prompts` (eager prompts, pooled groups).
    """

    def __init__(self, model: str | EncoderSpec = "offline", system: Any = "pokemon15", *, encoder: Any = None,
                 calibration: Any = None, **encoder_options):
        from engine.encoders.base import PromptTruncatedWarning, check_prompt_lengths
        from engine.encoders.text_cache import TextCache

        if "labels" in encoder_options:  # EncoderSpec would say "unexpected keyword argument 'labels'"
            raise TypeError("Classifier takes plain class names as system=[...] (a list of labels), not labels=; "
                            "or call engine.zero_shot(images, labels=[...])")
        self.spec, self.system, self.calibration, self.encoder = load_parts(model, system, encoder, calibration,
                                                                            **encoder_options)
        self.calibration_use = CalibrationUse(self.calibration, self.system)
        self.text_cache = TextCache(self.encoder, cache_dir=self.spec.cache_dir)
        for msg in check_prompt_lengths(self.encoder, self.system):  # a template the tokenizer cuts off
            warnings.warn(msg, PromptTruncatedWarning, stacklevel=2)
        self.seconds = {"embed": 0.0, "classify": 0.0}  # time spent so far, for reports
        self.images = ImageEmbedder(self.encoder, self.spec, self.seconds)
        self.prompt_mode, self.load_encodes = embed_eagerly(self.text_cache, self.encoder, self.system,
                                                            self.spec.eager_prompts)

    def claim_load_encodes(self) -> int:
        """The prompts embedded while the classifier loaded (eager prompts), for a run's ``text_encodes``:
        the first caller gets them, later ones 0, so each is counted in exactly one run."""
        n, self.load_encodes = self.load_encodes, 0
        return n

    def check_calibrated(self, config: RunConfig) -> None:
        """A CalibrationError (one line, the fix) for settings the calibration cannot serve
        (:meth:`CalibrationUse.check`): the server asks before any work; every run's plan checks it too."""
        self.calibration_use.check(config)

    def close(self) -> None:
        """Stop the decode workers (a later call starts them again)."""
        self.images.close()

    # ------------------------------------------------------------------ the three entry points
    def classify(self, images: Sequence[Any] | Any, config: RunConfig | None = None, *,
                 names: Sequence[str] | None = None, **settings) -> list[Result]:
        """Classify images (paths, PIL images or encoded bytes). One Result per image, in order.

        ``settings`` are RunConfig fields (``mode``, ``policy``, ``tau``, ``budget``,
        ``shortlist``, ``top_k``, ``seed``...) when no ``config`` is given; ``names`` what each
        Result's ``image`` (and a bad image's error) calls it (default: its path).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        return list(self.iter_classify(images, config_from(config, settings), names=names))

    def iter_classify(self, images: Iterable[Any], config: RunConfig | None = None, *, chunk_size: int = 64,
                      names: Iterable[str] | None = None, progress: Callable[[int], None] | None = None,
                      cut_at: Iterable[int] = (), **settings) -> Iterator[Result]:
        """Classify a stream of images chunk by chunk, yielding results in input order.

        ``settings`` are RunConfig fields when no ``config`` is given. A bad image yields a
        Result with ``error`` set; the rest go on. Only one chunk of images is in memory (and the
        next one, decoding). Chunks hold ``chunk_size`` images and also end before each input
        position in ``cut_at`` (increasing; a run's shard boundaries, so that a shard is batched the
        same whether it runs alone, on --resume, or among others). ``progress`` is called with the
        size of each chunk classified.

        Pipelined: chunk i+1 is handed to the decode workers (and, on CUDA, copied to the device
        from pinned memory on a side stream) before chunk i is embedded and classified, so
        decoding overlaps the model and the engine. With no fast path (or 0 workers) each
        chunk is decoded when it is embedded.
        """
        config = config_from(config, settings)
        it = iter(self._chunks(images, names, chunk_size, cut_at))

        def start(chunk):
            if chunk is None:
                return None
            ims, labels, given = chunk
            return ims, labels, given, self.images.submit(ims, labels if given else None)

        nxt = start(next(it, None))
        while nxt is not None:
            ims, labels, given, pending = nxt
            nxt = start(next(it, None))  # i+1 decodes while i is on the model and in the engine
            emb, good, bad = self.images.embed(ims, labels if given else None, pending=pending)
            results = self.classify_embedded(emb, config) if len(good) else []
            if progress:  # before the yield: a consumer that stops at its last expected result still counts it
                progress(len(ims))
            yield from assemble(labels, good, results, bad)

    def classify_embedded(self, embeddings: Any, config: RunConfig, text_cache: Any = None, *,
                          trace: bool = False) -> list[Result]:
        """Classify already-embedded images (n, D) under one configuration; n Results in row order.

        ``text_cache`` defaults to the classifier's own (shared across calls). ``trace`` keeps the
        top-k after each step on each step (``Step.top``; see ``classify_batch``); it is not a
        setting of the run (not in RunConfig, so no fingerprint changes), only how much is reported.
        """
        from engine.run.encoder_source import EncoderSource

        t0 = time.perf_counter()
        plan = self.calibration_use.plan(config, self.encoder.logit_scale)
        pooled = pooled_groups(plan.system, config)
        source = EncoderSource(self.encoder, text_cache or self.text_cache, plan.system, embeddings, pooled)
        try:
            results = classify(source, plan.system, plan.policy, engine=config.engine, stop=plan.stop,
                               logit_scale=plan.logit_scale, eps=config.eps, channel=plan.channel,
                               scorer=config.scorer, top_k=config.top_k,
                               shortlist_size=config.shortlist if config.mode == "adaptive" else None,
                               trace=trace, answer_model=plan.answer_model)
            for r in results if pooled else ():
                if r.error is None:  # every image asked the one pooled group: Q is its prompts
                    r.q_spent = pooled[0].n_prompts
                    for step in r.steps if trace else ():
                        step.q_spent = pooled[0].n_prompts
            return results
        finally:
            self.seconds["classify"] += time.perf_counter() - t0

    # ------------------------------------------------------------------
    @staticmethod
    def _chunks(images: Iterable[Any], names: Iterable[str] | None, size: int, cut_at: Iterable[int]
                ) -> Iterator[tuple[list[Any], list[str], bool]]:
        """(images, their names, whether the names were given) of each chunk (see :meth:`iter_classify`)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk_size == {size!r}, must be a whole number >= 1")
        names_it = iter(names) if names is not None else None
        cuts = iter(cut_at)
        cut = next(cuts, None)
        chunk: list[Any] = []
        n = 0
        for im in images:
            chunk.append(im)
            n += 1
            while cut is not None and cut <= n - len(chunk):
                cut = next(cuts, None)
            if len(chunk) >= size or (cut is not None and n == cut):
                yield chunk, _names(chunk, names_it), names_it is not None
                chunk = []
        if chunk:
            yield chunk, _names(chunk, names_it), names_it is not None


def _names(chunk: list[Any], names_it: Iterator[str] | None) -> list[str]:
    return [str(next(names_it)) for _ in chunk] if names_it is not None else [image_name(x) for x in chunk]


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
