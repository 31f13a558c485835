"""Text batches without stalls: bucketed shapes change no embedding, warm-up covers every bucket,
the eager/lazy policy, and eager prompts that keep ``text_encodes`` exact."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from .support.data import five_group_system, noise_image
from .support.encoders import HashEncoder, offline_encoder, tiny_model_dir

from engine.encoders import load_encoder  # noqa: E402
from engine.encoders.base import BucketWarning  # noqa: E402
from engine.encoders.text_shapes import (  # noqa: E402
    EAGER_MAX_BATCHES, PROMPT_MODES, SWITCHES, TextBuckets, bucket_for, length_buckets, pad_batch, prepare_text,
    prompt_policy, row_buckets, switch_on,
)
from engine.run.classifier import Classifier  # noqa: E402
from engine.run.prompts import eager_prompt_list  # noqa: E402
from engine.run.config import EncoderSpec, RunConfig  # noqa: E402
from systems.build import with_name_group  # noqa: E402

#: prompts of many lengths (1 to past the tiny models' 32 positions) and counts
WORDS = "red blue green a very long and winding description of the thing in the picture".split()
PROMPTS = [" ".join(WORDS[: 1 + (i * 7) % len(WORDS)]) + f" {i}" for i in range(40)]
PROMPTS.append(" ".join(WORDS * 4))  # truncated at the model's maximum


# ------------------------------------------------------------------ pure functions
def test_buckets_by_example():
    assert length_buckets(77) == (8, 16, 32, 64, 77)
    assert length_buckets(64) == (8, 16, 32, 64)
    assert length_buckets(5) == (5,)
    assert row_buckets(32) == (8, 16, 32)
    assert row_buckets(256) == (8, 16, 32, 64, 128, 256)
    assert row_buckets(100) == (8, 16, 32, 64, 100)
    assert row_buckets(3) == (3,)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError):
            length_buckets(bad)
        with pytest.raises(ValueError):
            row_buckets(bad)
    assert TextBuckets((8, 16), (8, 16)).shapes() == [(8, 8), (8, 16), (16, 8), (16, 16)]
    assert TextBuckets(None, (8,)).shapes() == [(8, None)]


@given(st.integers(1, 600), st.integers(1, 600))
def test_bucket_for_is_the_smallest_bucket_that_holds(n, size):
    for buckets in (length_buckets(size), row_buckets(size)):
        assert list(buckets) == sorted(set(buckets)) and buckets[-1] == size
        b = bucket_for(n, buckets)
        if n <= size:
            assert b in buckets and b >= n
            assert all(x < n for x in buckets if x < b)  # no smaller bucket holds n
        else:
            assert b == n


@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 5), st.integers(0, 7))
def test_pad_batch_pads_right_and_copies_row_zero(b, length, extra_len, extra_rows):
    gen = torch.Generator().manual_seed(b * 100 + length)
    ids = torch.randint(1, 50, (b, length), generator=gen)
    mask = torch.ones(b, length, dtype=torch.int64)
    out = pad_batch({"input_ids": ids, "attention_mask": mask}, length=length + extra_len, rows=b + extra_rows,
                    pad_id=99)
    assert out["input_ids"].shape == out["attention_mask"].shape == (b + extra_rows, length + extra_len)
    assert torch.equal(out["input_ids"][:b, :length], ids)
    assert (out["input_ids"][:b, length:] == 99).all() and (out["attention_mask"][:b, length:] == 0).all()
    assert (out["input_ids"][b:] == out["input_ids"][0]).all() and (out["attention_mask"][b:] == out["attention_mask"][0]).all()
    same = pad_batch({"input_ids": ids}, length=None, rows=b, pad_id=0)
    assert torch.equal(same["input_ids"], ids)
    with pytest.raises(ValueError):
        pad_batch({"input_ids": ids}, length=length - 1 if length > 1 else None, rows=b - 1 if length == 1 else b,
                  pad_id=0)


def test_prompt_policy_by_example():
    assert prompt_policy("cpu", 10, 32) == "lazy"
    assert prompt_policy("mps", 10, 32) == "lazy"
    assert prompt_policy("cuda", 10, 32) == "eager"
    assert prompt_policy("cuda", 32 * EAGER_MAX_BATCHES, 32) == "eager"
    assert prompt_policy("cuda", 32 * EAGER_MAX_BATCHES + 1, 32) == "lazy"  # a large system stays lazy
    assert prompt_policy("cuda", 0, 32) == "lazy"
    assert prompt_policy("cpu", 10, 32, "eager") == "eager"
    assert prompt_policy("cuda", 10, 32, "lazy") == "lazy"
    with pytest.raises(ValueError, match="eager_prompts"):
        prompt_policy("cuda", 10, 32, "sometimes")


@given(st.sampled_from(["cpu", "cuda", "mps"]), st.integers(0, 2000), st.integers(1, 512))
def test_prompt_policy_is_monotone_and_lazy_off_cuda(device, q, size):
    got = prompt_policy(device, q, size)
    if device != "cuda":
        assert got == "lazy"
    if got == "eager":  # a smaller system is eager too
        assert all(prompt_policy(device, q2, size) == "eager" for q2 in range(1, q + 1, max(1, q // 17)))
        assert prompt_policy(device, q, size + 1) == "eager"  # and so is a bigger batch


def test_switches_and_settings():
    assert switch_on("auto", "cuda") and not switch_on("auto", "cpu") and switch_on("on", "cpu")
    assert not switch_on("off", "cuda") and switch_on(True, "cpu") and not switch_on(False, "cuda")
    with pytest.raises(ValueError):
        switch_on("yes", "cpu")
    from engine.run import config

    assert config.SWITCHES == SWITCHES and config.PROMPT_MODES == PROMPT_MODES  # spelled twice, must agree
    spec = EncoderSpec()
    assert (spec.text_buckets, spec.warm_up, spec.eager_prompts, spec.compile_text) == ("auto", "auto", "auto", False)
    for bad in ({"text_buckets": "yes"}, {"warm_up": True}, {"eager_prompts": "on"}, {"compile_text": "no"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EncoderSpec(**bad)
    assert EncoderSpec(text_buckets="on").identity() == EncoderSpec().identity()  # speed, not what


def test_cli_flags_build_the_spec():
    import argparse

    from engine.cli.options import add_model_flags, encoder_spec

    p = argparse.ArgumentParser()
    add_model_flags(p)
    spec = encoder_spec(p.parse_args(["--text-buckets", "on", "--warm-up", "off", "--eager-prompts", "eager",
                                      "--compile-text"]))
    assert (spec.text_buckets, spec.warm_up, spec.eager_prompts, spec.compile_text) == ("on", "off", "eager", True)
    assert encoder_spec(p.parse_args([])) == EncoderSpec()


# ------------------------------------------------------------------ real models
@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny_pair(request):
    """The same tiny model loaded twice: as today, and with bucketed shapes."""
    path = str(tiny_model_dir(request.param))
    plain = load_encoder(path, device="cpu", batch_size=16)
    bucketed = load_encoder(path, device="cpu", batch_size=16)
    assert bucketed.set_text_buckets(True)
    return request.param, plain, bucketed


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_bucketed_embeddings_equal_todays(tiny_pair):
    kind, plain, bucketed = tiny_pair
    for n in (3, len(PROMPTS)):  # one short batch; three batches of up to 16, one of them truncated
        a, b = plain.encode_texts(PROMPTS[:n]), bucketed.encode_texts(PROMPTS[:n])
        assert a.shape == b.shape == (n, plain.embed_dim)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    plan = bucketed.text_buckets
    shapes = bucketed.text_shapes - {(2, n) for n in range(65)}  # the padding check's own probe
    assert shapes <= {(r, n or bucketed.max_length) for r, n in plan.shapes()}
    assert len(plain.text_shapes) > len(shapes)  # bucketing did reduce the shapes
    if kind == "siglip":
        assert plan.lengths is None  # pools the last position: always its full length, never bucketed


@pytest.mark.slow  # MiniLM takes about a second per call on the shared 2-core machines
def test_offline_minilm_bucketed_equals_today():
    enc = offline_encoder()
    a = enc.encode_texts(PROMPTS[:5])
    try:
        assert enc.set_text_buckets(True)
        b = enc.encode_texts(PROMPTS[:5])
        assert tuple(enc.text_buckets.lengths) == (8, 16, 32, 64, 256)
    finally:
        enc.set_text_buckets(False)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_a_model_where_padding_shows_is_not_bucketed():
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    table = torch.randn(enc.tokenizer.vocab_size, enc.embed_dim, generator=torch.Generator().manual_seed(0))
    enc._text_forward = lambda e: table[e["input_ids"]].mean(1)  # mean over every position, pads included
    with pytest.warns(BucketWarning, match="padding a prompt changes its text embedding"):
        assert not enc.set_text_buckets(True)
    assert enc.text_buckets is None


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_warm_up_runs_every_bucket_so_later_asks_meet_no_new_shape():
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu", batch_size=8)
    done = prepare_text(enc, buckets="on", warm_up="on")
    assert done["buckets"] and done["warm_up_passes"] == len(enc.text_buckets.shapes()) == 3
    warmed = set(enc.text_shapes)
    assert {(r, n) for r, n in enc.text_buckets.shapes()} <= warmed
    system = five_group_system(k=5)
    for g in system.groups:
        enc.encode_texts(list(g.prompts()))
    enc.encode_texts(PROMPTS[::2])  # 21 prompts: three batches of up to 8, any length
    assert enc.text_shapes == warmed


def test_prepare_text_auto_is_off_on_the_cpu_and_leaves_other_encoders_alone():
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    assert prepare_text(enc) == {"buckets": False, "compiled": False, "warm_up_passes": 0, "warm_up_s": 0.0}
    assert enc.text_buckets is None
    h = HashEncoder()
    done = prepare_text(h, buckets="on", warm_up="on")
    assert not done["buckets"] and done["warm_up_passes"] == 1 and h.text_calls == 1  # one plain call


# ------------------------------------------------------------------ eager prompts in the classifier
def _classifier(mode, buckets="off"):
    system = with_name_group(five_group_system(k=3))
    spec = EncoderSpec(model=str(tiny_model_dir("clip")), device="cpu", eager_prompts=mode, text_buckets=buckets)
    return Classifier(spec, system)


@pytest.mark.slow
def test_eager_prompts_count_what_is_embedded_and_change_no_result():
    images = [noise_image(s) for s in range(3)]
    lazy, eager = _classifier("auto"), _classifier("eager", buckets="on")
    assert lazy.prompt_mode == "lazy" and lazy.text_cache.text_encodes == 0  # auto on the CPU: lazy
    expected = eager_prompt_list(eager.system)
    assert len(expected) == 15 and not set(expected) & set(eager.system.groups[-1].prompts())  # names stay lazy
    assert eager.prompt_mode == "eager" and eager.text_cache.text_encodes == 15
    for config in (RunConfig(mode="full"), RunConfig(policy="eig", shortlist=2)):
        a, b = lazy.classify(images, config), eager.classify(images, config)
        assert [r.label for r in a] == [r.label for r in b]
        assert [r.q_spent for r in a] == [r.q_spent for r in b]
        for ra, rb in zip(a, b):
            assert ra.error is None and [s.group for s in ra.steps] == [s.group for s in rb.steps]
            np.testing.assert_allclose([p for _, p in ra.top], [p for _, p in rb.top], atol=1e-5)
    # after load, only the class names the full mode and the shortlist asked were embedded
    names = set(eager.system.groups[-1].prompts())
    assert eager.text_cache.text_encodes == 15 + len(names)
    assert lazy.text_cache.text_encodes == 15 + len(names)


def test_eager_embeds_nothing_twice_with_a_shared_prompt():
    from systems.format import AttributeSystem, Group

    g = (Group(name="a", template="it is {}", options=("red", "blue")),
         Group(name="b", template="it is {}", options=("blue", "green")))
    system = AttributeSystem(name="dup", classes=("x", "y"), groups=g,
                             rules=((frozenset([0]), frozenset([0])), (frozenset([1]), frozenset([1]))))
    enc = HashEncoder()
    clf = Classifier(EncoderSpec(model="hash", eager_prompts="eager"), system, encoder=enc)
    assert clf.text_cache.text_encodes == 3 and sorted(enc.texts_encoded) == ["it is blue", "it is green", "it is red"]
    clf.classify([noise_image(1)], mode="full")
    assert clf.text_cache.text_encodes == 3 and enc.text_calls == 1  # every ask served from memory


@pytest.mark.slow
def test_compiled_text_tower_gives_the_same_embeddings():
    enc = load_encoder(str(tiny_model_dir("clip")), device="cpu", batch_size=8)
    a = enc.encode_texts(PROMPTS[:5])
    assert enc.set_text_buckets(True)
    enc.text_buckets = TextBuckets((32,), (8,))  # one shape: compiling costs tens of seconds on a CPU
    assert enc.compile_text() and enc.warm_up_text() == 1
    assert type(enc.model.text_model).__name__ == "OptimizedModule"
    torch.testing.assert_close(enc.encode_texts(PROMPTS[:5]), a, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bench_gpu_text_smokes_on_the_cpu():
    from bench.gpu_text import measure, report

    r = measure(str(tiny_model_dir("clip")), five_group_system(k=3), "cpu", images=8, repeats=1, max_groups=3)
    assert r["after"]["buckets"] and not r["before"]["buckets"] and r["after"]["warm_up_passes"] > 0
    assert r["before"]["text_encodes"] == r["after"]["text_encodes"] == 9
    assert r["max_embedding_diff"] < 1e-5 and r["policy"] == "lazy"
    assert set(r["ratio"]) >= {"first_ask_ms", "new_group_ms_median", "warm_ask_ms"}
    assert "before/after" in report(r)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_buckets_warms_up_and_is_eager():
    spec = EncoderSpec(model=str(tiny_model_dir("clip")), device="cuda", dtype="fp32")
    enc = spec.load()  # auto on CUDA: bucketed, warmed up
    assert enc.text_buckets is not None and {s for s in enc.text_buckets.shapes()} <= enc.text_shapes
    cpu = load_encoder(str(tiny_model_dir("clip")), device="cpu")
    torch.testing.assert_close(enc.encode_texts(PROMPTS).cpu(), cpu.encode_texts(PROMPTS), atol=1e-4, rtol=1e-4)
    clf = Classifier(spec, five_group_system(k=3), encoder=enc)
    assert clf.prompt_mode == "eager" and clf.text_cache.text_encodes == 15
    clf.classify([noise_image(0)], mode="full")
    assert clf.text_cache.text_encodes == 15


def test_a_run_counts_the_eager_prompts_once():
    import io

    from engine.run.datasets import Item
    from engine.run.pipeline import Job, LocalExecutor, run

    def item(seed):
        buf = io.BytesIO()
        noise_image(seed).save(buf, format="PNG")
        return Item(f"img{seed}.png", "class0", data=buf.getvalue())

    system = five_group_system(k=3)
    clf = Classifier(EncoderSpec(model="hash", eager_prompts="eager"), system, encoder=HashEncoder())
    job = Job(clf.spec, system, RunConfig(mode="full"))
    counts = []
    for _ in range(2):  # the same classifier, two runs: the load's 15 prompts belong to the first
        ex = LocalExecutor(clf, chunk_size=2)
        assert len(list(run([item(s) for s in range(3)], job, executor=ex))) == 3
        counts.append(ex.stats["text_encodes"])
    assert counts == [15, 0] and clf.text_cache.text_encodes == 15


def test_runs_that_do_not_ask_the_system_prompts_keep_prompts_lazy():
    """Eager prompts only for runs that ask the system's own group prompts: a baseline or descriptors run (or one
    with a template ensemble) would embed, and count, prompts it never asks."""
    from engine.run.prompts import spec_for_run
    from engine.run.config import EncoderSpec, RunConfig

    eager = EncoderSpec(model="offline", eager_prompts="eager")
    assert spec_for_run(eager, RunConfig(mode="adaptive")).eager_prompts == "eager"
    assert spec_for_run(eager, RunConfig(mode="full")).eager_prompts == "eager"
    assert spec_for_run(eager, RunConfig(mode="baseline")).eager_prompts == "lazy"
    assert spec_for_run(eager, RunConfig(mode="baseline", templates=("a {}.", "the {}."))).eager_prompts == "lazy"
    auto = EncoderSpec(model="offline")
    assert spec_for_run(auto, RunConfig(mode="baseline")).eager_prompts == "lazy"
    assert spec_for_run(auto, RunConfig(mode="adaptive")) is auto
