"""The offline stand-in loads from installed packages with no network and gets an obvious case right."""

from __future__ import annotations

import os

import pytest
import torch

from .support.encoders import offline_encoder

from engine import classify_batch  # noqa: E402
from engine.run.encoder_source import EncoderSource  # noqa: E402
from engine.encoders import offline  # noqa: E402
from engine.encoders.offline import imagenet_classes  # noqa: E402
from engine.encoders.text_cache import TextCache  # noqa: E402
from systems import baseline_system  # noqa: E402

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides the cat photo")


@pytest.fixture(scope="module")
def enc():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return offline_encoder()


@pytest.fixture(scope="module")
def cat():
    from PIL import Image

    return Image.fromarray(skimage_data.chelsea())


def test_loads_offline_and_declares_itself(enc):
    assert enc.name == "offline"
    assert enc.model_id.startswith("offline-conse:efficientnet-lite0@")
    assert enc.embed_dim == 384 and enc.device == torch.device("cpu") and enc.dtype == torch.float32
    assert "NOT CLIP" in offline.__doc__ and "stand-in" in offline.__doc__
    assert len(imagenet_classes()) == 1000 and imagenet_classes()[281] == "tabby"


@pytest.mark.slow
def test_cat_photo_is_closer_to_cat_than_rocket(enc, cat):
    x = enc.encode_images([cat])
    t = enc.encode_texts(["a photo of a cat", "a photo of a rocket"])
    assert x.shape == (1, 384) and torch.allclose(x.norm(dim=1), torch.ones(1), atol=1e-5)
    sims = (x @ t.T)[0]
    assert sims[0] > sims[1] + 0.1
    top = enc.imagenet_probs([cat]).argmax().item()
    assert imagenet_classes()[top] in {"tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"}


@pytest.mark.slow
def test_baseline_through_the_engine(enc, cat):
    system = baseline_system(["cat", "rocket", "car", "pizza"], template="a photo of a {}.")
    cache = TextCache(enc)
    res = classify_batch(EncoderSource(enc, cache, system, enc.encode_images([cat, cat.rotate(90)])), system,
                         "fixed", logit_scale=enc.logit_scale)
    assert [r.label for r in res] == ["cat", "cat"]
    assert cache.text_encodes == 4
