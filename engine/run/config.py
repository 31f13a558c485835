"""The two settings objects of a run, and the only carriers of settings.

- :class:`EncoderSpec`: which model, where and how it runs (model, revision, device,
  dtype, batch sizes, cache folder, trust_remote_code; and speed-only settings: text buckets,
  warm-up, eager prompts, compile, decode workers, preprocessing path).
- :class:`RunConfig`: how to classify (mode, policy, scorer, τ, δ, budget, ε, λ,
  shortlist, top_k, seed, templates, descriptors, target accuracy; and the loop's backend).

Both are frozen and hashable, checked when built, passed whole from the CLI to the
Classifier and to Ray actors; nothing re-spells them. The resume fingerprint takes what
changes results (``EncoderSpec.identity()``, ``RunConfig.to_dict()``), not the speed-only
settings (``HOW_FIELDS`` and the encoder's speed fields), which agree within float tolerance.
The system is data, not a setting: it travels as the loaded ``AttributeSystem`` and
enters fingerprints by its content hash.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.core.adaptive import SCORERS, StopRule
from engine.core.scoring import check_eps, check_logit_scale
from engine.run.engines import check_engine
from policies import POLICIES, get_policy, list_policies

MODES = ("adaptive", "full", "baseline", "descriptors")
DEFAULT_EPS = 0.05
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("fp32", "fp16", "bf16")
#: text-shape settings (the same tuples as engine.encoders.text_shapes, spelled here so that building
#: an EncoderSpec imports no torch; a test checks they agree)
SWITCHES = ("auto", "on", "off")
PROMPT_MODES = ("auto", "eager", "lazy")
PREPROCESS = ("fast", "processor")  # engine.encoders.base.PREPROCESS (config stays free of torch)
#: RunConfig fields left out of ``to_dict`` while None (added later; old fingerprints stay valid)
OPTIONAL_FIELDS = ("templates", "descriptors", "target_accuracy", "settle")
#: RunConfig fields folded into another's entry of ``to_dict`` (the descriptors' style into "descriptors")
FOLDED_FIELDS = ("descriptor_style",)
#: RunConfig fields that change how a run computes, not what: never in ``to_dict`` (nor fingerprints)
HOW_FIELDS = ("engine",)


def _whole(name: str, v: Any, lo: int, *, optional: bool = True) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} == {v!r}, must be a whole number >= {lo}" + (" (or None)" if optional else ""))


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to load and how.

    model : "offline" (the packaged stand-in, not CLIP), "probe" (the shipped attribute probe, not CLIP),
        "probe:DIR", a hub id or a local folder.
    revision : hub branch, tag or commit (None: the default branch).
    device : "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps".
    dtype : None (fp16 on a GPU, fp32 on the CPU), "fp32", "fp16" or "bf16".
    batch_size : images per forward pass of the model (None: the backend's own).
    cache_dir : folder of the on-disk text-embedding cache (None: memory only).
    trust_remote_code : let the model repository's own code run. Never implied.
    text_buckets : pad prompts to bucketed token lengths and batch sizes, so text batch shapes
        repeat: "auto" (on CUDA only), "on", "off" (:mod:`engine.encoders.text_shapes`).
    warm_up : run the text tower once on every bucketed shape when the model loads: "auto" (on
        CUDA only), "on", "off".
    eager_prompts : "auto" (:func:`engine.encoders.text_shapes.prompt_policy`: eager on CUDA for a
        system whose prompts fit in two text batches, lazy otherwise), "eager" (embed every group's
        prompts when the classifier loads) or "lazy" (a group's prompts when first asked).
    compile_text : wrap the text tower in ``torch.compile`` (CUDA graphs on CUDA); off by default.
    decode_workers : processes that decode and resize images (None: one per core, at most 8 (0 on one core),
        see :func:`engine.encoders.image_pool.default_workers`; 0: in this process).
    preprocess : "fast" (the model's preprocessing as a pixel plan: decode workers, GPU decode,
        normalisation on the device) or "processor" (the model's own image processor, the reference).

    The last six change how fast, not what: embeddings agree within float tolerance.
    """

    model: str = "offline"
    revision: str | None = None
    device: str = "auto"
    dtype: str | None = None
    batch_size: int | None = None
    cache_dir: str | None = None
    trust_remote_code: bool = False
    text_buckets: str = "auto"
    warm_up: str = "auto"
    eager_prompts: str = "auto"
    compile_text: bool = False
    decode_workers: int | None = None
    preprocess: str = "fast"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model == {self.model!r}, must be a model string; `twentyq models` lists them")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype == {self.dtype!r}, must be one of {list(DTYPES)} (or None)")
        _whole("batch_size", self.batch_size, 1)
        for name in ("text_buckets", "warm_up"):
            if getattr(self, name) not in SWITCHES:
                raise ValueError(f"{name} == {getattr(self, name)!r}, must be one of {list(SWITCHES)}")
        if self.eager_prompts not in PROMPT_MODES:
            raise ValueError(f"eager_prompts == {self.eager_prompts!r}, must be one of {list(PROMPT_MODES)}")
        if not isinstance(self.compile_text, bool):
            raise ValueError(f"compile_text == {self.compile_text!r}, must be True or False")
        _whole("decode_workers", self.decode_workers, 0)
        if self.preprocess not in PREPROCESS:
            raise ValueError(f"preprocess == {self.preprocess!r}, must be one of {list(PREPROCESS)}")

    def load(self):
        """The encoder this spec names (:func:`engine.encoders.load_encoder`), its text shapes
        bucketed, compiled and warmed up as the spec says (:func:`engine.encoders.text_shapes.prepare_text`)."""
        from engine.encoders import load_encoder
        from engine.encoders.text_shapes import prepare_text

        encoder = load_encoder(self.model, device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                               trust_remote_code=self.trust_remote_code, revision=self.revision)
        if hasattr(encoder, "preprocess_mode"):
            encoder.preprocess_mode = self.preprocess
        prepare_text(encoder, buckets=self.text_buckets, warm_up=self.warm_up, compile_text=self.compile_text)
        return encoder

    def workers(self) -> int:
        """Decode worker processes: ``decode_workers``, or the default for this machine's cores."""
        from engine.encoders.image_pool import default_workers

        return default_workers() if self.decode_workers is None else self.decode_workers

    def identity(self) -> dict[str, Any]:
        """What changes the embeddings (for fingerprints): model, revision, dtype. Device, batch
        size, cache folder, decode workers and the preprocessing path change where and how fast,
        not what (the two paths agree within float tolerance, as CPU and GPU do)."""
        return {"model": self.model, "revision": self.revision, "dtype": self.dtype}


