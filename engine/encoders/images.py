"""Image loading: a raster file of an allowed format, to an RGB image, with one-line errors.

Rules (applied to files and to PIL images passed in directly):

- only the formats of :data:`IMAGE_FORMATS` (PNG, JPEG, GIF, WebP, BMP, TIFF: Pillow plugins
  that decode in-process) are opened: Pillow is called with ``formats=IMAGE_FORMATS``, so no
  other plugin even looks at the data. EPS, PS and PDF (which Pillow hands to Ghostscript, an
  external program) and every other format are refused by :func:`format_refusal`'s message,
  naming the format found and the allowed list. The CLI, ``eval``, ``calibrate``, report
  thumbnails and the server all decode through this policy;

- EXIF orientation is applied (``ImageOps.exif_transpose``);
- animated images (GIF, APNG, WebP) use their first frame;
- palette (P), LA, RGBA, PA and other images with transparency are
  composited onto white;
- CMYK, YCbCr, LAB, HSV convert to RGB; 16/32-bit greyscale (I;16, I) and
  float (F) images are rescaled to 8 bits, then RGB;
- 1-bit and L become RGB;
- an image larger than :data:`MAX_SIDE` on its long side is downscaled to
  fit it before it reaches a model (JPEGs are decoded at a reduced scale with
  ``Image.draft``, then ``thumbnail``): no model looks at more than a few
  hundred pixels, and a 10,000-px photo would otherwise cost ~300 MB;
- a file declaring more than :data:`MAX_IMAGE_PIXELS` pixels is refused
  before it is decoded (a decompression bomb). Pillow's own limit is set to
  the same value, and its ``DecompressionBombWarning`` is turned into the
  same error, never a warning.

- an image with zero width or height is refused.

A path is opened through the guarded reader (:func:`engine.common.files.open_guarded`): a FIFO,
socket or device is refused unopened (reading one could block forever), what was opened is
checked again with ``fstat``, a file over 1 GiB is refused, and a missing file, a
symlink loop, a name too long for the file system or a folder each get their
own cause. Encoded bytes (:func:`load_image_bytes`, or ``load_image(data)``)
follow the same rules and messages.

A file that cannot be read raises :class:`ImageLoadError` (a ValueError) whose
message names the file and the cause on one line: missing, a directory, not a
regular file, permission denied, not an image, corrupt or truncated, too large,
or, for any other exception raised while decoding it, that exception's type.
Nothing raised while decoding one image escapes as anything else, so a batch
goes on past it.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.common.files import IMAGE_FILE_LIMIT, check_regular_file, open_guarded

ImageLike = Union[str, os.PathLike, Image.Image, bytes]  # bytes: an encoded image file in memory

WHITE = (255, 255, 255)

# 100 megapixels: larger than any camera photo in common use (~50 MP), far below what a crafted
# file can declare. Decoding that much RGB takes about 0.9 GB at its peak (decode, copy and RGB: 9 bytes a
# pixel), an RGBA or 16-bit one up to 2.4-3.4 GB (engine.serve.memory's table; the server budgets it, the CLI's
# decode workers, two by default, do not).
MAX_IMAGE_PIXELS = 100_000_000
# Long side an image is downscaled to before it reaches a model (models look at 224-512 px).
MAX_SIDE = 2048

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own guard, set explicitly to ours

#: The one list of image formats twentyq decodes (Pillow format names), everywhere: files, bytes, report
#: thumbnails, the server. Only plugins that decode in-process; EPS/PS/PDF run Ghostscript and are not here.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


def sniff_format(prefix: bytes) -> str | None:
    """The Pillow format name whose magic bytes ``prefix`` (the file's first 16 bytes or more) carries, or None.

    Only the plugins' ``accept`` checks run (comparisons of the first bytes); nothing is opened or decoded.
    """
    if prefix.startswith(b"%PDF"):  # Pillow writes PDF but has no reader to ask
        return "PDF"
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix[:16]):
                return fmt
        except Exception:  # noqa: BLE001  (a plugin's check on odd bytes: not that format)
            continue
    return None


def format_refusal(fmt: str | None) -> str:
    """The one message for an image outside :data:`IMAGE_FORMATS` (``fmt``: the format found, if known)."""
    allowed = ", ".join(IMAGE_FORMATS)
    if fmt is None:
        return f"not an image twentyq reads (unknown format or not an image file); it reads {allowed}"
    if fmt in IMAGE_FORMATS:  # its magic bytes, but Pillow could not read the header that follows
        return f"a damaged or truncated {fmt} file (its header cannot be read); re-save or re-download it"
    why = " (decoding it would run Ghostscript, an external program)" if fmt in ("EPS", "PS", "PDF") else ""
    return f"{fmt} is not an image format twentyq reads{why}; it reads {allowed}: convert the file to PNG or JPEG"


def _refusal_of(source) -> str:
    """:func:`format_refusal` for a file object or bytes whose format Pillow (restricted) did not accept."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            prefix = bytes(source[:16])
        else:
            source.seek(0)
            prefix = source.read(16)
    except Exception:  # noqa: BLE001
        prefix = None
    if prefix == b"":
        return "not an image: an empty file (0 bytes); check that it was written or copied in full"
    return format_refusal(sniff_format(prefix) if prefix else None)


class ImageLoadError(ValueError):
    """An image that could not be loaded; ``path`` names it, the message says why.

    ``too_large`` is True when it was refused for declaring more pixels than the limit (a decompression
    bomb), with ``pixels`` the count declared (None when only Pillow's guard knew it) and ``size`` its
    "WxH = " text: the server answers those 413, every other refusal 400.
    """

    def __init__(self, path: str, cause: str, *, too_large: bool = False, pixels: int | None = None,
                 size: str = ""):
        self.path = path
        self.cause = cause
        self.too_large, self.pixels, self.size = too_large, pixels, size
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


def _check_size(size: tuple[int, int], label: str, max_pixels: int | None = None) -> None:
    """ImageLoadError naming ``label`` for a declared size over the pixel limit (``too_large``) or with
    zero width or height."""
    w, h = size
    if w * h > _pixel_limit(max_pixels):
        raise ImageLoadError(label, _bomb(w * h, max_pixels, f"{w}x{h} = "), too_large=True, pixels=w * h,
                             size=f"{w}x{h} = ")
    if w <= 0 or h <= 0:
        raise ImageLoadError(label, f"{w}x{h} has zero width or height; there is nothing to look at")


def _bomb(pixels: int, max_pixels: int | None = None, prefix: str = "") -> str:
    return (f"{prefix}{pixels:,} pixels is over the limit of {_pixel_limit(max_pixels):,} "
            "(a possible decompression bomb); refusing to decode it")


def _pixel_limit(max_pixels: int | None = None) -> int:
    """The limit in force: ``max_pixels`` when given (a server's ``--max-pixels``), else twentyq's
    MAX_IMAGE_PIXELS (Pillow's own guard is set to the same value), whichever is lower."""
    pil = Image.MAX_IMAGE_PIXELS
    limit = min(MAX_IMAGE_PIXELS, pil) if pil else MAX_IMAGE_PIXELS
    return min(limit, max_pixels) if max_pixels else limit


def _bomb_from_pillow(e: BaseException, label: str, max_pixels: int | None = None) -> ImageLoadError:
    """Our error for Pillow's DecompressionBombError/Warning, which quotes its own (2x) limit."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    if m:
        return ImageLoadError(label, _bomb(int(m.group(1)), max_pixels), too_large=True, pixels=int(m.group(1)))
    return ImageLoadError(label, f"over the limit of {_pixel_limit(max_pixels):,} pixels (a possible decompression "
                                 "bomb); refusing to decode it", too_large=True)


def _downscale(img: Image.Image) -> Image.Image:
    """``img`` shrunk to fit MAX_SIDE × MAX_SIDE (aspect kept); unchanged if it already fits."""
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
    return img


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


#: scans a progressive JPEG may hold: encoders write about 10 (libjpeg) to a few dozen; each costs a decode
#: pass over every pixel, so a file of thousands of repeated scans ("scan bomb") ran for minutes
MAX_JPEG_SCANS = 100
SCAN_READ_BLOCK = 1 << 16  # bytes read at a time while skipping a scan's entropy-coded data
# in entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker RST0-7; anything else
# (0xFF fill bytes included) starts the next marker
_MARKER_IN_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _is_jpeg(im: Image.Image) -> bool:
    """A JPEG, or a JPEG with a multi-picture header (Pillow's MPO: decoded by the same JPEG decoder)."""
    return im.format in ("JPEG", "MPO")


def count_scans(fp, stop_after: int = MAX_JPEG_SCANS, block: int = SCAN_READ_BLOCK) -> int:
    """The start-of-scan segments of the JPEG open on ``fp``, walking its markers from the start: segments
    are skipped by their length (APP data never counts), each scan's entropy-coded data by searching for the
    next marker, and the walk ends at EOI (what follows, e.g. a motion photo's video, is not read). Stops
    counting past ``stop_after``. ``fp``'s position is kept."""
    pos = fp.tell()
    try:
        fp.seek(0)
        if fp.read(2) != b"\xff\xd8":
            return 0
        scans = 0
        while scans <= stop_after:
            b = fp.read(1)
            if not b:
                break
            if b != b"\xff":  # stray bytes between segments (decoders skip them too): on to the next 0xFF
                _skip_to_ff(fp, block)
                continue
            code = fp.read(1)
            while code == b"\xff":  # fill bytes
                code = fp.read(1)
            if not code or code == b"\xd9":  # end of file, or EOI
                break
            if code == b"\x01" or b"\xd0" <= code <= b"\xd7":  # markers without a length
                continue
            size = fp.read(2)
            if len(size) < 2:
                break
            fp.seek(int.from_bytes(size, "big") - 2, 1)
            if code == b"\xda":
                scans += 1
                _skip_entropy_data(fp, block)
        return scans
    finally:
        fp.seek(pos)


def _skip_to_ff(fp, block: int) -> None:
    """Move ``fp`` to the next 0xFF byte (or to the end), a block at a time."""
    while True:
        start = fp.tell()
        data = fp.read(block)
        i = data.find(b"\xff")
        if i >= 0 or not data:
            fp.seek(start + max(i, 0) if data else start)
            return


def _skip_entropy_data(fp, block: int) -> None:
    """Move ``fp`` to the next marker after a scan's entropy-coded data (or to the end)."""
    while True:
        start = fp.tell()
        data = fp.read(block)
        if not data:
            return
        m = _MARKER_IN_DATA.search(data)
        if m:
            fp.seek(start + m.start())
            return
        if data.endswith(b"\xff"):  # the byte after it is in the next block
            fp.seek(start + len(data) - 1)
            nxt = fp.read(2)
            if len(nxt) < 2 or _MARKER_IN_DATA.match(nxt):
                fp.seek(start + len(data) - 1)
                return
            # a stuffed byte or a restart marker: go on after it (fp is already there)


def _check_scans(fp, label: str) -> None:
    """ImageLoadError when the JPEG open on ``fp`` holds more than :data:`MAX_JPEG_SCANS` scans."""
    if count_scans(fp) > MAX_JPEG_SCANS:
        raise ImageLoadError(label, f"a progressive JPEG of more than {MAX_JPEG_SCANS} scans (encoders write about "
                                    "10; each extra scan only costs decoding time): re-save it")


DECODER_BUFFERS = "twentyq_decoder_buffers"  # key in an opened image's info: see decoder_buffers


def decoder_buffers(im: Image.Image) -> int:
    """Bytes a format's decoder holds beyond the decoded image, from the header of ``im`` (before any draft):
    a progressive JPEG keeps every component's DCT coefficients at full size (2 bytes each; subsampling
    ignored, an upper bound) even when decoded at a reduced scale, and libwebp decodes into a buffer of its
    own before Pillow copies it (measured 6.3–7.0 bytes a pixel at 6300 x 6300 above the RGB/RGBA estimate).
    0 for the other formats (their peak is the mode's, :mod:`engine.serve.memory`)."""
    w, h = im.size
    if _is_jpeg(im) and im.info.get("progressive"):
        return 2 * w * h * max(1, int(getattr(im, "layers", 3) or 3))
    if im.format == "WEBP":
        return 7 * w * h
    return 0


@contextmanager
def opened(source, label: str, max_pixels: int | None = None):
    """``source`` (a path, a binary file object or bytes) opened by Pillow, header only, by the module's
    rules: only :data:`IMAGE_FORMATS`, the declared size checked against the pixel limit (``max_pixels``
    when given, a server's, else :data:`MAX_IMAGE_PIXELS`) before any pixel is decoded, a large JPEG set
    to decode at a reduced scale. The one opener of files, bytes and server uploads.

    Every failure, while opening or in the ``with`` body (decoding), is an ImageLoadError naming
    ``label``: the known ones with their cause in words, any other exception with its type (so one odd
    image can never abort a batch).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=IMAGE_FORMATS) as im:
                _check_size(im.size, label, max_pixels)  # the header only: nothing is decoded yet
                if _is_jpeg(im) and im.info.get("progressive"):
                    _check_scans(im.fp, label)
                im.info[DECODER_BUFFERS] = decoder_buffers(im)  # before the draft: some buffers are full size
                if max(im.size) > MAX_SIDE:  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= the bound
                    r = MAX_SIDE / max(im.size)
                    im.draft(None, (max(1, int(im.size[0] * r)), max(1, int(im.size[1] * r))))
                yield im
    except ImageLoadError:
        raise
    except PermissionError:
        raise ImageLoadError(label, "permission denied; the file is not readable by this user") from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, _refusal_of(source)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_from_pillow(e, label, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt data
        raise ImageLoadError(label, f"corrupt or truncated image data ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  (anything else Pillow or a plugin raises: this image's error)
        raise ImageLoadError(label, f"{type(e).__name__} while decoding it ({_first_line(e)})") from None


def _decode(source, label: str, max_pixels: int | None = None) -> Image.Image:
    """Open ``source`` (a path, a binary file object or bytes) by :func:`opened` and decode it to RGB by the
    module's rules; ImageLoadError naming ``label``."""
    with opened(source, label, max_pixels) as im:
        return _checked(_downscale(to_rgb(im)), label)


def read_header(data: bytes, label: str, max_pixels: int | None = None) -> tuple[int, int, str, bool, int]:
    """(width, height, Pillow mode, whether it names a transparent colour, :func:`decoder_buffers`) of an encoded
    image, from its header alone (size and mode after a large JPEG's reduced-scale draft: what will be decoded);
    the same checks and ImageLoadError as decoding it."""
    with opened(data, label, max_pixels) as im:
        w, h = im.size
        return int(w), int(h), im.mode, "transparency" in im.info, int(im.info.get(DECODER_BUFFERS, 0))


def _checked(img: Image.Image, label: str) -> Image.Image:
    if img.size[0] <= 0 or img.size[1] <= 0:
        raise ImageLoadError(label, f"{img.size[0]}x{img.size[1]} has zero width or height; "
                                    "there is nothing to look at")
    return img


def load_image_bytes(name: str, data: bytes, max_pixels: int | None = None) -> Image.Image:
    """An encoded image held in memory (``data``) as RGB, by the same rules and messages as a file.

    ``name`` is what messages call it (the file it came from); ``max_pixels`` a lower pixel limit than
    :data:`MAX_IMAGE_PIXELS` (a server's). Raises ImageLoadError.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return _decode(data, name, max_pixels)


def load_image(image: ImageLike | bytes, *, name: str | None = None) -> Image.Image:
    """One image as RGB (see the module docstring). Raises ImageLoadError naming the file.

    ``image`` is a path, a PIL image, or the encoded bytes of an image file;
    ``name`` labels bytes and PIL images in messages.
    """
    if isinstance(image, Image.Image):
        label = name or image_label(image)
        try:
            _check_size(image.size, label)
        except ImageLoadError:
            raise
        except Exception as e:  # noqa: BLE001  (a broken object posing as an image)
            raise ImageLoadError(label, f"{type(e).__name__} while reading its size ({_first_line(e)})") from None
        try:
            return _checked(_downscale(to_rgb(image)), label)
        except ImageLoadError:
            raise
        except Exception as e:  # noqa: BLE001  (Pillow raises many types)
            raise ImageLoadError(label, f"{type(e).__name__} while decoding it ({_first_line(e)})") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return load_image_bytes(name or f"<{len(image):,} bytes>", image)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"an image must be a path or a PIL.Image (or the bytes of an image file), got {type(image).__name__}")
    path = str(image)
    try:
        check_regular_file(path, what="image")  # stat only: a FIFO or device is never opened
    except (OSError, ValueError) as e:
        cause = getattr(e, "cause", None) or _first_line(e)
        if cause == "no such file" and not os.path.isabs(path):  # a data table's rows arrive resolved already
            cause += f"; check the path (relative paths are resolved from {os.getcwd()!r})"
        elif cause == "no such file":
            cause += "; check the path"
        raise ImageLoadError(path, cause) from None
    try:  # the guarded reader: fstat of what was opened, so a FIFO swapped in after the stat is refused too
        f = open_guarded(path, IMAGE_FILE_LIMIT, what="image")
    except (OSError, ValueError) as e:
        cause = getattr(e, "cause", None) or getattr(e, "strerror", None) or _first_line(e)
        raise ImageLoadError(path, cause) from None
    with f:
        return _decode(f, path)


def load_images(images: Iterable[ImageLike]) -> list[Image.Image]:
    """Several images as RGB; the first bad one raises ImageLoadError naming it."""
    return [load_image(im) for im in images]


def image_label(image: ImageLike) -> str:
    """A short name for messages: the path, or "<PIL image WxH>"."""
    if isinstance(image, Image.Image):
        return f"<PIL image {image.size[0]}x{image.size[1]}>"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image):,} bytes>"
    return str(image)


def batches(items: Sequence, size: int):
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
