"""A model's image preprocessing as data (:class:`PixelPlan`) and as array operations.

The fast image path (see :mod:`engine.encoders.image_pool`) splits what an image
processor does into two halves:

1. resize and centre crop, to a fixed (h, w) uint8 image: in a decode worker with
   Pillow (:func:`resize_crop_pil`, the same Pillow calls as transformers'
   ``*ImageProcessorPil``, so the pixels are identical), or on the device with torch
   (:func:`resize_crop_tensor`, bicubic with antialias, for images decoded on the GPU);
2. rescale and normalise a batch, on the encoder's device (:func:`normalise`).

:func:`plan_from_processor` reads a plan from a transformers image processor (CLIP:
shortest edge then centre crop; SigLIP: a square resize without crop);
:func:`plan_from_jina_config` from jina-clip's ``preprocessor_config.json``. This
module imports torch only inside the functions that need it (decode workers do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_PIL_TO_NAME = {int(Image.Resampling.BICUBIC): "bicubic", int(Image.Resampling.BILINEAR): "bilinear"}


@dataclass(frozen=True)
class PixelPlan:
    """How one model turns an RGB image into its input tensor.

    shortest_edge : resize so the short side is this long, aspect kept (None: see ``size``).
    size : (h, w) to resize to exactly, aspect not kept (SigLIP), when ``shortest_edge`` is None.
    crop : (h, w) centre crop after the resize (None: no crop; then ``size`` must be set).
    mean, std : per-channel normalisation, applied after multiplying by ``scale``.
    scale : rescale factor from uint8 (1/255 for transformers; 1/127.5 with mean 1, std 1 is [-1, 1]).
    resample : "bicubic" or "bilinear".
    long_side : how the long side's length is rounded after a shortest-edge resize:
        "floor" (transformers, torchvision) or "round" (the offline stand-in).
    crop_offset : how the crop's top-left corner is rounded: "floor" (transformers) or
        "round" (torchvision's CenterCrop).
    """

    shortest_edge: int | None
    size: tuple[int, int] | None
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255
    resample: str = "bicubic"
    long_side: str = "floor"
    crop_offset: str = "floor"

    def __post_init__(self):
        if (self.shortest_edge is None) == (self.size is None):
            raise ValueError("a PixelPlan resizes by shortest_edge or to a size, exactly one of them")
        if self.shortest_edge is not None and self.crop is None:
            raise ValueError("a shortest-edge resize needs a crop (batches need one fixed shape)")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample == {self.resample!r}, must be one of {sorted(RESAMPLE)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean {self.mean!r} and std {self.std!r} must have 3 entries, std > 0")

    @property
    def out_hw(self) -> tuple[int, int]:
        """(h, w) of every preprocessed image."""
        return self.crop if self.crop is not None else self.size  # type: ignore[return-value]

    def resized_wh(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) an image of ``w`` × ``h`` is resized to, before the crop."""
        if self.size is not None:
            return self.size[1], self.size[0]
        s = self.shortest_edge
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(s * long / short) if self.long_side == "floor" else round(long * (s / short))
        new_long = max(new_long, s)
        return (s, new_long) if w <= h else (new_long, s)

    def crop_box(self, w: int, h: int) -> tuple[int, int]:
        """(top, left) of the centre crop in a ``w`` × ``h`` image (negative: the crop pads)."""
        ch, cw = self.crop  # type: ignore[misc]
        if self.crop_offset == "round":
            return int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return (h - ch) // 2, (w - cw) // 2


def _hw(d: Any, name: str) -> tuple[int, int] | None:
    if d is None:
        return None
    get = d.get if isinstance(d, dict) else (lambda k, default=None: getattr(d, k, default))
    h, w = get("height", None), get("width", None)
    if h is None or w is None:
        return None
    return int(h), int(w)


def plan_from_processor(proc: Any) -> PixelPlan | None:
    """The plan of a transformers image processor (CLIP- or SigLIP-style), or None when it does
    something a plan cannot express (padding, a longest edge, no resize or no normalisation)."""
    get = lambda k, default=None: getattr(proc, k, default)  # noqa: E731
    if not get("do_resize", False) or not get("do_rescale", False) or not get("do_normalize", False):
        return None
    if get("do_pad", False):
        return None
    resample = _PIL_TO_NAME.get(int(get("resample", -1) if get("resample") is not None else -1))
    if resample is None:
        return None
    size = get("size") or {}
    sget = size.get if isinstance(size, dict) else (lambda k, default=None: getattr(size, k, default))
    crop = _hw(get("crop_size"), "crop_size") if get("do_center_crop", False) else None
    mean, std = get("image_mean"), get("image_std")
    if mean is None or std is None:
        return None
    mean = tuple(float(x) for x in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
    std = tuple(float(x) for x in (std if isinstance(std, (list, tuple)) else [std] * 3))
    common = dict(mean=mean, std=std, scale=float(get("rescale_factor", 1 / 255)), resample=resample)
    if sget("longest_edge", None) or sget("max_height", None):
        return None
    if sget("shortest_edge", None):
        if crop is None:
            return None
        return PixelPlan(shortest_edge=int(sget("shortest_edge")), size=None, crop=crop, **common)
    hw = _hw(size, "size")
    if hw is None:
        return None
    return PixelPlan(shortest_edge=None, size=hw, crop=crop, **common)


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def plan_from_jina_config(cfg: dict) -> PixelPlan | None:
    """The plan of jina-clip's image processor from its ``preprocessor_config.json`` (open_clip style:
    torchvision ``Resize(size, bicubic)`` on the short side, ``CenterCrop(size)``, ``Normalize``),
    or None when the file asks for another resize mode."""
    size = cfg.get("size")
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int) or size < 1:
        return None
    if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") != "bicubic":
        return None
    mean = tuple(float(x) for x in cfg.get("mean") or OPENAI_CLIP_MEAN)
    std = tuple(float(x) for x in cfg.get("std") or OPENAI_CLIP_STD)
    return PixelPlan(shortest_edge=size, size=None, crop=(size, size), mean=mean, std=std, scale=1 / 255,
                     long_side="floor", crop_offset="round")


def resize_crop_pil(img: Image.Image, plan: PixelPlan) -> np.ndarray:
    """An RGB PIL image resized and centre-cropped by ``plan``: (h, w, 3) uint8, h, w = ``plan.out_hw``."""
    w, h = img.size
    nw, nh = plan.resized_wh(w, h)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), RESAMPLE[plan.resample])
    a = np.asarray(img, dtype=np.uint8)
    if plan.crop is not None:
        a = _crop_hwc(a, plan)
    return np.ascontiguousarray(a)


