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
from systems.errors import UserInputError
from systems.templates import TemplateError, list_template_sets, load_templates

from .encoder_fixtures import tiny_model_dir
from .fakes import FakeEncoder, solid

COLOURS = ["red", "green", "blue"]


def test_shipped_template_sets_load():
    assert {"photo", "clip8"} <= set(list_template_sets())
    for name in list_template_sets():
        ts = load_templates(name)
        assert ts and all(t.count("{}") == 1 for t in ts)
    assert len(load_templates("clip8")) == 8


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
    (["--labels", "cat,dog", "--templates", "nope"], "template set 'nope' not found"),
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
