"""Plain zero-shot (issue 18, part 1): --labels / --labels-file and template ensembles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.cli.app import main
from engine.run.classifier import Classifier
from engine.run.config import RunConfig
from systems.build import labels_system
from engine.common.errors import UserInputError
from systems.templates import SETS_DIR, TemplateError, list_template_sets, load_templates, resolve_templates

from .support.data import solid
from .support.encoders import FakeEncoder, tiny_model_dir

COLOURS = ["red", "green", "blue"]


def test_shipped_template_sets_load():
    assert {"photo", "clip8", "openai_imagenet", "openai_imagenet_7"} <= set(list_template_sets())
    for name in list_template_sets():
        ts = load_templates(name)
        assert ts and all(t.count("{}") == 1 for t in ts)
    assert len(load_templates("clip8")) == 8
    openai, seven = load_templates("openai_imagenet"), load_templates("openai_imagenet_7")
    assert len(openai) == 80 and openai[0] == "a bad photo of a {}." and openai[-1] == "a tattoo of the {}."
    assert seven == ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                     "a {} in a video game.", "art of the {}.", "a photo of the small {}.")  # open_clip's order
    assert set(seven) <= set(openai) and set(load_templates("clip8")) <= set(openai)
    assert not set(load_templates("clip8")) & set(seven)
    readme = (SETS_DIR / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in list_template_sets())  # each says where it comes from


def test_inline_templates_join_names_and_files(tmp_path):
    tfile = tmp_path / "t.json"
    tfile.write_text(json.dumps(["a sketch of a {}."]))
    got = resolve_templates(["a photo of {}.", "art of {}.", "openai_imagenet_7", str(tfile)])
    assert got[:2] == ("a photo of {}.", "art of {}.") and len(got) == 2 + 7 + 1 and got[-1] == "a sketch of a {}."
    assert resolve_templates("This is a photo of {}.") == ("This is a photo of {}.",)
    with pytest.raises(TemplateError, match="listed twice"):
        resolve_templates(["itap of a {}.", "openai_imagenet_7"])
    with pytest.raises(TemplateError, match="braces other than"):
        resolve_templates(["a {x} {}"])


@pytest.mark.parametrize("content, expect", [
    ('"a photo of a {}."', "JSON list of strings"),
    ("[]", "empty"),
    ('["a photo of a cat."]', "exactly one '{}'"),
    ('["a {} and a {}"]', "exactly one '{}'"),
    ('["a {x} {}"]', "braces other than"),
    ('["a {}.", "a {}."]', "listed twice"),
    ('["a {}.", 3]', "must be a string"),
    ("[1,", "line 1 column"),
])
def test_bad_template_files_name_the_problem(tmp_path, content, expect):
    p = tmp_path / "t.json"
    p.write_text(content)
    with pytest.raises(TemplateError, match="t.json") as e:
        load_templates(p)
    assert expect in str(e.value) and len(str(e.value).splitlines()) == 1


def test_unknown_template_set_lists_the_shipped_ones():
    with pytest.raises(TemplateError, match="clip8"):
        load_templates("no_such_set")


def test_labels_system_checks_its_labels():
    s = labels_system([" cat", "dog", ""])
    assert s.classes == ("cat", "dog") and s.groups[0].prompts() == ["a photo of a cat.", "a photo of a dog."]
    for bad, expect in ((["cat"], "at least two"), (["cat", "cat"], "twice"), (["c{at", "dog"], "brace")):
        with pytest.raises(UserInputError, match=expect):
            labels_system(bad)
    with pytest.raises(UserInputError, match=r'labels: 0 label\(s\).*e\.g\. \["cat", "dog", "bird"\]'):
        labels_system([], source="labels")  # the Python call's words, not the CLI's --labels


def test_templates_need_baseline_mode():
    with pytest.raises(ValueError, match="mode 'baseline'"):
        RunConfig(mode="adaptive", templates=("a {}.",))
    assert "templates" not in RunConfig().to_dict()  # old fingerprints stay valid
    assert RunConfig(mode="baseline", templates=["a {}."]).to_dict()["templates"] == ["a {}."]


def test_ensemble_is_the_mean_of_normalised_prompt_embeddings_and_counts_n_t_prompts():
    templates = load_templates("photo")
    enc = FakeEncoder()
    clf = Classifier(system=labels_system(COLOURS), encoder=enc)
    res = clf.classify([solid(c) for c in COLOURS], mode="baseline", templates=templates, eps=0.0)
    n, t = len(COLOURS), len(templates)
    assert [r.label for r in res] == COLOURS
    assert all(r.q_spent == n * t for r in res)  # Q counts the prompts the answer rests on
    assert clf.text_cache.text_encodes == n * t
    # the scores: softmax(λ · img · normalise(mean_t normalise(text(t, c))))
    ref = FakeEncoder()
    img = ref.encode_images([solid("red")])[0]
    cls = torch.stack([torch.nn.functional.normalize(
        ref.encode_texts([x.replace("{}", c) for x in templates]).mean(0), dim=0) for c in COLOURS])
    p = torch.softmax(ref.logit_scale * (cls @ img).double(), 0).numpy()
    got = dict(res[0].top)
    np.testing.assert_allclose([got[c] for c in COLOURS], p, rtol=1e-5)


def test_a_one_template_ensemble_equals_the_plain_baseline():
    clf = Classifier(system=labels_system(COLOURS), encoder=FakeEncoder())
    imgs = [solid(c) for c in COLOURS]
    plain = clf.classify(imgs, mode="baseline")
    one = clf.classify(imgs, mode="baseline", templates=("a photo of a {}.",))
    for a, b in zip(plain, one):
        assert a.label == b.label and a.q_spent == b.q_spent == 3
        np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], rtol=1e-6)


@pytest.mark.slow
def test_cli_labels_with_templates_tiny_clip(tmp_path, capsys):
    solid("red").save(tmp_path / "a.png")
    tiny = str(tiny_model_dir("clip"))
    assert main(["classify", str(tmp_path / "a.png"), "--labels", "cat, dog,bird", "--templates", "clip8",
                 "--model", tiny, "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["label"] in {"cat", "dog", "bird"} and rec["q_spent"] == 3 * 8 and rec["stop"] == "exhausted"
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    tfile = tmp_path / "mine.json"
    tfile.write_text(json.dumps(["a photo of a {}.", "a sketch of a {}."]))
    assert main(["classify", str(tmp_path / "a.png"), "--labels-file", str(tmp_path / "classes.txt"),
                 "--templates", str(tfile), "--model", tiny, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["q_spent"] == 6


@pytest.mark.parametrize("argv, expect", [
    (["--labels", "cat,dog", "--mode", "adaptive", "--templates", "photo"], "mode 'baseline'"),
    (["--labels", "cat"], "at least two"),
    (["--labels", "cat,dog", "--templates", "nope"], "template set 'nope' not found: pass a template with '{}'"),
    (["--labels", "cat,dog", "--templates", "a {} and {}"], "exactly one '{}'"),
])
def test_cli_zero_shot_errors_exit_2(tmp_path, capsys, argv, expect):
    solid("red").save(tmp_path / "a.png")
    assert main(["classify", str(tmp_path / "a.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twentyq: error: ") and expect in err and len(err.strip().splitlines()) == 1


def test_labels_and_system_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", "a.png", "--labels", "cat,dog", "--system", "pokemon15"])
    assert e.value.code == 2
    assert "argument --system: not allowed with argument --labels" in capsys.readouterr().err


def test_precomputed_prompts_are_the_pooled_ones():
    """--precompute-text embeds what the engine will ask: the ensemble's N·T prompts, not N names."""
    from engine.run.ray_executor import system_prompt_groups

    s = labels_system(COLOURS)
    config = RunConfig(mode="baseline", templates=load_templates("photo"))
    (prompts,) = system_prompt_groups(s, "baseline", config)
    assert len(prompts) == 15 and prompts[:2] == ["a photo of a red.", "a photo of the red."]
    assert system_prompt_groups(s, "baseline") == [["a photo of a red.", "a photo of a green.", "a photo of a blue."]]


