"""Issue 14, hostile inputs round two: images, the tolerant embedder, caches, capped reads.

Per-item failures never block or abort: a FIFO, an over-long name, a symlink
loop, a zero-size image, or any exception while decoding one image becomes that
image's one-line error; the rest of the batch is embedded. Cache files that are
not regular files are skipped or rebuilt with one warning line, never waited on.
Hang cases run in a subprocess with a timeout, so a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.encoders.images as images_mod
from engine.encoders import ImageLoadError, load_image
from engine.encoders.base import NONFINITE_IMAGE, EncoderOutOfMemory, encode_images_tolerant

from .support.data import COLOUR_SYSTEM, noise_image, solid
from .support.encoders import FakeEncoder, FlakyEncoder, HashEncoder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run_py(code: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process; a hang is a test failure after ``timeout`` s, not a hung suite."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              env=ENV, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for more than {timeout} s")


# --------------------------------------------------------------------------- paths that are not image files
@pytest.mark.slow
def test_a_fifo_given_as_an_image_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "f.jpg")
    r = run_py("""
        from engine.encoders import ImageLoadError, load_image
        try:
            load_image("f.jpg")
        except ImageLoadError as e:
            print("ERR", e)
    """, tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "not a regular file" in r.stdout and "f.jpg" in r.stdout


@pytest.mark.slow
def test_cli_classify_with_a_fifo_classifies_the_good_image(tmp_path):
    """The reproducer: `mkfifo f.jpg; twentyq classify good.jpg f.jpg --json` hung."""
    solid("red").save(tmp_path / "good.jpg")
    os.mkfifo(tmp_path / "f.jpg")
    try:
        r = subprocess.run([sys.executable, "-m", "engine.cli", "classify", "good.jpg", "f.jpg", "--json"],
                           capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("twentyq classify hung on a FIFO")
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == 2, r.stderr
    assert rows[0]["error"] is None and rows[0]["label"]
    assert "not a regular file" in rows[1]["error"]


def test_an_over_long_file_name_is_a_per_item_error(tmp_path):
    long = tmp_path / ("x" * 300 + ".jpg")
    with pytest.raises(ImageLoadError, match="too long") as e:
        load_image(long)
    assert "\n" not in str(e.value)
    solid("red").save(tmp_path / "red.png")
    emb, good, errors = encode_images_tolerant(FakeEncoder(), [tmp_path / "red.png", long])
    assert good.tolist() == [0] and emb.shape == (1, 8) and "too long" in errors[1]


def test_a_symlink_loop_is_called_a_symlink_loop(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageLoadError, match="symlink loop"):
        load_image(loop)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


# --------------------------------------------------------------------------- images that decode badly
def test_a_zero_size_image_is_refused_per_item():
    for size in ((0, 5), (5, 0)):
        with pytest.raises(ImageLoadError, match="zero width or height"):
            load_image(Image.new("RGB", size))


@pytest.mark.slow
def test_a_zero_size_image_does_not_kill_the_offline_batch():
    from .support.encoders import offline_encoder

    enc = offline_encoder()
    emb, good, errors = encode_images_tolerant(enc, [noise_image(0), Image.new("RGB", (0, 5)), noise_image(1)])
    assert good.tolist() == [0, 2] and emb.shape == (2, enc.embed_dim) and torch.isfinite(emb).all()
    assert "zero width or height" in errors[1]


class Exploding(Image.Image):
    """A PIL image whose every conversion raises an unexpected exception type."""

    def __init__(self):
        super().__init__()
        self._size = (4, 4)
        self._mode = "RGB"

    def convert(self, *a, **k):
        raise ZeroDivisionError("boom")

    def copy(self):
        raise ZeroDivisionError("boom")

    def getexif(self):
        raise ZeroDivisionError("boom")

    def load(self):
        raise ZeroDivisionError("boom")


def test_any_exception_while_decoding_becomes_that_images_error_naming_its_type():
    with pytest.raises(ImageLoadError, match="ZeroDivisionError"):
        load_image(Exploding())
    emb, good, errors = encode_images_tolerant(HashEncoder(), [noise_image(0), Exploding()])
    assert good.tolist() == [0] and "ZeroDivisionError" in errors[1]


def test_the_bomb_message_quotes_twentyqs_limit_not_pillows(tmp_path):
    from .support.data import png_header_only

    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(100_000, 100_000))  # over Pillow's 2x guard: Pillow raises its own error
    for source in (p, p.read_bytes()):
        with pytest.raises(ImageLoadError) as e:
            load_image(source) if isinstance(source, Path) else images_mod.load_image_bytes("bomb.png", source)
        msg = str(e.value)
        assert f"{images_mod.MAX_IMAGE_PIXELS:,}" in msg and "decompression bomb" in msg
        assert "200000000" not in msg and "200,000,000" not in msg
        assert "10,000,000,000 pixels" in msg


# --------------------------------------------------------------------------- bytes
def test_load_image_bytes_and_load_image_accept_bytes(tmp_path):
    buf = io.BytesIO()
    Image.new("RGBA", (3000, 20), (0, 0, 0, 0)).save(buf, format="PNG")
    data = buf.getvalue()
    for im in (images_mod.load_image_bytes("wide.png", data), load_image(data)):
        assert im.mode == "RGB" and max(im.size) == images_mod.MAX_SIDE  # same rules as a file
        assert im.getpixel((0, 0)) == (255, 255, 255)
    for bad, word in ((b"", "not an image"), (b"not an image", "not an image"), (data[:60], "truncated")):
        with pytest.raises(ImageLoadError, match=word) as e:
            images_mod.load_image_bytes("x.png", bad)
        assert "'x.png'" in str(e.value)


# --------------------------------------------------------------------------- the one tolerant embedder
def test_encode_images_tolerant_contract(tmp_path):
    enc = FlakyEncoder(batch_size=4)
    good_file = tmp_path / "g.png"
    noise_image(3).save(good_file)
    black = Image.new("RGB", (4, 4))  # a zero vector from HashEncoder
    inputs = [good_file, tmp_path / "nope.png", noise_image(4), noise_image(5, (7, 7)), black, noise_image(6)]
    emb, good, errors = encode_images_tolerant(enc, inputs, names=["a", "b", "c", "d", "e", "f"])
    assert isinstance(good, np.ndarray) and good.dtype == np.int64 and good.tolist() == [0, 2, 5]
    assert emb.shape == (3, 8) and emb.dtype == torch.float32 and emb.device == enc.device
    assert torch.isfinite(emb).all()
    assert sorted(errors) == [1, 3, 4] and all("\n" not in m for m in errors.values())
    assert "nope.png" in errors[1] and "no such file" in errors[1]
    assert errors[3].startswith("d:") and "ValueError" in errors[3]  # the batch was retried item by item
    assert errors[4] == f"e: {NONFINITE_IMAGE}"
    # the good rows equal a plain encode of the good inputs
    want = HashEncoder().encode_images([good_file, noise_image(4), noise_image(6)])
    assert torch.allclose(emb, want)
    empty, none, errs = encode_images_tolerant(enc, [])
    assert empty.shape == (0, 8) and none.dtype == np.int64 and len(none) == 0 and errs == {}


def test_encode_images_tolerant_does_not_swallow_out_of_memory():
    with pytest.raises(EncoderOutOfMemory):
        encode_images_tolerant(FlakyEncoder(batch_size=1), [noise_image(0, (9, 9))])


# --------------------------------------------------------------------------- cache files that are not files
@pytest.mark.slow
def test_a_fifo_in_the_text_cache_is_skipped_and_rebuilt_not_waited_on(tmp_path):
    """A FIFO under CACHE/text/ hung the run (600 s, and SIGTERM did nothing: the read blocks in Rust)."""
    r = run_py(f"""
        import os, warnings
        from engine.encoders.text_cache import TextCache
        from tests.support.encoders import HashEncoder
        cache = TextCache(HashEncoder(), cache_dir={str(tmp_path / 'cache')!r})
        path = cache.path_for(["a", "b"])
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            emb = cache.embed(["a", "b"])
        print("SHAPE", tuple(emb.shape), "REBUILT", cache.rebuilt, "ENCODES", cache.text_encodes)
        print("REGULAR", path.is_file())
        for x in w:
            print("WARN", type(x.message).__name__, str(x.message))
    """, tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SHAPE (2, 8) REBUILT 1 ENCODES 2" in r.stdout
    assert "REGULAR True" in r.stdout  # rebuilt as a regular file
    warns = [ln for ln in r.stdout.splitlines() if ln.startswith("WARN")]
    assert len(warns) == 1 and "CacheWarning" in warns[0] and "not a regular file" in warns[0]


@pytest.mark.slow
def test_a_fifo_as_the_image_cache_file_is_skipped_not_waited_on(tmp_path):
    r = run_py(f"""
        import os, warnings
        from engine.encoders.image_cache import ImageCache
        from tests.support.data import noise_image
        from tests.support.encoders import HashEncoder
        cache = ImageCache(HashEncoder(), cache_dir={str(tmp_path / 'cache')!r})
        cache.path.parent.mkdir(parents=True)
        os.mkfifo(cache.path)
        os.mkfifo("img.png")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            emb = cache.encode([noise_image(0), noise_image(1)])
            try:
                cache.encode(["img.png"])
            except ValueError as e:
                print("IMGERR", e)
        print("SHAPE", tuple(emb.shape), "ENCODED", cache.encoded, "REGULAR", cache.path.is_file())
        for x in w:
            print("WARN", type(x.message).__name__, str(x.message))
    """, tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SHAPE (2, 8) ENCODED 2 REGULAR True" in r.stdout
    assert "IMGERR" in r.stdout and "not a regular file" in r.stdout
    warns = [ln for ln in r.stdout.splitlines() if ln.startswith("WARN")]
    assert len(warns) == 1 and "not a regular file" in warns[0]


# --------------------------------------------------------------------------- capped reads of text inputs
def _cli_limited(args, cwd, stdin=None, timeout=60):
    """The CLI in a process that may not grow past 3 GB (so a regression fails instead of eating the machine)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    try:
        return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=ENV,
                              cwd=cwd, timeout=timeout, preexec_fn=limit, input=stdin)
    except subprocess.TimeoutExpired:
        pytest.fail(f"twentyq {' '.join(args)} ran for more than {timeout} s")


