"""Descriptor files (issue 18, part 4): classification by description, the converter, the random control."""

from __future__ import annotations

import json
from pathlib import Path

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
    STYLES, DescriptorError, DescriptorNotice, descriptor_prompts, descriptor_sentence, descriptor_system,
    load_descriptor_file, random_descriptors, spherical_kmeans,
)

from .support.data import solid
from .support.encoders import FakeEncoder, tiny_model_dir

DESCS = {"cherry": ["red skin", "a small round fruit", "a long stem"],
         "leaf": ["green veins", "a flat blade", "a long stem"],
         "sea": ["blue water", "waves"]}


FIXTURES = Path(__file__).parent / "data" / "descriptors"


@pytest.mark.parametrize("content, expect", [
    ('["a"]', "JSON object"),
    ('{"a": ["x"]}', "at least two"),
    ('{"a": ["x", 3], "b": ["x"]}', "'a'[1] is the number 3"),
    ('{"a": "x", "b": ["x"]}', "class 'a' holds the string 'x', not a list"),
    ('{"a": ["x"], "a ": ["y"]}', "listed twice"),
    ('{"a": ["x"], "...": ["y"]}', "no name"),
    ('{"a": ["x"],', "line 1"),
])
def test_bad_descriptor_files_name_the_entry(tmp_path, content, expect):
    p = tmp_path / "d.json"
    p.write_text(content)
    with pytest.raises(DescriptorError, match="d.json") as e:
        load_descriptor_file(p)
    assert expect in str(e.value) and len(str(e.value).splitlines()) == 1


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"a": ["x", None, 2], "b": {"k": 1}, "c": ["ok"], "": ["y"], "d": ["z", []]}))
    with pytest.raises(DescriptorError) as e:
        load_descriptor_file(p)
    assert len(e.value.problems) == 5
    lines = str(e.value).splitlines()
    assert "5 problems" in lines[0] and len(lines) == 6
    for part in ("'a'[1] is null", "'a'[2] is the number 2", "class 'b' holds an object", "class '' has no name",
                 "'d'[1] is a list"):
        assert part in str(e.value)


def test_empty_lists_and_blank_entries_are_dropped_with_one_notice_each():
    read = load_descriptor_file(FIXTURES / "dclip_food101_style.json")
    empty = ["donuts", "french fries", "fried calamari", "mussels", "oysters"]
    assert [c for c, v in read.descriptors.items() if not v] == empty
    assert len(read.notices) == 1 and all(repr(c) in read.notices[0] for c in empty)
    assert "5 classes without descriptors" in read.notices[0] and "fall back to the class name" in read.notices[0]
    assert read.style == "dclip" and read.detected
    # entries as DCLIP reads them: trailing punctuation and a repeated entry kept
    assert read.descriptors["chocolate mousse"][0] == "a dessert made from chocolate, eggs, and cream,"
    assert read.descriptors["hot dog"].count("a bun around it") == 2

    cupl = load_descriptor_file(FIXTURES / "cupl_style.json")
    assert cupl.style == "cupl" and cupl.detected
    blank, braces, fallback = cupl.notices
    assert "dropped 6 blank or punctuation-only entries" in blank
    for entry in ("'Dodge Dakota Crew Cab 2010'[7] '.'", "'apple pie'[1] '.'", "'apple pie'[2] ''",
                  "'Archery'[2] ' '", "'empty caption class'[0] '.'", "'empty caption class'[1] '  '"):
        assert entry in blank
    assert "stripped stray braces" in braces and "'Dodge Dakota Crew Cab 2010'[6]" in braces and "'Archery'[1]" in braces
    assert "1 class without descriptors (every entry dropped) falls back" in fallback
    dodge = cupl.descriptors["Dodge Dakota Crew Cab 2010"]
    assert dodge[4] == "The Dakota has a large grille with the Dodge logo in the center."  # outer space only
    assert dodge[5].startswith("-4 door crew cab -5 passenger")  # whitespace runs collapse, as the tokenizer does
    assert dodge[6] == "The image is of a red Dodge Dakota Crew Cab 2010."
    assert dodge.count("Dodge Dakota Crew Cab 2010.") == 2  # repeats weigh in CuPL's mean, as in its code

    waffle = load_descriptor_file(FIXTURES / "waffleclip_cars_excerpt.json")
    assert sum(not v for v in waffle.descriptors.values()) == 4 and len(waffle.notices) == 1
    assert waffle.style == "dclip"  # WaffleCLIP files look like DCLIP's; its wording is named, not detected
    assert load_descriptor_file(FIXTURES / "waffleclip_cars_excerpt.json", "waffle").style == "waffle"


