"""The fast image path: pixel plans, the decode worker pool, the GPU-decode fallback, pipelining.

Parity (issue 17): the fast path against the model's own image processor on real images from
../shared/data, pixels compared directly and embeddings by cosine (>= 0.99 for every image),
with a tiny random CLIP/SigLIP and with the offline stand-in. Tiny random models are
insensitive to small pixel changes, hence the direct pixel comparison too.
"""

from __future__ import annotations

import io
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.encoders import offline_encoder, tiny_model_dir
from engine.encoders.base import embed_decoded, encode_images_tolerant
from engine.encoders.image_pool import (
    DecodeWorkersUnavailable, ImageLoader, decode_task, default_workers, gpu_candidate,
)
from engine.encoders.images import load_image
from engine.encoders.pixels import (
    PixelPlan, normalise, plan_from_jina_config, plan_from_processor, resize_crop_pil, resize_crop_tensor,
)
from engine.common.files import shared_data_root

DATA = shared_data_root()


def real_images(n_each: int = 12) -> list[Path]:
    """A few dozen real files: web150 JPEGs (128 px), flowers17 JPEGs (non-square), RGBA sprite PNGs."""
    pats = [("pokemon/web150/images", "*/*.jpg"), ("flowers17/images", "*.jpg"), ("pokemon/sprites386/images", "*/*.png")]
    out: list[Path] = []
    for folder, pat in pats:
        files = sorted((DATA / folder).glob(pat)) if (DATA / folder).is_dir() else []
        out += files[:: max(1, len(files) // n_each)][:n_each]
    if len(out) < 2 * n_each:
        pytest.skip(f"the parity tests need real images under {DATA} (pokemon/web150, flowers17, sprites386); "
                    "not found on this machine")
    return out


def tiny(kind: str = "clip"):
    from engine.encoders import load_encoder

    return load_encoder(str(tiny_model_dir(kind)), device="cpu")


def processor_pixels(enc, img: Image.Image) -> torch.Tensor:
    return enc.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]


def fast_pixels(plan, img: Image.Image, tensor: bool = False) -> torch.Tensor:
    if tensor:  # the GPU path's half: torch resize (bicubic, antialias) of the decoded image
        x = resize_crop_tensor(torch.from_numpy(np.array(img)).permute(2, 0, 1), plan)
    else:
        x = torch.from_numpy(resize_crop_pil(img, plan).copy()).permute(2, 0, 1)
    return normalise(x[None], plan, "cpu", torch.float32)[0]


# --------------------------------------------------------------------------- plans
def test_plans_read_from_each_processor():
    clip = plan_from_processor(tiny("clip").image_processor)
    assert clip.shortest_edge and clip.crop and clip.size is None and clip.resample == "bicubic"
    siglip = plan_from_processor(tiny("siglip").image_processor)
    assert siglip.shortest_edge is None and siglip.crop is None and siglip.size and siglip.mean == (0.5, 0.5, 0.5)
    jina = plan_from_jina_config({"size": 224, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1], "resize_mode": "shortest"})
    assert jina.crop == (224, 224) and jina.crop_offset == "round" and jina.mean == (0.1, 0.2, 0.3)
    assert plan_from_jina_config({"size": 224, "resize_mode": "squash"}) is None


def test_plan_geometry_matches_each_convention():
    hf = PixelPlan(shortest_edge=224, size=None, crop=(224, 224), mean=(0,) * 3, std=(1,) * 3)
    assert hf.resized_wh(300, 200) == (336, 224) and hf.resized_wh(200, 301) == (224, 337)  # floor(224*301/200)
    off = PixelPlan(shortest_edge=256, size=None, crop=(224, 224), mean=(1,) * 3, std=(1,) * 3, long_side="round")
    assert off.resized_wh(131, 100) == (335, 256)  # round(131 * 2.56) = 335
    img = Image.fromarray(np.arange(50 * 40 * 3, dtype=np.uint8).reshape(40, 50, 3))
    a = resize_crop_pil(img, PixelPlan(shortest_edge=None, size=(40, 50), crop=(20, 30), mean=(0,) * 3, std=(1,) * 3))
    assert (a == np.asarray(img)[10:30, 10:40]).all()  # centre crop, top-left floor((40-20)/2), floor((50-30)/2)


