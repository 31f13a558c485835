"""A Classifier's images: decode workers and the tolerant embedder, in one small collaborator.

:class:`ImageEmbedder` holds the fast image path's :class:`engine.encoders.image_pool.ImageLoader`
(``EncoderSpec.decode_workers`` processes, started on first use) and embeds images with a bad one as
its error (:func:`engine.encoders.base.encode_images_tolerant`). Every image a Classifier classifies,
a file's, a Ray row's or a server upload's, is decoded and embedded here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np


class ImageEmbedder:
    """Decodes (in worker processes when the encoder has a fast plan) and embeds images for one encoder.

    encoder : the loaded encoder; spec : its :class:`engine.run.config.EncoderSpec` (``workers()``).
    seconds : a dict whose ``"embed"`` entry this adds its time to (the Classifier's timings).
    """

    def __init__(self, encoder: Any, spec: Any, seconds: dict[str, float] | None = None):
        self.encoder, self.spec = encoder, spec
        self.seconds = seconds if seconds is not None else {"embed": 0.0}
        self._loader: Any = None

    @property
    def loader(self) -> Any:
        """The :class:`engine.encoders.image_pool.ImageLoader` of the fast image path (decode workers,
        GPU decode; started on first use), or None when the encoder has no fast plan (its own processor,
        or ``preprocess_mode="processor"``)."""
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

    def submit(self, images: Sequence[Any], names: Sequence[str] | None = None) -> Any:
        """Start decoding ``images`` in the background (fast path); None when they are decoded at embed time.
        Pass the returned handle to :meth:`embed` as ``pending``."""
        loader = self.loader
        return loader.submit(images, names) if loader is not None else None

    def embed(self, images: Sequence[Any], names: Sequence[str] | None = None, *, pending: Any = None
              ) -> tuple[Any, np.ndarray, dict[int, str]]:
        """Load and embed images, skipping bad ones (:func:`engine.encoders.base.encode_images_tolerant`).

        images : paths, PIL images or encoded bytes; ``names`` what errors call them.
        pending : what :meth:`submit` returned for these images (their decoding started earlier).
        Returns (embeddings (n_good, D) on the encoder's device, indices (n_good,) of the good images,
        {index: one-line error} of the bad ones). An image that fails to load, or whose embedding comes
        back NaN/inf or zero, is a bad one.
        """
        # imported here: engine.encoders.base imports torch, and importing the Classifier (the run pipeline,
        # the CLI) loads no torch until a model is used
        from engine.encoders.base import embed_decoded, encode_images_tolerant
        from engine.encoders.images import image_label

        t0 = time.perf_counter()
        try:
            if pending is not None:
                labels = [str(n) for n in names] if names is not None else [image_label(im) for im in images]
                return embed_decoded(self.encoder, pending.result(), labels)
            return encode_images_tolerant(self.encoder, images, names, loader=self.loader)
        finally:
            self.seconds["embed"] = self.seconds.get("embed", 0.0) + time.perf_counter() - t0

    def close(self) -> None:
        """Stop the decode workers (a later call starts them again)."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None