@pytest.mark.parametrize("args", [
    ["system", "import", "/dev/zero", "--classes", "A,B"],
    ["system", "import", "draft.json", "--classes-file", "/dev/zero"],
    ["system", "prompt", "--classes-file", "/dev/zero"],
    ["system", "build", "--table", "/dev/zero", "--class-column", "name", "--out", "s.json"],
])
def test_system_cli_refuses_devices_instead_of_reading_forever(tmp_path, args):
    (tmp_path / "draft.json").write_text("{}")
    r = _cli_limited(args, tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "/dev/zero" in lines[0] and "not a regular file" in lines[0]


def test_text_inputs_over_the_cap_are_refused_naming_the_cap(tmp_path, monkeypatch, capsys):
    from engine.cli.app import main
    from engine.authoring.draft import read_classes_file
    from engine.authoring.table import read_table
    from engine.common.files import TEXT_INPUT_LIMIT

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(TEXT_INPUT_LIMIT + 1)  # sparse: costs no disk
    cap = f"{TEXT_INPUT_LIMIT:,} bytes"
    for read in (read_classes_file, read_table):
        with pytest.raises(ValueError, match=cap):
            read(big)
    assert main(["system", "import", str(big), "--classes", "A,B"]) == 2
    err = capsys.readouterr().err
    assert cap in err and "smaller" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b" " * (TEXT_INPUT_LIMIT + 1))))
    assert main(["system", "import", "-", "--classes", "A,B"]) == 2
    err = capsys.readouterr().err
    assert cap in err and "stdin" in err


