"""Every fake encoder of the tests, defined once, and the model folders the encoder tests load.

- :class:`FakeEncoder`: D=8, knows three colours (images by mean colour, texts by the colour word); counts calls.
- :class:`HashEncoder`: a :class:`BaseEncoder` (batching, OOM halving, caches) whose vectors are seeded hashes.
- :class:`SimEncoder`: images -> their simulator rows, prompts -> unit vectors (the engine sees the simulator).
- faults: :class:`SlowEncoder` (sleeps), :class:`BrokenEncoder` (NaN/inf/zero rows), :class:`NanRowEncoder`,
  :class:`FlakyEncoder` (raises on chosen sizes), :class:`OOMEncoder` (out of memory above a batch size).
- :func:`tiny_model_dir` (random tiny CLIP/SigLIP folders, made once) and :func:`offline_encoder` (loaded once).

Everything is offline: HF_HUB_OFFLINE=1 is set before transformers is imported.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.encoders.base import BaseEncoder  # noqa: E402

from .data import COLOURS, solid  # noqa: E402

_TMP = Path(tempfile.mkdtemp(prefix="twentyq-enc-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

TINY_LOGIT_SCALE = {"clip": 42.0, "siglip": 7.5}


@lru_cache(maxsize=None)
def tiny_model_dir(kind: str = "clip") -> Path:
    """A random tiny CLIP or SigLIP folder (weights, tokenizer, image processor), made once."""
    from engine.testing.tiny_models import save_random_model

    return save_random_model(_TMP / f"tiny-{kind}", kind, logit_scale=TINY_LOGIT_SCALE[kind])


@lru_cache(maxsize=None)
def offline_encoder():
    from engine.encoders import load_encoder

    return load_encoder("offline", device="cpu")


class FakeEncoder:
    """Images embed by mean colour; texts by the colour word they contain, else a text hash.

    ``encode_images`` also accepts paths; it counts its calls so tests can check batching.
    """

    name = "fake"
    model_id = "fake@1"
    logit_scale = 50.0
    activation = "softmax"
    device = torch.device("cpu")
    dtype = torch.float32
    embed_dim = 8

    def __init__(self):
        self.image_calls = 0
        self.texts_encoded: list[str] = []

    def encode_images(self, images):
        from engine.encoders.images import load_image

        self.image_calls += 1
        rows = []
        for im in images:
            a = np.asarray(load_image(im), dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255.0
            v = np.zeros(self.embed_dim)
            v[:3] = a - a.mean() + 1e-3
            v[3] = 0.05
            rows.append(v)
        x = torch.tensor(np.array(rows).reshape(-1, self.embed_dim), dtype=torch.float32)
        return torch.nn.functional.normalize(x, dim=-1) if len(rows) else x

    def encode_texts(self, texts):
        self.texts_encoded.extend(texts)
        rows = []
        for t in texts:
            v = np.zeros(self.embed_dim)
            for i, c in enumerate(COLOURS):
                if c in t:
                    v[i] = 1.0
            h = np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) / 255.0
            v[3:] += 0.1 * h[:5]
            rows.append(v)
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=-1)


class SlowEncoder(FakeEncoder):
    """FakeEncoder that sleeps ``per_call_s`` on every image call and ``per_image_s`` per image, before answering."""

    def __init__(self, per_call_s: float = 0.0, per_image_s: float = 0.0):
        super().__init__()
        self.per_call_s, self.per_image_s = per_call_s, per_image_s

    def encode_images(self, images):
        time.sleep(self.per_call_s + self.per_image_s * len(images))
        return super().encode_images(images)


class NanRowEncoder(FakeEncoder):
    """FakeEncoder whose embedding of the image at position ``row`` of every batch is NaN."""

    def __init__(self, row: int = 1):
        super().__init__()
        self.row = row

    def encode_images(self, images):
        x = super().encode_images(images)
        if len(x) > self.row:
            x[self.row] = float("nan")
        return x


class BrokenEncoder(FakeEncoder):
    """FakeEncoder that returns NaN, inf or zeros for chosen image colours, or NaN for prompts with a word."""

    def __init__(self, image_faults=None, prompt_word=None):
        super().__init__()
        self.image_faults = image_faults or {}
        self.prompt_word = prompt_word

    def encode_images(self, images):
        from engine.encoders.images import load_image as load

        emb = super().encode_images(images)
        for i, im in enumerate(images):
            px = load(im).getpixel((0, 0))
            for colour, value in self.image_faults.items():
                if px == solid(colour).getpixel((0, 0)):
                    emb[i] = value
        return emb

    def encode_texts(self, texts):
        emb = super().encode_texts(texts)
        for i, t in enumerate(texts):
            if self.prompt_word and self.prompt_word in t:
                emb[i] = float("nan")
        return emb


class HashEncoder(BaseEncoder):
    """A deterministic D=8 encoder: texts and images map to seeded vectors. Records what it encodes."""

    def __init__(self, dim: int = 8, batch_size: int = 4, model_id: str = "hash@1"):
        self.name, self.model_id = "hash", model_id
        self.logit_scale, self.activation = 20.0, "softmax"
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.embed_dim, self.batch_size = dim, batch_size
        self.texts_encoded: list[str] = []
        self.text_calls = 0
        self.image_batches: list[int] = []

    @staticmethod
    def _vec(key: bytes, dim: int) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(dim)

    def _embed_texts(self, texts):
        self.text_calls += 1
        self.texts_encoded.extend(texts)
        return torch.tensor(np.array([self._vec(t.encode(), self.embed_dim) for t in texts]), dtype=torch.float32)

    def _embed_images(self, images):
        self.image_batches.append(len(images))
        rows = []
        for im in images:
            a = np.asarray(im, dtype=np.float64)
            rows.append(np.zeros(self.embed_dim) if not a.any() else self._vec(a.tobytes()[:4096], self.embed_dim))
        return torch.tensor(np.array(rows), dtype=torch.float32)


class FlakyEncoder(HashEncoder):
    """Raises ValueError for any batch that holds a 7x7 image, or an out-of-memory error for 9x9."""

    def _embed_images(self, images):
        if any(im.size == (7, 7) for im in images):
            raise ValueError("the model cannot take this one")
        if any(im.size == (9, 9) for im in images):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return super()._embed_images(images)


class OOMEncoder(HashEncoder):
    """Fails any batch larger than ``fits`` with an out-of-memory error of the chosen kind."""

    def __init__(self, fits: int, kind: str = "cuda", **kw):
        super().__init__(**kw)
        self.fits, self.kind, self.tried = fits, kind, []

    def _raise(self, n):
        self.tried.append(n)
        if n > self.fits:
            if self.kind == "cuda":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")

    def _embed_images(self, images):
        self._raise(len(images))
        return super()._embed_images(images)

    def _embed_texts(self, texts):
        self._raise(len(texts))
        return super()._embed_texts(texts)


class SimEncoder(BaseEncoder):
    """Images -> their simulator row of similarities (looked up by pixel hash); prompt i -> the i-th unit vector.

    The cosine of an image with prompt i is row[i] / ||row||, so the engine sees the simulator's similarities
    scaled by one number per image.
    """

    def __init__(self, system, rows: dict[str, np.ndarray], model_id: str = "sim@1"):
        self.name, self.model_id, self.logit_scale = "sim", model_id, 200.0
        self.device, self.dtype, self.batch_size = torch.device("cpu"), torch.float32, 64
        prompts = [p for g in system.groups for p in g.prompts()]
        self.index = {p: i for i, p in reversed(list(enumerate(prompts)))}
        self.embed_dim = len(prompts)
        self.rows = rows

    @staticmethod
    def key(im) -> str:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()

    def _embed_images(self, images):
        return torch.tensor(np.array([self.rows[self.key(im)] for im in images]), dtype=torch.float32)

    def _embed_texts(self, texts):
        out = torch.zeros((len(texts), self.embed_dim))
        for j, t in enumerate(texts):
            if t in self.index:
                out[j, self.index[t]] = 1.0
            else:  # a class-name prompt (baseline mode): a seeded random direction
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                out[j] = torch.tensor(np.random.default_rng(seed).standard_normal(self.embed_dim))
        return out
