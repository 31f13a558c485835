"""A :class:`engine.core.sources.SimilaritySource` backed by a real encoder.

Image embeddings stay on the encoder's device. When the loop asks group g for
some images, the group's prompts come from the :class:`engine.encoders.text_cache.TextCache`
(embedded lazily, once), the similarities are one matmul on the device, and
only the (n, K_g) block leaves it, as float64 numpy.
"""

from __future__ import annotations

import numpy as np
import torch

from systems.format import AttributeSystem

from engine.encoders.base import Encoder
from engine.encoders.text_cache import TextCache


class EncoderSource:
    """Similarities of B encoded images to the prompts of ``system``'s groups.

    Parameters
    ----------
    encoder : the encoder the image embeddings came from.
    text_cache : a TextCache over the same encoder (shared across batches to
        reuse prompt embeddings); None makes a fresh in-memory one.
    system : the AttributeSystem whose groups are asked.
    image_embeddings : (B, D) unit rows, a torch tensor (kept where it is if it
        is on the encoder's device, moved there otherwise) or a numpy array.

    Attributes
    ----------
    n_images : B.
    calls : list of (group, n images) per ``similarities`` call.
    """

    def __init__(self, encoder: Encoder, text_cache: TextCache | None, system: AttributeSystem,
                 image_embeddings: torch.Tensor | np.ndarray):
        if text_cache is None:
            text_cache = TextCache(encoder)
        elif text_cache.encoder is not encoder:
            raise ValueError("text_cache belongs to another encoder; build TextCache(encoder) for this one")
        emb = torch.as_tensor(image_embeddings)
        if emb.ndim != 2 or emb.shape[1] != encoder.embed_dim:
            raise ValueError(f"image_embeddings should be (B, {encoder.embed_dim}) for encoder {encoder.name!r}, "
                             f"got shape {tuple(emb.shape)}")
        self.encoder, self.text_cache, self.system = encoder, text_cache, system
        self.image_embeddings = emb.to(encoder.device, torch.float32)
        self.n_images = int(emb.shape[0])
        self.calls: list[tuple[int, int]] = []

    def similarities(self, images: np.ndarray, group: int, options: np.ndarray | None = None) -> np.ndarray:
        """(n, K_g) float64 cosine similarities of images (n,) to group ``group``'s prompts;
        (n, m) to only the prompts of ``options`` (m,) when given (only those are embedded)."""
        g = self.system.groups[int(group)]
        images = np.asarray(images, dtype=np.int64)
        prompts = g.prompts()
        if options is not None:
            prompts = [prompts[int(k)] for k in options]
        text = self.text_cache.embed(prompts)  # (K_g or m, D) on the device
        idx = torch.from_numpy(images).to(self.image_embeddings.device)
        with torch.inference_mode():
            sims = self.image_embeddings.index_select(0, idx) @ text.T
        self.calls.append((int(group), len(images)))
        return sims.double().cpu().numpy()

    def all_similarities(self) -> np.ndarray:
        """(B, Q) similarities to every prompt of the system (eager; for the full-system baseline)."""
        every = np.arange(self.n_images)
        return np.concatenate([self.similarities(every, g) for g in range(self.system.n_groups)], axis=1)
