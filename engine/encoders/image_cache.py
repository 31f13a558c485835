"""Image embeddings cached by (model id + dtype, image content hash), for benchmarks and sweeps.

A policy sweep re-scores the same images many times; :class:`ImageCache`
encodes each image once per model. The key of an image is the sha256 of its
file bytes (or, for an in-memory PIL image, of its mode, size and pixels), so
renaming or moving a file does not re-encode it and editing it does.

On disk (optional ``cache_dir``) each model has one safetensors file,
``<cache_dir>/images/<sha256 of the model identity>.safetensors``, holding an
(N, D) float32 tensor with the N content hashes as metadata. New embeddings
are merged in and the file is rewritten atomically (temp + rename). A file
that fails to load, or is not a regular file (a FIFO, never opened), is
ignored, reported with a warning and rebuilt. When two
processes add to the same file, the last rename wins: the file is always
complete and valid, and entries the other process added are re-encoded the
next time they are needed.

Memory bound: the cache keeps every embedding it has seen in memory, N × D
float32 (10,000 images of a 384-d model: 15 MB; 768-d: 31 MB), and rewrites
the whole file after each ``encode`` call that adds images. It is meant for
the fixed datasets of benchmarks, not for unbounded streams: classifying a
stream (``Classifier.iter_classify``, ``bench.soak``) uses no image cache and
holds one chunk at a time. A failed write (disk full) turns the disk copy off
for the rest of the run with one :class:`CacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from engine.encoders.base import Encoder, cache_identity
from engine.encoders.images import ImageLike, ImageLoadError
from engine.encoders.text_cache import CacheWarning, atomic_save_safetensors, read_safetensors
from engine.common.files import hash_file

FORMAT = "twentyq-images-v1"


def content_hash(image: ImageLike) -> str:
    """sha256 hex of a file's bytes, or of a PIL image's mode, size and pixels."""
    if isinstance(image, Image.Image):
        h = hashlib.sha256()
        h.update(f"pil:{image.mode}:{image.size}".encode())
        h.update(image.tobytes())
        return h.hexdigest()
    try:  # the guarded reader: a FIFO or device is never waited on
        return hash_file(image, what="image")
    except (OSError, ValueError) as e:
        raise ImageLoadError(str(image), getattr(e, "cause", None) or getattr(e, "strerror", None) or str(e)) from None


class ImageCache:
    """Encode images through a per-model cache (see the module docstring).

    Counters: ``encoded`` (images the model encoded) and ``hits`` (served from
    memory or disk).
    """

    def __init__(self, encoder: Encoder, cache_dir: str | os.PathLike | None = None):
        self.encoder = encoder
        self.identity = cache_identity(encoder)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._mem: dict[str, torch.Tensor] = {}
        self.encoded = 0
        self.hits = 0
        self._loaded = False
        self.disk_writes_ok = True

    @property
    def path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / "images" / f"{hashlib.sha256(self.identity.encode()).hexdigest()}.safetensors"

    def encode(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """(B, D) float32 unit embeddings on the encoder's device, in order."""
        self._load_disk()
        keys = [content_hash(im) for im in images]
        todo = {}
        for k, im in zip(keys, images):
            if k not in self._mem and k not in todo:
                todo[k] = im
        if todo:
            emb = self.encoder.encode_images(list(todo.values()))
            for k, row in zip(todo, emb):
                self._mem[k] = row
            self.encoded += len(todo)
            self._save_disk()
        self.hits += len(keys) - len(todo)
        if not keys:
            return torch.empty((0, self.encoder.embed_dim), device=self.encoder.device)
        return torch.stack([self._mem[k] for k in keys])

    def _load_disk(self) -> None:
        if self._loaded or self.path is None:
            self._loaded = True
            return
        self._loaded = True
        path = self.path
        if not path.exists():
            return
        try:
            tensors, meta = read_safetensors(path)
            emb = tensors["embeddings"]
            keys = json.loads(meta.get("keys", "null"))
            if meta.get("format") != FORMAT or meta.get("identity") != self.identity:
                raise ValueError("metadata names another model or format")
            if not isinstance(keys, list) or tuple(emb.shape) != (len(keys), self.encoder.embed_dim):
                raise ValueError(f"{len(keys) if isinstance(keys, list) else '?'} keys for a tensor of shape "
                                 f"{tuple(emb.shape)}")
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"image cache file {path} failed to load ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); ignoring it and re-encoding",
                          CacheWarning, stacklevel=3)
            return
        emb = emb.to(self.encoder.device)
        for k, row in zip(keys, emb):
            self._mem.setdefault(k, row)

    def _save_disk(self) -> None:
        if self.path is None or not self.disk_writes_ok:
            return
        keys = list(self._mem)
        meta = {"format": FORMAT, "identity": self.identity, "keys": json.dumps(keys)}
        try:
            atomic_save_safetensors({"embeddings": torch.stack([self._mem[k] for k in keys])}, self.path, meta)
        except OSError as e:
            self.disk_writes_ok = False
            warnings.warn(f"could not write the image cache in {self.cache_dir} ({e}); continuing without "
                          "writing it for the rest of this run", CacheWarning, stacklevel=3)
