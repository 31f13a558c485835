"""Request bytes to RGB images, by the very rules of image files (:mod:`engine.encoders.images`).

Only bytes from the request are read (never a server-side path). Each image is opened by
:func:`engine.encoders.images.opened`, the one opener of files, bytes and uploads: Pillow restricted
to common raster formats (no EPS/PDF, which would hand the data to Ghostscript), the declared size
checked against this server's pixel limit (``--max-pixels``) from the header alone, before any pixel
is decoded, and only then decoded (JPEGs at a reduced scale when large) and brought to RGB
(:func:`engine.encoders.images.load_image_bytes`). This module only turns their one-line
:class:`ImageLoadError` into the API's errors: 413 ``image_too_large`` for a size over the limit,
400 ``bad_image`` for everything else, each naming the request field.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from PIL import Image

from engine.encoders.images import ImageLoadError, load_image_bytes
from engine.encoders.images import read_header as read_image_header
from engine.serve.schemas import ApiError

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.ASCII)


@dataclass(frozen=True)
class Header:
    """What an upload's header declares, read before any pixel is decoded: its size and Pillow mode
    after a JPEG's reduced-scale draft (what will actually be decoded), whether it names a
    transparent colour, and its format's decoder buffers (:func:`engine.encoders.images.decoder_buffers`).
    ``cost`` tuple for :func:`engine.serve.memory.request_cost`."""

    width: int
    height: int
    mode: str
    transparency: bool
    decoder_buffers: int = 0

    @property
    def cost(self) -> tuple[int, int, str, bool, int]:
        return self.width, self.height, self.mode, self.transparency, self.decoder_buffers


def api_error(e: ImageLoadError, field: str, max_pixels: int) -> ApiError:
    """The API's error for an upload ``field`` the image rules refused."""
    if e.too_large:
        declared = (f"declares {e.size}{e.pixels:,} pixels" if e.pixels is not None
                    else "declares more pixels than that")
        return ApiError(413, "image_too_large", f"{field} {declared}, over this server's limit of {max_pixels:,} "
                                                "(--max-pixels); send a smaller image", field)
    return ApiError(400, "bad_image", f"{field}: {e.cause}", field)


def _check_bytes(data: bytes, field: str) -> None:
    if not data:
        raise ApiError(400, "bad_image", f"{field} is empty; send the image file's bytes", field)


def read_header(data: bytes, field: str, max_pixels: int) -> Header:
    """The upload's header (nothing decoded); ApiError (400 bad_image, 413 image_too_large) naming ``field``."""
    _check_bytes(data, field)
    try:
        return Header(*read_image_header(data, field, max_pixels))
    except ImageLoadError as e:
        raise api_error(e, field, max_pixels) from None


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """One uploaded image as RGB; ApiError (400 bad_image, 413 image_too_large) naming ``field``."""
    _check_bytes(data, field)
    try:
        return load_image_bytes(field, data, max_pixels)
    except ImageLoadError as e:
        raise api_error(e, field, max_pixels) from None


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
