"""Reliability (issue 7): faults (signals, killed writers, full disks, out of memory) and security.

The signal tests run the real CLI in a subprocess (``tests/support/slow_cli.py``: the
real ``twentyq`` with a fake encoder that sleeps per image) and send it real
signals.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from engine.encoders.base import EncoderOutOfMemory, OutOfMemoryWarning
from engine.encoders.image_cache import ImageCache
from engine.encoders.text_cache import CacheWarning, TextCache

from .support.data import noise_image, solid, write_colour_data
from .support.encoders import HashEncoder, OOMEncoder, tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------- SIGTERM / Ctrl-C and --resume
N_IMAGES = 200  # streamed in chunks of 64: the signal lands after the first chunk and before the last
@pytest.fixture
def many_colour_images(tmp_path):
    """N_IMAGES solid-colour PNGs of a few widths in img/, labels.csv and the colour system (sys.json)."""
    return write_colour_data(tmp_path, N_IMAGES, csv_name="labels.csv", subdir="img", varied_sizes=True)


def _eval(d, *extra, delay="0.01"):
    cmd = [sys.executable, "-m", "tests.support.slow_cli", "eval", "--data", str(d / "labels.csv"), "--system",
           str(d / "sys.json"), "--out", str(d / "r.jsonl"), "--shard-size", "32", "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env={**ENV, "TWENTYQ_TEST_DELAY": delay}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> list[dict]:
    """Every record of the finished shards of a run folder (each line valid JSON)."""
    recs = []
    for k in sorted(int(m.name[len("_shard-"):-len(".done")]) for m in out.glob("_shard-*.done")):
        text = (out / f"shard-{k:05d}.jsonl").read_text(encoding="utf-8")
        assert text.endswith("\n")
        recs += [json.loads(line) for line in text.splitlines()]
    return recs


@pytest.mark.slow
def test_sigterm_during_eval_keeps_finished_shards_and_marks_the_summary_incomplete_then_resume(many_colour_images):
    sig = signal.SIGTERM  # Ctrl-C (SIGINT) takes the same path: SIGTERM is turned into KeyboardInterrupt
    d = many_colour_images
    proc = _eval(d)
    out = d / "r.jsonl.d"  # the run folder: shards, markers, _summary.json
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("_shard-*.done"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"eval ended before the signal: {proc.communicate()}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    done = _records(out)
    # one line, and the truth: how many shards finished and were kept
    assert err.strip().splitlines() == [f"twentyq: interrupted; {len(done) // 32} of {-(-N_IMAGES // 32)} shard(s) "
                                        f"finished and kept in {out}; rerun with --resume to finish"], err
    assert 64 <= len(done) < N_IMAGES
    summary = json.loads((out / "_summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert summary["complete"] is False and summary["n"] + len(summary["skipped"]) == len(done)

    proc = _eval(d, "--resume", delay="0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    n_shards = -(-N_IMAGES // 32)
    assert f"{len(done) // 32} of {n_shards} shard(s) already done" in err
    records = _records(out)
    names = [Path(r["image"]).name for r in records]
    assert names == [f"{i:03d}.png" for i in range(N_IMAGES)]  # every image exactly once, in input order
    assert records[:len(done)] == done  # the finished shards were kept, not redone
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] is True and summary["n"] == N_IMAGES and summary["accuracy"] == 1.0


@pytest.mark.slow
def test_sigkill_during_eval_loses_only_the_shard_in_flight_then_resume(many_colour_images):
    """No handler runs on SIGKILL: what a crash or an OOM kill leaves must resume exactly."""
    d = many_colour_images
    proc = _eval(d)
    out = d / "r.jsonl.d"  # the run folder: shards, markers, _summary.json
    deadline = time.monotonic() + 60
    while len(list(out.glob("_shard-*.done"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = {m.name: (out / f"shard-{m.name[len('_shard-'):-len('.done')]}.jsonl").stat().st_mtime_ns
            for m in out.glob("_shard-*.done")}
    assert 2 <= len(done) < -(-N_IMAGES // 32)
    proc = _eval(d, "--resume", delay="0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    for name, mtime in done.items():  # finished shards were kept, not redone
        assert (out / f"shard-{name[len('_shard-'):-len('.done')]}.jsonl").stat().st_mtime_ns == mtime
    names = [Path(r["image"]).name for r in _records(out)]
    assert names == [f"{i:03d}.png" for i in range(N_IMAGES)]  # none lost, none twice
    assert json.loads((out / "_summary.json").read_text())["n"] == N_IMAGES


@pytest.mark.slow
def test_resume_redoes_a_shard_whose_marker_is_missing_and_needs_out(many_colour_images, capsys):
    from engine.cli.app import main

    d = many_colour_images
    args = ["eval", "--data", str(d / "labels.csv"), "--system", str(d / "sys.json"), "--quiet",
            "--model", str(tiny_model_dir("clip")), "--out", str(d / "r.jsonl"), "--shard-size", "100"]
    assert main(args) == 0
    first = _records(d / "r.jsonl.d")
    (d / "r.jsonl.d" / "_shard-00001.done").unlink()  # the kill fell between the shard file and its marker
    (d / "r.jsonl.d" / ".shard-00000.jsonl.x.tmp").write_text("torn")  # a killed writer's temp file: never read
    assert main(args + ["--resume"]) == 0
    assert "1 of 2 shard(s) already done" in capsys.readouterr().err
    assert _records(d / "r.jsonl.d") == first
    assert main(["eval", "--data", str(d / "labels.csv"), "--system", str(d / "sys.json"), "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


# --------------------------------------------------------------------------- disk cache faults
KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import safetensors.torch as st
    from engine.encoders.text_cache import TextCache
    from tests.support.encoders import HashEncoder

    real = st.save_file
    def half_then_hang(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])   # half-written...
        print("WRITING", flush=True)
        time.sleep(120)                                   # ...when the process is killed
    st.save_file = half_then_hang
    TextCache(HashEncoder(), cache_dir=sys.argv[1]).embed(["a red thing", "a blue thing"])
""")


