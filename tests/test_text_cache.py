"""The lazy text cache: counters prove laziness; the disk cache survives damage and concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from .support.data import REPO, five_group_system, noise_image
from .support.encoders import HashEncoder, tiny_model_dir

from engine import StopRule, classify_batch  # noqa: E402
from engine.run.encoder_source import EncoderSource  # noqa: E402
from engine.encoders import load_encoder  # noqa: E402
from engine.encoders.image_cache import ImageCache, content_hash  # noqa: E402
from engine.encoders.text_cache import CacheWarning, TextCache  # noqa: E402


def asked_groups(results):
    return {s.group for r in results for s in r.steps}


def prompts_of(system, names):
    return {p for g in system.groups if g.name in names for p in g.prompts()}


@pytest.fixture
def setup():
    enc = HashEncoder()
    system = five_group_system(k=3)
    emb = enc.encode_images([noise_image(i) for i in range(6)])
    return enc, system, emb


def test_budget_run_asks_two_of_five_groups_and_encodes_only_their_prompts(setup):
    enc, system, emb = setup
    cache = TextCache(enc)
    res = classify_batch(EncoderSource(enc, cache, system, emb), system, "fixed", stop=StopRule(budget=6))
    assert asked_groups(res) == {"g0", "g1"}
    assert all(r.q_spent == 6 for r in res)
    assert cache.text_encodes == 6 < system.q_total == 15
    assert set(enc.texts_encoded) == prompts_of(system, {"g0", "g1"})
    assert enc.text_calls == 2  # one batch per group
    # a second run over the same cache encodes nothing
    before = list(enc.texts_encoded)
    res2 = classify_batch(EncoderSource(enc, cache, system, emb), system, "fixed", stop=StopRule(budget=6))
    assert [r.label for r in res2] == [r.label for r in res]
    assert cache.text_encodes == 6 and enc.texts_encoded == before
    assert cache.hits >= 6


def test_eig_run_encodes_exactly_the_groups_it_asks(setup):
    enc, system, emb = setup
    cache = TextCache(enc)
    res = classify_batch(EncoderSource(enc, cache, system, emb), system, "eig", stop=StopRule(budget=6))
    asked = asked_groups(res)
    assert 1 <= len(asked) < 5
    assert set(enc.texts_encoded) == prompts_of(system, asked)
    assert cache.text_encodes == 3 * len(asked) == len(enc.texts_encoded)


def test_full_run_encodes_every_prompt_once(setup):
    enc, system, emb = setup
    cache = TextCache(enc)
    classify_batch(EncoderSource(enc, cache, system, emb), system, "eig")
    assert cache.text_encodes == system.q_total
    assert sorted(enc.texts_encoded) == sorted(p for g in system.groups for p in g.prompts())


def test_laziness_with_a_real_tiny_clip():
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    system = five_group_system(k=3)
    emb = enc.encode_images([noise_image(i) for i in range(4)])
    cache = TextCache(enc)
    res = classify_batch(EncoderSource(enc, cache, system, emb), system, "fixed", stop=StopRule(budget=6),
                         logit_scale=enc.logit_scale)
    assert asked_groups(res) == {"g0", "g1"} and cache.text_encodes == 6
    classify_batch(EncoderSource(enc, cache, system, emb), system, "fixed", stop=StopRule(budget=6))
    assert cache.text_encodes == 6 and cache.hits >= 6


def test_cache_counts_and_order():
    enc = HashEncoder()
    cache = TextCache(enc)
    a = cache.embed(["x", "y", "z"])
    assert cache.stats()["text_encodes"] == 3 and cache.hits == 0
    b = cache.embed(["z", "x"])  # new list, known prompts
    assert cache.text_encodes == 3 and cache.hits == 2
    assert torch.equal(b, a[[2, 0]])
    cache.embed(["x", "w", "w"])
    assert cache.text_encodes == 4 and enc.texts_encoded[-1:] == ["w"]
    with pytest.raises(ValueError, match="empty"):
        cache.embed([])


# --------------------------------------------------------------------------- disk
def test_disk_cache_round_trip(tmp_path):
    enc = HashEncoder()
    a = TextCache(enc, tmp_path).embed(["p", "q"])
    other = TextCache(HashEncoder(), tmp_path)
    b = other.embed(["p", "q"])
    assert other.text_encodes == 0 and other.disk_hits == 2
    assert torch.equal(a, b)
    different_model = TextCache(HashEncoder(model_id="hash@2"), tmp_path)
    different_model.embed(["p", "q"])
    assert different_model.text_encodes == 2  # keyed by model id


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty", "other_prompts"])
def test_corrupted_cache_file_is_rebuilt(tmp_path, damage):
    enc = HashEncoder()
    cache = TextCache(enc, tmp_path)
    good = cache.embed(["p", "q"])
    path = cache.path_for(["p", "q"])
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot a safetensors file" * 10)
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file whose metadata belongs to another key
        TextCache(enc, tmp_path / "x").embed(["r", "s"])
        path.write_bytes(TextCache(enc, tmp_path / "x").path_for(["r", "s"]).read_bytes())
    fresh = TextCache(HashEncoder(), tmp_path)
    with pytest.warns(CacheWarning, match="failed to load.*re-encoding"):
        emb = fresh.embed(["p", "q"])
    assert fresh.rebuilt == 1 and fresh.text_encodes == 2
    assert torch.equal(emb, good)
    again = TextCache(HashEncoder(), tmp_path)  # the rewritten file is valid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.embed(["p", "q"])
    assert again.disk_hits == 2 and again.text_encodes == 0


WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    from tests.support.encoders import HashEncoder
    from engine.encoders.text_cache import TextCache, read_safetensors
    enc = HashEncoder()
    cache = TextCache(enc, {dir!r})
    prompts = ["shared prompt %d" % i for i in range(64)]
    emb = enc.encode_texts(prompts)
    path = cache.path_for(prompts)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(150):
        cache._to_disk(prompts, emb)          # write the same key over and over
        if path.exists():
            t, meta = read_safetensors(path)  # and read it back: never half-written
            assert torch.equal(t["embeddings"], emb)
    print("ok", flush=True)
""")


