"""Ray Data runs (issue 8): ``engine.run.ray_executor`` and ``twentyq classify|eval --ray`` against a single process.

One local Ray (2 CPUs) per module. Real images: 200 of ``../shared/data/pokemon/jina15.csv``.
What is checked:

- the tiny random CLIP through Ray (with ``--precompute-text``) and through a single
  process give identical labels, ``q_spent`` and questions, and the same error rows
  for a corrupt and a missing image in the batch (exit code 1, every other row done);
- the offline stand-in through Ray (lazy text per actor) after a run killed with
  SIGKILL halfway and finished with ``--resume``: every image exactly once, labels
  and ``q_spent`` identical to a single process, finished shards not redone;
- a Hugging Face save_to_disk dataset (images as bytes, no files) through ``eval --ray``: the
  one-process records (issue 24);
- bytes input, the precomputed text cache, worker sizing and the one-line errors (Ray
  missing, flags without ``--ray``, a bad ``--out``); these need no shared data and run
  without it. The result store itself is tested in ``test_store.py``.

Ray workers run at nice 0 here (Ray's default is 15), so the 2 shared cores are not
taken from them by every other process on the machine. The tests that start Ray (the module's
``cluster``) are marked ``slow``: starting it takes about 15 s under load, and each actor pool spawns
processes that import torch and load a model (20-60 s on 2 cores); CI runs them all.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'twentyq[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'twentyq[ray]'")
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

from engine.cli.app import main  # noqa: E402
from engine.run.classifier import Classifier, RunConfig  # noqa: E402
from engine.run.config import EncoderSpec  # noqa: E402
from engine.run.datasets import load_dataset  # noqa: E402
from engine.run.pipeline import Job  # noqa: E402
from engine.run.store import FORMATS, ResultStore, results_from_arrow  # noqa: E402
from systems import load_system  # noqa: E402
from engine.common.files import shared_data_root  # noqa: E402

from .support.data import noise_image  # noqa: E402
from .support.encoders import offline_encoder, tiny_model_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JINA = shared_data_root() / "pokemon" / "jina15.csv"
N, SHARD = 200, 25
CORRUPT = b"\xff\xd8\xff\xe0 this is not really a jpeg"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for the whole module; yields its address (for a second driver to join)."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def jina200():
    if not JINA.is_file():
        pytest.skip(f"the shared images are absent ({JINA} not found)")
    return load_dataset(JINA, limit=N, seed=0)


def _key(rec):
    return rec["image"], rec["label"], rec["q_spent"], rec["stop"], rec["error"], [a["group"] for a in rec["asked"]]


def _same(ray_recs, single_recs):
    """Identical labels, q_spent, stops, questions and errors; confidences equal to float32 noise.

    (Image embeddings are computed in batches of other compositions under Ray, which moves
    fp32 results in the last bits.)
    """
    assert [_key(r) for r in ray_recs] == [_key(r) for r in single_recs]
    for a, b in zip(ray_recs, single_recs):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


# --------------------------------------------------------------------------- tiny CLIP, corrupt image, precompute
@pytest.fixture(scope="module")
def tiny_run(cluster, jina200, tmp_path_factory):
    """200 images + a corrupt and a missing one, through `twentyq classify --ray --precompute-text`."""
    d = tmp_path_factory.mktemp("tiny")
    (d / "corrupt.jpg").write_bytes(CORRUPT)
    paths = [it.path for it in jina200.items]
    paths.insert(37, str(d / "corrupt.jpg"))
    paths.insert(150, str(d / "missing.png"))
    model = str(tiny_model_dir("clip"))
    out = d / "run.jsonl"
    args = ["--model", model, "--tau", "0.5", "--device", "cpu", "--quiet"]
    rc = main(["classify", *paths, *args, "--json", "--ray", "--out", str(out), "--shard-size", str(SHARD),
               "--workers", "2", "--precompute-text"])
    single = [r.to_dict() for r in Classifier(model=model, device="cpu").iter_classify(
        paths, RunConfig(tau=0.5), names=paths)]
    return {"rc": rc, "out": out, "paths": paths, "single": single}


@pytest.mark.slow
def test_tiny_clip_through_ray_matches_a_single_process(tiny_run):
    store_files = sorted((tiny_run["out"].parent / "run.jsonl.d").glob("shard-*.jsonl"))
    assert len(store_files) == -(-len(tiny_run["paths"]) // SHARD)
    recs = [json.loads(line) for f in store_files for line in f.read_text(encoding="utf-8").splitlines()]
    assert recs == [json.loads(line) for line in tiny_run["out"].read_text(encoding="utf-8").splitlines()]  # the table
    recs = [{**r, "top": [[t["label"], t["prob"]] for t in r["top"]]} for r in recs]  # files hold {label, prob}
    assert [r["image"] for r in recs] == tiny_run["paths"]  # input order, each once
    _same(recs, tiny_run["single"])
    assert len({r["q_spent"] for r in recs if r["error"] is None}) > 2  # the stop rule really varied Q
    assert [list(r) for r in recs] == [list(r) for r in tiny_run["single"]]  # the classify --json keys, in order


@pytest.mark.slow
def test_corrupt_and_missing_images_are_error_rows_and_the_rest_finish(tiny_run):
    assert tiny_run["rc"] == 1
    recs = [json.loads(line) for f in sorted((tiny_run["out"].parent / "run.jsonl.d").glob("shard-*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines()]
    bad = {i for i, r in enumerate(recs) if r["error"] is not None}
    assert bad == {37, 150}
    for i in bad:  # the very message a single process gives
        assert recs[i]["error"] == tiny_run["single"][i]["error"]
        assert recs[i]["label"] is None and recs[i]["q_spent"] == 0
    assert "corrupt or truncated" in recs[37]["error"] and "no such file" in recs[150]["error"]
    assert all(r["label"] is not None for i, r in enumerate(recs) if i not in bad)
    store = ResultStore(tiny_run["out"].parent / "run.jsonl.d", FORMATS[".jsonl"], len(recs), SHARD)  # the run folder
    assert store.errors() == 2 and not store.pending()


# --------------------------------------------------------------------------- offline model, killed and resumed
def _offline_single(jina200):
    """The single-process reference, one torch thread (as each actor, num_cpus=1)."""
    clf = Classifier(encoder=offline_encoder(), system="pokemon15")
    paths = [it.path for it in jina200.items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads also crawl when other jobs share the cores
    try:
        return [r.to_dict() for r in clf.iter_classify(paths, RunConfig(), names=paths)]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_offline_killed_halfway_then_resumed_matches_a_single_process(cluster, jina200, tmp_path, capsys):
    table, out = tmp_path / "run.parquet", tmp_path / "run.parquet.d"  # the result table, the run folder
    cmd = [sys.executable, "-m", "engine.cli", "eval", "--data", str(JINA), "--limit", str(N), "--seed", "0",
           "--device", "cpu", "--quiet", "--out", str(table), "--shard-size", str(SHARD), "--workers", "2",
           "--ray", cluster]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while len(list(out.glob("_shard-*.done"))) < 2:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no shard finished within 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: what a crash or OOM kill leaves
        proc.communicate()
    # finished = marked; a shard file without its marker (the kill fell between the two renames) is redone
    done_before = {f"{m.name[1:-len('.done')]}.parquet": (out / f"{m.name[1:-len('.done')]}.parquet").stat().st_mtime_ns
                   for m in out.glob("_shard-*.done")}
    n_shards = N // SHARD
    assert 2 <= len(done_before) < n_shards, f"killed after {len(done_before)} of {n_shards} shards"

    rc = main(["eval", "--data", str(JINA), "--limit", str(N), "--seed", "0", "--device", "cpu", "--quiet",
               "--out", str(table), "--shard-size", str(SHARD), "--workers", "2", "--resume", "--ray"])
    assert rc == 0
    assert f"--resume: {len(done_before)} of {n_shards} shard(s) already done" in capsys.readouterr().err
    for name, mtime in done_before.items():  # finished shards were skipped, not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert pq.read_table(out).equals(pq.read_table(table))  # the run folder reads as one Parquet dataset too
    table = pq.read_table(table)
    recs = [r.to_dict() for r in results_from_arrow(table.sort_by([("image", "ascending")]))]
    assert table.num_rows == N and len({r["image"] for r in recs}) == N  # no duplicates, none lost
    by_image = {r["image"]: r for r in recs}
    single = _offline_single(jina200)
    _same([by_image[r["image"]] for r in single], single)
    assert all(by_image[it.path]["true_label"] == it.label for it in jina200.items)
    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    assert summary["n"] == N and summary["model"] == "offline" and summary["skipped"] == []


@pytest.mark.slow
def test_csv_out_and_a_template_ensemble_through_ray_match_a_single_process(cluster, tmp_path):
    """Issue 18: --out run.csv and --labels/--templates (carried by RunConfig) on Ray actors."""
    from engine.run.store import read_run

    model = str(tiny_model_dir("clip"))
    paths = []
    for i in range(12):
        noise_image(i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    common = ["--labels", "cat,dog,bird", "--templates", "photo", "--model", model, "--device", "cpu", "--quiet",
              "--shard-size", "5"]
    assert main(["classify", *paths, *common, "--out", str(tmp_path / "r.csv"), "--ray", "--workers", "1",
                 "--precompute-text"]) == 0
    assert main(["classify", *paths, *common, "--out", str(tmp_path / "s.jsonl")]) == 0
    on_ray, single = read_run(tmp_path / "r.csv"), read_run(tmp_path / "s.jsonl")
    assert len(list((tmp_path / "r.csv.d").glob("shard-*.csv"))) == 3
    _same(on_ray, single)
    assert all(r["q_spent"] == 3 * 5 for r in on_ray)


@pytest.mark.slow
def test_a_calibration_travels_with_the_job_to_the_actors(cluster, tmp_path):
    """Issue 16: eval --calibration on Ray actors gives the one-process records, and they differ from no calibration."""
    from engine.run.calibration_file import calibrate, save_calibration
    from engine.run.datasets import DataSpec
    from engine.run.store import read_run

    from .support.data import five_group_system, write_labelled_noise

    model, system = str(tiny_model_dir("clip")), five_group_system()
    (tmp_path / "five.json").write_text(json.dumps(system.to_dict()))
    data = str(write_labelled_noise(tmp_path, system, 24))
    from dataclasses import replace

    cal = calibrate(Classifier(model, system, device="cpu"), DataSpec(data))
    # on 12 noise images the held-out check keeps the uncalibrated channel (issue 26); a quarter of its λ makes
    # the calibration change results, so that the actors can be seen to use it
    cal = replace(cal, channels=replace(cal.channels, lams=cal.channels.lams * 0.25))
    cal = save_calibration(cal, tmp_path / "cal.json")
    common = ["eval", "--data", data, "--system", str(tmp_path / "five.json"), "--model", model, "--device", "cpu",
              "--tau", "0.5", "--quiet", "--shard-size", "5"]
    assert main([*common, "--calibration", cal.path, "--out", str(tmp_path / "r.jsonl"), "--ray", "--workers", "1"]) == 0
    assert main([*common, "--calibration", cal.path, "--out", str(tmp_path / "s.jsonl")]) == 0
    assert main([*common, "--out", str(tmp_path / "plain.jsonl")]) == 0
    on_ray, single = read_run(tmp_path / "r.jsonl"), read_run(tmp_path / "s.jsonl")
    assert len(on_ray) == 12  # the 12 dev images left out on Ray too
    _same(on_ray, single)
    plain = {r["image"]: r["confidence"] for r in read_run(tmp_path / "plain.jsonl")}
    assert [r["confidence"] for r in on_ray] != pytest.approx([plain[r["image"]] for r in on_ray], abs=1e-3)
    summary = json.loads((tmp_path / "r.jsonl.d" / "_summary.json").read_text())
    assert summary["calibration"]["sha256"] == cal.sha256 and summary["calibration"]["excluded_dev_images"] == 12


@pytest.mark.slow
def test_a_hugging_face_dataset_through_ray_matches_a_single_process(cluster, tmp_path, monkeypatch):
    """Issue 24: a save_to_disk dataset's images are bytes in the dataset, no file at their stored names; the
    actors get the bytes (not only the names), so every row is classified, as in one process."""
    import io

    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed: pip install "
                                                      "'twentyq[datasets]'")
    from engine.run.store import read_run

    from .support.data import five_group_system

    model, system = str(tiny_model_dir("clip")), five_group_system()
    (tmp_path / "five.json").write_text(json.dumps(system.to_dict()))
    pngs = []
    for i in range(12):
        buf = io.BytesIO()
        noise_image(100 + i).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    ds = datasets.Dataset.from_dict({
        "image": [{"bytes": b, "path": f"img{i}.png"} for i, b in enumerate(pngs)],  # names only: no such files
        "label": [system.classes[i % system.n_classes] for i in range(len(pngs))],
    }).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hfds"))
    monkeypatch.chdir(tmp_path)  # the driver's cwd, sent to the actors; img*.png are not there either
    common = ["eval", "--data", str(tmp_path / "hfds"), "--system", str(tmp_path / "five.json"), "--model", model,
              "--device", "cpu", "--tau", "0.5", "--quiet", "--shard-size", "5"]
    assert main([*common, "--out", str(tmp_path / "r.jsonl"), "--ray", "--workers", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "s.jsonl")]) == 0
    on_ray, single = read_run(tmp_path / "r.jsonl"), read_run(tmp_path / "s.jsonl")
    assert len(on_ray) == len(single) == len(pngs)
    assert all(r["error"] is None for r in on_ray)
    assert [_key(r) for r in on_ray] == [_key(r) for r in single]  # names, labels, Q, stops, questions
    assert [r["true_label"] for r in on_ray] == [r["true_label"] for r in single]
    for a, b in zip(on_ray, single):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-6)
        assert [lab for lab, _ in a["top"]] == [lab for lab, _ in b["top"]]
        assert [p for _, p in a["top"]] == pytest.approx([p for _, p in b["top"]], abs=1e-6)


# --------------------------------------------------------------------------- the actor without a pool
@pytest.mark.slow
def test_bytes_input_and_precomputed_text_give_the_path_results(cluster, tmp_path):
    """ClassifyBatch called directly: bytes rows (one corrupt) and a precomputed text table."""
    from engine.run.ray_executor import ClassifyBatch, _embed_prompts

    model = str(tiny_model_dir("clip"))
    paths = []
    for i in range(12):
        noise_image(i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.jpg").write_bytes(CORRUPT)
    paths.insert(5, str(tmp_path / "bad.jpg"))
    job = Job(EncoderSpec(model=model, device="cpu"), load_system("pokemon15"), RunConfig(tau=0.5))
    lazy = ClassifyBatch(job, stats=True)
    by_path = [r.to_dict() for r in results_from_arrow(lazy(pa.table({"path": paths})))]
    as_bytes = pa.table({"path": paths, "bytes": [Path(p).read_bytes() for p in paths]})
    table_ref = ray.put(_embed_prompts(job))
    pre = ClassifyBatch(job, text_ref=table_ref, stats=True)
    out = pre(as_bytes)
    assert sum(out.column("_text_encodes").to_pylist()) == 0  # every prompt came from the broadcast table
    assert sum(out.column("_text_hits").to_pylist()) > 0
    by_bytes = [r.to_dict() for r in results_from_arrow(out)]
    assert by_bytes == by_path  # same batch: identical to the last bit, errors included
    assert by_bytes[5]["error"].startswith(f"cannot load image {paths[5]!r}: corrupt or truncated image data")
    single = [r.to_dict() for r in Classifier(job.encoder, job.system).classify(paths, job.config)]
    assert [(r["label"], r["q_spent"], r["error"]) for r in by_path] == \
        [(r["label"], r["q_spent"], r["error"]) for r in single]  # the actor's path is the one-process path
    empty = lazy(pa.table({"path": pa.array([], pa.string())}))  # Ray may hand an actor an empty block
    assert empty.num_rows == 0 and "_text_encodes" in empty.column_names


# --------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("argv, needle", [
    (["classify", "a.png", "--precompute-text"], "--precompute-text: only with --ray"),
    (["classify", "a.png", "--workers", "2"], "--workers: only with --ray"),
    (["classify", "a.png", "--ray", "b.png"], "is not a Ray address"),
    (["classify", "a.png", "--ray", "--workers", "0"], "--workers 0: must be a whole number >= 1"),
    (["eval", "--data", "d.csv", "--ray", "--out", "r.json"], "ends in .jsonl or .parquet"),
])
def test_bad_ray_flags_are_one_line_usage_errors(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_cluster_address_where_nothing_answers_is_a_one_line_error(monkeypatch):
    import engine.run.ray_executor as rb

    monkeypatch.setattr(rb.require_ray(), "is_initialized", lambda: False)  # as in a fresh driver
    with pytest.raises(rb.RayStartError, match=r"could not join the Ray cluster at '127.0.0.1:1': nothing answers"):
        with rb.ray_session("127.0.0.1:1"):
            pass


def test_ray_missing_names_the_extra(monkeypatch, capsys):
    import engine.run.ray_executor as rb

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(rb.RayMissing, match=r"pip install 'twentyq\[ray\]'"):
        rb.require_ray()
    assert main(["classify", "a.png", "--ray"]) == 2
    assert "pip install 'twentyq[ray]'" in capsys.readouterr().err


def test_worker_sizing_follows_the_cluster():
    from engine.run.ray_executor import RayOptions

    gpus8 = {"CPU": 64.0, "GPU": 8.0}
    assert RayOptions().sizing(gpus8, "auto") == (8, 1.0, 1.0)  # one actor per GPU
    assert RayOptions(gpus_per_worker=0.125).sizing(gpus8, "auto") == (64, 0.125, 1.0)  # 8 per GPU, 64 cores
    assert RayOptions(gpus_per_worker=0.125, cpus_per_worker=2.0).sizing(gpus8, "auto") == (32, 0.125, 2.0)
    assert RayOptions().sizing(gpus8, "cpu") == (64, 0.0, 1.0)  # --device cpu: no GPUs asked for
    assert RayOptions(workers=3).sizing({"CPU": 2.0}, "auto") == (3, 0.0, 1.0)
