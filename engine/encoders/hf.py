"""transformers backends: CLIP, SigLIP and jina-clip (v1, v2).

Model names are Hugging Face hub ids (``openai/clip-vit-base-patch32``) or
local folders written by ``save_pretrained`` / ``git clone`` of a hub repo.
Hub downloads need the network once; after that, or with a local folder,
everything works offline (set ``HF_HUB_OFFLINE=1``). Before asking the hub,
one TCP connect (2 s at most) checks that it is reachable; if it is not, a
cached model loads from the cache and an uncached one fails at once with one
line saying so (instead of huggingface_hub's retries).

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
transformers imports Python code that a model folder or hub repo names in any
of four files (:data:`REMOTE_CODE_FILES`): ``config.json``,
``tokenizer_config.json``, ``preprocessor_config.json`` and
``processor_config.json``, through an ``auto_map`` or a class it does not have
itself (``tokenizer_class``, ``image_processor_type``, ``processor_class``,
``feature_extractor_type``). Before anything else is loaded those four files
are read as JSON (never run) by :func:`remote_code_triggers`; if any of them
names code and the caller did not pass ``trust_remote_code=True`` (CLI:
``--trust-remote-code``), loading stops with :class:`RemoteCodeRefused`, one
line naming the file, the key and the fix. jina-clip's modelling code lives in
a hub repository (``jinaai/jina-clip-implementation``), so jina-clip always
needs the flag. ``trust_remote_code`` is passed explicitly (True or False) to
every ``from_pretrained``, and transformers' interactive "[y/N]" prompt is
switched off while loading (:func:`_no_prompt`): stdin is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch

from engine.common.files import open_guarded, read_text_capped
from engine.encoders.base import BaseEncoder, EncoderLoadError, RemoteCodeRefused, check_batch_size
from engine.encoders.device import resolve_device, resolve_dtype
from engine.encoders.pixels import PixelPlan, plan_from_jina_config, plan_from_processor
from engine.encoders.text_shapes import TextBuckets, length_buckets, row_buckets

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
    """Whether ``name`` is a local folder (a name too long for the file system or a symlink loop is not one)."""
    try:
        return Path(name).expanduser().is_dir()
    except (OSError, ValueError):
        return False


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
        with open_guarded(p, None, what="model file") as f:  # the guarded reader: regular files only
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    _HASH_MEMO[key] = h.hexdigest()[:16]
    return _HASH_MEMO[key]


# --------------------------------------------------------------------------- the hub, offline first
#: hub ids served from the local cache because the hub was unreachable (later loads stay local)
_CACHED_ONLY: set[str] = set()
_REACH: dict[str, tuple[float, str | None]] = {}
REACH_TIMEOUT_S = 2.0


class _NotCached(Exception):
    """A hub file that is not in the local cache while the hub cannot be asked; ``why`` says why not."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def hub_unreachable(timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached (one TCP connect, at most ``timeout`` s), or None if it can.

    Checked once a minute at most. Behind an HTTP(S) proxy the check is skipped
    (the proxy, not a direct connection, decides).
    """
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    now = time.monotonic()
    if host in _REACH and now - _REACH[host][0] < 60:
        return _REACH[host][1]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        why = None
    except OSError as e:
        why = (f"the Hugging Face hub ({constants.ENDPOINT}) is unreachable "
               f"({getattr(e, 'strerror', None) or e or type(e).__name__})")
    _REACH[host] = (now, why)
    return why


def _hub_file(name: str, fname: str, revision: str | None) -> str:
    """Local path of ``fname`` of hub repo ``name``: from the cache when offline, else downloaded.

    Never waits on a network that is not there: with ``HF_HUB_OFFLINE`` set, or
    when :func:`hub_unreachable` says so, only the local cache is used, and a
    file that is not cached raises :class:`_NotCached` at once (instead of
    huggingface_hub's retries, which took 33 s and printed six lines).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = bool(constants.HF_HUB_OFFLINE)
    why = ("HF_HUB_OFFLINE is set, so the hub is not asked (unset it to download the model once)"
           if offline else None) or (None if name in _CACHED_ONLY else hub_unreachable())
    if why is None and name not in _CACHED_ONLY:
        return hf_hub_download(name, fname, revision=revision)
    try:
        path = hf_hub_download(name, fname, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        raise _NotCached(why or "the hub was unreachable earlier in this run") from None
    if not offline:
        _CACHED_ONLY.add(name)  # the weights must come from the cache too (transformers would retry)
    return path


def _local_only(name: str) -> dict:
    """``local_files_only=True`` for from_pretrained when ``name`` is served from the cache (hub unreachable)."""
    return {"local_files_only": True} if name in _CACHED_ONLY else {}


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
        path = _hub_file(name, "config.json", revision)
    except _NotCached as e:
        known = "" if "/" in name else " (not a model twentyq knows: `twentyq models` lists them; a hub id is owner/name)"
        raise EncoderLoadError(f"model {name!r}{known} is not in the local Hugging Face cache and {e.why}; "
                               f"{_offline_hint(name)}") from None
    except Exception as e:  # noqa: BLE001  (network, auth, missing repo)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderLoadError(f"could not load model {name!r} from the Hugging Face hub "
                               f"({type(e).__name__}: {cause[:200]}); {_offline_hint(name)}") from None
    m = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", path)
    commit = m.group(1) if m else (revision or "unknown")
    return _load_json(Path(path), name), f"{name}@{commit}"


#: the largest model JSON file read (config / tokenizer / processor configs are kilobytes)
MODEL_JSON_LIMIT = 16 * 1024 * 1024


def _load_json(path: Path, name: str) -> dict:
    """A model JSON file as a dict: a regular file only (a FIFO cannot hang), size-capped, one-line errors."""
    try:
        cfg = json.loads(read_text_capped(path, MODEL_JSON_LIMIT, what=f"model file {path.name}"))
    except (OSError, ValueError) as e:
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EncoderLoadError(f"model {name!r}: cannot read {path} ({cause})") from None
    if not isinstance(cfg, dict):
        raise EncoderLoadError(f"model {name!r}: {path} holds JSON {type(cfg).__name__}, not an object")
    return cfg


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

    Text batches can be padded to bucketed shapes (:meth:`set_text_buckets`,
    :mod:`engine.encoders.text_shapes`): CLIP's token lengths and rows, SigLIP's rows only.
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
        self.max_text_tokens = self.max_length  # prompts are truncated here (check_prompt_lengths warns)
        scale = getattr(model, "logit_scale", None)
        if scale is None:
            raise EncoderLoadError(f"model {name!r} has no logit_scale parameter; is it a CLIP-style model?")
        self.logit_scale = float(scale.detach().float().exp().item())
        self._takes_mask = not pad_to_max_length
        # the processor's resize / crop / rescale / normalise as data, for the fast image path (None:
        # a processor setting the plan cannot express, so images keep going through the processor)
        self.pixel_plan = plan_from_processor(image_processor)

    def _embed_images(self, images: list) -> torch.Tensor:
        px = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        px = px.to(self.device, self.dtype, non_blocking=True)
        return _features(self.model.get_image_features(pixel_values=px))

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc, n = self._tokenize(texts, **self._tokenize_args())
        return self._text_forward(enc)[:n]

    # -- text shapes (engine.encoders.text_shapes) ----------------------------------------------
    def _tokenize_args(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "fixed_length": self.pad_to_max_length}

    def _bucket_plan(self) -> TextBuckets:
        """CLIP: lengths and rows; SigLIP (padded to its maximum, pools the last position): rows only."""
        size = self.text_batch_size or self.batch_size
        return TextBuckets(None if self.pad_to_max_length else length_buckets(self.max_length), row_buckets(size))

    def _text_forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        kw = {"input_ids": enc["input_ids"].to(self.device, non_blocking=True)}
        if self._takes_mask and "attention_mask" in enc:
            kw["attention_mask"] = enc["attention_mask"].to(self.device, non_blocking=True)
        return _features(self.model.get_text_features(**kw))

    def _text_tower(self) -> tuple[Any, str] | None:
        return (self.model, "text_model") if hasattr(self.model, "text_model") else None


def load_clip_family(name: str, *, kind: str = "auto", device: str | torch.device = "auto", dtype=None,
                     batch_size: int = 32, text_batch_size: int | None = None, revision: str | None = None,
                     trust_remote_code: bool = False) -> CLIPFamilyEncoder:
    """Load a CLIP (``kind="clip"``) or SigLIP (``"siglip"``) model; ``"auto"`` reads config.json."""
    import transformers

    trust_remote_code = bool(trust_remote_code)
    check_remote_code(name, trust_remote_code, revision=revision)  # before anything is loaded
    cfg, model_id = read_config(name, revision)
    mtype = cfg.get("model_type", "")
    if kind == "auto":
        kind = "siglip" if mtype in SIGLIP_TYPES else "clip" if mtype in CLIP_TYPES else ""
        if not kind:
            raise EncoderLoadError(f"model {name!r} has model_type {mtype!r}, not a CLIP or SigLIP model")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cls = transformers.SiglipModel if kind == "siglip" else transformers.CLIPModel
    trc = trust_remote_code  # explicit in every call: transformers never decides, never prompts
    with _no_prompt():
        try:
            model = cls.from_pretrained(name, revision=revision, dtype=dt, trust_remote_code=trc, **_local_only(name))
        except Exception as e:  # noqa: BLE001
            raise _load_failed(name, "weights", e) from None
        try:
            tok = transformers.AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trc,
                                                             **_local_only(name))
        except Exception as e:  # noqa: BLE001
            raise _load_failed(name, "tokenizer", e) from None
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(name, revision=revision, backend="pil",
                                                                   trust_remote_code=trc, **_local_only(name))
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
                 batch_size: int = 32, text_batch_size: int | None = None, truncate_dim: int | None = None,
                 pixel_plan: PixelPlan | None = None):
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
        # the fast image path needs the model's pixel entry point; else encode_image (its own processor)
        self.pixel_plan = pixel_plan if callable(getattr(model, "get_image_features", None)) else None
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

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._raw(_features(self.model.get_image_features(pixel_values=pixels)))


