"""A third-party twentyq plug-in, as an outside package would write it (used by tests/test_plugins.py).

It registers one policy (``first_group``) and one encoder backend (``demo-hash``) through entry points.
"""

import hashlib

import numpy as np
import torch

from engine.encoders.base import BaseEncoder
from policies import Policy


class FirstGroup(Policy):
    """Asks the groups in system order (the first available one)."""

    name = "first_group"

    def select(self, state):
        return np.argmax(state.available, axis=1)


class HashEncoder(BaseEncoder):
    """Texts and images become seeded vectors (D=16); no weights."""

    def __init__(self, model: str, device: str = "auto"):
        self.name, self.model_id = model, f"{model}@1"
        self.logit_scale, self.activation = 20.0, "softmax"
        self.device, self.dtype, self.embed_dim, self.batch_size = torch.device("cpu"), torch.float32, 16, 8

    @staticmethod
    def _vec(key: bytes) -> np.ndarray:
        return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little")).standard_normal(16)

    def _embed_texts(self, texts):
        return torch.tensor(np.array([self._vec(t.encode()) for t in texts]), dtype=torch.float32)

    def _embed_images(self, images):
        return torch.tensor(np.array([self._vec(np.asarray(im).tobytes()[:4096]) for im in images]),
                            dtype=torch.float32)


def load(model, *, device="auto", dtype=None, revision=None, trust_remote_code=False, **options):
    return HashEncoder(model, device)


load.note = "demo plug-in: seeded hash vectors, not a real model"
load.offline = True
