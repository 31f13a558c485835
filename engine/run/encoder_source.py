"""A :class:`engine.core.sources.SimilaritySource` backed by a real encoder.

Image embeddings stay on the encoder's device. When the loop asks group g for
some images, the group's prompts come from the :class:`engine.encoders.text_cache.TextCache`
(embedded lazily, once), the similarities are one matmul on the device, and
only the (n, K_g) block leaves it, as float64 numpy (``similarities``); the loop on the torch
backend (:mod:`engine.torch_backend`) takes the block as a tensor on the device instead (``similarities_t``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from systems.format import AttributeSystem

from engine.encoders.base import Encoder
from engine.encoders.text_cache import TextCache


POOLS = ("mean_embedding", "mean_similarity")


@dataclass(frozen=True)
class PooledGroup:
    """Several prompts per option of one group, pooled into one similarity per option.

    group : the group index these prompts replace.
    prompts : per option, its prompts (at least one each).
    how : ``"mean_embedding"``: the option's vector is the mean of its L2-normalised prompt
        embeddings, re-normalised (a template ensemble, open_clip's way); ``"mean_similarity"``:
        the option's similarity is the mean of the image's similarities to its prompts
        (classification by description, DCLIP's way).
    """

    group: int
    prompts: tuple[tuple[str, ...], ...]
    how: str = "mean_embedding"

    def __post_init__(self):
        if self.how not in POOLS:
            raise ValueError(f"how == {self.how!r}, must be one of {list(POOLS)}")
        if not self.prompts or any(not p for p in self.prompts):
            raise ValueError("every option needs at least one prompt")

    @property
    def n_prompts(self) -> int:
        """The prompts an answer of this group rests on (its honest Q)."""
        return sum(len(p) for p in self.prompts)

    def flat(self) -> tuple[list[str], torch.Tensor]:
        """Every prompt in option order, and the option index of each (P,)."""
        flat = [p for ps in self.prompts for p in ps]
        owner = torch.tensor([k for k, ps in enumerate(self.prompts) for _ in ps], dtype=torch.int64)
        return flat, owner


def segment_mean(x: torch.Tensor, owner: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """The mean of ``x``'s slices along ``dim`` grouped by ``owner`` (P,) into n groups."""
    owner = owner.to(x.device)
    shape = list(x.shape)
    shape[dim] = n
    total = torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(dim, owner, x)
    counts = torch.bincount(owner, minlength=n).to(x.dtype)
    view = [1] * x.ndim
    view[dim] = n
    return total / counts.view(view)


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

    ``pooled`` (optional) gives some groups several prompts per option (:class:`PooledGroup`);
    all of a pooled group's prompts are embedded the first time it is asked.
    """

    def __init__(self, encoder: Encoder, text_cache: TextCache | None, system: AttributeSystem,
                 image_embeddings: torch.Tensor | np.ndarray, pooled: Sequence[PooledGroup] = ()):
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
        self.pooled = {p.group: p for p in pooled}
        for p in pooled:
            if len(p.prompts) != system.groups[p.group].n_options:
                raise ValueError(f"pooled prompts for group {system.groups[p.group].name!r} cover "
                                 f"{len(p.prompts)} options, the group has {system.groups[p.group].n_options}")

    @property
    def device(self) -> torch.device:
        """Where the image embeddings, and so every similarity block, live (the torch engine runs here)."""
        return self.image_embeddings.device

    def similarities(self, images: np.ndarray, group: int, options: np.ndarray | None = None) -> np.ndarray:
        """(n, K_g) float64 cosine similarities of images (n,) to group ``group``'s prompts;
        (n, m) to only the prompts of ``options`` (m,) when given (only those are embedded)."""
        idx = torch.from_numpy(np.asarray(images, dtype=np.int64))
        opts = None if options is None else torch.from_numpy(np.asarray(options, dtype=np.int64))
        return self.similarities_t(idx, group, opts).double().cpu().numpy()

    def similarities_t(self, images: torch.Tensor, group: int, options: torch.Tensor | None = None) -> torch.Tensor:
        """The same block as :meth:`similarities`, as a tensor on :attr:`device` (the model's float dtype):
        images (n,) int64 indices, anywhere; options (m,) or None. For the torch engine, which keeps
        the block on the device."""
        g = self.system.groups[int(group)]
        idx = torch.as_tensor(images, dtype=torch.int64).to(self.device)
        if int(group) in self.pooled:
            return self._pooled(idx, self.pooled[int(group)], options)
        prompts = g.prompts()
        if options is not None:
            prompts = [prompts[int(k)] for k in options.tolist()]
        text = self.text_cache.embed(prompts)  # (K_g or m, D) on the device
        with torch.inference_mode():
            sims = self.image_embeddings.index_select(0, idx) @ text.T
        self.calls.append((int(group), len(idx)))
        return sims

    def _pooled(self, idx: torch.Tensor, pool: PooledGroup, options: torch.Tensor | None) -> torch.Tensor:
        flat, owner = pool.flat()
        text = self.text_cache.embed(flat)  # (P, D), every prompt of the group, embedded once
        n = len(pool.prompts)
        with torch.inference_mode():
            emb = self.image_embeddings.index_select(0, idx)
            if pool.how == "mean_embedding":
                sims = emb @ torch.nn.functional.normalize(segment_mean(text, owner, n, 0), dim=-1).T
            else:
                sims = segment_mean(emb @ text.T, owner, n, 1)
        self.calls.append((pool.group, len(idx)))
        return sims if options is None else sims.index_select(1, options.to(sims.device))

    def all_similarities(self) -> np.ndarray:
        """(B, Q) similarities to every prompt of the system (eager; for the full-system baseline)."""
        every = np.arange(self.n_images)
        return np.concatenate([self.similarities(every, g) for g in range(self.system.n_groups)], axis=1)
