"""Descriptor files (issue 18, part 4): classification by description, the converter, the random control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli.app import main
from engine.run.classifier import Classifier
from engine.run.config import RunConfig
from systems import load_system
from systems.build import labels_system
from systems.descriptors import (
    DescriptorError, descriptor_prompts, descriptor_system, load_descriptors, random_descriptors,
)

from .encoder_fixtures import tiny_model_dir
from .fakes import FakeEncoder, solid

DESCS = {"cherry": ["red skin", "a small round fruit", "a long stem"],
         "leaf": ["green veins", "a flat blade", "a long stem"],
         "sea": ["blue water", "waves"]}


@pytest.mark.parametrize("content, expect", [
    ('["a"]', "JSON object"),
    ('{"a": ["x"]}', "at least two"),
    ('{"a": [], "b": ["x"]}', "non-empty list"),
    ('{"a": ["x", 3], "b": ["x"]}', "'a'[1]"),
    ('{"a": ["x {}"], "b": ["x"]}', "brace"),
    ('{"a": ["x"], "b": ["  "]}', "non-empty string"),
    ('{"a": ["x"],', "line 1"),
])
def test_bad_descriptor_files_name_the_entry(tmp_path, content, expect):
    p = tmp_path / "d.json"
    p.write_text(content)
    with pytest.raises(DescriptorError, match="d.json") as e:
        load_descriptors(p)
    assert expect in str(e.value) and len(str(e.value).splitlines()) == 1


def test_descriptors_are_cleaned_and_deduplicated(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"a": ["- red  skin.", "red skin"], "b": ["waves"]}))
    assert load_descriptors(p) == {"a": ("red skin",), "b": ("waves",)}
    assert descriptor_prompts("a", ("red skin",)) == ("a, which (is/has/etc) red skin.",)


def test_score_is_the_mean_similarity_over_descriptors_and_q_counts_them():
    enc = FakeEncoder()
    clf = Classifier(system=labels_system(list(DESCS)), encoder=enc)
    config = RunConfig(mode="descriptors", descriptors=tuple((k, tuple(v)) for k, v in DESCS.items()), eps=0.0)
    res = clf.classify([solid("red"), solid("green"), solid("blue")], config)
    n_prompts = sum(map(len, DESCS.values()))
    assert [r.label for r in res] == ["cherry", "leaf", "sea"]
    assert all(r.q_spent == n_prompts for r in res) and clf.text_cache.text_encodes == n_prompts
    ref = FakeEncoder()
    img = ref.encode_images([solid("red")])[0].double()
    means = torch.stack([(ref.encode_texts(list(descriptor_prompts(c, tuple(d)))).double() @ img).mean()
                         for c, d in DESCS.items()])
    p = torch.softmax(ref.logit_scale * means, 0).numpy()
    got = dict(res[0].top)
    np.testing.assert_allclose([got[c] for c in DESCS], p, rtol=1e-5)
    assert config.to_dict()["descriptors"]["prompts"] == n_prompts  # summaries carry a hash, not the texts


def test_descriptor_mode_and_descriptors_go_together():
    with pytest.raises(ValueError, match="go together"):
        RunConfig(mode="descriptors")
    with pytest.raises(ValueError, match="go together"):
        RunConfig(mode="baseline", descriptors=(("a", ("x",)), ("b", ("y",))))


def test_random_descriptors_are_seeded_waffle_words():
    a = random_descriptors(DESCS, seed=1)
    assert a == random_descriptors(DESCS, seed=1) != random_descriptors(DESCS, seed=2)
    assert {c: len(v) for c, v in a.items()} == {c: len(v) for c, v in DESCS.items()}
    assert a["cherry"][:2] == a["sea"][:2]  # the same random words for every class, as WaffleCLIP
    assert all(len(d.split()) == 2 for d in a["leaf"])
    assert all(len(v) == 4 for v in random_descriptors(["x", "y"], per_class=4).values())


def _colour_embed(texts):
    """Descriptors about colour share a direction; the rest are spread by a hash (FakeEncoder)."""
    return FakeEncoder().encode_texts(texts).numpy()


def test_descriptor_system_clusters_descriptors_into_groups_with_rules():
    s = descriptor_system(DESCS, _colour_embed, max_options=3, seed=0, name="fruit")
    distinct = {d for v in DESCS.values() for d in v}
    assert sorted(o for g in s.groups for o in g.options) == sorted(distinct)  # each descriptor once
    assert all(1 <= g.n_options <= 3 for g in s.groups)
    for c, descs in DESCS.items():
        ci = s.class_index(c)
        said = {s.groups[g].options[k] for g in range(s.n_groups) for k in s.rules[ci][g]}
        assert said == set(descs)  # a class accepts exactly its own descriptors
    stem = next(g for g in s.groups if "a long stem" in g.options)
    k = stem.options.index("a long stem")
    assert k in s.rules[s.class_index("cherry")][s.groups.index(stem)]
    assert k in s.rules[s.class_index("leaf")][s.groups.index(stem)]  # shared: one option, two classes
    assert descriptor_system(DESCS, _colour_embed, max_options=3, seed=0, name="fruit") == s


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(3, 6), st.integers(0, 10_000))
def test_descriptor_system_property_every_class_keeps_exactly_its_descriptors(n_classes, max_options, seed):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(int(rng.integers(2, 30)))]
    descs = {f"c{c}": tuple(rng.choice(words, int(rng.integers(1, min(6, len(words)) + 1)), replace=False))
             for c in range(n_classes)}
    if len({d for v in descs.values() for d in v}) < 2:
        return
    vec = {w: rng.standard_normal(5) for w in words}
    s = descriptor_system(descs, lambda texts: np.array([vec[t] for t in texts]), max_options=max_options,
                          seed=seed)
    assert all(2 <= g.n_options <= max_options for g in s.groups)
    for c, ds in descs.items():
        ci = s.class_index(c)
        assert sorted(s.groups[g].options[k] for g in range(s.n_groups) for k in s.rules[ci][g]) == sorted(ds)


@pytest.mark.slow
def test_cli_descriptors_classify_and_convert(tmp_path, capsys):
    tiny = str(tiny_model_dir("clip"))
    (tmp_path / "d.json").write_text(json.dumps(DESCS))
    solid("red").save(tmp_path / "a.png")
    assert main(["classify", str(tmp_path / "a.png"), "--descriptors", str(tmp_path / "d.json"), "--model", tiny,
                 "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["label"] in DESCS and rec["q_spent"] == 8 and rec["asked"][0]["group"] == "class_name"
    out = tmp_path / "s.json"
    assert main(["system", "from-descriptors", str(tmp_path / "d.json"), "--out", str(out), "--model", tiny,
                 "--max-options", "3", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    s = load_system(out)
    assert set(s.classes) == set(DESCS) and all(g.n_options <= 3 for g in s.groups)
    assert main(["classify", str(tmp_path / "a.png"), "--system", str(out), "--model", tiny, "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in DESCS


def test_cli_descriptors_missing_a_class_of_the_system_is_exit_2(tmp_path, capsys):
    (tmp_path / "d.json").write_text(json.dumps({"cat": ["whiskers"], "dog": ["a wet nose"]}))
    assert main(["classify", "a.png", "--labels", "cat,dog,bird", "--descriptors", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert "nothing for 1 class(es)" in err and "'bird'" in err and len(err.strip().splitlines()) == 1