@pytest.mark.slow
def test_cli_inline_templates_are_repeatable(tmp_path, capsys):
    solid("red").save(tmp_path / "a.png")
    tiny = str(tiny_model_dir("clip"))
    assert main(["classify", str(tmp_path / "a.png"), "--labels", "cat,dog,bird", "--templates", "a photo of {}.",
                 "--templates", "art of {}.", "--templates", "openai_imagenet_7", "--model", tiny, "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["q_spent"] == 3 * 9


# --------------------------------------------------------------------------- engine.zero_shot (issue 25)
def _pipeline_scores(model_dir, image, labels, template=None):
    from transformers import pipeline

    pipe = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu")
    kw = {} if template is None else {"hypothesis_template": template}
    return pipe(image, candidate_labels=labels, **kw)


@pytest.mark.slow
def test_zero_shot_matches_the_transformers_pipeline_on_a_tiny_clip():
    import engine
    from PIL import Image

    tiny = tiny_model_dir("clip")
    rng = np.random.default_rng(0)
    labels = ["cat", "dog", "a red bird", "car", "tree"]
    for seed in range(3):
        arr = rng.integers(0, 256, size=(40 + seed * 7, 50, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        for template in (None, "a photo of a {}."):
            want = _pipeline_scores(tiny, img, labels, template)
            got = engine.zero_shot(img, labels=labels, template=template, model=str(tiny), device="cpu")
            assert got[0]["label"] == want[0]["label"]
            assert [g["label"] for g in got] == sorted(labels, key=lambda x: -dict(
                (w["label"], w["score"]) for w in want)[x])
            want_d = {w["label"]: w["score"] for w in want}
            np.testing.assert_allclose([g["score"] for g in got], [want_d[g["label"]] for g in got], atol=1e-4)
            assert abs(sum(g["score"] for g in got) - 1) < 1e-6
        np.testing.assert_allclose([g["score"] for g in engine.zero_shot(arr, labels, model=str(tiny))],
                                   [g["score"] for g in engine.zero_shot(img, labels, model=str(tiny))], atol=1e-6)


@pytest.mark.slow
def test_zero_shot_reuses_a_loaded_classifier_and_takes_lists(tmp_path):
    import engine

    tiny = str(tiny_model_dir("clip"))
    clf = Classifier(tiny, system=["cat", "dog"], device="cpu")  # plain labels as a system
    assert clf.system.classes == ("cat", "dog")
    solid("red").save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("not an image")
    one = engine.zero_shot(str(tmp_path / "a.png"), ["cat", "dog", "fox"], model=clf)
    before = clf.text_cache.text_encodes
    with pytest.warns(UserWarning, match="bad.png"):
        many = engine.zero_shot([str(tmp_path / "a.png"), str(tmp_path / "bad.png"), solid("blue")],
                                ["cat", "dog", "fox"], model=clf)
    assert clf.text_cache.text_encodes == before  # the three prompts were embedded once, by the first call
    assert [g["label"] for g in many[0]] == [g["label"] for g in one] and many[1] == [] and len(many[2]) == 3
    np.testing.assert_allclose([g["score"] for g in many[0]], [g["score"] for g in one], atol=1e-6)
    ens = engine.zero_shot(solid("blue"), ["cat", "dog"], template="openai_imagenet", model=clf.encoder)
    assert [g["label"] for g in ens] and abs(sum(g["score"] for g in ens) - 1) < 1e-6
    with pytest.raises(ValueError, match="bad.png"):
        engine.zero_shot(str(tmp_path / "bad.png"), ["cat", "dog"], model=clf)


def test_zero_shot_is_the_plain_softmax_with_no_eps_floor():
    import engine

    enc = FakeEncoder()
    got = engine.zero_shot(solid("red"), COLOURS, template="a photo of a {}.", model=enc)
    img = enc.encode_images([solid("red")])[0].double()
    text = enc.encode_texts([f"a photo of a {c}." for c in COLOURS]).double()
    p = torch.softmax(enc.logit_scale * (text @ img), 0).numpy()
    assert [g["label"] for g in got] == [COLOURS[i] for i in np.argsort(-p, kind="stable")]
    np.testing.assert_allclose([g["score"] for g in got], np.sort(p)[::-1], rtol=1e-5, atol=1e-12)
    assert got[-1]["score"] < 1e-6  # no ε floor: a clear mismatch goes to ~0, not ε/K
    with pytest.raises(TypeError, match="image array"):
        engine.zero_shot(np.zeros((4, 4, 2)), COLOURS, model=enc)
    with pytest.raises(UserInputError, match="at least two"):
        engine.zero_shot(solid("red"), ["cat"], model=enc)
    clf = Classifier(system=["red", "green"], encoder=enc)  # plain labels as the system
    with pytest.raises(TypeError, match="engine.zero_shot"):
        clf.classify([solid("red")], labels=["red", "green"])
    plain = clf.classify([solid("red")], mode="baseline", eps=0.0)[0]
    assert plain.label == "red" and plain.top[0][1] > 0.99