# --------------------------------------------------------------------------- remote code
#: the files through which transformers can be told to import a model's own Python code
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
#: keys naming a class transformers looks up by name (and imports from the model's code if it has none)
CLASS_KEYS = ("tokenizer_class", "image_processor_type", "processor_class", "feature_extractor_type",
              "video_processor_type")


class RemoteCodeTrigger(NamedTuple):
    """One reason a model would run its own code: ``file`` has ``key`` = ``value``."""

    file: str
    key: str
    value: Any

    def describe(self) -> str:
        shown = json.dumps(self.value, ensure_ascii=True, default=str)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        if self.key == "auto_map":
            return f"its {self.file} has an auto_map ({shown}) naming Python code to import and run"
        return (f"its {self.file} names {self.key} {shown}, a class transformers does not have, which would be "
                "imported from the model's own Python code")


@lru_cache(maxsize=1)
def _transformers_names() -> frozenset[str]:
    import transformers

    return frozenset(dir(transformers))  # the lazy module lists its classes without importing them


def _is_transformers_class(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    names = _transformers_names()
    candidates = {value, value.removesuffix("Fast"), value.replace("FeatureExtractor", "ImageProcessor"),
                  value.removesuffix("Fast").replace("FeatureExtractor", "ImageProcessor")}
    return any(c in names for c in candidates)


def _model_json(name: str, fname: str, revision: str | None) -> dict | None:
    """``fname`` of a local folder or hub repo as a dict, None when the model has no such file."""
    if is_local(name):
        path = Path(name).expanduser() / fname
        if not os.path.lexists(path):
            return None
        return _load_json(path, name)
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        raise EncoderLoadError("huggingface_hub is not installed; pip install huggingface_hub") from None
    try:
        path = _hub_file(name, fname, revision)
    except (EntryNotFoundError, LocalEntryNotFoundError, _NotCached):
        return None  # not in the repo (or, offline, not cached, so transformers cannot read it either)
    except Exception as e:  # noqa: BLE001  (network, auth, missing repo)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderLoadError(f"could not read {fname} of model {name!r} from the Hugging Face hub to check it for "
                               f"remote code ({type(e).__name__}: {cause[:200]}); {_offline_hint(name)}") from None
    return _load_json(Path(path), name)


