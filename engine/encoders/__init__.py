"""Image-text encoders: one protocol, backends chosen by a model string.

    from engine.encoders import load_encoder
    enc = load_encoder("offline")                       # the packaged stand-in (weak, not CLIP)
    enc = load_encoder("probe")                         # attribute probe trained here on Gen 2–3 sprites; not CLIP
    enc = load_encoder("openai/clip-vit-base-patch32")  # hub id, or a local folder
    enc = load_encoder("jinaai/jina-clip-v2", trust_remote_code=True, truncate_dim=512)
    img = enc.encode_images(["cat.jpg"])                # (B, D) float32 torch, unit rows, on enc.device
    txt = enc.encode_texts(["a photo of a cat"])        # (T, D)
"""

from engine.encoders.base import (
    BaseEncoder, Encoder, EncoderLoadError, EncoderOutOfMemory, RemoteCodeRefused, cache_identity,
    check_prompt_lengths, encode_images_tolerant, nonfinite_rows, to_numpy,
)
from engine.encoders.device import available_devices, resolve_device, resolve_dtype
from engine.encoders.images import ImageLoadError, load_image, load_image_bytes, load_images
from engine.encoders.registry import DEFAULT_MODEL, MODELS, list_models, load_encoder

__all__ = [
    "DEFAULT_MODEL", "MODELS", "BaseEncoder", "Encoder", "EncoderLoadError", "EncoderOutOfMemory",
    "ImageLoadError", "RemoteCodeRefused",
    "available_devices", "cache_identity", "check_prompt_lengths", "encode_images_tolerant", "list_models",
    "load_encoder", "load_image", "load_image_bytes", "load_images", "nonfinite_rows", "resolve_device", "resolve_dtype", "to_numpy",
]
