"""Image loading: RGB conversion rules and one-line errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.encoders import ImageLoadError, encode_images_tolerant, load_image

from .support.data import noise_image
from .support.encoders import HashEncoder


def px(img, xy=(0, 0)):
    return img.getpixel(xy)


def test_rgb_passes_through(tmp_path):
    im = noise_image(0)
    p = tmp_path / "a.png"
    im.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == im.size
    assert np.array_equal(np.asarray(out), np.asarray(im))
    assert load_image(str(p)).mode == "RGB"


@pytest.mark.parametrize("mode,fill", [("RGBA", (10, 20, 30, 0)), ("LA", (10, 0))])
def test_transparent_pixels_become_white(tmp_path, mode, fill):
    im = Image.new(mode, (4, 4), fill)
    p = tmp_path / "t.png"
    im.save(p)
    assert px(load_image(p)) == (255, 255, 255)


def test_half_transparent_is_composited_on_white():
    out = load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    assert all(abs(v - 127) <= 1 for v in px(out))


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0] + [0, 255, 0] * 255)
    im.info["transparency"] = 0
    p = tmp_path / "p.png"
    im.save(p, transparency=0)
    assert px(load_image(p)) == (255, 255, 255)
    im2 = Image.new("P", (4, 4), 0)
    im2.putpalette([255, 0, 0] * 256)
    assert px(load_image(im2)) == (255, 0, 0)


def test_cmyk_and_greyscale(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p)
    r, g, b = px(load_image(p))
    assert r > 200 and g < 60 and b < 60
    assert px(load_image(Image.new("L", (2, 2), 77))) == (77, 77, 77)
    assert px(load_image(Image.new("1", (2, 2), 1))) == (255, 255, 255)


def test_16_bit_greyscale_is_rescaled(tmp_path):
    a = np.full((4, 4), 65535, dtype=np.uint16)
    a[0, 0] = 0
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    im = Image.open(p)
    assert im.mode.startswith("I")
    out = load_image(p)
    assert out.mode == "RGB" and px(out, (1, 1)) == (255, 255, 255) and px(out) == (0, 0, 0)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as im:
        assert im.n_frames == 2
        im.seek(1)  # a caller left it on frame 2
        r, g, b = px(load_image(im))
    assert r > 200 and b < 50
    r, g, b = px(load_image(p))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert Image.open(p).size == (40, 20)
    assert load_image(p).size == (20, 40)


@pytest.mark.parametrize("make,cause", [
    (lambda d: d / "missing.png", "no such file"),
    (lambda d: d, "directory"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not an image"),
    (lambda d: (d / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20) and d / "trunc.png", "image"),
])
def test_errors_are_one_line_and_name_the_file(tmp_path, make, cause):
    path = make(tmp_path)
    with pytest.raises(ImageLoadError) as e:
        load_image(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and cause in msg
    assert e.value.path == str(path)


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "ok.jpg"
    noise_image(1, (64, 64)).save(p, quality=90)
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(bad)


def test_wrong_type():
    with pytest.raises(TypeError, match="path or a PIL.Image"):
        load_image(3)


def test_base_encoder_batches_normalises_and_flags_zero_vectors(tmp_path):
    enc = HashEncoder(batch_size=2)
    imgs = [noise_image(i) for i in range(5)]
    emb = enc.encode_images(imgs)
    assert emb.shape == (5, 8) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(5))
    assert enc.image_batches == [2, 2, 1]
    black = enc.encode_images([Image.new("RGB", (4, 4))])
    assert torch.isnan(black).all()  # a zero vector cannot be normalised: the engine reports an error
    assert enc.encode_images([]).shape == (0, 8)


def test_encode_images_tolerant(tmp_path):
    enc = HashEncoder()
    good = tmp_path / "g.png"
    noise_image(3).save(good)
    emb, ok, errors = encode_images_tolerant(enc, [good, tmp_path / "nope.png", noise_image(4)])
    assert emb.shape == (2, 8) and ok.tolist() == [0, 2]
    assert list(errors) == [1] and "nope.png" in errors[1]
    assert torch.isfinite(emb).all()


def test_a_missing_file_names_the_folder_relative_paths_start_from_only_when_the_path_is_relative(tmp_path, monkeypatch):
    """An absolute path (a data table's rows arrive resolved from the table's folder) gets no hint about the
    current folder, which would point at the wrong place; a relative one does."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageLoadError) as absolute:
        load_image(str(tmp_path / "sub" / "missing.png"))
    assert "no such file" in str(absolute.value) and "resolved from" not in str(absolute.value)
    with pytest.raises(ImageLoadError) as relative:
        load_image("missing.png")
    assert f"relative paths are resolved from {str(tmp_path)!r}" in str(relative.value)


