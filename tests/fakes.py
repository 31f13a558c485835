"""A seeded fake encoder (D=8) that knows three colours, and image helpers."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

COLOUR_SYSTEM = {
    "name": "colours",
    "baseline_template": "a photo of {}",
    "groups": [
        {"name": "color", "template": "something {} in color", "options": ["red", "green", "blue"]},
        {"name": "texture", "template": "it looks {}", "options": ["smooth", "rough"]},
        {"name": "glow", "template": "it is {}", "options": ["bright", "dark"]},
    ],
    "rules": {
        "cherry": {"color": "red", "texture": "smooth", "glow": "bright"},
        "leaf": {"color": "green", "texture": "rough", "glow": "dark"},
        "sea": {"color": "blue", "texture": "smooth", "glow": None},
    },
}


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


def solid(colour: str, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[colour])
