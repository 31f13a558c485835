"""The encoder protocol and a base class that does batching, image loading and normalisation.

Contract (every backend)
------------------------
``encode_images(images) -> torch.Tensor`` of shape (B, D), dtype float32, on
``encoder.device``, every row L2-normalised. ``images`` is a sequence of paths
or PIL images; they are loaded with :func:`engine.encoders.images.load_image`
(RGB, first frame, white background, EXIF orientation).

``encode_texts(texts) -> torch.Tensor`` of shape (T, D), float32, on
``encoder.device``, rows L2-normalised.

Embeddings stay on the encoder's device as torch tensors, so the similarity
of a group is one matmul there (:mod:`engine.run.encoder_source`); call
``.float().cpu().numpy()`` to get a float32 numpy array. The model computes in
``encoder.dtype`` (fp16/bf16 on a GPU); the normalisation and the returned
embeddings are float32 always.

A row whose model output is all zeros, or holds NaN or inf, cannot be
normalised and comes back as NaN (:func:`nonfinite_rows` finds them), so the
engine reports that image as an error instead of scoring it.

Out of memory: when a batch raises ``torch.cuda.OutOfMemoryError`` (or a
RuntimeError saying "out of memory", as MPS and older torch do), the batch is
split in half and retried, down to one item; the smaller size is kept for the
rest of the encoder's life (``batch_size`` / ``text_batch_size`` are lowered
and an :class:`OutOfMemoryWarning` says so once per halving). If one item
still does not fit, :class:`EncoderOutOfMemory` names the device and the fix.

Attributes
----------
name : str — the model string it was loaded from ("offline", a hub id, a path).
model_id : str — stable identity used in cache keys: the hub id with the
    resolved commit, or a hash of the weights for a local folder.
logit_scale : float — λ, the model's own ``logit_scale.exp()`` where it has one.
activation : "softmax" or "sigmoid" — how the model was trained to turn
    similarities into probabilities. The engine scores each group with a
    softmax over its options either way (see ``engine.encoders.hf``).
device : torch.device; dtype : torch.dtype; batch_size : int; embed_dim : int (D).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from engine.common.errors import OneLineWarning
from engine.encoders.device import dtype_name
from engine.encoders.images import ImageLike, ImageLoadError, batches, image_label, load_image, load_images
from engine.encoders.text_shapes import TextBuckets, bucket_for, pad_batch, padding_is_invisible
from engine.encoders.pixels import PixelPlan, normalise, resize_crop_pil

#: how images become model input: "fast" (the pixel plan) or "processor" (the model's own, the reference)
PREPROCESS = ("fast", "processor")
NONFINITE_IMAGE = ("the encoder returned NaN/inf or a zero vector for this image (blank or degenerate input, "
                   "or a numerical fault in the model)")


class EncoderLoadError(RuntimeError):
    """A model that could not be loaded; the message names it, the cause and the fix."""


class RemoteCodeRefused(EncoderLoadError):
    """A model that needs ``trust_remote_code=True`` was asked for without it."""


class EncoderOutOfMemory(RuntimeError):
    """The device ran out of memory even at batch size 1."""




class OutOfMemoryWarning(OneLineWarning, RuntimeWarning):
    """A batch ran out of device memory and was retried at half the size."""


class BucketWarning(OneLineWarning, RuntimeWarning):
    """Padding changed a model's text embeddings, so its prompts are not bucketed (see text_shapes)."""


class PromptTruncatedWarning(OneLineWarning, UserWarning):
    """A group's prompts are longer than the text encoder reads (see :func:`check_prompt_lengths`)."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a device out-of-memory error (CUDA's own type, or any RuntimeError saying so)."""
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(e, oom_type):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _free_device_memory(device: Any) -> None:
    if getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


