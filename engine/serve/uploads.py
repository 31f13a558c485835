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

from PIL import Image, UnidentifiedImageError

from engine.encoders.images import IMAGE_FORMATS, MAX_SIDE, ImageLoadError, format_refusal, load_image, sniff_format
from engine.serve.schemas import ApiError

FORMATS = IMAGE_FORMATS  # the one list (engine.encoders.images), not a server-only one
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.ASCII)


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """One uploaded image as RGB; ApiError (400 bad_image, 413 image_too_large) naming ``field``."""
    if not data:
        raise ApiError(400, "bad_image", f"{field} is empty; send the image file's bytes", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                w, h = im.size  # the header only: nothing is decoded yet
                if w * h > max_pixels:
                    raise ApiError(413, "image_too_large",
                                   f"{field} declares {w}x{h} = {w * h:,} pixels, over this server's limit of "
                                   f"{max_pixels:,} (--max-pixels); send a smaller image", field)
                if max(w, h) > MAX_SIDE:  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= the bound
                    r = MAX_SIDE / max(w, h)
                    im.draft(None, (max(1, int(w * r)), max(1, int(h * r))))
                return load_image(im)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, "image_too_large", f"{field} is too large to decode safely ({e}); send a smaller "
                                               "image", field) from None
    except UnidentifiedImageError:
        raise ApiError(400, "bad_image", f"{field}: {format_refusal(sniff_format(data[:16]))}", field) from None
    except ImageLoadError as e:
        raise ApiError(400, "bad_image", f"{field} could not be decoded ({e.cause}); send a complete image file",
                       field) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data at open
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ApiError(400, "bad_image", f"{field} is corrupt or truncated ({msg}); send a complete image file",
                       field) from None


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