@pytest.mark.parametrize("desc, sentence", [
    ("a pie dish", "which is a pie dish"),
    ("an Italian pastry", "which is an Italian pastry"),
    ("antennae", "which is antennae"),  # DCLIP tests the letter "a", not the word
    ("has a crust", "which has a crust"),
    ("often served hot", "which often served hot"),
    ("typically red", "which typically red"),
    ("may be baked", "which may be baked"),
    ("can be fried", "which can be fried"),
    ("used as street food", "which is used as street food"),
    ("red skin", "which has red skin"),
    ("Alloy wheels", "which has Alloy wheels"),
])
def test_descriptor_sentence_follows_dclips_rules(desc, sentence):
    assert descriptor_sentence(desc) == sentence


def test_prompts_follow_each_style():
    descs = ("a pie dish", "cinnamon")
    assert descriptor_prompts("apple_pie", descs, "dclip") == ("apple pie, which is a pie dish",
                                                              "apple pie, which has cinnamon")
    assert descriptor_prompts("apple_pie", descs, "waffle") == ("A photo of a apple pie, which is a pie dish.",
                                                               "A photo of a apple pie, which has cinnamon.")
    assert descriptor_prompts("apple_pie", descs, "cupl") == descs
    assert [descriptor_prompts("fried_calamari", (), s) for s in STYLES] == [
        ("fried calamari",), ("A photo of a fried calamari.",), ("fried calamari",)]


def test_descriptors_are_read_as_given(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"a": ["- red  skin.", "red skin", "{red} skin"], "b": ["waves"]}))
    read = load_descriptor_file(p)
    assert read.descriptors == {"a": ("- red skin.", "red skin", "red skin"), "b": ("waves",)}
    assert descriptor_prompts("a", ("red skin",)) == ("a, which has red skin",)


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
    distinct = {descriptor_sentence(d) for v in DESCS.values() for d in v}  # options worded as DCLIP's prompts
    assert sorted(o for g in s.groups for o in g.options) == sorted(distinct)  # each descriptor once
    assert {g.template for g in s.groups} == {"a photo of something, {}."}
    assert all(1 <= g.n_options <= 3 for g in s.groups)
    for c, descs in DESCS.items():
        ci = s.class_index(c)
        said = {s.groups[g].options[k] for g in range(s.n_groups) for k in s.rules[ci][g]}
        assert said == {descriptor_sentence(d) for d in descs}  # a class accepts exactly its own descriptors
    stem = next(g for g in s.groups if "which is a long stem" in g.options)
    k = stem.options.index("which is a long stem")
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
                          seed=seed, style="dclip")
    assert all(2 <= g.n_options <= max_options for g in s.groups)
    for c, ds in descs.items():
        ci = s.class_index(c)
        assert sorted(s.groups[g].options[k] for g in range(s.n_groups) for k in s.rules[ci][g]) == sorted(
            descriptor_sentence(d) for d in ds)


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


def test_cupl_captions_are_embedded_as_they_are_and_averaged():
    """CuPL's scorer: a class's vector is the normalised mean of its captions' unit embeddings."""
    caps = {"cherry": ("A red cherry.", "A cherry on a stem.", "A cherry on a stem."),
            "leaf": ("A green leaf.", "A leaf with veins."), "sea": ("The blue sea.",)}
    enc = FakeEncoder()
    clf = Classifier(system=labels_system(list(caps)), encoder=enc)
    config = RunConfig(mode="descriptors", descriptors=tuple(caps.items()), descriptor_style="cupl", eps=0.0)
    assert config.descriptor_style == "cupl" and config.to_dict()["descriptors"]["style"] == "cupl"
    res = clf.classify([solid("red")], config)[0]
    ref = FakeEncoder()
    img = ref.encode_images([solid("red")])[0].double()
    vecs = torch.stack([torch.nn.functional.normalize(ref.encode_texts(list(v)).double().mean(0), dim=0)
                        for v in caps.values()])
    p = torch.softmax(ref.logit_scale * (vecs @ img), 0).numpy()
    got = dict(res.top)
    np.testing.assert_allclose([got[c] for c in caps], p, rtol=1e-5)
    assert set(enc.texts_encoded) <= {t for v in caps.values() for t in v}  # no wrapping around the captions
    assert res.q_spent == 6  # the prompts the answer rests on, repeats included


def test_descriptor_style_is_detected_or_named_and_checked():
    dclip = RunConfig(mode="descriptors", descriptors=(("a", ("red skin",)), ("b", ("waves",))))
    assert dclip.descriptor_style == "dclip"
    cupl = RunConfig(mode="descriptors", descriptors=(("a", ("A red fruit.",)), ("b", ("The sea.",))))
    assert cupl.descriptor_style == "cupl"
    assert dclip.to_dict()["descriptors"]["sha256"] != RunConfig(
        mode="descriptors", descriptors=dclip.descriptors, descriptor_style="waffle").to_dict()["descriptors"]["sha256"]
    with pytest.raises(DescriptorError, match="not one of"):
        RunConfig(mode="descriptors", descriptors=dclip.descriptors, descriptor_style="clip")
    with pytest.raises(ValueError, match="without descriptors"):
        RunConfig(mode="baseline", descriptor_style="cupl")