@dataclass(frozen=True)
class RunConfig:
    """How to classify: the mode and, for ``adaptive``, the policy and the stop rule.

    ``full`` asks every group in system order; ``baseline`` scores the class names
    (a one-group system); neither stops early, so τ, δ, the budget and the shortlist
    apply to ``adaptive`` only.

    mode : "adaptive", "full" or "baseline".
    policy : a registered policy name (``policies.list_policies()``).
    tau : stop once the top class has this probability, in (0, 1].
    delta : stop once no unasked group that the budget can still pay for gains this many nats (0: never;
        see docs/method-notes.md).
    budget : at most this many prompts per image (None: no limit).
    scorer : "bayes" (posterior) or "sum" (the write-up's sum of option probabilities).
    eps : rule noise ε of the Bayes scorer, in [0, 1).
    logit_scale : λ (None: the model's own).
    top_k : classes listed per result.
    shortlist : once few classes remain, ask "which of these M names?" (needs a class_name group).
    seed : seeds the ``random`` policy (and any policy that takes a seed).
    templates : ``baseline`` only: a template ensemble (each with one ``{}``; see
        :mod:`systems.templates`). A class's text embedding is the mean of its T L2-normalised
        prompt embeddings, re-normalised. Over N classes that is N·T prompts embedded, and each
        result's ``q_spent`` is N·T too: Q counts the prompts an answer rests on, so an ensemble
        is never cheaper than it is (the image is compared with N pooled vectors).
    descriptors : ``descriptors`` mode only: ``((class, (description, ...)), ...)`` (see
        :mod:`systems.descriptors`), read as their authors' loaders read them (blank entries and
        empty lists dropped, with a :class:`systems.descriptors.DescriptorNotice` warning). Each
        prompt is embedded once and ``q_spent`` is their number. ``to_dict`` gives their count,
        style and sha256, not the texts.
    descriptor_style : how the descriptors become prompts and a score (``systems.descriptors.STYLES``):
        "dclip" ("{c}, which is/has {d}", mean similarity), "waffle" ("A photo of a {c}, which is/has
        {d}.", mean similarity) or "cupl" (captions as they are, mean embedding); None detects it.
    target_accuracy : ``adaptive`` only, with a calibration (:mod:`engine.run.calibration_file`): stop at
        the τ chosen on the calibration's dev images so that accuracy among images that stop on
        confidence is at least this, with 90% confidence; ``tau`` is then not read. In (0, 1).
    settle : ``adaptive`` only, with a Gaussian few-shot calibration: also stop once the calibration's model
        puts at least this probability (a lower bound) on the label staying where it is if every unasked group
        were asked (:attr:`engine.core.adaptive.StopRule.settle`). In (0, 1]; "auto": the threshold chosen on
        the calibration's cross-fitted dev paths (:meth:`engine.run.calibration_file.Calibration.settle_for`),
        resolved by the run's plan; None: never.
    engine : the adaptive loop's backend (``engine.run.engines.ENGINES``): "numpy" (the reference,
        on the host), "torch" (state and similarities on the encoder's device) or "auto" (torch when
        the image embeddings are on a CUDA device, numpy otherwise). The backends agree within float64
        rounding, so the engine is how a run computes, not what: it is left out of ``to_dict``.
    """

    mode: str = "adaptive"
    policy: str = "eig"
    tau: float = 0.9
    delta: float = 0.0
    budget: int | None = None
    scorer: str = "bayes"
    eps: float = DEFAULT_EPS
    logit_scale: float | None = None
    top_k: int = 5
    shortlist: int | None = None
    seed: int = 0
    templates: tuple[str, ...] | None = None
    descriptors: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    descriptor_style: str | None = None
    target_accuracy: float | None = None
    engine: str = "auto"
    settle: float | str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode == {self.mode!r}, must be one of {list(MODES)}")
        if self.policy not in list_policies():
            raise ValueError(f"policy == {self.policy!r}, must be one of {list_policies()}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer == {self.scorer!r}, must be one of {list(SCORERS)}")
        _whole("top_k", self.top_k, 1, optional=False)
        self.stop_rule()  # validates τ, δ, the budget and settle
        if self.settle not in (None, "auto"):
            object.__setattr__(self, "settle", float(self.settle))  # e.g. a numpy float: JSON-able in summaries
        check_eps(self.eps)
        if self.logit_scale is not None:
            check_logit_scale(self.logit_scale)
        _whole("shortlist", self.shortlist, 2)
        _whole("seed", self.seed, 0, optional=False)
        check_engine(self.engine)
        if self.templates is not None:
            from systems.templates import check_templates

            object.__setattr__(self, "templates", check_templates(self.templates))
            if self.mode != "baseline":
                raise ValueError(f"templates: a template ensemble scores the class names, so it needs mode "
                                 f"'baseline', not {self.mode!r} (add --mode baseline)")
        if (self.mode == "descriptors") != (self.descriptors is not None):
            raise ValueError("mode 'descriptors' and descriptors go together: pass --descriptors FILE (mode "
                             f"descriptors), not mode {self.mode!r} with{'out' if self.descriptors is None else ''} "
                             "descriptors")
        if self.descriptors is not None:
            import warnings

            from systems.descriptors import DescriptorNotice, read_descriptors

            descs = dict(self.descriptors) if not isinstance(self.descriptors, dict) else self.descriptors
            read = read_descriptors(descs, "descriptors", self.descriptor_style)
            for notice in read.notices:
                warnings.warn(notice, DescriptorNotice, stacklevel=3)
            object.__setattr__(self, "descriptors", tuple(read.descriptors.items()))
            object.__setattr__(self, "descriptor_style", read.style)
        elif self.descriptor_style is not None:
            raise ValueError(f"descriptor style {self.descriptor_style!r} given without descriptors; pass "
                             "--descriptors FILE too")
        if self.target_accuracy is not None:
            self._check_target()

    def _check_target(self) -> None:
        """A target accuracy is chosen from dev paths of adaptive Bayes runs with δ=0 and no shortlist."""
        a = self.target_accuracy
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < a < 1.0:
            raise ValueError(f"target accuracy == {a!r}, must be a number in (0, 1), e.g. 0.8")
        bad = [(self.mode != "adaptive", f"mode {self.mode!r} (use --mode adaptive)"),
               (self.scorer != "bayes", f"--scorer {self.scorer} (use --scorer bayes)"),
               (self.shortlist is not None, "--shortlist (drop it)"), (self.delta != 0, "--delta (drop it)"),
               (self.settle is not None, "--settle (drop it)")]
        for hit, what in bad:
            if hit:
                raise ValueError(f"--target-accuracy chooses τ from dev paths of adaptive Bayes runs without a "
                                 f"shortlist, δ or settle; it does not apply with {what}")

    def stop_rule(self) -> StopRule:
        """τ, δ, the budget and a numeric settle (None and "auto", which the calibration's plan resolves: 1)."""
        if isinstance(self.settle, str) and self.settle != "auto":
            raise ValueError(f"settle == {self.settle!r}, must be a number in (0, 1] or 'auto'")
        return StopRule(self.tau, self.delta, self.budget, 1.0 if self.settle in (None, "auto") else self.settle)

    def make_policy(self):
        """The policy object, with ``seed`` passed to policies that take one."""
        takes_seed = "seed" in inspect.signature(POLICIES[self.policy]).parameters
        return get_policy(self.policy, **({"seed": self.seed} if takes_seed else {}))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (for summaries and fingerprints). Settings added after the
        first release are left out while unset, so the fingerprints of earlier runs still match."""
        d = asdict(self)
        for k in HOW_FIELDS + FOLDED_FIELDS:
            del d[k]
        if self.descriptors is not None:
            from systems.descriptors import descriptor_prompts, descriptors_hash

            descs, style = dict(self.descriptors), self.descriptor_style
            d["descriptors"] = {"classes": len(descs), "style": style,
                                "prompts": sum(len(descriptor_prompts(c, v, style)) for c, v in descs.items()),
                                "sha256": descriptors_hash(descs, style)}
        for k in OPTIONAL_FIELDS:
            if d[k] is None:
                del d[k]
            elif isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d
