"""Image loading: any file Pillow reads, to an RGB image, with one-line errors.

Rules (applied to files and to PIL images passed in directly):

- EXIF orientation is applied (``ImageOps.exif_transpose``);
- animated images (GIF, APNG, WebP) use their first frame;
- palette (P), LA, RGBA, PA and other images with transparency are
  composited onto white;
- CMYK, YCbCr, LAB, HSV convert to RGB; 16/32-bit greyscale (I;16, I) and
  float (F) images are rescaled to 8 bits, then RGB;
- 1-bit and L become RGB.

A file that cannot be read raises :class:`ImageLoadError` (a ValueError) whose
message names the file and the cause on one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image]

WHITE = (255, 255, 255)


class ImageLoadError(ValueError):
    """An image that could not be loaded; ``path`` names it, the message says why."""

    def __init__(self, path: str, cause: str):
        self.path = path
        self.cause = cause
        super().__init__(f"cannot load image {path!r}: {cause}")


def _rescale_to_8bit(img: Image.Image) -> Image.Image:
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() <= 65535 and a.min() >= 0):
        a = a / 65535.0 * 255.0 if a.size and a.max() > 255 else a
    else:  # I (32-bit) or F: stretch the observed range
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB copy of ``img`` following the module's rules (first frame, EXIF, white background)."""
    if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img)  # returns a copy, loads the frame
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _rescale_to_8bit(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB", "1")
                                                              and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV


def load_image(image: ImageLike) -> Image.Image:
    """One image as RGB (see the module docstring). Raises ImageLoadError naming the file."""
    if isinstance(image, Image.Image):
        try:
            return to_rgb(image)
        except Exception as e:  # noqa: BLE001  (Pillow raises many types)
            raise ImageLoadError("<PIL image>", f"{type(e).__name__}: {e}") from None
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"an image must be a path or a PIL.Image, got {type(image).__name__}")
    path = str(image)
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(path, "no such file; check the path (relative paths are resolved from "
                                   f"{os.getcwd()!r})")
    if p.is_dir():
        raise ImageLoadError(path, "is a directory, not an image file")
    try:
        with Image.open(p) as im:
            return to_rgb(im)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image Pillow can read (unknown format or not an image file)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(path, f"corrupt or truncated image data ({msg})") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"too large to decode safely ({e})") from None


def load_images(images: Iterable[ImageLike]) -> list[Image.Image]:
    """Several images as RGB; the first bad one raises ImageLoadError naming it."""
    return [load_image(im) for im in images]


def image_label(image: ImageLike) -> str:
    """A short name for messages: the path, or "<PIL image WxH>"."""
    if isinstance(image, Image.Image):
        return f"<PIL image {image.size[0]}x{image.size[1]}>"
    return str(image)


def batches(items: Sequence, size: int):
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