def test_a_python_caller_is_warned_of_what_was_dropped():
    with pytest.warns(DescriptorNotice, match="fall back to the class name"):
        config = RunConfig(mode="descriptors", descriptors={"a": [], "b": ["waves", "."], "c": []})
    assert dict(config.descriptors) == {"a": (), "b": ("waves",), "c": ()}


def test_spherical_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(12)[:6]
    x = np.repeat(centres, 10, axis=0) + 0.01 * rng.standard_normal((60, 12))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for seed in range(5):
        labels = spherical_kmeans(x, 6, seed=seed)
        assert len(set(labels)) == 6
        assert all(len(set(labels[i * 10:(i + 1) * 10])) == 1 for i in range(6))  # each true cluster whole


def test_descriptor_system_cupl_style_and_name_fallback():
    read = load_descriptor_file(FIXTURES / "cupl_style.json")
    s = descriptor_system(read, _colour_embed, max_options=4, seed=0)
    assert {g.template for g in s.groups} == {"{}"}
    options = {o for g in s.groups for o in g.options}
    assert "The Dakota has a large grille with the Dodge logo in the center." in options  # as it is
    assert "empty caption class" in options  # a class with no caption left is asked by its name
    ci = s.class_index("empty caption class")
    said = [s.groups[g].options[k] for g in range(s.n_groups) for k in s.rules[ci][g]]
    assert said == ["empty caption class"]


@pytest.mark.parametrize("name", ["dclip_food101_style.json", "cupl_style.json", "waffleclip_cars_excerpt.json"])
def test_cli_validate_recognises_descriptor_files(name, capsys):
    assert main(["system", "validate", str(FIXTURES / name)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: descriptor file") and "style" in out
    assert "fall" in err and "back to the class name" in err  # each fixture has classes by name only


def test_cli_validate_lists_every_problem_of_a_descriptor_file(tmp_path, capsys):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"a": ["x", 3], "b": ["y", None], "c": [], "d": "z"}))
    assert main(["system", "validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err and "'a'[1]" in err and "'b'[1]" in err and "class 'd' holds the string 'z'" in err
    assert main(["system", "validate", "pokemon15"]) == 0  # a system is still validated as one
    assert capsys.readouterr().out.startswith("ok: pokemon15")


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_cli_descriptor_notices_are_printed_once(tmp_path, capsys):
    solid("red").save(tmp_path / "a.png")
    assert main(["classify", str(tmp_path / "a.png"), "--descriptors", str(FIXTURES / "dclip_food101_style.json"),
                 "--model", "offline", "--json"]) == 0
    err = capsys.readouterr().err
    assert err.count("fall back to the class name") == 1 and "'oysters'" in err


def test_texts_embedded_by_length_come_back_in_the_order_given():
    from engine.encoders.text_shapes import encode_texts_by_length

    texts = ["a very long descriptor about red skin", "red", "waves", "a flat blade", "blue water and sky", "x y"]
    steps = []
    got = encode_texts_by_length(FakeEncoder(), texts, chunk=2, progress=steps.append)
    np.testing.assert_allclose(got, FakeEncoder().encode_texts(texts).numpy(), atol=1e-6)
    assert steps == [2, 2, 2]


def _naive_kmeans(x, k, seed=0, iters=50):
    """The clustering before issue 25: every k-means++ step scores all rows against all centres so far."""
    n = len(x)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = np.clip(1.0 - np.max(x @ np.array(centres).T, axis=1), 0, None)
        centres.append(x[rng.choice(n, p=d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n))])
    c, labels = np.array(centres), np.full(n, -1)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if (new == labels).all():
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                m = x[labels == j].sum(axis=0)
                c[j] = m / (np.linalg.norm(m) or 1.0)
    return labels


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.integers(1, 12), st.integers(0, 10_000))
def test_spherical_kmeans_equals_the_naive_clustering(n, k, seed):
    x = np.random.default_rng(seed).standard_normal((n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = min(k, n)
    np.testing.assert_array_equal(spherical_kmeans(x, k, seed), _naive_kmeans(x, k, seed))


@pytest.mark.slow
def test_from_descriptors_shows_progress_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    import sys

    tiny = str(tiny_model_dir("clip"))
    src = FIXTURES / "cupl_style.json"
    argv = ["system", "from-descriptors", str(src), "--out", str(tmp_path / "s.json"), "--model", tiny]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "descriptors embedded" not in err and "style cupl (detected)" in out  # not a terminal: no bar
    assert "dropped 6 blank" in err  # the notices still show
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(argv) == 0
    assert "descriptors embedded" in capsys.readouterr().err
    s = load_system(tmp_path / "s.json")
    assert {g.template for g in s.groups} == {"{}"} and "empty caption class" in s.classes
