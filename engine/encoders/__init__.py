"""Image-text encoders: one protocol, backends chosen by a model string.

    from engine.encoders import load_encoder
    enc = load_encoder("offline")                       # the packaged stand-in (weak, not CLIP)
    enc = load_encoder("probe")                         # attribute probe trained here on Gen 2–3 sprites; not CLIP
    enc = load_encoder("openai/clip-vit-base-patch32")  # hub id, or a local folder
    enc = load_encoder("jinaai/jina-clip-v2", trust_remote_code=True, truncate_dim=512)
    img = enc.encode_images(["cat.jpg"])                # (B, D) float32 torch, unit rows, on enc.device
    txt = enc.encode_texts(["a photo of a cat"])        # (T, D)

The names below are loaded on first use, so that a decode worker process
(:mod:`engine.encoders.image_pool`), which imports only :mod:`engine.encoders.images`
and :mod:`engine.encoders.pixels`, starts without importing torch.
"""

from __future__ import annotations

from engine.common.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("BaseEncoder", "Encoder", "EncoderLoadError", "EncoderOutOfMemory", "RemoteCodeRefused",
                     "cache_identity", "check_prompt_lengths", "encode_images_tolerant", "nonfinite_rows"),
                    "engine.encoders.base"),
    **dict.fromkeys(("available_devices", "resolve_device", "resolve_dtype"), "engine.encoders.device"),
    **dict.fromkeys(("ImageLoadError", "load_image", "load_image_bytes", "load_images"), "engine.encoders.images"),
    **dict.fromkeys(("DEFAULT_MODEL", "MODELS", "list_models", "load_encoder"), "engine.encoders.registry"),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