# --------------------------------------------------------------------------- parity on real images
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_fast_pixels_equal_the_processors(kind):
    enc = tiny(kind)
    plan = enc.pixel_plan
    for path in real_images(8):
        img = load_image(path)
        ref = processor_pixels(enc, img)
        assert float((fast_pixels(plan, img) - ref).abs().max()) < 1e-5, path  # same Pillow calls
        # torch bicubic+antialias vs Pillow: within a few levels of 255 when shrinking; when enlarging
        # (the 40-px sprites) torch's bicubic (a = -0.75, no antialias filter) differs at hard edges
        diff = (fast_pixels(plan, img, tensor=True) - ref).abs()
        assert float(diff.max()) < (0.1 if min(img.size) >= 128 else 0.35) and float(diff.mean()) < 0.01, path


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip", "offline"])
def test_fast_embeddings_match_the_processor_path(which):
    enc = tiny("clip") if which == "clip" else offline_encoder()
    files = real_images(12 if which == "clip" else 8)  # the offline model is slow on 2 shared cores
    try:
        enc.preprocess_mode = "processor"
        ref, good_ref, bad_ref = encode_images_tolerant(enc, files)
        enc.preprocess_mode = "fast"
        fast, good, bad = encode_images_tolerant(enc, files)
        imgs = [load_image(p) for p in files]
        tens = enc.encode_pixels(torch.stack([resize_crop_tensor(torch.from_numpy(np.array(im)).permute(2, 0, 1),
                                                                 enc.pixel_plan) for im in imgs]))
    finally:
        enc.preprocess_mode = "fast"
    assert not bad_ref and not bad and (good == good_ref).all() and len(good) == len(files)
    assert _cosines(fast, ref).min() >= 0.9999
    assert _cosines(tens, ref).min() >= 0.99  # the GPU path's resize, on the CPU


# --------------------------------------------------------------------------- the pool
def bad_inputs(tmp_path: Path) -> list:
    """Good and bad inputs: every bad one must come back as its own error."""
    ok = tmp_path / "ok.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(ok)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (30, 40), (255, 0, 0, 0)).save(rgba)  # fully transparent: white after loading
    rotated = tmp_path / "rot.jpg"
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.new("RGB", (50, 20), (0, 0, 255)).save(rotated, exif=ex)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 MP declared: refused before decoding
    notimg = tmp_path / "notes.jpg"
    notimg.write_text("not an image")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(ok.read_bytes()[:200])
    return [str(ok), str(rgba), str(tmp_path / "missing.jpg"), str(rotated), str(bomb), str(notimg),
            ok.read_bytes(), str(tmp_path), str(trunc), Image.open(ok), str(ok)]


def test_decode_rules_and_errors_are_the_loaders(tmp_path):
    plan = PixelPlan(shortest_edge=None, size=(16, 16), crop=None, mean=(0,) * 3, std=(1,) * 3)
    items = bad_inputs(tmp_path)
    got = decode_task(items, [None] * len(items), plan)
    bad = {i for i, r in enumerate(got) if isinstance(r, str)}
    assert bad == {2, 4, 5, 7, 8}
    assert "decompression bomb" in got[4] and "no such file" in got[2]
    assert (got[1] == 255).all()  # transparent on white
    assert (got[0] == got[6]).all() and (got[0] == got[9]).all()  # path, bytes and PIL image alike
    assert got[3].shape == (16, 16, 3)


@pytest.mark.slow
def test_pool_gives_the_in_process_result_for_every_image(tmp_path):
    plan = PixelPlan(shortest_edge=24, size=None, crop=(24, 24), mean=(0.5,) * 3, std=(0.25,) * 3)
    items = bad_inputs(tmp_path)
    ref = ImageLoader(plan, 0).load(items)
    pool = ImageLoader(plan, 2, max_pending=1)
    try:
        first = pool.submit(items)
        second = pool.submit(items[::-1])  # the bounded queue: waits for the first before queueing
        a, b = first.result(), second.result()
    finally:
        pool.close()
    assert pool.stats["pool"] > 0
    assert ref.errors == a.errors and (ref.good == a.good).all() and torch.equal(ref.pixels, a.pixels)
    n = len(items)
    assert sorted(b.errors) == sorted(n - 1 - i for i in ref.errors)
    assert len(a.good) + len(a.errors) == n  # none lost


class FakeExecutor:
    """Stands in for the process pool: runs tasks here, or fails them as a dead worker would."""

    def __init__(self, broken):
        self.broken, self.calls = broken, 0

    def submit(self, fn, *args):
        self.calls += 1
        f: Future = Future()
        if self.broken(self.calls, args[0]):
            f.set_exception(BrokenProcessPool("a worker died"))
        else:
            f.set_result(fn(*args))
        return f


