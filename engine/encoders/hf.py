"""transformers backends: CLIP, SigLIP and jina-clip (v1, v2).

Model names are Hugging Face hub ids (``openai/clip-vit-base-patch32``) or
local folders written by ``save_pretrained`` / ``git clone`` of a hub repo.
Hub downloads need the network once; after that, or with a local folder,
everything works offline (set ``HF_HUB_OFFLINE=1``).

Logit scale (λ)
---------------
- CLIP: ``model.logit_scale.exp()`` from the checkpoint (100 for OpenAI CLIP).
- SigLIP was trained with a sigmoid: p(match) = σ(λ·s + b). twentyq still
  scores every group with a softmax over its K_g options (one answer per
  question), using λ = ``model.logit_scale.exp()`` from the checkpoint; the
  bias b is the same for every option of a group and cancels in the softmax,
  so it is not used. The encoder declares ``activation = "sigmoid"`` so a
  caller can tell, but scoring never branches on it.
- jina-clip: ``model.logit_scale.exp()``, the trained value in the checkpoint
  (not the config's ``logit_scale_init_value``).

Remote code
-----------
jina-clip's modelling code lives in a hub repository
(``jinaai/jina-clip-implementation``) and is run by ``AutoModel`` only when the
caller passes ``trust_remote_code=True`` (CLI: ``--trust-remote-code``).
Without it loading stops with :class:`RemoteCodeRefused` before anything is
downloaded or run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from engine.encoders.base import BaseEncoder, EncoderLoadError, RemoteCodeRefused, check_batch_size
from engine.encoders.device import resolve_device, resolve_dtype

# model_type values in config.json -> backend
CLIP_TYPES = ("clip",)
SIGLIP_TYPES = ("siglip",)
JINA_TYPES = ("jina_clip",)

_HASH_MEMO: dict[tuple, str] = {}


# --------------------------------------------------------------------------- helpers
def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise RuntimeError(f"unexpected feature output {type(out).__name__} (no pooler_output)")
    return pooled


def _offline_hint(name: str) -> str:
    return (f"to work offline, pass a local folder that holds the model instead of the hub id "
            f"(e.g. `git clone https://huggingface.co/{name}` or `save_pretrained`, then "
            f"load_encoder('/path/to/folder'))")


def is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def weights_fingerprint(folder: Path) -> str:
    """sha256 (first 16 hex) over config.json and the weight files of a local model folder.

    Memoised per (path, size, mtime) within the process; a 1.7 GB checkpoint
    hashes in a few seconds once.
    """
    files = sorted([folder / "config.json"] + [p for p in folder.iterdir()
                                                if p.suffix in (".safetensors", ".bin", ".pt", ".pth")])
    files = [p for p in files if p.is_file()]
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    _HASH_MEMO[key] = h.hexdigest()[:16]
    return _HASH_MEMO[key]


def read_config(name: str, revision: str | None = None) -> tuple[dict, str]:
    """config.json of a local folder or hub repo, and the model_id to use in cache keys.

    The model id is ``<hub id>@<commit>`` for a hub model (the commit the hub
    or the local HF cache resolved) and ``local:<folder name>@sha256:<16 hex>``
    for a folder. Raises EncoderLoadError naming the model and the offline fix.
    """
    if is_local(name):
        folder = Path(name).expanduser().resolve()
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise EncoderLoadError(f"model folder {name!r} has no config.json; pass a folder written by "
                                   "save_pretrained or a clone of a hub model repo")
        cfg = _load_json(cfg_path, name)
        return cfg, f"local:{folder.name}@sha256:{weights_fingerprint(folder)}"
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name):
        raise EncoderLoadError(f"model {name!r} is neither a local folder nor a hub id (owner/name); "
                               "check the path or the spelling (twentyq models lists the known ones)")
    try:
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(name, "config.json", revision=revision)
    except Exception as e:  # noqa: BLE001  (network, auth, offline mode, missing repo)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderLoadError(f"could not load model {name!r} from the Hugging Face hub "
                               f"({type(e).__name__}: {cause[:200]}); {_offline_hint(name)}") from None
    m = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", path)
    commit = m.group(1) if m else (revision or "unknown")
    return _load_json(Path(path), name), f"{name}@{commit}"


def _load_json(path: Path, name: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EncoderLoadError(f"model {name!r}: cannot read {path} ({e})") from None


def _load_failed(name: str, what: str, e: Exception) -> EncoderLoadError:
    cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    hint = "" if is_local(name) else f"; {_offline_hint(name)}"
    return EncoderLoadError(f"could not load the {what} of model {name!r} ({type(e).__name__}: {cause[:200]}){hint}")


# --------------------------------------------------------------------------- CLIP / SigLIP
class CLIPFamilyEncoder(BaseEncoder):
    """A transformers dual encoder with ``get_image_features`` / ``get_text_features``.

    Parameters
    ----------
    model : CLIPModel or SiglipModel (already on ``device`` in ``dtype``).
    tokenizer : the model's tokenizer.
    image_processor : the model's image processor (Pillow backend; never torchvision).
    name, model_id : see :class:`engine.encoders.base.Encoder`.
    activation : "softmax" (CLIP) or "sigmoid" (SigLIP).
    pad_to_max_length : SigLIP was trained on texts padded to the maximum length
        and pools the last token, so it needs padding="max_length".
    """

    def __init__(self, model, tokenizer, image_processor, *, name: str, model_id: str,
                 device: torch.device, dtype: torch.dtype, batch_size: int = 32,
                 text_batch_size: int | None = None, activation: str = "softmax",
                 pad_to_max_length: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name, self.model_id = name, model_id
        self.device, self.dtype = device, dtype
        self.batch_size = check_batch_size(batch_size)
        self.text_batch_size = None if text_batch_size is None else check_batch_size(text_batch_size)
        self.activation = activation
        self.pad_to_max_length = pad_to_max_length
        cfg = model.config
        self.embed_dim = int(getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size)
        self.max_length = int(getattr(cfg.text_config, "max_position_embeddings", 77))
        scale = getattr(model, "logit_scale", None)
        if scale is None:
            raise EncoderLoadError(f"model {name!r} has no logit_scale parameter; is it a CLIP-style model?")
        self.logit_scale = float(scale.detach().float().exp().item())
        self._takes_mask = not pad_to_max_length

    def _embed_images(self, images: list) -> torch.Tensor:
        px = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        px = px.to(self.device, self.dtype, non_blocking=True)
        return _features(self.model.get_image_features(pixel_values=px))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding="max_length" if self.pad_to_max_length else True,
                             truncation=True, max_length=self.max_length, return_tensors="pt")
        kw = {"input_ids": enc["input_ids"].to(self.device)}
        if self._takes_mask and "attention_mask" in enc:
            kw["attention_mask"] = enc["attention_mask"].to(self.device)
        return _features(self.model.get_text_features(**kw))


def load_clip_family(name: str, *, kind: str = "auto", device: str | torch.device = "auto", dtype=None,
                     batch_size: int = 32, text_batch_size: int | None = None, revision: str | None = None,
                     trust_remote_code: bool = False) -> CLIPFamilyEncoder:
    """Load a CLIP (``kind="clip"``) or SigLIP (``"siglip"``) model; ``"auto"`` reads config.json."""
    import transformers

    cfg, model_id = read_config(name, revision)
    mtype = cfg.get("model_type", "")
    if kind == "auto":
        kind = "siglip" if mtype in SIGLIP_TYPES else "clip" if mtype in CLIP_TYPES else ""
        if not kind:
            raise EncoderLoadError(f"model {name!r} has model_type {mtype!r}, not a CLIP or SigLIP model")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cls = transformers.SiglipModel if kind == "siglip" else transformers.CLIPModel
    try:
        model = cls.from_pretrained(name, revision=revision, dtype=dt)
    except Exception as e:  # noqa: BLE001
        raise _load_failed(name, "weights", e) from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise _load_failed(name, "tokenizer", e) from None
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(name, revision=revision, backend="pil")
    except Exception as e:  # noqa: BLE001
        raise _load_failed(name, "image processor", e) from None
    model = model.to(dev)
    return CLIPFamilyEncoder(model, tok, proc, name=name, model_id=model_id, device=dev, dtype=dt,
                             batch_size=batch_size, text_batch_size=text_batch_size,
                             activation="sigmoid" if kind == "siglip" else "softmax",
                             pad_to_max_length=kind == "siglip")


# --------------------------------------------------------------------------- jina-clip
class JinaClipEncoder(BaseEncoder):
    """jina-clip v1/v2 through their own ``encode_text`` / ``encode_image`` API.

    truncate_dim : keep the first ``truncate_dim`` dimensions (Matryoshka,
        jina-clip-v2: 64..1024), then re-normalise. None keeps them all.
    """

    def __init__(self, model, *, name: str, model_id: str, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 32, text_batch_size: int | None = None, truncate_dim: int | None = None):
        for method in ("encode_text", "encode_image"):
            if not callable(getattr(model, method, None)):
                raise EncoderLoadError(f"model {name!r} has no {method}() method; it is not a jina-clip model")
        self.model = model.eval() if hasattr(model, "eval") else model
        self.name, self.model_id = name, model_id
        self.device, self.dtype = device, dtype
        self.batch_size = check_batch_size(batch_size)
        self.text_batch_size = None if text_batch_size is None else check_batch_size(text_batch_size)
        self.activation = "softmax"
        scale = getattr(model, "logit_scale", None)
        if scale is None:
            raise EncoderLoadError(f"model {name!r} has no logit_scale parameter to read the trained scale from")
        self.logit_scale = float(torch.as_tensor(scale).detach().float().exp().item())
        with torch.inference_mode():
            full = int(self._raw(model.encode_text(["a"])).shape[-1])
        if truncate_dim is not None:
            if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or not 1 <= truncate_dim <= full:
                raise ValueError(f"truncate_dim == {truncate_dim!r}, must be a whole number in [1, {full}]")
        self.truncate_dim = truncate_dim
        self.embed_dim = truncate_dim or full
        if truncate_dim is not None:
            self.model_id = f"{model_id}+dim{truncate_dim}"

    def _raw(self, x) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        t = t.to(self.device) if hasattr(self, "device") else t
        return t[:, :self.truncate_dim] if getattr(self, "truncate_dim", None) else t

    def _embed_images(self, images: list) -> torch.Tensor:
        return self._raw(self.model.encode_image(images, batch_size=len(images), convert_to_tensor=True))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self._raw(self.model.encode_text(texts, batch_size=len(texts), convert_to_tensor=True))


def check_remote_code(name: str, trust_remote_code: bool) -> None:
    if not trust_remote_code:
        raise RemoteCodeRefused(
            f"model {name!r} needs trust_remote_code=True (CLI: --trust-remote-code): it runs Python code "
            "from its hub repository (jina-clip: jinaai/jina-clip-implementation); pass it only if you trust "
            "that code")


def remote_code_origin(name: str) -> str:
    """Where the code that ``trust_remote_code`` runs for model ``name`` comes from, in words.

    A hub id names its repository (and URL); a local folder names its path and
    the code repositories its ``config.json`` ``auto_map`` points at
    (``"owner/repo--module.Class"``), read without running anything.
    """
    if is_local(name):
        folder = Path(name).expanduser().resolve()
        repos: list[str] = []
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            for ref in (cfg.get("auto_map") or {}).values():
                for r in ref if isinstance(ref, list) else [ref]:
                    if isinstance(r, str) and "--" in r and r.split("--")[0] not in repos:
                        repos.append(r.split("--")[0])
        except (OSError, ValueError, AttributeError):
            pass
        where = f"the Python files in the local folder {str(folder)!r}"
        if repos:
            where += f" and the hub repository {', '.join(repr(r) for r in repos)} its config.json names"
        return where
    return f"the Hugging Face hub repository {name!r} (https://huggingface.co/{name}) and any code repository " \
           "its config.json names"


def load_jina_clip(name: str, *, device: str | torch.device = "auto", dtype=None, batch_size: int = 32,
                   text_batch_size: int | None = None, revision: str | None = None,
                   trust_remote_code: bool = False, truncate_dim: int | None = None) -> JinaClipEncoder:
    """Load jina-clip-v1/v2 with ``AutoModel(trust_remote_code=True)``; refuses without it."""
    check_remote_code(name, trust_remote_code)
    import transformers

    _, model_id = read_config(name, revision)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        model = transformers.AutoModel.from_pretrained(name, revision=revision, trust_remote_code=True, dtype=dt)
    except Exception as e:  # noqa: BLE001
        raise _load_failed(name, "weights or remote code", e) from None
    if hasattr(model, "to"):
        model = model.to(dev)
    return JinaClipEncoder(model, name=name, model_id=model_id, device=dev, dtype=dt, batch_size=batch_size,
                           text_batch_size=text_batch_size, truncate_dim=truncate_dim)
