"""Reliability (issue 7): bad images, bad numbers and bad arguments.

Every bad image is a per-item error with a reason while the good images of the
same batch are classified; the odd-but-valid images load; non-finite
embeddings are caught at the boundary; bad arguments name the value.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import engine.encoders.images as images_mod
from engine.run.classifier import Classifier, RunConfig
from engine.cli.app import main
from engine.encoders import ImageLoadError, load_image
from engine.encoders.text_cache import NonFiniteWarning

from .support.data import COLOUR_SYSTEM, noise_image, png_header_only, solid
from .support.encoders import BrokenEncoder, FakeEncoder, tiny_model_dir


def _bad_images(d) -> dict[str, tuple[object, str]]:
    """name -> (what to pass, a word the error must contain)."""
    ok = d / "ok.png"
    noise_image(1, (64, 64)).save(ok)
    jpg = d / "ok.jpg"
    noise_image(2, (64, 64)).save(jpg, quality=90)
    (d / "empty.png").write_bytes(b"")
    (d / "cut.jpg").write_bytes(jpg.read_bytes()[:300])
    (d / "cut.png").write_bytes(ok.read_bytes()[: len(ok.read_bytes()) // 2])
    (d / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    (d / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (d / "folder.jpg").mkdir()
    return {
        "missing": (d / "nope.png", "no such file"),
        "zero_bytes": (d / "empty.png", "not an image"),
        "truncated_jpeg": (d / "cut.jpg", "truncated"),
        "truncated_png": (d / "cut.png", "truncated"),
        "text_named_jpg": (d / "notes.jpg", "not an image"),
        "decompression_bomb": (d / "bomb.png", "decompression bomb"),
        "directory": (d / "folder.jpg", "directory"),
    }


@pytest.mark.parametrize("case", ["missing", "zero_bytes", "truncated_jpeg", "truncated_png", "text_named_jpg",
                                  "decompression_bomb", "directory"])
def test_bad_image_is_a_one_line_error_with_a_reason(tmp_path, case):
    path, word = _bad_images(tmp_path)[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bomb must be an error, never a warning
        with pytest.raises(ImageLoadError) as e:
            load_image(path)
    msg = str(e.value)
    assert word in msg and str(path) in msg and "\n" not in msg


def test_every_bad_image_errors_and_every_good_one_is_classified(tmp_path):
    bad = _bad_images(tmp_path)
    for col in ("red", "green", "blue"):
        solid(col).save(tmp_path / f"{col}.png")
    batch = [tmp_path / "red.png"] + [p for p, _ in bad.values()] + [tmp_path / "green.png", solid("blue")]
    clf = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder())
    res = clf.classify(batch, tau=0.9)
    assert len(res) == len(batch)
    assert [r.label for r in (res[0], res[-2], res[-1])] == ["cherry", "leaf", "sea"]
    for r, (name, (path, word)) in zip(res[1:-2], bad.items()):
        assert r.error and word in r.error and r.label is None, name


def test_decompression_bomb_limit_is_set_and_pillow_warning_becomes_an_error(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS == images_mod.MAX_IMAGE_PIXELS  # set explicitly, not Pillow's default
    p = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(p)
    # our own check off, Pillow's guard low: Pillow's DecompressionBombWarning must become our error
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 10**12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 - 1)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", (300 * 300) // 3)  # over 2x: Pillow's own error
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(p)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 1000)  # a PIL image passed in is checked too
    with pytest.raises(ImageLoadError, match="pixels is over the limit"):
        load_image(Image.new("RGB", (100, 100)))


def test_huge_legitimate_images_are_downscaled_before_the_model(tmp_path):
    jpg = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 4000), (200, 30, 30)).save(jpg, quality=80)
    png = tmp_path / "wide.png"
    Image.new("RGB", (5000, 100), (30, 200, 30)).save(png)
    for path, want in ((jpg, (2048, 1365)), (png, (2048, 41))):
        im = load_image(path)
        assert im.mode == "RGB" and max(im.size) == images_mod.MAX_SIDE
        assert abs(im.size[0] - want[0]) <= 1 and abs(im.size[1] - want[1]) <= 1
    assert max(load_image(Image.new("RGB", (3000, 10))).size) == images_mod.MAX_SIDE
    res = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder()).classify([jpg, png])
    assert [r.label for r in res] == ["cherry", "leaf"]


def _odd_images(d) -> dict[str, object]:
    """Unusual but valid images: each must load and classify."""
    out = {}
    Image.new("RGB", (1, 1), (220, 30, 30)).save(d / "one.png")
    out["1x1"] = d / "one.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(d / "g16.png")
    out["16-bit PNG"] = d / "g16.png"
    Image.new("CMYK", (16, 16), (0, 200, 200, 20)).save(d / "cmyk.jpg")
    out["CMYK JPEG"] = d / "cmyk.jpg"
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 220, 30, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(d / "pal.png", transparency=0)
    out["palette + transparency"] = d / "pal.png"
    Image.new("LA", (8, 8), (90, 255)).save(d / "la.png")
    out["LA"] = d / "la.png"
    frames = [Image.new("RGB", (8, 8), c) for c in ((220, 30, 30), (30, 40, 220))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated GIF"] = d / "anim.gif"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    Image.new("RGB", (40, 20), (220, 30, 30)).save(d / "rot.jpg", exif=exif)
    out["EXIF rotation"] = d / "rot.jpg"
    return out


def test_odd_but_valid_images_load_and_classify(tmp_path):
    odd = _odd_images(tmp_path)
    for name, path in odd.items():
        im = load_image(path)
        assert im.mode == "RGB" and min(im.size) >= 1, name
    assert load_image(odd["EXIF rotation"]).size == (20, 40)  # transposed by ImageOps.exif_transpose
    assert load_image(odd["animated GIF"]).getpixel((0, 0))[0] > 200  # the first (red) frame
    res = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder()).classify(list(odd.values()), tau=0.9)
    assert all(r.error is None and r.label for r in res), [r.error for r in res]
    assert res[0].label == res[5].label == res[6].label == "cherry"  # 1x1 red, red GIF frame, rotated red


def test_1x1_image_through_a_real_processor():
    """A tiny random CLIP with its real image processor (resize + crop) takes a 1x1 image."""
    from engine.encoders import load_encoder

    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    emb = enc.encode_images([Image.new("RGB", (1, 1), (5, 5, 5)), noise_image(0)])
    assert emb.shape == (2, enc.embed_dim) and torch.isfinite(emb).all()


def test_unreadable_file_is_a_per_item_error_injected(tmp_path, monkeypatch):
    """Permission denied, injected: tests often run as root, and chmod 000 does not stop root."""
    p = tmp_path / "secret.png"
    noise_image(0).save(p)
    real_open = os.open  # every image is opened by the guarded reader (engine.common.files.open_guarded)

    def deny(fp, *a, **k):
        if str(fp) == str(p):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image(p)
    res = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder()).classify([p, solid("red")])
    assert "permission denied" in res[0].error and res[1].label == "cherry"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading; "
                           "test_unreadable_file_is_a_per_item_error_injected covers the case")
def test_unreadable_file_is_a_per_item_error_real_chmod(tmp_path):
    p = tmp_path / "secret.png"
    noise_image(0).save(p)
    p.chmod(0)
    try:
        with pytest.raises(ImageLoadError, match="permission denied"):
            load_image(p)
    finally:
        p.chmod(0o644)


# --------------------------------------------------------------------------- non-finite embeddings
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_non_finite_image_embedding_fails_that_image_only(value):
    enc = BrokenEncoder(image_faults={"green": value})
    clf = Classifier(system=COLOUR_SYSTEM, encoder=enc)
    res = clf.classify([solid("red"), solid("green"), solid("blue")], tau=0.9)
    assert res[0].label == "cherry" and res[2].label == "sea"
    assert res[1].error and "NaN/inf or a zero vector" in res[1].error and res[1].label is None


def test_zero_vector_from_a_base_encoder_is_caught_at_the_boundary():
    from .support.encoders import HashEncoder

    enc = HashEncoder()  # an all-black image embeds to zeros, normalised to NaN
    clf = Classifier(system=COLOUR_SYSTEM, encoder=enc)
    res = clf.classify([Image.new("RGB", (4, 4)), noise_image(3)], tau=0.9)
    assert "zero vector" in res[0].error and res[1].error is None


def test_non_finite_prompt_embedding_fails_the_images_that_ask_that_group(tmp_path):
    enc = BrokenEncoder(prompt_word="rough")  # the texture group's prompts
    clf = Classifier(system=COLOUR_SYSTEM, encoder=enc, cache_dir=str(tmp_path))
    with pytest.warns(NonFiniteWarning, match="rough"):
        res = clf.classify([solid("red"), solid("green"), solid("blue")], mode="full")
    assert all(r.error and "'texture'" in r.error for r in res)  # full mode asks every group
    # adaptive: an image that stops before asking texture is classified; one that asks it fails
    grey = Image.new("RGB", (16, 16), (120, 120, 120))  # colour says little: it goes on to texture
    res = clf.classify([solid("red"), grey, solid("blue")], policy="fixed", tau=0.6)
    for r in res:
        if r.error:
            assert "'texture'" in r.error and r.label is None
        else:
            assert "texture" not in [s.group for s in r.steps] and r.label
    assert any(r.error for r in res) and any(r.error is None for r in res)
    # the NaN prompts were never written to the disk cache
    from safetensors import safe_open

    for f in (tmp_path / "text").glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            assert "rough" not in h.metadata()["prompts"]


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kw, shown", [
    ({"logit_scale": 0.0}, "logit_scale == 0.0"), ({"logit_scale": -3}, "logit_scale == -3"),
    ({"eps": 1.0}, "eps == 1.0"), ({"eps": -0.1}, "eps == -0.1"),
    ({"tau": 0.0}, "tau == 0.0"), ({"tau": 1.5}, "tau == 1.5"),
    ({"budget": -1}, "budget == -1"), ({"delta": -1.0}, "delta == -1.0"),
])
def test_bad_arguments_name_the_value(kw, shown):
    clf = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder())
    with pytest.raises(ValueError, match=shown.replace("(", r"\(")):
        clf.classify([solid("red")], **kw)
    with pytest.raises(ValueError, match=shown):
        RunConfig(**kw)


@pytest.mark.parametrize("flag, value, shown", [
    ("--logit-scale", "0", "--logit-scale == 0.0"), ("--eps", "1", "--eps == 1.0"), ("--tau", "1.5", "--tau == 1.5"),
    ("--tau", "0", "--tau == 0.0"), ("--budget", "-2", "--budget == -2"),
])
def test_cli_bad_arguments_exit_2_naming_the_value(tmp_path, capsys, flag, value, shown):
    solid("red").save(tmp_path / "r.png")
    assert main(["classify", str(tmp_path / "r.png"), flag, value]) == 2
    err = capsys.readouterr().err
    assert shown in err and err.count("\n") == 1


def test_duplicates_and_empty_batches():
    clf = Classifier(system=COLOUR_SYSTEM, encoder=FakeEncoder())
    assert clf.classify([]) == []
    a, b = clf.classify([solid("green"), solid("green")], tau=0.9)
    assert a.to_dict() == b.to_dict() and a.label == "leaf"


def test_cli_eval_on_an_empty_dataset(tmp_path, capsys):
    (tmp_path / "sys.json").write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    (tmp_path / "empty.csv").write_text("path,label\n", encoding="utf-8")
    import engine.encoders

    orig = engine.encoders.load_encoder
    engine.encoders.load_encoder = lambda *a, **k: FakeEncoder()
    try:
        rc = main(["eval", "--data", str(tmp_path / "empty.csv"), "--system", str(tmp_path / "sys.json"),
                   "--out", str(tmp_path / "r.jsonl"), "--quiet"])
    finally:
        engine.encoders.load_encoder = orig
    assert rc == 0
    out = capsys.readouterr().out
    assert "no images were scored" in out and "nan" not in out  # it printed "accuracy nan [nan, nan] n=0"
    summary = json.loads((tmp_path / "r.jsonl.d" / "_summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert summary["n"] == 0 and summary["accuracy"] is None and summary["complete"] is True
    assert not list((tmp_path / "r.jsonl.d").glob("shard-*"))
    assert (tmp_path / "r.jsonl").read_bytes() == b""  # the table of no rows