def remote_code_triggers(name: str, revision: str | None = None) -> list[RemoteCodeTrigger]:
    """Every place in :data:`REMOTE_CODE_FILES` of a folder or hub repo that would make transformers run its code.

    Read as JSON only; nothing is imported. An empty list means the model loads with transformers' own classes.
    """
    found: list[RemoteCodeTrigger] = []
    for fname in REMOTE_CODE_FILES:
        cfg = _model_json(name, fname, revision)
        if not cfg:
            continue
        if cfg.get("auto_map"):
            found.append(RemoteCodeTrigger(fname, "auto_map", cfg["auto_map"]))
        for key in CLASS_KEYS:
            value = cfg.get(key)
            if value is not None and not _is_transformers_class(value):
                found.append(RemoteCodeTrigger(fname, key, value))
    return found


def check_remote_code(name: str, trust_remote_code: bool, *, revision: str | None = None,
                      reason: str | None = None) -> list[RemoteCodeTrigger]:
    """Refuse (RemoteCodeRefused, one line) a model that would run its own code, unless trusted.

    ``reason`` states why without reading anything (jina-clip's known hub ids);
    otherwise the model's files are read (:func:`remote_code_triggers`). Returns
    the triggers found ([] when trusted with a ``reason``).
    """
    if trust_remote_code and reason is not None:
        return []
    triggers = [] if reason is not None else remote_code_triggers(name, revision)
    if reason is None and triggers:
        reason = triggers[0].describe()
        if len(triggers) > 1:
            reason += f" (and {len(triggers) - 1} more place(s): " + ", ".join(
                f"{t.file} {t.key}" for t in triggers[1:4]) + ("..." if len(triggers) > 4 else "") + ")"
    if reason is not None and not trust_remote_code:
        raise RemoteCodeRefused(
            f"model {name!r} needs trust_remote_code=True (CLI: --trust-remote-code): {reason}; "
            "pass it only if you trust that code")
    return triggers