def test_workers_that_cannot_start_fall_back_to_this_process(tmp_path, monkeypatch):
    plan = PixelPlan(shortest_edge=None, size=(8, 8), crop=None, mean=(0,) * 3, std=(1,) * 3)
    items = bad_inputs(tmp_path)
    loader = ImageLoader(plan, 2)
    monkeypatch.setattr(loader, "_executor", lambda: FakeExecutor(lambda k, srcs: True))
    with pytest.warns(DecodeWorkersUnavailable, match="could not start"):
        got = loader.load(items)
    ref = ImageLoader(plan, 0).load(items)
    assert loader.workers == 0 and got.errors == ref.errors and torch.equal(got.pixels, ref.pixels)


def test_an_image_that_kills_a_worker_is_its_own_error(tmp_path, monkeypatch):
    plan = PixelPlan(shortest_edge=None, size=(8, 8), crop=None, mean=(0,) * 3, std=(1,) * 3)
    items = bad_inputs(tmp_path)
    killer = items[3]
    loader = ImageLoader(plan, 2)
    loader._worked = True  # the workers have run before: a death now is one image's doing
    ex = FakeExecutor(lambda k, srcs: killer in srcs)
    monkeypatch.setattr(loader, "_executor", lambda: ex)
    got = loader.load(items)
    ref = ImageLoader(plan, 0).load(items)
    assert "decoder process died" in got.errors[3]
    assert {k: v for k, v in got.errors.items() if k != 3} == ref.errors
    assert len(got.good) == len(ref.good) - 1 and 3 not in got.good.tolist()


# --------------------------------------------------------------------------- the GPU decoder's fallback
class FakeGpuDecoder:
    """Decodes with Pillow to (3, H, W) tensors; refuses what ``refuse(data)`` says, or breaks."""

    def __init__(self, refuse=lambda d: False, broken=False):
        self.refuse, self.broken, self.seen = refuse, broken, 0

    def decode(self, datas):
        if self.broken:
            raise RuntimeError("nvjpeg is not available")
        self.seen += len(datas)
        out = []
        for d in datas:
            if self.refuse(d):
                out.append(RuntimeError("unsupported"))
            else:
                out.append(torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1))
        return out


def test_gpu_candidates_are_only_what_the_gpu_decodes_the_same(tmp_path):
    items = bad_inputs(tmp_path)
    takes = [gpu_candidate(x) is not None for x in items]
    # ok.jpg, its bytes, and ok.jpg again; never RGBA, EXIF-rotated, bombs, non-images, folders, PIL images
    assert takes == [True, False, False, False, False, False, True, False, False, False, True]
    big = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 10)).save(big)  # over MAX_SIDE: the workers downscale it by their rules
    assert gpu_candidate(str(big)) is None


@pytest.mark.parametrize("mode", ["all", "refuse_some", "broken"])
def test_gpu_refusals_fall_back_per_image_and_none_is_lost(tmp_path, mode):
    plan = PixelPlan(shortest_edge=None, size=(20, 20), crop=None, mean=(0,) * 3, std=(1,) * 3)
    items = bad_inputs(tmp_path) + [real for real in real_images_or_none()]
    refuse = (lambda d: len(d) % 2 == 0) if mode == "refuse_some" else (lambda d: False)
    dec = FakeGpuDecoder(refuse, broken=mode == "broken")
    got = ImageLoader(plan, 0, gpu_decoder=dec).load(items)
    ref = ImageLoader(plan, 0, gpu_decoder=False).load(items)
    assert got.errors == ref.errors and (got.good == ref.good).all()
    assert got.gpu_decoded == (0 if mode == "broken" else dec.seen - sum(refuse(gpu_candidate(x) or b"")
                                                                         for x in items if gpu_candidate(x)))
    if mode != "broken":
        assert got.gpu_decoded > 0
    diff = (got.pixels.float() - ref.pixels.float()).abs()
    assert float(diff.max()) <= 12 and float(diff.mean()) < 2  # torch resize on the device vs Pillow's


def real_images_or_none() -> list[str]:
    files = sorted((DATA / "flowers17" / "images").glob("*.jpg"))[:6] if (DATA / "flowers17").is_dir() else []
    return [str(p) for p in files]


# --------------------------------------------------------------------------- classifier, pipelining, settings
@pytest.mark.slow
def test_pipelined_chunks_give_the_same_results_and_decode_ahead(tmp_path):
    from engine.run.classifier import Classifier
    from engine.run.config import EncoderSpec

    items = bad_inputs(tmp_path) * 2
    model = str(tiny_model_dir("clip"))
    ref = Classifier(EncoderSpec(model=model, device="cpu", preprocess="processor"), "pokemon15")
    clf = Classifier(EncoderSpec(model=model, device="cpu", decode_workers=0), "pokemon15")
    assert ref.images.loader is None and clf.images.loader is not None
    order: list[str] = []
    submit, embed = clf.images.submit, clf.images.embed
    clf.images.submit = lambda *a, **k: (order.append("submit"), submit(*a, **k))[1]
    clf.images.embed = lambda *a, **k: (order.append("embed"), embed(*a, **k))[1]
    fast = list(clf.iter_classify(items, ref_config(), chunk_size=5))
    slow = list(ref.iter_classify(items, ref_config(), chunk_size=5))
    assert order[:3] == ["submit", "submit", "embed"]  # chunk 2 handed out before chunk 1 is embedded
    assert [r.label for r in fast] == [r.label for r in slow]
    assert [r.q_spent for r in fast] == [r.q_spent for r in slow]
    assert [r.error for r in fast] == [r.error for r in slow]
    assert sum(r.error is not None for r in fast) == 10


