"""The attribute probe shipped in the package (engine/encoders/data/probe; trained here on Gen 2–3
sprites; not CLIP) is what `python -m bench.probe train` writes today.

Fast checks: the shipped tensors hash to the shipped manifest's weights_sha256, and its config and
training-data hash equal what bench.probe would train with now (the data hash needs ../shared/data).
The full check retrains: `python -m bench.probe verify-shipped --cache-dir DIR` (minutes).
"""

from __future__ import annotations

import json

import pytest

from engine.encoders.probe import MANIFEST_FILE, PROBE_LABEL, SHIPPED_DIR, WEIGHTS_FILE, load_heads, tensors_sha256


def _manifest():
    return json.loads((SHIPPED_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))


def test_shipped_tensors_hash_to_the_manifest():
    from engine.encoders.text_cache import read_safetensors

    state, meta = read_safetensors(SHIPPED_DIR / WEIGHTS_FILE)
    assert tensors_sha256(state) == _manifest()["weights_sha256"]
    assert (SHIPPED_DIR / WEIGHTS_FILE).stat().st_size < 2_100_000  # 1.98 MB of float32


def test_a_changed_tensor_changes_the_hash():
    from engine.encoders.text_cache import read_safetensors

    state, _ = read_safetensors(SHIPPED_DIR / WEIGHTS_FILE)
    k = sorted(state)[0]
    state[k] = state[k].clone()
    state[k].view(-1)[0] += 1e-6
    assert tensors_sha256(state) != _manifest()["weights_sha256"]


def test_shipped_config_is_todays_default():
    from bench.probe.train import TrainConfig

    m = _manifest()
    assert m["config"] == TrainConfig().to_dict()
    heads, man = load_heads(SHIPPED_DIR)
    assert man["weights_sha256"] == m["weights_sha256"]
    assert heads.config == m["config_heads"]


def test_shipped_data_hash_is_what_bench_probe_trains_on_today():
    from bench.probe.cli import shipped_expectations
    from bench.probe.data import SPRITES_CSV, TABLE_CSV

    if not (SPRITES_CSV.is_file() and TABLE_CSV.is_file()):
        pytest.skip(f"../shared/data is absent ({SPRITES_CSV}); the data hash cannot be recomputed")
    exp = shipped_expectations()
    m = _manifest()
    assert exp["data_sha256"] == m["data_sha256"]
    assert exp["config"] == m["config"]


def test_model_string_probe_names_the_shipped_probe_honestly():
    from engine.encoders.registry import MODELS, model_label

    assert MODELS["probe"].offline
    label = model_label("probe")
    assert PROBE_LABEL in label and "not CLIP" in label and "trained here" in label
    assert "not CLIP" in model_label("probe:/some/dir")


def test_package_data_ships_the_probe():
    import tomllib
    from pathlib import Path

    cfg = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    pats = cfg["tool"]["setuptools"]["package-data"]["engine.encoders"]
    rel = {f"data/probe/{WEIGHTS_FILE}", f"data/probe/{MANIFEST_FILE}"}
    import fnmatch

    assert all(any(fnmatch.fnmatch(r, p) for p in pats) for r in rel)


@pytest.mark.slow
def test_load_encoder_probe_loads_the_shipped_probe():
    from engine.encoders import load_encoder

    enc = load_encoder("probe", device="cpu")
    assert enc.folder == SHIPPED_DIR
    assert enc.describe()["weights_sha256"] == _manifest()["weights_sha256"]
    assert enc.logit_scale == pytest.approx(_manifest()["eval_logit_scale"])
    e = enc.encode_texts(["a picture of a creature that is mainly green in color"])
    assert e.shape == (1, 128)
