"""Plain zero-shot from Python, as ``transformers.pipeline("zero-shot-image-classification")`` does it.

>>> from engine import zero_shot
>>> zero_shot("cat.jpg", labels=["cat", "dog"], model="openai/clip-vit-base-patch32")  # doctest: +SKIP
[{'label': 'cat', 'score': 0.97}, {'label': 'dog', 'score': 0.03}]

Scores are the softmax, over the labels, of the model's logit scale λ times the cosine
similarity of the image to each label's prompt: the pipeline's numbers for a CLIP model (its
``logits_per_image.softmax(-1)``), with its default template "This is a photo of {}."
(``hypothesis_template``). No ε floor and no adaptive questions: this is twentyq's baseline mode
over a class-name system (:func:`systems.build.labels_system`) with ε = 0. Several templates
(a list, or a template set's name such as ``"openai_imagenet"``) are an ensemble: a label's
vector is the normalised mean of its prompts' unit embeddings (open_clip's way). A SigLIP model
is scored the same way (a softmax over the labels), not with the pipeline's per-label sigmoid.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

#: the pipeline's default ``hypothesis_template``
PIPELINE_TEMPLATE = "This is a photo of {}."


def as_image(image: Any) -> Any:
    """A path, PIL image or encoded bytes as they are; a numpy array (H, W), (H, W, 3) or (H, W, 4)
    of uint8, or of floats in [0, 1], as a PIL image. Anything else is a TypeError naming it."""
    import numpy as np

    if not isinstance(image, np.ndarray):
        return image
    from PIL import Image

    a = image
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise TypeError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise TypeError(f"an image array must be uint8, or floats in [0, 1]; got {a.dtype} with values in "
                            f"[{a.min()}, {a.max()}]")
        a = np.round(a * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def _templates(template: Any) -> tuple[str, ...]:
    from systems.templates import resolve_templates

    if template is None:
        return (PIPELINE_TEMPLATE,)
    return resolve_templates(list(template) if isinstance(template, (list, tuple)) else template)


def zero_shot(images: Any, labels: Sequence[str], template: str | Sequence[str] | None = None, *,
              model: Any = "offline", logit_scale: float | None = None, **encoder_options) -> list:
    """Zero-shot classification of one image or a list of images over ``labels``.

    Parameters
    ----------
    images : one image (a path, a PIL image, a numpy array, or an image file's bytes) or a list of them.
    labels : the candidate class names (the pipeline's ``candidate_labels``); at least two, distinct.
    template : None (the pipeline's "This is a photo of {}."), a template with ``{}``, a shipped
        template set's name (``"openai_imagenet"``, ``"openai_imagenet_7"``, ``"clip8"`` ...), a JSON
        file of templates, or a list of any of these (joined: an ensemble, mean of the normalised
        prompt embeddings).
    model : a model string (``"offline"``, the packaged stand-in, not CLIP; a hub id; a local folder),
        an :class:`engine.run.config.EncoderSpec`, or, to load the model once for many calls, a loaded
        :class:`engine.run.classifier.Classifier` or encoder (``engine.load_encoder(...)``); its cached
        prompt embeddings are reused.
    logit_scale : λ (None: the model's own, as the pipeline).
    encoder_options : EncoderSpec fields (``device``, ``dtype``, ...) when ``model`` is a string.

    Returns
    -------
    For one image, ``[{"label": ..., "score": ...}, ...]`` over every label, highest score first
    (ties in label order); for a list, one such list per image. An image that cannot be loaded
    gets ``[]`` in a list, with a warning naming it (the others are kept); alone, it raises
    :class:`engine.encoders.images.ImageLoadError`.
    """
    from engine.run.classifier import Classifier
    from engine.run.config import EncoderSpec, RunConfig
    from systems.build import labels_system

    templates = _templates(template)
    system = labels_system(list(labels), template=templates[0], source="labels")
    config = RunConfig(mode="baseline", eps=0.0, logit_scale=logit_scale, top_k=system.n_classes,
                       templates=templates if len(templates) > 1 else None)
    if isinstance(model, Classifier):
        if encoder_options:
            raise TypeError("encoder options apply to a model string, not to a loaded Classifier")
        clf = Classifier(model.spec, system, encoder=model.encoder)
        clf.text_cache = model.text_cache  # the same encoder: its prompt embeddings are reused
    elif isinstance(model, (str, EncoderSpec)):
        spec = model if isinstance(model, EncoderSpec) else EncoderSpec(
            model=model, **{"decode_workers": 0, **encoder_options})  # one call: no worker processes
        clf = Classifier(spec, system)
    elif hasattr(model, "encode_texts") and hasattr(model, "encode_images"):
        if encoder_options:
            raise TypeError("encoder options apply to a model string, not to a loaded encoder")
        clf = Classifier(EncoderSpec(model=str(getattr(model, "name", "encoder")), decode_workers=0), system,
                         encoder=model)
    else:
        raise TypeError(f"model must be a model string, an EncoderSpec, a Classifier or an encoder, got "
                        f"{type(model).__name__}")
    single = not isinstance(images, (list, tuple))
    batch = [as_image(im) for im in ([images] if single else images)]
    try:
        results = clf.classify(batch, config)
    finally:
        clf.close()
    out = []
    for r in results:
        if r.error is not None:
            if single:
                from engine.encoders.images import ImageLoadError

                prefix = f"cannot load image {r.image!r}: "
                raise ImageLoadError(r.image, r.error[len(prefix):] if r.error.startswith(prefix) else r.error)
            warnings.warn(f"skipped image {r.image}: {r.error}", stacklevel=2)
            out.append([])
            continue
        out.append([{"label": label, "score": float(p)} for label, p in r.top])
    return out[0] if single else out
