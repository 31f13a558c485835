"""The attribute probe: a small image-text model trained by this project, for benchmarks only. NOT CLIP.

    enc = load_encoder("probe:bench/out/probe")   # weights from `python -m bench.probe train --out DIR`

What it is (the label every output carries): **attribute probe trained here on Gen 2–3 sprites; not CLIP**.

``load_encoder("probe")`` loads the copy that ships with the package (:data:`SHIPPED_DIR`).

- Inputs, frozen and packaged (the same weights as the offline stand-in,
  :mod:`engine.encoders.offline`): EfficientNet-Lite0's penultimate image
  features (global average of the last conv map, 1280-d) and
  all-MiniLM-L6-v2's mean-pooled sentence embeddings (384-d), each
  L2-normalised (:class:`ProbeBackbone`).
- Two small heads (:class:`ProbeHeads`; linear, or one hidden layer) map both
  into a shared D-dimensional space. They were trained with a CLIP-style
  symmetric contrastive loss on sprites of Pokémon species 152–386 paired with
  attribute captions (colour, shape, habitat, types, egg groups, size) that
  never name a species (``bench/probe/train.py``; ``docs/probe.md``).

A probe folder holds ``probe.safetensors`` (the heads, the input
standardisation and the learned temperature) and ``manifest.json`` (config,
seed, data hash, metrics, the λ to score with). The encoder's ``logit_scale``
is the manifest's ``eval_logit_scale`` (fitted on held-out Gen 2–3 species),
not the training temperature.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.common.files import atomic_write_json
from engine.encoders.base import BaseEncoder, EncoderLoadError, check_batch_size, l2_normalise
from engine.encoders.device import resolve_device, resolve_dtype
from engine.encoders.offline import DEFAULT_VARIANT, load_offline
from engine.encoders.text_cache import atomic_save_safetensors, read_safetensors

PROBE_LABEL = "attribute probe trained here on Gen 2–3 sprites; not CLIP"
# the probe that ships with the package: `python -m bench.probe train` output, bit-identical tensors
# (checked by tests/test_shipped_probe.py and `python -m bench.probe verify-shipped`)
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "probe"
WEIGHTS_FILE = "probe.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "twentyq-probe-v1"
IMAGE_FEATURE_DIM = 1280  # EfficientNet-Lite0 penultimate width
TEXT_FEATURE_DIM = 384  # all-MiniLM-L6-v2


def train_command(folder: str | Path) -> str:
    return f"python -m bench.probe train --out {folder}"


# --------------------------------------------------------------------------- frozen inputs
class ProbeBackbone(BaseEncoder):
    """The probe's frozen inputs, from the offline stand-in's packaged weights.

    ``encode_images(images)`` -> (B, 1280) float32 unit rows: EfficientNet-Lite0
    penultimate features (last conv map averaged over space), L2-normalised.
    ``text_features(texts)`` -> (T, 384) float32 unit rows: MiniLM mean-pooled
    sentence embeddings. It is a BaseEncoder over the image side only (so
    :class:`engine.encoders.image_cache.ImageCache` can cache its features by file hash).
    """

    activation = "softmax"
    logit_scale = 1.0

    def __init__(self, *, device="cpu", dtype=None, batch_size: int | None = None, text_batch_size: int = 128):
        self.conse = load_offline(DEFAULT_VARIANT, device=device, dtype=dtype, batch_size=batch_size,
                                  text_batch_size=text_batch_size, name="probe-backbone")
        self.device, self.dtype = self.conse.device, self.conse.dtype
        self.batch_size = self.conse.batch_size
        self.embed_dim = IMAGE_FEATURE_DIM
        self.name = "probe-backbone"
        # identity of the inputs: the packaged weights' hashes (not the ConSE top-k / template)
        self.image_id = f"efficientnet-lite0@{self.conse._img_hash}:penultimate-avg"
        self.text_id = f"all-MiniLM-L6-v2@{self.conse._txt_hash}:mean"
        self.model_id = f"probe-backbone:{self.image_id}"
        self._text_memo: dict[str, torch.Tensor] = {}

    def _embed_images(self, images: list) -> torch.Tensor:
        x = self.conse.preprocess(images)
        return self.conse.image_model.extract_features(x).float().mean(dim=(2, 3))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(T, 384) float32 unit MiniLM embeddings on the device; each distinct text is embedded once
        per backbone (the model is frozen) and in one batch with the other new ones."""
        texts = list(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self._text_memo]
        if new:
            for t, row in zip(new, self.conse.encode_texts(new)):
                self._text_memo[t] = row
        if not texts:
            return torch.empty((0, TEXT_FEATURE_DIM), dtype=torch.float32, device=self.device)
        return torch.stack([self._text_memo[t] for t in texts])


