"""The attribute probe (trained on Gen 2–3 sprites; not CLIP): leak guard, deterministic training, backend.

Needs ../shared/data/pokemon (sprites386 and the PokeAPI table); skipped with a
reason when it is absent. Training runs on a small subset for a few epochs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.probe import data as D
from engine.encoders import EncoderLoadError, load_encoder
from engine.encoders.probe import PROBE_LABEL, WEIGHTS_FILE

needs_data = pytest.mark.skipif(
    not D.data_available(),
    reason="../shared/data/pokemon (sprites386/labels.csv, pokeapi/species_attributes.csv) is absent: "
           "the probe's leak, training and backend tests need it")

SMALL = {"species": 8, "styles": 2}


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def backbone():
    from engine.encoders.probe import ProbeBackbone

    return ProbeBackbone(device="cpu")


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    """A feature cache shared by this module's trainings (the backbone is frozen: its features are inputs)."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def small_probe(backbone, feature_cache, tmp_path_factory):
    """A probe trained on 8 species × 2 styles for 3 epochs: (folder, training data)."""
    from bench.probe.cli import train_probe
    from bench.probe.train import TrainConfig

    data = D.build_training_data(seed=0, **SMALL)
    folder = tmp_path_factory.mktemp("probe") / "a"
    train_probe(folder, cfg=TrainConfig(max_epochs=3, batch_size=8), data=data, backbone=backbone,
                cache_dir=feature_cache, log=_quiet)
    return folder, data


# --------------------------------------------------------------------------- leak guard
@needs_data
def test_no_gen1_species_name_or_image_reaches_training():
    data = D.build_training_data(seed=0)
    man = data.manifest()
    ids = [sid for _, sid in man["images"]]
    assert len(ids) > 2500 and min(ids) >= 152 and max(ids) <= 386
    # no Gen-1 image, by path and by content (sprites 1–151 and every web150 picture)
    from engine.encoders.image_cache import content_hash

    root = D.SPRITES_CSV.parent
    gen1_paths = {str(Path(p).relative_to(root)) for p, _ in D.gen1_sprites()}
    assert not gen1_paths & {p for p, _ in man["images"]}
    train_hashes = {content_hash(root / p) for p, _ in man["images"]}
    assert not train_hashes & D.gen1_image_hashes()
    # no caption names a Gen-1 species (nor any other species of the table)
    captions = {t for caps in man["captions"].values() for t in caps}
    assert len(captions) > 100
    every_name = [r["name"] for r in D.read_species()]
    assert len(D.gen1_names()) == 151
    assert [t for t in captions if D.names_in(t, every_name)] == []
    assert set(man["captions"]) == {str(i) for i in set(ids)}
    assert D.leak_problems(data) == []


@needs_data
def test_leak_guard_catches_a_gen1_image_and_a_named_caption():
    data = D.build_training_data(seed=0, species=4, styles=1)
    path, label = D.gen1_sprites()[0]
    bad = dataclasses.replace(
        data, images=data.images + [{"path": str(Path(path).relative_to(D.SPRITES_CSV.parent)), "abs_path": path,
                                     "species_id": 1, "cls": 0, "style": "x"}],
        captions=data.captions + ["a picture of a pikachu in a forest", "a picture of mr mime"])
    problems = D.leak_problems(bad)
    assert any("species 1 (Gen 1)" in p for p in problems)
    assert any(label in p and "folder" in p for p in problems)
    assert any("Pikachu" in p for p in problems) and any("Mr. Mime" in p for p in problems)
    assert D.names_in("a small creature with wings", D.gen1_names()) == []


# --------------------------------------------------------------------------- training
@needs_data
@pytest.mark.slow
def test_training_twice_from_scratch_gives_the_same_weights(small_probe, backbone, feature_cache, tmp_path):
    from safetensors.torch import load_file

    from bench.probe.cli import train_probe
    from bench.probe.train import TrainConfig

    folder, data = small_probe
    again = D.build_training_data(seed=0, **SMALL)
    assert again.sha256() == data.sha256()
    m = train_probe(tmp_path / "b", cfg=TrainConfig(max_epochs=3, batch_size=8), data=again, backbone=backbone,
                    cache_dir=feature_cache, log=_quiet)
    a, b = load_file(folder / WEIGHTS_FILE), load_file(tmp_path / "b" / WEIGHTS_FILE)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=f"weights {k} differ between two runs")
    assert m["data_sha256"] == data.sha256() and m["seed"] == 0
    # the comparison can fail: another seed gives other weights
    train_probe(tmp_path / "c", cfg=TrainConfig(max_epochs=3, batch_size=8, seed=1), data=again,
                backbone=backbone, cache_dir=feature_cache, log=_quiet)
    c = load_file(tmp_path / "c" / WEIGHTS_FILE)
    first = next(k for k in a if k.startswith("img.") and k.endswith("weight"))
    assert not torch.allclose(a[first], c[first], atol=1e-6)
    assert (folder / WEIGHTS_FILE).stat().st_size < 4_000_000


# --------------------------------------------------------------------------- backend
@needs_data
@pytest.mark.slow
def test_backend_returns_unit_embeddings_of_the_right_shapes(small_probe, backbone):
    folder, data = small_probe
    enc = load_encoder(f"probe:{folder}", device="cpu", backbone=backbone)
    paths = [im["abs_path"] for im in data.images[:3]]
    img = enc.encode_images(paths)
    txt = enc.encode_texts(["a picture of a four-legged creature", "a creature of the fire type"])
    dim = enc.embed_dim
    assert img.shape == (3, dim) and txt.shape == (2, dim) and img.dtype == torch.float32
    for x in (img, txt):
        assert torch.isfinite(x).all()
        np.testing.assert_allclose(x.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # the benchmark path (cached backbone features -> heads) gives the same embeddings
    torch.testing.assert_close(enc.embed_features(backbone.encode_images(paths)), img, atol=1e-5, rtol=0)
    d = enc.describe()
    assert d["label"] == PROBE_LABEL and "not CLIP" in d["label"] and "CLIP" not in d["backend"].replace(
        "not CLIP", "")
    assert 0 < enc.logit_scale < 1000 and enc.name == f"probe:{folder}"


def test_missing_probe_folder_is_one_line_naming_the_train_command(tmp_path):
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(f"probe:{tmp_path / 'nothing'}", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and f"python -m bench.probe train --out {tmp_path / 'nothing'}" in msg