@contextlib.contextmanager
def _no_prompt():
    """transformers never asks "Do you wish to run the custom code? [y/N]" on stdin while this is active.

    With ``trust_remote_code`` passed explicitly it should not ask anyway; a zero
    timeout makes any call that slipped through raise instead of reading stdin.
    """
    try:
        import transformers.dynamic_module_utils as dmu
    except ImportError:  # pragma: no cover
        yield
        return
    old = getattr(dmu, "TIME_OUT_REMOTE_CODE", None)
    dmu.TIME_OUT_REMOTE_CODE = 0
    try:
        yield
    finally:
        dmu.TIME_OUT_REMOTE_CODE = old


def remote_code_origin(name: str) -> str:
    """Where the code that ``trust_remote_code`` runs for model ``name`` comes from, in words.

    A hub id names its repository (and URL); a local folder names its path, the
    files whose ``auto_map`` names code, and the code repositories those point at
    (``"owner/repo--module.Class"``), read without running anything.
    """
    if is_local(name):
        folder = Path(name).expanduser().resolve()
        repos: list[str] = []
        files: list[str] = []
        for fname in REMOTE_CODE_FILES:
            try:
                cfg = _model_json(str(folder), fname, None) or {}
                refs = (cfg.get("auto_map") or {}).values()
            except (EncoderLoadError, AttributeError):
                continue
            if refs and fname not in files:
                files.append(fname)
            for ref in refs:
                for r in ref if isinstance(ref, list) else [ref]:
                    if isinstance(r, str) and "--" in r and r.split("--")[0] not in repos:
                        repos.append(r.split("--")[0])
        where = f"the Python files in the local folder {str(folder)!r}"
        if files:
            where += f" (named by the auto_map of {', '.join(files)})"
        if repos:
            where += f" and the hub repository {', '.join(repr(r) for r in repos)} they name"
        return where
    return f"the Hugging Face hub repository {name!r} (https://huggingface.co/{name}) and any code repository " \
           "its config files name"


JINA_REASON = "jina-clip runs Python code from its hub repository (jinaai/jina-clip-implementation)"


def load_jina_clip(name: str, *, device: str | torch.device = "auto", dtype=None, batch_size: int = 32,
                   text_batch_size: int | None = None, revision: str | None = None,
                   trust_remote_code: bool = False, truncate_dim: int | None = None) -> JinaClipEncoder:
    """Load jina-clip-v1/v2 with ``AutoModel(trust_remote_code=True)``; refuses without it."""
    if not trust_remote_code:
        check_remote_code(name, False, revision=revision)  # names the file that asks for code, if one does
        check_remote_code(name, False, reason=JINA_REASON)
    import transformers

    _, model_id = read_config(name, revision)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        with _no_prompt():
            model = transformers.AutoModel.from_pretrained(name, revision=revision, trust_remote_code=True, dtype=dt,
                                                           **_local_only(name))
    except Exception as e:  # noqa: BLE001
        raise _load_failed(name, "weights or remote code", e) from None
    if hasattr(model, "to"):
        model = model.to(dev)
    try:  # read as JSON, never run; a file the plan cannot express keeps jina's own processor
        plan = plan_from_jina_config(_model_json(name, "preprocessor_config.json", revision) or {})
    except (EncoderLoadError, ValueError, TypeError):
        plan = None
    return JinaClipEncoder(model, name=name, model_id=model_id, device=dev, dtype=dt, batch_size=batch_size,
                           text_batch_size=text_batch_size, truncate_dim=truncate_dim, pixel_plan=plan)