def _crop_hwc(a: np.ndarray, plan: PixelPlan) -> np.ndarray:
    """Centre crop of an (H, W, C) array, zero-padded where the image is smaller than the crop."""
    h, w = a.shape[:2]
    ch, cw = plan.crop  # type: ignore[misc]
    top, left = plan.crop_box(w, h)
    if 0 <= top and 0 <= left and top + ch <= h and left + cw <= w:
        return a[top:top + ch, left:left + cw]
    out = np.zeros((ch, cw) + a.shape[2:], dtype=a.dtype)
    t0, l0 = max(0, -top), max(0, -left)
    src = a[max(0, top):max(0, top) + ch - t0, max(0, left):max(0, left) + cw - l0]
    out[t0:t0 + src.shape[0], l0:l0 + src.shape[1]] = src
    return out


def resize_crop_tensor(x: Any, plan: PixelPlan) -> Any:
    """One image (3, H, W) uint8 torch tensor, on any device, resized (bicubic/bilinear with antialias)
    and centre-cropped by ``plan``: (3, h, w) uint8 on the same device."""
    import torch
    import torch.nn.functional as F

    _, h, w = x.shape
    nw, nh = plan.resized_wh(int(w), int(h))
    y = x
    if (nw, nh) != (w, h):
        y = F.interpolate(x[None].float(), size=(nh, nw), mode=plan.resample, antialias=True, align_corners=False)[0]
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    if plan.crop is not None:
        ch, cw = plan.crop
        top, left = plan.crop_box(nw, nh)
        if 0 <= top and 0 <= left and top + ch <= nh and left + cw <= nw:
            y = y[:, top:top + ch, left:left + cw]
        else:
            out = torch.zeros((3, ch, cw), dtype=y.dtype, device=y.device)
            t0, l0 = max(0, -top), max(0, -left)
            src = y[:, max(0, top):max(0, top) + ch - t0, max(0, left):max(0, left) + cw - l0]
            out[:, t0:t0 + src.shape[1], l0:l0 + src.shape[2]] = src
            y = out
    return y.contiguous()


def normalise(pixels: Any, plan: PixelPlan, device: Any, dtype: Any) -> Any:
    """(B, 3, h, w) uint8 torch pixels -> (B, 3, h, w) ``dtype`` on ``device``: ``(x·scale − mean) / std``.

    Computed in float32 (as transformers does in numpy), then cast to ``dtype``. A host tensor
    in pinned memory is copied without blocking.
    """
    import torch

    x = pixels.to(device, non_blocking=True).float()
    mean = torch.tensor(plan.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(plan.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.mul_(plan.scale).sub_(mean).div_(std)
    return x.to(dtype)