@pytest.mark.slow
def test_two_processes_writing_the_same_key_leave_a_valid_file(tmp_path):
    code = WRITER.format(repo=str(REPO), dir=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:  # start both writers together
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip().endswith("ok"), err
    prompts = [f"shared prompt {i}" for i in range(64)]
    cache = TextCache(HashEncoder(), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb = cache.embed(prompts)
    assert cache.disk_hits == 64 and cache.text_encodes == 0
    assert torch.equal(emb, HashEncoder().encode_texts(prompts))
    assert not list((tmp_path / "text").glob("*.tmp"))  # no temp files left behind


# --------------------------------------------------------------------------- images
def test_image_cache_encodes_each_image_once(tmp_path):
    enc = HashEncoder()
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        noise_image(i).save(p)
        paths.append(p)
    copy = tmp_path / "copy_of_0.png"
    copy.write_bytes(paths[0].read_bytes())
    cache = ImageCache(enc, tmp_path / "cache")
    a = cache.encode(paths + [copy])
    assert cache.encoded == 3 and cache.hits == 1  # same content, same key
    assert torch.equal(a[0], a[3])
    b = cache.encode(paths)
    assert cache.encoded == 3 and torch.equal(a[:3], b)
    fresh = ImageCache(HashEncoder(), tmp_path / "cache")  # from disk
    assert torch.equal(fresh.encode(paths[::-1]), a[:3].flip(0)) and fresh.encoded == 0
    assert content_hash(paths[0]) == content_hash(copy) != content_hash(paths[1])
    cache.path.write_bytes(b"junk")
    broken = ImageCache(HashEncoder(), tmp_path / "cache")
    with pytest.warns(CacheWarning, match="image cache file"):
        broken.encode(paths[:1])
    assert broken.encoded == 1
    assert np.isfinite(ImageCache(HashEncoder(), tmp_path / "cache").encode(paths[:1]).numpy()).all()