@pytest.mark.slow
def test_half_written_cache_file_from_a_killed_process_is_ignored_and_rebuilt(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WRITING", proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    prompts = ["a red thing", "a blue thing"]
    cache = TextCache(HashEncoder(), cache_dir=tmp_path)
    final = cache.path_for(prompts)
    leftovers = list(final.parent.glob(".*.tmp"))
    assert not final.exists() and leftovers  # the half-written temp file never got the real name
    emb = cache.embed(prompts)
    assert cache.text_encodes == 2 and cache.disk_hits == 0 and final.exists()
    again = TextCache(HashEncoder(), cache_dir=tmp_path)
    assert torch.equal(again.embed(prompts), emb) and again.disk_hits == 2 and again.text_encodes == 0
    # the same damage under the final name (a writer that does not rename) is rebuilt, with a warning
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    third = TextCache(HashEncoder(), cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="failed to load"):
        assert torch.equal(third.embed(prompts), emb)
    assert third.rebuilt == 1 and third.text_encodes == 2


def test_a_cache_written_by_another_model_id_is_never_served(tmp_path):
    prompts = ["a red thing", "a blue thing"]
    a = TextCache(HashEncoder(model_id="model-a@1"), cache_dir=tmp_path)
    a.embed(prompts)
    b = TextCache(HashEncoder(model_id="model-b@1"), cache_dir=tmp_path)
    assert b.path_for(prompts) != a.path_for(prompts)
    b.embed(prompts)
    assert b.disk_hits == 0 and b.text_encodes == 2
    # even A's file copied under B's name is refused by its metadata
    b.path_for(prompts).write_bytes(a.path_for(prompts).read_bytes())
    c = TextCache(HashEncoder(model_id="model-b@1"), cache_dir=tmp_path)
    with pytest.warns(CacheWarning, match="another model"):
        c.embed(prompts)
    assert c.disk_hits == 0 and c.text_encodes == 2 and c.rebuilt == 1
    # the image cache too
    ImageCache(HashEncoder(model_id="model-a@1"), cache_dir=tmp_path).encode([noise_image(0)])
    ib = ImageCache(HashEncoder(model_id="model-b@1"), cache_dir=tmp_path)
    ib.encode([noise_image(0)])
    assert ib.encoded == 1 and ib.hits == 0


def _full_disk(kind):
    from safetensors import SafetensorError

    def save_file(*a, **k):
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    return save_file


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_out_of_disk_space_continues_without_the_disk_cache_and_warns_once(tmp_path, monkeypatch, kind):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _full_disk(kind))
    cache = TextCache(HashEncoder(), cache_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cache.embed(["a", "b"])
        cache.embed(["c", "d"])
        cache.embed(["e", "f"])
    msgs = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(msgs) == 1 and "No space left on device" in msgs[0] and "continuing" in msgs[0]
    assert cache.text_encodes == 6 and not cache.disk_writes_ok
    assert torch.equal(cache.embed(["a", "b"]), first)  # served from memory
    assert not list((tmp_path / "text").glob("*"))  # no temp files left behind
    ic = ImageCache(HashEncoder(), cache_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ic.encode([noise_image(0)])
        ic.encode([noise_image(1)])
    assert sum(issubclass(w.category, CacheWarning) for w in caught) == 1 and ic.encoded == 2


@pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform == "linux"),
                    reason="needs root on Linux to mount a tiny tmpfs")