@runtime_checkable
class Encoder(Protocol):
    """An image-text embedding model (see the module docstring for the contract)."""

    name: str
    model_id: str
    logit_scale: float
    activation: str
    device: torch.device
    dtype: torch.dtype
    embed_dim: int

    def encode_images(self, images: Sequence[ImageLike]) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def cache_identity(encoder: Encoder) -> str:
    """The string cache keys are built from: model id and compute dtype."""
    return f"{encoder.model_id}|{dtype_name(encoder.dtype)}"


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size == {batch_size!r}, must be a whole number >= 1")
    return int(batch_size)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (n, D) as float32 unit vectors; an all-zero row becomes NaN."""
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def nonfinite_rows(x: torch.Tensor | np.ndarray) -> list[int]:
    """Indices of the rows of an (n, D) embedding that hold NaN or inf, or are all zero.

    A BaseEncoder's zero rows are already NaN (they cannot be normalised); an
    encoder outside this package may return them raw.
    """
    t = torch.as_tensor(x)
    if t.numel() == 0:
        return []
    bad = ~torch.isfinite(t).all(dim=-1) | (t == 0).all(dim=-1)
    return torch.nonzero(bad).flatten().tolist()





def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one string; wrap it in a list")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, must be str")
    return texts


class BaseEncoder:
    """Shared machinery: subclasses implement ``_embed_images`` and ``_embed_texts``.

    Both hooks receive at most ``batch_size`` items, are called under
    ``torch.inference_mode()``, and return an (n, D) tensor on the device, in
    any float dtype; this class normalises and concatenates.
    """

    name: str
    model_id: str
    logit_scale: float
    activation: str = "softmax"
    device: torch.device
    dtype: torch.dtype
    embed_dim: int
    batch_size: int = 32
    text_batch_size: int | None = None  # default: batch_size
    #: the most tokens the text encoder reads; a longer prompt is cut there (None: unknown or no limit)
    max_text_tokens: int | None = None
    #: the model's image preprocessing as data, for the fast image path (None: this backend has none)
    pixel_plan: PixelPlan | None = None
    #: "fast": images resized by :attr:`pixel_plan` (decode workers, GPU decode) and normalised on the
    #: device; "processor": the model's own image processor, the reference (see :data:`PREPROCESS`)
    preprocess_mode: str = "fast"

    def count_text_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens each text has before truncation (special tokens included); None if the encoder cannot tell."""
        tok = getattr(self, "tokenizer", None)
        if tok is None or not callable(tok):
            return None
        return count_tokens(tok, _check_texts(texts))

    #: the shapes text batches are padded to (None: not bucketed; see :mod:`engine.encoders.text_shapes`)
    text_buckets: TextBuckets | None = None

    # -- hooks ---------------------------------------------------------------
    def _embed_images(self, images: list) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- text shapes (encoders that tokenise themselves: _bucket_plan, _tokenize, _text_forward) -----------
    def _bucket_plan(self) -> TextBuckets | None:
        """The buckets this encoder can pad to (None: it cannot bucket, e.g. it tokenises inside its model)."""
        return None

    def _text_forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, D) raw text features of a tokenised batch {name: (B, L)} (on the CPU; moved here)."""
        raise NotImplementedError

    def _text_tower(self) -> tuple[Any, str] | None:
        """(object, attribute) holding the text tower module, for :meth:`compile_text` (None: none)."""
        return None

    def _tokenize(self, texts: list[str], *, max_length: int, fixed_length: bool = False
                  ) -> tuple[dict[str, torch.Tensor], int]:
        """Token tensors {name: (B', L')} of ``texts`` and n = len(texts): the rows to keep.

        Unbucketed: padded to the longest text (``fixed_length``: to ``max_length``), B' = n.
        Bucketed (:attr:`text_buckets`): L' and B' rounded up to a bucket, extra rows copying row 0.
        Every shape run is recorded in ``text_shapes`` (for warm-up checks).
        """
        enc = dict(self.tokenizer(texts, padding="max_length" if fixed_length else True, truncation=True,
                                  max_length=max_length, return_tensors="pt"))
        n = len(texts)
        plan = self.text_buckets
        if plan is not None:
            length = None if plan.lengths is None else bucket_for(enc["input_ids"].shape[1], plan.lengths)
            size = getattr(self, "text_batch_size", None) or self.batch_size  # lowered by an out-of-memory
            rows = min(bucket_for(n, plan.rows), max(n, size))
            enc = pad_batch(enc, length=length, rows=rows, pad_id=self._pad_id())
        self._note_shape(enc)
        return enc, n

    def _note_shape(self, enc: dict[str, torch.Tensor]) -> None:
        """Record the (rows, tokens) shape of a batch the text tower is about to run (``text_shapes``)."""
        self.__dict__.setdefault("text_shapes", set()).add(tuple(enc["input_ids"].shape))

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def set_text_buckets(self, on: bool) -> bool:
        """Pad text batches to buckets (on) or to the longest prompt (off); True if bucketing is on after.

        Turning it on checks once that padding leaves this model's embeddings unchanged (two short
        prompts, unpadded and padded to the largest length and smallest row bucket); if it does
        not, bucketing stays off and a :class:`BucketWarning` says so.
        """
        plan = self._bucket_plan() if on else None
        self.text_buckets = None
        if plan is None:
            return False
        probe = ["a photo of a cat.", "a red one"]
        with torch.inference_mode():
            enc, n = self._tokenize(probe, **self._tokenize_args())
            plain = self._text_forward(enc)
            padded = self._text_forward(pad_batch(enc, length=None if plan.lengths is None else plan.lengths[-1],
                                                  rows=max(n, plan.rows[0]), pad_id=self._pad_id()))[:n]
        if not padding_is_invisible(plain, padded, self.dtype):
            warnings.warn(f"{self.name}: padding a prompt changes its text embedding, so prompts are not padded to "
                          "bucketed shapes for this model (each new batch shape may pay a first-call cost)",
                          BucketWarning, stacklevel=2)
            return False
        self.text_buckets = plan
        return True

    def _tokenize_args(self) -> dict[str, Any]:
        return {"max_length": int(self.max_text_tokens or 512)}

    def warm_up_text(self) -> int:
        """Run the text tower once on every bucketed shape (or once on one prompt when not bucketed),
        so the first real ask pays no first-call cost; returns the number of forward passes."""
        plan = self.text_buckets
        with torch.inference_mode():
            if plan is None:
                self._embed_texts(["a photo"])
                return 1
            enc, _ = self._tokenize(["a photo"], **self._tokenize_args())
            for rows, length in plan.shapes():
                shaped = pad_batch(enc, length=length, rows=rows, pad_id=self._pad_id())
                self._note_shape(shaped)
                self._text_forward(shaped)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return len(plan.shapes())

    def compile_text(self) -> bool:
        """Wrap the text tower in ``torch.compile`` (CUDA graphs on CUDA: mode "reduce-overhead");
        True if done, False where the encoder has no tower to compile or torch has no compile.

        Call after :meth:`set_text_buckets`: with buckets, one graph per bucketed shape (torch's
        process-wide recompile limit is raised to hold them all), compiled by :meth:`warm_up_text`.
        """
        where = self._text_tower()
        if where is None or not hasattr(torch, "compile"):
            return False
        owner, attr = where
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        # bucketed shapes repeat, so one graph per shape; unbucketed, let torch compile shape-generic code
        dynamic = False if self.text_buckets is not None else None
        if self.text_buckets is not None:  # torch's own limit (8 graphs per function) is below the shapes
            cfg = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, name):
                    setattr(cfg, name, max(int(getattr(cfg, name)), len(self.text_buckets.shapes()) + 8))
        setattr(owner, attr, torch.compile(getattr(owner, attr), mode=mode, dynamic=dynamic))
        return True
    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(n, 3, h, w) model input (normalised, ``self.dtype``, on the device) -> (n, D); backends
        with a :attr:`pixel_plan` implement it."""
        raise NotImplementedError

    # -- the fast image path -------------------------------------------------
    def fast_plan(self) -> PixelPlan | None:
        """The plan of the fast image path, or None when images go through ``_embed_images``
        (the backend has no plan, or ``preprocess_mode == "processor"``, the reference)."""
        return self.pixel_plan if self.preprocess_mode == "fast" else None

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) uint8 pixels, resized and cropped by :attr:`pixel_plan` (see
        :mod:`engine.encoders.image_pool`) -> (B, D) float32 unit rows on ``self.device``.
        Rescaled and normalised on the device, in batches of ``batch_size``."""
        plan = self.pixel_plan
        if plan is None:
            raise RuntimeError(f"{self.name}: this encoder has no pixel plan; use encode_images")

        def hook(part: torch.Tensor) -> torch.Tensor:
            return self._embed_pixels(normalise(part, plan, self.device, self.dtype))

        with torch.inference_mode():
            return self._cat(self._embed_batched(pixels, hook, "batch_size", "image"))

    # -- public --------------------------------------------------------------
    def encode_images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """(B, D) float32 unit rows on ``self.device``; images loaded one batch at a time."""
        if isinstance(images, (str, os.PathLike, Image.Image, bytes, bytearray)):
            images = [images]
        plan = self.fast_plan()
        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for chunk in batches(list(images), self.batch_size):
                if plan is not None:  # the same pixels as the processor's (resize_crop_pil), normalised here
                    px = torch.from_numpy(np.stack([resize_crop_pil(im, plan) for im in load_images(chunk)]))
                    out.append(self.encode_pixels(px.permute(0, 3, 1, 2)))
                else:
                    out += self._embed_batched(load_images(chunk), self._embed_images, "batch_size", "image")
        return self._cat(out)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, D) float32 unit rows on ``self.device``."""
        texts = _check_texts(texts)
        out: list[torch.Tensor] = []
        size_attr = "text_batch_size" if self.text_batch_size else "batch_size"
        with torch.inference_mode():
            for chunk in batches(texts, getattr(self, size_attr)):
                out += self._embed_batched(chunk, self._embed_texts, size_attr, "text")
        return self._cat(out)

    def _embed_batched(self, items: list, hook: Callable[[list], torch.Tensor], size_attr: str,
                       what: str) -> list[torch.Tensor]:
        """Normalised embeddings of ``items`` through ``hook``, halving the batch on out-of-memory.

        ``size_attr`` names the batch-size attribute lowered when a batch does not fit.
        """
        out, i = [], 0
        size = min(len(items), getattr(self, size_attr) or len(items))  # lowered by an earlier OOM
        while i < len(items):
            part = items[i:i + size]
            try:
                emb = hook(part)
            except Exception as e:  # noqa: BLE001  (only out-of-memory is handled; the rest re-raised)
                if not is_out_of_memory(e):
                    raise
                _free_device_memory(self.device)
                cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                if len(part) == 1:
                    raise EncoderOutOfMemory(
                        f"{self.name}: out of memory on {self.device} with one {what} per batch ({cause}); "
                        "free the device, use a smaller model or --dtype fp16/bf16, or run on --device cpu"
                    ) from None
                size = max(1, len(part) // 2)
                setattr(self, size_attr, min(size, getattr(self, size_attr) or size))
                warnings.warn(f"{self.name}: out of memory on {self.device} with {len(part)} {what}s per batch; "
                              f"retrying with {size} (and using {size_attr}={size} from now on)",
                              OutOfMemoryWarning, stacklevel=4)
                continue
            out.append(l2_normalise(emb))
            i += len(part)
        return out

    def _cat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if not parts:
            return torch.empty((0, self.embed_dim), dtype=torch.float32, device=self.device)
        out = torch.cat(parts)
        if out.ndim != 2 or out.shape[1] != self.embed_dim:
            raise RuntimeError(f"{self.name}: expected embeddings (n, {self.embed_dim}), got {tuple(out.shape)}")
        return out

    def describe(self) -> dict[str, Any]:
        """Metadata for results and benchmark records."""
        return {"model": self.name, "model_id": self.model_id, "backend": type(self).__name__,
                "device": str(self.device), "dtype": dtype_name(self.dtype), "embed_dim": int(self.embed_dim),
                "logit_scale": float(self.logit_scale), "activation": self.activation}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, model_id={self.model_id!r}, device={str(self.device)!r}, "
                f"dtype={dtype_name(self.dtype)!r}, logit_scale={self.logit_scale:.4g})")


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` with a transformers tokenizer, untruncated and without its length warning."""
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, padding=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def check_prompt_lengths(encoder: Encoder, system: Any) -> list[str]:
    """One-line warnings for the groups whose prompts the encoder's tokenizer would cut off.

    A prompt longer than ``encoder.max_text_tokens`` is truncated; when what tells
    the options apart lies past the cut (a long template with ``{}`` near the end),
    every option of the group embeds identically and the question carries no
    information. Nothing is refused (warn-only). Encoders that cannot count
    tokens (no ``count_text_tokens`` / ``max_text_tokens``) give no warnings.
    ``system`` is an :class:`systems.format.AttributeSystem`; its baseline
    template is checked over the class names too.
    """
    limit = getattr(encoder, "max_text_tokens", None)
    count = getattr(encoder, "count_text_tokens", None)
    if not limit or count is None:
        return []
    checks = [(f"group {g.name!r}", list(g.prompts())) for g in system.groups]
    baseline = getattr(system, "baseline_template", None)
    if baseline:
        checks.append(("the baseline template", [baseline.replace("{}", c) for c in system.classes]))
    out = []
    for what, prompts in checks:
        counts = count(prompts)
        if counts is None:
            return []
        over = [n for n in counts if n > limit]
        if over:
            same = " (every one of its prompts is cut before the part that differs, so they all embed identically)" \
                if len(over) == len(counts) and _same_prefix(encoder, prompts, limit) else ""
            out.append(f"{what}: {len(over)} of {len(counts)} prompts are longer than the {limit} tokens "
                       f"{getattr(encoder, 'name', 'the encoder')} reads (the longest has {max(over)}); the text "
                       f"past the limit is cut off{same}; shorten the template")
    return out


def _same_prefix(encoder: Any, prompts: list[str], limit: int) -> bool:
    """Whether the first ``limit`` tokens of every prompt are the same (so they embed identically)."""
    tok = getattr(encoder, "tokenizer", None)
    if tok is None or not callable(tok):
        return False
    try:
        ids = tok(prompts, add_special_tokens=True, truncation=True, max_length=limit, verbose=False)["input_ids"]
    except Exception:  # noqa: BLE001  (a hint only)
        return False
    return len({tuple(x) for x in ids}) == 1


def encode_images_tolerant(encoder: Encoder, images: Sequence[ImageLike],
                           names: Sequence[str] | None = None, *, loader: Any = None
                           ) -> tuple[torch.Tensor, np.ndarray, dict[int, str]]:
    """Embed the images that load; every bad one becomes a one-line error, and no good result is lost.

    The one tolerant embedder (the classifier, refinement and the Ray workers use it).

    Parameters
    ----------
    encoder : any :class:`Encoder`.
    images : paths, PIL images or encoded bytes.
    names : what messages call each input (default: its path, or "<PIL image WxH>" / "<N bytes>").
    loader : an :class:`engine.encoders.image_pool.ImageLoader` for an encoder with a fast plan
        (``encoder.fast_plan()``); default: one that decodes in this process.

    Returns
    -------
    emb : (n_good, D) float32 unit rows on ``encoder.device``, in input order.
    good : (n_good,) int64 indices of the inputs ``emb`` holds.
    errors : {index: one-line message} for every other input.

    Rules: each image is decoded on its own (:func:`load_image`; *any* exception
    while decoding it is its error, naming the exception type). The good ones
    are embedded in batches of ``encoder.batch_size``; if a batch raises
    anything but out-of-memory, its images are retried one by one, so one image
    the model chokes on cannot take the others down. Out of memory is not an
    image's fault: the encoder halves its batch itself and, at one image,
    raises :class:`EncoderOutOfMemory`, which propagates. A row that comes back
    NaN/inf or all zero is an error (:data:`NONFINITE_IMAGE`).
    """
    images = list(images)
    if names is not None and len(names) != len(images):
        raise ValueError(f"names has {len(names)} entries for {len(images)} images")
    labels = [str(names[i]) if names is not None else image_label(im) for i, im in enumerate(images)]
    plan = encoder.fast_plan() if callable(getattr(encoder, "fast_plan", None)) else None
    if plan is not None:
        if loader is None:
            from engine.encoders.image_pool import ImageLoader

            loader = ImageLoader(plan, 0, device=encoder.device, gpu_decoder=False)
        return embed_decoded(encoder, loader.load(images, None if names is None else [str(n) for n in names]),
                             labels)

    loaded: list[tuple[int, Image.Image]] = []
    errors: dict[int, str] = {}
    for i, im in enumerate(images):
        try:
            loaded.append((i, load_image(im, name=None if names is None else str(names[i]))))
        except ImageLoadError as e:
            errors[i] = str(e)
        except Exception as e:  # noqa: BLE001  (load_image wraps decoding errors; this is for the rest)
            errors[i] = f"cannot load image {labels[i]!r}: {type(e).__name__}: {_one_line(e)}"
    return _embed_tolerant(encoder, loaded, lambda part: encoder.encode_images([im for _, im in part]),
                           labels, errors)


def embed_decoded(encoder: Any, batch: Any, labels: Sequence[str]) -> tuple[torch.Tensor, np.ndarray, dict[int, str]]:
    """:func:`encode_images_tolerant`'s embedding half for a decoded batch
    (:class:`engine.encoders.image_pool.DecodedBatch`: (n, 3, h, w) uint8 pixels, their input indices,
    the decode errors); ``labels`` name every input. Same returns and rules."""
    pixels = batch.pixels
    loaded = [(i, j) for j, i in enumerate(batch.good.tolist())]  # (input index, row in pixels)

    def rows(part: list[tuple[int, int]]) -> torch.Tensor:
        first, last = part[0][1], part[-1][1]
        if last - first + 1 == len(part):  # consecutive rows: a view, memory format kept (channels-last)
            return pixels[first:last + 1]
        return pixels[[j for _, j in part]].contiguous(memory_format=torch.channels_last)

    return _embed_tolerant(encoder, loaded, lambda part: encoder.encode_pixels(rows(part)), labels,
                           dict(batch.errors))


def _embed_tolerant(encoder: Any, loaded: list[tuple[int, Any]], encode: Callable[[list], Any],
                    labels: Sequence[str], errors: dict[int, str]) -> tuple[torch.Tensor, np.ndarray, dict[int, str]]:
    """Embed ``loaded`` [(input index, item)] with ``encode(part)`` in batches, one by one after a failure.

    An image the encoder fails on is that image's error, unless it fails on every image it was given and on a
    plain grey test image too: then the encoder is broken, not the images, and its first exception is raised
    (a bug, not a bad input)."""
    rows: list[torch.Tensor] = []
    good: list[int] = []
    failures: list[BaseException] = []

    def label(i: int) -> str:
        return labels[i]

    def embed(part: list[tuple[int, Any]]) -> None:
        emb = encode(part)
        if not isinstance(emb, torch.Tensor):
            emb = torch.as_tensor(np.asarray(emb, dtype=np.float32))
        if emb.ndim != 2 or emb.shape[0] != len(part):
            raise RuntimeError(f"{getattr(encoder, 'name', 'encoder')}: {len(part)} images gave embeddings of "
                               f"shape {tuple(emb.shape)}")
        bad = set(nonfinite_rows(emb))
        for j, (i, _) in enumerate(part):
            if j in bad:
                errors[i] = f"{label(i)}: {NONFINITE_IMAGE}"
            else:
                good.append(i)
                rows.append(emb[j])

    size = max(1, int(getattr(encoder, "batch_size", None) or 32))
    for part in batches(loaded, size):
        try:
            embed(part)
        except EncoderOutOfMemory:
            raise
        except Exception as e:  # noqa: BLE001  (out of memory is re-raised; anything else: retry one by one)
            if is_out_of_memory(e):
                raise
            if len(part) == 1:
                i = part[0][0]
                errors[i] = f"{label(i)}: the encoder failed on this image ({type(e).__name__}: {_one_line(e)})"
                failures.append(e)
                continue
            for one in part:
                try:
                    embed([one])
                except EncoderOutOfMemory:
                    raise
                except Exception as e1:  # noqa: BLE001
                    if is_out_of_memory(e1):
                        raise
                    i = one[0]
                    errors[i] = (f"{label(i)}: the encoder failed on this image "
                                 f"({type(e1).__name__}: {_one_line(e1)})")
                    failures.append(e1)
    if loaded and len(failures) == len(loaded) and not _encodes_a_plain_image(encoder):
        raise failures[0]
    dim = int(getattr(encoder, "embed_dim"))
    if rows:
        emb = torch.stack(rows).float()
    else:
        emb = torch.empty((0, dim), dtype=torch.float32, device=encoder.device)
    return emb, np.asarray(good, dtype=np.int64), errors


def _encodes_a_plain_image(encoder: Any) -> bool:
    """Whether ``encoder`` embeds a plain 64x64 grey image: told apart, an encoder that fails on every image
    it was given is broken (False) or was given only images it cannot take (True)."""
    from PIL import Image

    try:
        encoder.encode_images([Image.new("RGB", (64, 64), (128, 128, 128))])
    except Exception:  # noqa: BLE001  (whatever it raises: it does not work)
        return False
    return True


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
