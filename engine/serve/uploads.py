"""Request bytes to RGB images, refusing what should not be decoded.

Only bytes from the request are read (never a server-side path). Each image is
opened with Pillow restricted to common raster formats (no EPS/PDF, which would
hand the data to Ghostscript), its declared size is checked against the pixel
limit from the header alone, before any pixel is decoded, and only then is it
decoded (JPEGs at a reduced scale when large) and brought to RGB by the same
rules as files (:func:`engine.encoders.images.load_image`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from engine.encoders.images import IMAGE_FORMATS, MAX_SIDE, ImageLoadError, format_refusal, load_image, sniff_format
from engine.serve.schemas import ApiError

FORMATS = IMAGE_FORMATS  # the one list (engine.encoders.images), not a server-only one
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.ASCII)


@dataclass(frozen=True)
class Header:
    """What an upload's header declares, read before any pixel is decoded: its size and Pillow mode
    after a JPEG's reduced-scale draft (what will actually be decoded), and whether it names a
    transparent colour. ``cost`` tuple for :func:`engine.serve.memory.request_cost`."""

    width: int
    height: int
    mode: str
    transparency: bool

    @property
    def cost(self) -> tuple[int, int, str, bool]:
        return self.width, self.height, self.mode, self.transparency


@contextmanager
def _opened(data: bytes, field: str, max_pixels: int):
    """The upload opened by Pillow (header only), its declared size checked against ``max_pixels`` and
    a large JPEG set to decode at reduced scale; every failure an ApiError naming ``field``."""
    if not data:
        raise ApiError(400, "bad_image", f"{field} is empty; send the image file's bytes", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                w, h = im.size  # the header only: nothing is decoded yet
                if w * h > max_pixels:
                    raise _too_large(field, w * h, max_pixels, f"{w}x{h} = ")
                if max(w, h) > MAX_SIDE:  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= the bound
                    r = MAX_SIDE / max(w, h)
                    im.draft(None, (max(1, int(w * r)), max(1, int(h * r))))
                yield im
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard fired first (over 2x its limit): quote this server's limit, not Pillow's
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(field, int(m.group(1)) if m else None, max_pixels) from None
    except UnidentifiedImageError:
        raise ApiError(400, "bad_image", f"{field}: {format_refusal(sniff_format(data[:16]))}", field) from None
    except ImageLoadError as e:
        raise ApiError(400, "bad_image", f"{field} could not be decoded ({e.cause}); send a complete image file",
                       field) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data at open
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ApiError(400, "bad_image", f"{field} is corrupt or truncated ({msg}); send a complete image file",
                       field) from None
    except Exception as e:  # noqa: BLE001  (anything else a decoder raises is this image's error, not a 500)
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ApiError(400, "bad_image", f"{field} could not be decoded ({type(e).__name__}: {msg}); send a "
                                         "complete image file", field) from None


def _too_large(field: str, pixels: int | None, max_pixels: int, size: str = "") -> ApiError:
    declared = f"declares {size}{pixels:,} pixels" if pixels is not None else "declares more pixels than that"
    return ApiError(413, "image_too_large", f"{field} {declared}, over this server's limit of {max_pixels:,} "
                                            "(--max-pixels); send a smaller image", field)


def read_header(data: bytes, field: str, max_pixels: int) -> Header:
    """The upload's header (nothing decoded); ApiError (400 bad_image, 413 image_too_large) naming ``field``."""
    with _opened(data, field, max_pixels) as im:
        w, h = im.size  # after draft: the size that will be decoded
        return Header(int(w), int(h), im.mode, "transparency" in im.info)


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """One uploaded image as RGB; ApiError (400 bad_image, 413 image_too_large) naming ``field``."""
    with _opened(data, field, max_pixels) as im:
        return load_image(im)


def b64_bytes(text: str, field: str) -> bytes:
    """The bytes of a base64 string (an optional ``data:image/...;base64,`` prefix is dropped)."""
    if not isinstance(text, str):
        raise ApiError(400, "bad_image", f"{field} must be a base64 string", field)
    text = "".join(_DATA_URL.sub("", text.strip(), count=1).split())  # line breaks allowed
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_image", f"{field} is not valid base64; encode the image file's bytes "
                                         "(e.g. base64 -w0 a.png)", field) from None