def test_out_of_disk_space_on_a_real_full_filesystem(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount not permitted here")
    try:
        enc = HashEncoder(dim=4096)  # 2 prompts x 4096 x 4 B = 32 KB > 16 KB
        cache = TextCache(enc, cache_dir=mnt)
        with pytest.warns(CacheWarning, match="No space left"):
            emb = cache.embed(["a", "b"])
        assert emb.shape == (2, 4096) and not cache.disk_writes_ok
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize("kind", ["cuda", "runtime"])
def test_out_of_memory_halves_the_batch_and_retries(kind):
    ref = HashEncoder(batch_size=8).encode_images([noise_image(i) for i in range(10)])
    enc = OOMEncoder(fits=2, kind=kind, batch_size=8)
    with pytest.warns(OutOfMemoryWarning) as caught:
        emb = enc.encode_images([noise_image(i) for i in range(10)])
    assert ["retrying with 4" in str(w.message) for w in caught] == [True, False]
    assert torch.allclose(emb, ref) and enc.batch_size == 2
    assert enc.tried[:3] == [8, 4, 2]
    enc.tried.clear()
    enc.encode_images([noise_image(i) for i in range(5)])
    assert max(enc.tried) == 2  # the lowered size is kept: no OOM again
    texts = OOMEncoder(fits=1, kind=kind, batch_size=4)
    with pytest.warns(OutOfMemoryWarning):
        assert texts.encode_texts(["a", "b", "c"]).shape == (3, 8)


def test_out_of_memory_at_batch_size_one_is_reported():
    enc = OOMEncoder(fits=0, batch_size=4)
    with pytest.warns(OutOfMemoryWarning), pytest.raises(EncoderOutOfMemory, match="one image per batch"):
        enc.encode_images([noise_image(0), noise_image(1)])
    assert enc.tried == [2, 1]
    other = HashEncoder()
    other._embed_images = lambda ims: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not OOM: not retried
        other.encode_images([noise_image(0)])


# --------------------------------------------------------------------------- security
SOURCE_DIRS = ("engine", "systems", "policies", "bench", "tests")


def _sources():
    for d in SOURCE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            if p.name != Path(__file__).name:
                yield p, p.read_text(encoding="utf-8")


def test_no_pickle_and_no_unsafe_torch_load_anywhere_in_the_source():
    bad = []
    for p, text in _sources():
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\b(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b|\bpickle\.(loads?|dumps?)\b", code):
                bad.append(f"{p.relative_to(REPO)}:{n}: pickle: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True", code):
                bad.append(f"{p.relative_to(REPO)}:{n}: allow_pickle=True: {line.strip()}")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{p.relative_to(REPO)}:{line}: torch.load without weights_only=True: {call}")
    assert not bad, "\n".join(bad)


def test_cli_names_the_repository_whose_code_it_will_run(tmp_path, capsys, monkeypatch):
    import engine.run.classifier
    from engine.cli.app import main
    from engine.encoders.base import EncoderLoadError
    from engine.encoders.hf import remote_code_origin

    folder = tmp_path / "jina-local"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "jina_clip", "auto_map": {
        "AutoModel": "jinaai/jina-clip-implementation--modeling_clip.JinaCLIPModel"}}))
    assert "jinaai/jina-clip-implementation" in remote_code_origin(str(folder))
    assert "https://huggingface.co/jinaai/jina-clip-v2" in remote_code_origin("jinaai/jina-clip-v2")

    def refuse(*a, **k):
        raise EncoderLoadError("stopped by the test before any model code ran")

    monkeypatch.setattr(engine.run.classifier, "Classifier", refuse)
    solid("red").save(tmp_path / "r.png")
    for model, repo in ((str(folder), "jinaai/jina-clip-implementation"), ("jinaai/jina-clip-v1", "jinaai/jina-clip-v1")):
        assert main(["classify", str(tmp_path / "r.png"), "--model", model, "--trust-remote-code", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--trust-remote-code" in err and repo in err  # printed even with --quiet


def test_remote_code_without_the_flag_explains_the_choice(capsys, tmp_path):
    from engine.cli.app import main

    solid("red").save(tmp_path / "r.png")
    assert main(["classify", str(tmp_path / "r.png"), "--model", "jinaai/jina-clip-v1"]) == 2
    err = capsys.readouterr().err
    assert "needs trust_remote_code=True (CLI: --trust-remote-code)" in err and "only if you trust" in err
