"""A Classifier's prompts: which to embed when it loads (eager prompts), and the pooled groups of a
template ensemble or descriptors.

- :func:`embed_eagerly` embeds every group's prompts at load, or leaves each to its first ask
  (:func:`engine.encoders.text_shapes.prompt_policy` decides "auto"); :func:`spec_for_run` turns eager
  prompts off for runs that never ask the system's own prompts.
- :func:`pooled_groups` gives the one pooled group of a template-ensemble or descriptors run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from engine.run.config import EncoderSpec, RunConfig
from systems import AttributeSystem
from systems.build import BASELINE_GROUP
from systems.descriptors import POOLING, DescriptorError, descriptor_prompts


def embed_eagerly(text_cache: Any, encoder: Any, system: AttributeSystem, mode: str = "auto") -> tuple[str, int]:
    """Embed every group's prompts now ("eager") or leave each group to its first ask ("lazy").

    ``mode`` "auto" asks :func:`engine.encoders.text_shapes.prompt_policy` (eager on CUDA when the
    system's prompts fit in two text batches). The class-name group, which the shortlist asks a few
    names of, stays lazy either way. Eager prompts go through ``text_cache``, so its ``text_encodes``
    counts them when they are embedded and later asks count as hits.
    Returns (the mode applied, the prompts embedded now).
    """
    from engine.encoders.text_shapes import prompt_policy

    prompts = eager_prompt_list(system)
    device = getattr(getattr(encoder, "device", None), "type", "cpu")
    size = getattr(encoder, "text_batch_size", None) or getattr(encoder, "batch_size", None) or 32
    chosen = prompt_policy(device, len(prompts), int(size), mode)
    before = text_cache.text_encodes
    if chosen == "eager" and prompts:
        text_cache.embed(prompts)
    return chosen, text_cache.text_encodes - before


def spec_for_run(spec: EncoderSpec, config: RunConfig) -> EncoderSpec:
    """The encoder settings for runs of ``config``: eager prompts only where the run asks the system's own
    group prompts (adaptive or full, no template ensemble or descriptors); a baseline or descriptors run
    embedding them at load would be work and ``text_encodes`` the run never asked for."""
    asks_system = config.mode in ("adaptive", "full") and not config.templates and config.descriptors is None
    return spec if asks_system or spec.eager_prompts == "lazy" else replace(spec, eager_prompts="lazy")


def eager_prompt_list(system: AttributeSystem) -> list[str]:
    """Every distinct prompt of the system's groups, in group order, but the class-name group's."""
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

    descs = dict(descriptors)
    missing = [c for c in system.classes if c not in descs]
    if missing:
        raise DescriptorError("descriptors", f"they give nothing for {len(missing)} class(es) of system "
                              f"{system.name!r}: {', '.join(map(repr, missing))}; add them to the descriptor file")
    return PooledGroup(0, tuple(descriptor_prompts(c, descs[c], style) for c in system.classes), POOLING[style])