def test_a_truncated_file_of_a_format_we_read_is_called_damaged_not_refused():
    """A PNG holding its signature and IHDR only was told "PNG is not an image format twentyq reads"."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100, 100, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(ImageLoadError, match="damaged or truncated PNG file") as e:
        load_image(data)
    assert "not an image format" not in str(e.value)


def test_a_progressive_jpeg_of_too_many_scans_is_refused_before_decoding():
    """A "scan bomb" (the last refinement scan repeated thousands of times) decoded for minutes and held a server
    thread past its timeout; an ordinary progressive JPEG (10 scans) still loads."""
    import io

    from engine.encoders.images import MAX_JPEG_SCANS

    buf = io.BytesIO()
    noise_image(1, (256, 256)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    assert 1 < data.count(b"\xff\xda") <= MAX_JPEG_SCANS
    assert load_image(data).size == (256, 256)
    last, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    for extra in (MAX_JPEG_SCANS - data.count(b"\xff\xda"), MAX_JPEG_SCANS + 1 - data.count(b"\xff\xda")):
        bomb = data[:eoi] + data[last:eoi] * extra + data[eoi:]
        if bomb.count(b"\xff\xda") <= MAX_JPEG_SCANS:
            assert load_image(bomb).size == (256, 256)  # at the limit: decoded
        else:
            with pytest.raises(ImageLoadError, match=f"more than {MAX_JPEG_SCANS} scans"):
                load_image(bomb)


def _progressive_jpeg(fmt="JPEG"):
    import io

    buf = io.BytesIO()
    im = noise_image(2, (128, 128))
    kw = {"save_all": True, "append_images": [im]} if fmt == "MPO" else {}
    im.save(buf, fmt, progressive=True, quality=90, **kw)
    return buf.getvalue()


def _with_repeated_last_scan(data: bytes, extra: int) -> bytes:
    eoi = data.find(b"\xff\xd9")  # the first image's end (an MPO holds a second after it)
    last = data.rfind(b"\xff\xda", 0, eoi)
    return data[:eoi] + data[last:eoi] * extra + data[eoi:]


def test_scans_are_counted_by_walking_the_markers_not_by_searching_bytes():
    """FF DA bytes inside an APP segment or after the end of the image (a motion photo's video) are not scans;
    the count is the same whatever the read block (a marker split across two reads)."""
    import io

    from engine.encoders.images import MAX_JPEG_SCANS, count_scans

    data = _progressive_jpeg()
    n = count_scans(io.BytesIO(data))
    assert n == data.count(b"\xff\xda") and 1 < n <= MAX_JPEG_SCANS
    app15 = b"\xff\xef" + (2 + 2 * 300).to_bytes(2, "big") + b"\xff\xda" * 300
    for odd in (data[:2] + app15 + data[2:], data + b"\xff\xda" * 300):
        assert count_scans(io.BytesIO(odd)) == n
        assert load_image(odd).size == (128, 128)
    assert count_scans(io.BytesIO(data[:2] + bytes(1000) + data[2:])) == n  # stray bytes are skipped
    bomb = _with_repeated_last_scan(data, 150)
    for block in (1, 2, 3, 7, 1 << 16):
        assert count_scans(io.BytesIO(data), block=block) == n
        assert count_scans(io.BytesIO(bomb), block=block) == MAX_JPEG_SCANS + 1  # it stops counting there


def test_a_progressive_mpo_is_capped_and_estimated_as_a_jpeg():
    """Pillow opens a JPEG with a multi-picture header as "MPO": it skipped the scan cap and the estimate."""
    from engine.encoders.images import read_header

    data = _progressive_jpeg("MPO")
    assert read_header(data, "x")[4] > 0  # the decoder's coefficient buffers are counted
    with pytest.raises(ImageLoadError, match="scans"):
        load_image(_with_repeated_last_scan(data, 150))