# --------------------------------------------------------------------------- trained heads
def _head(d_in: int, hidden: int, d_out: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ProbeHeads(nn.Module):
    """Two heads into a shared space, with fixed input standardisation and a temperature.

    ``image(f)``: (n, 1280) backbone features -> (n, dim), unnormalised.
    ``text(t)``: (n, 384) MiniLM features -> (n, dim), unnormalised.
    Buffers ``img_mean/img_std`` (1280,) and ``txt_mean/txt_std`` (384,) are set
    from the training features before training and saved with the weights.
    ``log_scale`` is the log of the contrastive temperature's inverse (CLIP's
    ``logit_scale``).
    """

    def __init__(self, dim: int = 256, hidden: int = 0, dropout: float = 0.0,
                 img_dim: int = IMAGE_FEATURE_DIM, txt_dim: int = TEXT_FEATURE_DIM,
                 init_scale: float = 1 / 0.07):
        super().__init__()
        self.config = {"dim": int(dim), "hidden": int(hidden), "dropout": float(dropout),
                       "img_dim": int(img_dim), "txt_dim": int(txt_dim)}
        self.img = _head(img_dim, hidden, dim)
        self.txt = _head(txt_dim, hidden, dim)
        self.drop = nn.Dropout(dropout)
        for name, d in (("img", img_dim), ("txt", txt_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(d))
            self.register_buffer(f"{name}_std", torch.ones(d))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def set_standardisation(self, img_feats: torch.Tensor, txt_feats: torch.Tensor) -> None:
        """Per-dimension mean and std of (N, 1280) image and (M, 384) text training features."""
        with torch.no_grad():
            for name, f in (("img", img_feats), ("txt", txt_feats)):
                getattr(self, f"{name}_mean").copy_(f.mean(0))
                getattr(self, f"{name}_std").copy_(f.std(0).clamp_min(1e-6))

    def image(self, f: torch.Tensor) -> torch.Tensor:
        return self.img(self.drop((f.float() - self.img_mean) / self.img_std))

    def text(self, t: torch.Tensor) -> torch.Tensor:
        return self.txt(self.drop((t.float() - self.txt_mean) / self.txt_std))


def save_probe(folder: str | Path, heads: ProbeHeads, manifest: dict[str, Any]) -> Path:
    """Write ``probe.safetensors`` and ``manifest.json`` into ``folder`` (atomically each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float().contiguous() for k, v in heads.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(heads.config, sort_keys=True), "label": PROBE_LABEL}
    atomic_save_safetensors(state, folder / WEIGHTS_FILE, meta)
    manifest = dict(manifest, format=FORMAT, label=PROBE_LABEL, config_heads=heads.config,
                    weights_sha256=tensors_sha256(state), weights_bytes=(folder / WEIGHTS_FILE).stat().st_size)
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return folder / WEIGHTS_FILE


def load_heads(folder: str | Path) -> tuple[ProbeHeads, dict[str, Any]]:
    """The trained heads (eval mode, CPU, float32) and the manifest of a probe folder.

    Raises EncoderLoadError (one line, naming the train command) when the folder
    or its files are missing or damaged.
    """
    folder = Path(folder)
    fix = f"train it with `{train_command(folder)}`"
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / MANIFEST_FILE).is_file():
        what = "folder" if not folder.is_dir() else f"{WEIGHTS_FILE} / {MANIFEST_FILE}"
        raise EncoderLoadError(f"probe {what} not found in {folder}; {fix}")
    try:
        from engine.common.files import read_text_capped

        manifest = json.loads(read_text_capped(folder / MANIFEST_FILE, what="probe manifest"))
        state, meta = read_safetensors(folder / WEIGHTS_FILE)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        cfg = json.loads(meta["config"])
        heads = ProbeHeads(dim=cfg["dim"], hidden=cfg["hidden"], dropout=cfg["dropout"], img_dim=cfg["img_dim"],
                           txt_dim=cfg["txt_dim"])
        heads.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        raise EncoderLoadError(f"cannot load the probe in {folder} ({type(e).__name__}: {msg}); "
                               f"retrain it with `{train_command(folder)}`") from None
    return heads.eval(), manifest


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, shapes and float32 bytes, in name order.

    Not the file's hash: safetensors writes its metadata in no fixed order, so
    two identical trainings give files whose bytes differ but whose tensors do not.
    """
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().float().contiguous()
        h.update(f"{k}:{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the encoder
class ProbeEncoder(BaseEncoder):
    """The encoder protocol over a trained probe folder (see the module docstring).

    ``encode_images`` -> (B, D) and ``encode_texts`` -> (T, D) float32 unit rows,
    D = the heads' ``dim``. The backbone runs in ``dtype`` on ``device``; the
    heads run in float32 there.

    Parameters
    ----------
    folder : a folder written by ``python -m bench.probe train --out DIR``.
    logit_scale : λ; default the manifest's ``eval_logit_scale``.
    """

    activation = "softmax"

    def __init__(self, folder: str | Path, *, device="auto", dtype=None, batch_size: int | None = None,
                 text_batch_size: int = 128, logit_scale: float | None = None, name: str | None = None,
                 backbone: ProbeBackbone | None = None):
        self.folder = Path(folder)
        heads, self.manifest = load_heads(self.folder)  # fails first, before the backbone loads
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.backbone = backbone or ProbeBackbone(device=self.device, dtype=dtype, batch_size=batch_size,
                                                  text_batch_size=text_batch_size)
        self.batch_size = check_batch_size(self.backbone.batch_size)
        self.text_batch_size = check_batch_size(text_batch_size)
        self.heads = heads.to(self.device)
        self.embed_dim = int(heads.config["dim"])
        lam = self.manifest.get("eval_logit_scale") if logit_scale is None else logit_scale
        self.logit_scale = float(lam if lam is not None else heads.log_scale.exp().item())
        self.name = name or f"probe:{folder}"
        self.model_id = (f"probe@{tensors_sha256(heads.state_dict())[:16]}"
                         f"+{self.backbone.image_id}+{self.backbone.text_id}")

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """(n, 1280) backbone features -> (n, D) float32 unit rows (the image side without the backbone)."""
        with torch.inference_mode():
            return l2_normalise(self.heads.image(features.to(self.device)))

    def _embed_images(self, images: list) -> torch.Tensor:
        return self.heads.image(l2_normalise(self.backbone._embed_images(images)))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.heads.text(self.backbone.conse.encode_texts(texts))  # no memo: the TextCache caches

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        m = self.manifest
        d.update(label=PROBE_LABEL, backend="ProbeEncoder (not CLIP)", probe_folder=str(self.folder),
                 data_sha256=m.get("data_sha256"), seed=m.get("seed"), weights_sha256=m.get("weights_sha256"))
        return d


def load_probe(folder: str | Path, **kw) -> ProbeEncoder:
    """A :class:`ProbeEncoder` over ``folder`` (an attribute probe, not CLIP)."""
    return ProbeEncoder(folder, **kw)
