"""Shared helpers for the encoder tests: tiny random CLIP/SigLIP folders, a hash encoder, systems.

Everything is offline: HF_HUB_OFFLINE=1 is set before transformers is imported,
tiny models are written once per test session into a temp folder, and the
offline stand-in is loaded once per session.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine.encoders.base import BaseEncoder  # noqa: E402
from systems.format import AttributeSystem, Group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="twentyq-enc-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

TINY_LOGIT_SCALE = {"clip": 42.0, "siglip": 7.5}


@lru_cache(maxsize=None)
def tiny_model_dir(kind: str = "clip") -> Path:
    """A random tiny CLIP or SigLIP folder (weights, tokenizer, image processor), made once."""
    from bench.tiny_models import save_random_model

    return save_random_model(_TMP / f"tiny-{kind}", kind, logit_scale=TINY_LOGIT_SCALE[kind])


@lru_cache(maxsize=None)
def offline_encoder():
    from engine.encoders import load_encoder

    return load_encoder("offline", device="cpu")


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


def five_group_system(k: int = 3, n_classes: int = 6) -> AttributeSystem:
    """5 groups of k options each; class c takes option (c + g) % k in group g."""
    groups = tuple(Group(name=f"g{g}", template=f"question {g}: is it {{}}?",
                         options=tuple(f"opt{g}_{j}" for j in range(k))) for g in range(5))
    rules = tuple(tuple(frozenset([(c * (g + 1)) % k]) for g in range(5)) for c in range(n_classes))
    return AttributeSystem(name="five", classes=tuple(f"class{c}" for c in range(n_classes)), groups=groups,
                           rules=rules)


def noise_image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_labelled_noise(folder: Path, system: AttributeSystem, n: int = 24, prefix: str = "") -> Path:
    """n noise PNGs ``{prefix}{i}.png`` in ``folder``, labelled with ``system``'s classes in turn, and their
    ``labels.csv`` (path,label); returns the CSV's path."""
    import csv

    folder = Path(folder)
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in range(n):
            noise_image(i).save(folder / f"{prefix}{i}.png")
            w.writerow([f"{prefix}{i}.png", system.classes[i % system.n_classes]])
    return folder / "labels.csv"