def test_ragged_csv_rows_are_refused_with_their_line(tmp_path, capsys):
    from engine.cli.app import main
    from engine.authoring.table import read_table

    ok = "name,color,size\nApple,red,small\n"
    for extra, line, n in (("Sky,blue\n", 3, 2), ("Rock,grey,big,heavy\n", 3, 4), ("\nSea,blue,big,wet\n", 4, 4)):
        p = tmp_path / "t.csv"
        p.write_text(ok + extra)
        with pytest.raises(ValueError, match=f"line {line} has {n} values for 3 columns"):
            read_table(p)
    assert main(["system", "build", "--table", str(p), "--class-column", "name", "--out",
                 str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "line 4 has 4 values for 3 columns" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


# --------------------------------------------------------------------------- templates the tokenizer truncates
LONG_TEMPLATE = ("a photo in which, " + "after a long and winding description of the light, the weather, the "
                 "season and the mood of the photographer on that particular day, " * 6 + "the thing is {}")


def _long_system():
    from systems import load_system

    return load_system({
        "name": "long", "groups": [
            {"name": "color", "template": "something {} in color", "options": ["red", "green", "blue"]},
            {"name": "rambling", "template": LONG_TEMPLATE, "options": ["round", "square"]}],
        "rules": {"a": {"color": "red", "rambling": "round"}, "b": {"color": "green", "rambling": "square"}}})


def test_a_template_the_tokenizer_truncates_is_warned_about_naming_group_and_limit():
    from engine.encoders import check_prompt_lengths, load_encoder

    from .support.encoders import tiny_model_dir

    assert len(LONG_TEMPLATE.split()) > 120
    system = _long_system()
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    assert enc.max_text_tokens == 32  # the tiny model's text positions
    counts = enc.count_text_tokens(system.groups[1].prompts())
    assert min(counts) > enc.max_text_tokens
    # the failure being warned about: every option of the group embeds identically
    emb = enc.encode_texts(system.groups[1].prompts())
    assert torch.allclose(emb[0], emb[1])
    warns = check_prompt_lengths(enc, system)
    assert len(warns) == 1 and "\n" not in warns[0]
    assert "'rambling'" in warns[0] and "32 tokens" in warns[0] and "color" not in warns[0]
    assert check_prompt_lengths(enc, load_system_colours()) == []


def test_the_offline_stand_in_reports_its_own_text_limit():
    from engine.encoders import check_prompt_lengths

    from .support.encoders import offline_encoder

    enc = offline_encoder()
    assert enc.max_text_tokens == 256
    system = _long_system()
    assert check_prompt_lengths(enc, system) == []  # ~140 tokens fit MiniLM's 256
    longer = type(system)(name="x", classes=system.classes, groups=(
        system.groups[0], type(system.groups[1])("rambling", LONG_TEMPLATE.replace("{}", "") * 2 + "{}",
                                                 system.groups[1].options)), rules=system.rules)
    warns = check_prompt_lengths(enc, longer)
    assert len(warns) == 1 and "'rambling'" in warns[0] and "256 tokens" in warns[0]
    assert check_prompt_lengths(HashEncoder(), longer) == []  # an encoder that cannot tell: no warning


def load_system_colours():
    from systems import load_system

    return load_system(COLOUR_SYSTEM)


# --------------------------------------------------------------------------- a hub id with no network
@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Not in HF offline mode, an empty HF cache, and every connection fails at once (no real network)."""
    import socket

    import huggingface_hub.constants as hc

    import engine.encoders.hf as hf

    monkeypatch.setattr(hf, "_REACH", {})  # the reachability memo must not outlive the test
    monkeypatch.setattr(hf, "_CACHED_ONLY", set())
    attempts = []

    def refuse(address, *a, **k):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return attempts


def test_a_hub_id_with_no_network_fails_fast_in_one_line(no_network):
    import time

    from engine.encoders import EncoderLoadError, load_encoder

    t0 = time.perf_counter()
    with pytest.raises(EncoderLoadError) as e:
        load_encoder("nobody/no-such-model-xyz", device="cpu")
    dt = time.perf_counter() - t0
    msg = str(e.value)
    assert dt < 3, f"{dt:.1f} s"  # was 33 s and six retry lines
    assert "\n" not in msg and "unreachable" in msg and "local folder" in msg and "nobody/no-such-model-xyz" in msg


def test_hub_offline_mode_with_nothing_cached_fails_fast_naming_the_setting(monkeypatch, tmp_path):
    import time

    import huggingface_hub.constants as hc

    from engine.encoders import EncoderLoadError, load_encoder

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    t0 = time.perf_counter()
    with pytest.raises(EncoderLoadError, match="HF_HUB_OFFLINE") as e:
        load_encoder("nobody/no-such-model-xyz", device="cpu")
    assert time.perf_counter() - t0 < 3 and "\n" not in str(e.value) and "local folder" in str(e.value)


# --------------------------------------------------------------------------- warnings print as one line
@pytest.mark.slow
def test_cache_warnings_print_as_one_line_without_a_source_line(tmp_path):
    script = tmp_path / "script.py"  # a real file, so Python's default format would quote its source line
    script.write_text(textwrap.dedent(f"""
        from engine.encoders.text_cache import TextCache
        from tests.support.encoders import HashEncoder
        cache = TextCache(HashEncoder(), cache_dir={str(tmp_path / 'cache')!r})
        path = cache.path_for(["a", "b"])
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a safetensors file")
        cache.embed(["a", "b"])
        print("DONE")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 0 and "DONE" in r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("twentyq: CacheWarning: text cache file") and "warnings.warn" not in r.stderr


# --------------------------------------------------------------------------- analysis: not applicable is not "same option"
def test_an_all_null_class_does_not_make_separated_classes_indistinguishable():
    from systems import analyze, load_system

    s = load_system({
        "name": "t", "groups": [{"name": "color", "template": "{}", "options": ["red", "blue"]},
                                {"name": "shape", "template": "{}", "options": ["round", "long"]}],
        "rules": {"X": {"color": None, "shape": None}, "Y": {"color": "red", "shape": "round"},
                  "Z": {"color": "blue", "shape": "round"}, "W": {"color": [0, 1], "shape": [0, 1]}}})
    a = analyze(s)
    # colour rules Y and Z apart; X (nothing applies: a uniform answer) differs from both under the channel;
    # W accepts every option everywhere, which gives the same uniform answers as X: truly indistinguishable
    assert a.indistinguishable == [["X", "W"]]
    assert ["X", "Y"] in a.weakly_distinguishable and ["X", "Z"] in a.weakly_distinguishable
    assert ["Y", "Z"] not in a.weakly_distinguishable


# --------------------------------------------------------------------------- small confusing cases
def test_the_duplicate_key_error_says_it_once(tmp_path):
    from systems import load_system
    from systems.validate import SystemValidationError

    p = tmp_path / "dup.json"
    p.write_text('{"name": "a", "name": "b"}')
    with pytest.raises(SystemValidationError) as e:
        load_system(p)
    assert str(e.value).count("must be unique") == 1 and "duplicate key 'name'" in str(e.value)


def test_hidden_folders_and_files_in_an_image_folder_are_skipped(tmp_path):
    from engine.run.datasets import load_dataset

    for rel in ("cat/a.jpg", "cat/.b.jpg", ".hidden/c.jpg", ".git/d.png", "dog/e.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        solid("red").save(tmp_path / rel)
    ds = load_dataset(tmp_path)
    assert sorted(ds.labels) == ["cat", "dog"]
    assert sorted(Path(it.path).name for it in ds.items) == ["a.jpg", "e.png"]


def test_an_over_long_model_name_is_a_one_line_load_error():
    from engine.encoders import EncoderLoadError, load_encoder

    with pytest.raises(EncoderLoadError, match="neither a local folder nor a hub id"):
        load_encoder("/tmp/" + "m" * 300, device="cpu")


def test_an_encoder_that_fails_on_every_image_is_a_bug_not_bad_images():
    """A broken model read as "every image was bad" (exit 1); failing on all it was given, it raises."""
    class Broken(HashEncoder):
        def _embed_images(self, images):
            raise IndexError("index 3 is out of bounds (a bug)")

    with pytest.raises(IndexError, match="out of bounds"):
        encode_images_tolerant(Broken(batch_size=2), [noise_image(0), noise_image(1), noise_image(2)])
    with pytest.raises(IndexError):
        encode_images_tolerant(Broken(batch_size=1), [noise_image(0)])
    # one image the model cannot take, among good ones or alone, stays that image's error (a 400, not a 500)
    emb, good, errors = encode_images_tolerant(FlakyEncoder(batch_size=2), [noise_image(0), noise_image(5, (7, 7))])
    assert good.tolist() == [0] and list(errors) == [1]
    emb, good, errors = encode_images_tolerant(FlakyEncoder(batch_size=2), [noise_image(5, (7, 7))])
    assert len(good) == 0 and "ValueError" in errors[0]