def ref_config():
    from engine.run.config import RunConfig

    return RunConfig(mode="adaptive", policy="eig", tau=0.9)


def test_settings_and_flags():
    from engine.cli.app import build_parser
    from engine.cli.options import UsageError, encoder_spec
    from engine.run.config import EncoderSpec

    assert default_workers(2) == 2 and default_workers(1) == 0 and default_workers(64) == 8
    with pytest.raises(ValueError, match="decode_workers"):
        EncoderSpec(decode_workers=-1)
    with pytest.raises(ValueError, match="preprocess"):
        EncoderSpec(preprocess="torchvision")
    args = build_parser().parse_args(["classify", "a.png", "--decode-workers", "3", "--preprocess", "processor"])
    spec = encoder_spec(args)
    assert (spec.decode_workers, spec.preprocess, spec.workers()) == (3, "processor", 3)
    assert spec.identity() == EncoderSpec(model=spec.model).identity()  # how fast, not what
    with pytest.raises(UsageError, match="--decode-workers == -2"):
        encoder_spec(build_parser().parse_args(["classify", "a.png", "--decode-workers", "-2"]))


def test_embed_decoded_retries_one_by_one(tmp_path):
    enc = tiny("clip")
    batch = ImageLoader(enc.pixel_plan, 0).load(bad_inputs(tmp_path))
    calls = []
    real = enc.encode_pixels

    def flaky(px):
        calls.append(len(px))
        if len(px) > 1:
            raise RuntimeError("a kernel failed")
        return real(px)

    enc.encode_pixels = flaky
    try:
        emb, good, errors = embed_decoded(enc, batch, [f"im{i}" for i in range(11)])
    finally:
        del enc.encode_pixels
    assert len(good) == len(batch.good) and emb.shape[0] == len(good) and set(errors) == set(batch.errors)
    assert calls[0] == len(batch.good) and set(calls[1:]) == {1}


@pytest.mark.slow
def test_gpu_images_bench_runs_on_the_cpu(tmp_path):
    from bench.gpu_images import measure, report
    from bench.lib.synthetic import make_jpegs

    paths = make_jpegs(tmp_path / "j", 6, size=48)
    r = measure("cpu", paths, str(tiny_model_dir("clip")), 4, workers=0, repeats=1, processor_n=4)
    assert r["images"] == 6 and r["gpu_decoder"] is None and r["inline_decoded"] >= 6
    assert min(r["model_only_images_s"], r["fast_images_s"], r["processor_images_s"]) > 0
    assert "of the ceiling" in report(r)


def test_cuda_gpu_decode_matches_the_processor_path(tmp_path):
    """On a CUDA machine with torchvision (bench/gpu_session.sh): nvjpeg decode + device resize against
    the processor path on real images (or written JPEGs), cosine >= 0.99 for every image."""
    from engine.encoders import load_encoder
    from engine.encoders.image_pool import gpu_decoder_for

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (run by bench/gpu_session.sh)")
    dec = gpu_decoder_for(torch.device("cuda"))
    if dec is None:
        pytest.skip("needs torchvision built for this torch and CUDA (pip install 'twentyq[gpu]')")
    files = [str(p) for p in real_images_or_none()] or __import__("bench.lib.synthetic").lib.synthetic.make_jpegs(
        tmp_path / "j", 24, size=300)
    files += bad_inputs(tmp_path)
    enc = load_encoder(str(tiny_model_dir("clip")), device="cuda", dtype="fp32")
    enc.preprocess_mode = "processor"
    ref, good_ref, bad_ref = encode_images_tolerant(enc, files)
    enc.preprocess_mode = "fast"
    loader = ImageLoader(enc.pixel_plan, 0, device=enc.device)
    emb, good, bad = encode_images_tolerant(enc, files, loader=loader)
    assert loader.stats["gpu"] > 0 and (good == good_ref).all() and bad == bad_ref
    assert _cosines(emb.cpu(), ref.cpu()).min() >= 0.99
