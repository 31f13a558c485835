"""Encoders: device/dtype, tiny CLIP and SigLIP through load_encoder, jina-clip with a stand-in, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from .support.data import five_group_system, noise_image
from .support.encoders import TINY_LOGIT_SCALE, HashEncoder, tiny_model_dir

import transformers  # noqa: E402  (after HF_HUB_OFFLINE is set)

from engine.run.encoder_source import EncoderSource  # noqa: E402
from engine.encoders import (  # noqa: E402
    Encoder, EncoderLoadError, RemoteCodeRefused, list_models, load_encoder, resolve_device, resolve_dtype,
)
from engine.encoders.device import dtype_name  # noqa: E402
from engine.encoders.text_cache import TextCache  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------- device and dtype
def test_device_auto_and_explicit():
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if HAS_CUDA else "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == dev
    with pytest.raises(ValueError, match="must be one of"):
        resolve_device("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_device_cuda_absent_says_so():
    with pytest.raises(ValueError, match="CUDA is not available.*device='auto' or 'cpu'"):
        resolve_device("cuda")


def test_dtype_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("bf16", cuda) == torch.bfloat16
    assert resolve_dtype(torch.float16, cuda) == torch.float16
    assert resolve_dtype("fp32", cpu) == torch.float32
    with pytest.raises(ValueError, match="half precision needs a GPU; pass dtype='fp32'"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="dtype == 'int8'"):
        resolve_dtype("int8", cuda)
    assert dtype_name(torch.bfloat16) == "bf16"


# --------------------------------------------------------------------------- CLIP and SigLIP
@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny(request):
    return request.param, load_encoder(str(tiny_model_dir(request.param)), device="cpu", batch_size=2)


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_tiny_model_contract(tiny):
    kind, enc = tiny
    assert isinstance(enc, Encoder)
    imgs = [noise_image(i) for i in range(5)]
    x = enc.encode_images(imgs)
    t = enc.encode_texts(["a photo of a cat", "a photo of a rocket", "x"])
    assert x.shape == (5, enc.embed_dim) and t.shape == (3, enc.embed_dim)
    assert x.dtype == t.dtype == torch.float32
    assert x.device == t.device == torch.device("cpu") == enc.device
    assert torch.allclose(x.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(t.norm(dim=1), torch.ones(3), atol=1e-5)
    assert enc.dtype == torch.float32 and next(enc.model.parameters()).dtype == torch.float32
    assert enc.logit_scale == pytest.approx(TINY_LOGIT_SCALE[kind], rel=1e-5)  # read from the checkpoint
    assert enc.activation == ("sigmoid" if kind == "siglip" else "softmax")
    assert enc.model_id.startswith(f"local:tiny-{kind}@sha256:")
    # batching does not change results
    assert torch.allclose(x, load_encoder(str(tiny_model_dir(kind)), device="cpu", batch_size=8)
                          .encode_images(imgs), atol=1e-5)


def test_tiny_model_matches_the_models_own_logits(tiny):
    kind, enc = tiny
    imgs = [noise_image(10), noise_image(11)]
    texts = ["a red thing", "a blue thing that is long"]
    sims = enc.encode_images(imgs) @ enc.encode_texts(texts).T
    px = enc.image_processor(images=imgs, return_tensors="pt")["pixel_values"]
    tok = enc.tokenizer(texts, padding="max_length" if kind == "siglip" else True, truncation=True,
                        max_length=enc.max_length, return_tensors="pt")
    kw = {"input_ids": tok["input_ids"]}
    if kind == "clip":
        kw["attention_mask"] = tok["attention_mask"]
    with torch.no_grad():
        out = enc.model(pixel_values=px, **kw)
    logits = out.logits_per_image
    if kind == "siglip":
        logits = logits - enc.model.logit_bias
    assert torch.allclose(sims * enc.logit_scale, logits, atol=1e-4)


def test_siglip_text_embedding_does_not_depend_on_the_batch():
    enc = load_encoder(str(tiny_model_dir("siglip")), device="cpu")
    alone = enc.encode_texts(["a"])
    with_long = enc.encode_texts(["a", "a much longer sentence that pads the batch out"])
    assert torch.allclose(alone[0], with_long[0], atol=1e-5)


def test_model_id_follows_the_weights(tmp_path):
    from engine.testing.tiny_models import save_random_model

    a = load_encoder(str(save_random_model(tmp_path / "m", "clip", seed=1)), device="cpu")
    b = load_encoder(str(tmp_path / "m"), device="cpu")
    c = load_encoder(str(save_random_model(tmp_path / "m2", "clip", seed=2)), device="cpu")
    assert a.model_id == b.model_id
    assert a.model_id.split("@")[1] != c.model_id.split("@")[1]


def test_half_precision_on_cpu_is_refused():
    with pytest.raises(ValueError, match="half precision needs a GPU"):
        load_encoder(str(tiny_model_dir("clip")), device="cpu", dtype="fp16")


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_fp16_on_cuda():
    enc = load_encoder(str(tiny_model_dir("clip")), device="cuda", dtype="fp16")
    x = enc.encode_images([noise_image(0)])
    assert next(enc.model.parameters()).dtype == torch.float16
    assert x.dtype == torch.float32 and x.device.type == "cuda"


def test_truncate_dim_is_for_jina_only():
    with pytest.raises(ValueError, match="truncate_dim applies only to jina-clip"):
        load_encoder(str(tiny_model_dir("clip")), device="cpu", truncate_dim=8)


# --------------------------------------------------------------------------- failures
def test_missing_hub_model_names_it_and_the_offline_fix():
    with pytest.raises(EncoderLoadError) as e:
        load_encoder("nobody-here/not-a-model", device="cpu")
    msg = str(e.value)
    assert "'nobody-here/not-a-model'" in msg and "local folder" in msg and "\n" not in msg
    assert "not a model twentyq knows" not in msg  # owner/name: a hub id
    with pytest.raises(EncoderLoadError, match="'clipp' \\(not a model twentyq knows: `twentyq models` lists them"):
        load_encoder("clipp", device="cpu")  # a typo of a known name


@pytest.mark.parametrize("name,match", [
    ("/no/such/folder", "neither a local folder nor a hub id"),
    ("offline-lite9", "unknown offline model"),
    ("", "must be a model string"),
])
def test_bad_model_strings(name, match):
    with pytest.raises((EncoderLoadError, ValueError), match=match):
        load_encoder(name, device="cpu")


def test_folder_of_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EncoderLoadError, match="model_type 'bert'"):
        load_encoder(str(tmp_path), device="cpu")
    (tmp_path / "config.json").unlink()
    with pytest.raises(EncoderLoadError, match="no config.json"):
        load_encoder(str(tmp_path), device="cpu")


def test_list_models():
    rows = {m["model"]: m for m in list_models()}
    assert rows["offline"]["offline"] and rows["offline"]["backend"] == "offline"
    assert "NOT CLIP" in rows["offline"]["note"]
    assert rows["jinaai/jina-clip-v2"]["trust_remote_code"] and not rows["jinaai/jina-clip-v2"]["offline"]
    assert rows["google/siglip-base-patch16-224"]["backend"] == "siglip"
    assert set(rows["offline"]) == {"model", "backend", "offline", "trust_remote_code", "note"}


# --------------------------------------------------------------------------- jina-clip
class FakeJina(torch.nn.Module):
    """The jina-clip interface: encode_text / encode_image returning normalised embeddings, logit_scale."""

    dim = 16

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(37.0)))
        self.seen_images = []

    def _vec(self, key):
        g = torch.Generator().manual_seed(abs(hash(key)) % (2 ** 31))
        return torch.randn(self.dim, generator=g)

    def encode_text(self, sentences, batch_size=32, convert_to_tensor=False, **kw):
        x = torch.nn.functional.normalize(torch.stack([self._vec(s) for s in sentences]), dim=-1)
        return x if convert_to_tensor else x.numpy()

    def encode_image(self, images, batch_size=32, convert_to_tensor=False, **kw):
        self.seen_images.extend(images)
        x = torch.nn.functional.normalize(torch.stack([self._vec(im.tobytes()[:64]) for im in images]), dim=-1)
        return x if convert_to_tensor else x.numpy()


@pytest.fixture
def jina_folder(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "jina_clip", "architectures": ["JinaCLIPModel"], "logit_scale_init_value": 2.6592,
        "auto_map": {"AutoModel": "jinaai/jina-clip-implementation--modeling_clip.JinaCLIPModel"}}))
    calls = []

    def fake_from_pretrained(name, **kw):
        calls.append((name, kw))
        return FakeJina()

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake_from_pretrained)
    return tmp_path, calls


def test_jina_needs_trust_remote_code(jina_folder):
    folder, calls = jina_folder
    for name in ("jinaai/jina-clip-v1", "jinaai/jina-clip-v2", str(folder)):
        with pytest.raises(RemoteCodeRefused, match=r"needs trust_remote_code=True \(CLI: --trust-remote-code\)"):
            load_encoder(name, device="cpu")
    assert calls == []  # nothing was loaded or run


def test_jina_path_with_stand_in(jina_folder):
    folder, calls = jina_folder
    enc = load_encoder(str(folder), device="cpu", trust_remote_code=True)
    assert calls and calls[0][1]["trust_remote_code"] is True and calls[0][1]["dtype"] == torch.float32
    assert enc.logit_scale == pytest.approx(37.0, rel=1e-5)  # the trained parameter, not the config's init value
    x = enc.encode_images([noise_image(0), noise_image(1).convert("RGBA")])
    t = enc.encode_texts(["a", "b", "c"])
    assert x.shape == (2, 16) and t.shape == (3, 16) and enc.embed_dim == 16
    assert all(im.mode == "RGB" for im in enc.model.seen_images)
    assert torch.allclose(t.norm(dim=1), torch.ones(3))
    small = load_encoder(str(folder), device="cpu", trust_remote_code=True, truncate_dim=4)
    ts = small.encode_texts(["a", "b", "c"])
    assert ts.shape == (3, 4) and small.embed_dim == 4
    assert torch.allclose(ts, torch.nn.functional.normalize(t[:, :4], dim=-1), atol=1e-6)
    assert small.model_id.endswith("+dim4") and small.model_id != enc.model_id
    with pytest.raises(ValueError, match="truncate_dim == 99"):
        load_encoder(str(folder), device="cpu", trust_remote_code=True, truncate_dim=99)


# --------------------------------------------------------------------------- the source
def test_encoder_source_is_one_matmul_per_group():
    enc = HashEncoder()
    system = five_group_system()
    emb = enc.encode_images([noise_image(i) for i in range(4)])
    src = EncoderSource(enc, TextCache(enc), system, emb)
    sims = src.similarities(np.array([3, 1]), 2)
    want = (emb[[3, 1]] @ enc.encode_texts(system.groups[2].prompts()).T).double().numpy()
    assert sims.dtype == np.float64 and sims.shape == (2, 3)
    np.testing.assert_allclose(sims, want, atol=1e-6)
    assert src.all_similarities().shape == (4, system.q_total)
    with pytest.raises(ValueError, match=r"should be \(B, 8\)"):
        EncoderSource(enc, None, system, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="another encoder"):
        EncoderSource(HashEncoder(), TextCache(enc), system, emb)
