"""systems/: loading, validation (every defect), analysis, shipped files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from systems import (
    SystemValidationError, analyze, baseline_system, list_systems, load_system, parse_system, save_system,
)
from systems.analysis import identical_signatures, indistinguishable_classes, minimal_separating_set

WRITEUP = {
    "classification_cot": {
        "dominant_color": {"prompt": "This Pokémon's body is mainly {} in color.",
                           "options": ["white", "gray", "brown"]},
        "primary_form": {"prompt": "It looks like {}.", "options": ["a wolf", "an armored dinosaur"]},
    },
    "pokemon_rules": {
        "Absol": {"dominant_color": 0, "primary_form": 0},
        "Aggron": {"dominant_color": "gray", "primary_form": "an armored dinosaur"},
        "Beedrill δ": {"dominant_color": [1, "brown"], "primary_form": None},
    },
}


def good():
    return {
        "name": "toy",
        "groups": [
            {"name": "color", "template": "It is {}.", "options": ["red", "blue", "green"]},
            {"name": "shape", "template": "Shaped like {}.", "options": ["a ball", "a stick"]},
        ],
        "rules": {"A": {"color": 0, "shape": 0}, "B": {"color": 1, "shape": 1}},
    }


def problems_of(data):
    with pytest.raises(SystemValidationError) as exc:
        parse_system(data)
    return exc.value.problems


def test_writeup_shape_loads_with_text_options_lists_and_null():
    s = parse_system(WRITEUP)
    assert s.classes == ("Absol", "Aggron", "Beedrill δ")
    assert [g.name for g in s.groups] == ["dominant_color", "primary_form"]
    assert s.groups[0].template == "This Pokémon's body is mainly {} in color."
    assert s.rules[1] == (frozenset([1]), frozenset([1]))
    assert s.rules[2] == (frozenset([1, 2]), frozenset())
    assert s.q_total == 5
    assert s.groups[1].prompts() == ["It looks like a wolf.", "It looks like an armored dinosaur."]


def test_classification_groups_key_is_accepted_too():
    data = dict(WRITEUP)
    data["classification_groups"] = data.pop("classification_cot")
    assert parse_system(data).n_groups == 2


def test_save_and_load_round_trip_keeps_unicode(tmp_path):
    s = parse_system(WRITEUP)
    path = save_system(s, tmp_path / "s.json")
    assert "Beedrill δ" in path.read_text(encoding="utf-8")
    assert load_system(path) == s


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d["rules"]["A"].__setitem__("color", 7), "rules['A']['color']: option index 7 out of range 0..2"),
    (lambda d: d["rules"]["A"].__setitem__("color", "purple"), "unknown option 'purple'"),
    (lambda d: d["rules"]["A"].__setitem__("size", 0), "rules['A']['size']: unknown group"),
    (lambda d: d["groups"][0].__setitem__("template", "It is red."), "exactly one '{}', found 0"),
    (lambda d: d["groups"][0].__setitem__("template", "{} and {}"), "exactly one '{}', found 2"),
    (lambda d: d["groups"][0].__setitem__("template", "It is {} {x}."), "braces other than"),
    (lambda d: d["groups"][0].__setitem__("options", ["red", "red", "blue"]), "groups[0].options[1]: duplicate option 'red'"),
    (lambda d: d["rules"].__setitem__("C", {}), "rules['C']: class has no rules"),
    (lambda d: d["rules"].__setitem__("C", None), "rules['C']: class has no rules"),
    (lambda d: d["groups"][1].__setitem__("options", []), "groups[1].options: empty group"),
    (lambda d: d["groups"][1].__setitem__("options", ["a ball"]), "groups[1].options: only one option"),
    (lambda d: d["rules"]["B"].pop("shape"), "rules['B']['shape']: missing rule"),
    (lambda d: d["groups"].append(dict(d["groups"][0])), "duplicate group 'color'"),
    (lambda d: d["rules"]["A"].__setitem__("color", True), "rules['A']['color']: rule must be"),
    (lambda d: d["rules"]["A"].__setitem__("color", []), "empty list; use null"),
    (lambda d: d.pop("rules"), "need exactly one of ['rules', 'pokemon_rules']"),
    (lambda d: d.__setitem__("groups", []), "the system has no groups"),
    (lambda d: d.__setitem__("rules", {}), "the system has no classes"),
])
def test_each_defect_is_reported_with_its_path(mutate, expect):
    data = good()
    mutate(data)
    probs = problems_of(data)
    assert any(expect in p for p in probs), probs


def test_every_problem_is_reported_at_once():
    data = good()
    data["groups"][0]["template"] = "no placeholder"
    data["rules"]["A"]["color"] = 9
    data["rules"]["B"]["shape"] = "a cube"
    probs = problems_of(data)
    assert len(probs) == 3
    err = SystemValidationError("toy.json", probs)
    assert str(err).splitlines()[0] == "invalid system toy.json: 3 problems (fix them in the system file)"


def test_a_misspelt_groups_key_is_one_problem_naming_it():
    """"group" for "groups" gave 76 problems on pokemon15 (every rule's group unknown) and never named the key."""
    data = good()
    data["group"] = data.pop("groups")
    assert problems_of(data) == ["top level: need exactly one of ['groups', 'classification_cot', "
                                 "'classification_groups'], found none (is 'group' a misspelling of 'groups'?)"]
    data = good()
    data["rule"] = data.pop("rules")
    assert "(is 'rule' a misspelling of 'rules'?)" in problems_of(data)[0]
    data = good()
    data["classification_group"] = data.pop("groups")
    assert "(is 'classification_group' a misspelling of 'classification_groups'?)" in problems_of(data)[0]


def test_top_level_must_be_an_object():
    assert "must be a JSON object" in problems_of([1, 2])[0]


def test_identical_signatures_are_not_an_error():
    data = good()
    data["rules"]["C"] = dict(data["rules"]["A"])
    assert parse_system(data).n_classes == 3


def test_json_files_strict_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{\n  "groups": [] // a comment\n}', encoding="utf-8")
    with pytest.raises(SystemValidationError, match=r"line 2 .*comments are not JSON"):
        load_system(p)
    p.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(SystemValidationError, match="not UTF-8"):
        load_system(p)
    p.write_text('{"name": "a", "name": "b"}', encoding="utf-8")
    with pytest.raises(SystemValidationError, match="duplicate key 'name'"):
        load_system(p)


def test_unknown_system_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="pokemon15"):
        load_system("no_such_system")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_system(tmp_path)


def test_file_name_is_the_default_name(tmp_path):
    data = good()
    del data["name"]
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    assert load_system(p).name == "mine"


# --------------------------------------------------------------------------- analysis
def hand_made():
    """B and C share every rule; D differs from A only where A's rule is not applicable.

    Colour separates most pairs; B-F and C-F need shape or size as well.
    """
    return parse_system({
        "name": "hand",
        "groups": [
            {"name": "color", "template": "{}", "options": ["red", "blue", "green"]},
            {"name": "shape", "template": "{}", "options": ["round", "long"]},
            {"name": "size", "template": "{}", "options": ["small", "big"]},
        ],
        "rules": {
            "A": {"color": 0, "shape": 0, "size": None},
            "B": {"color": 1, "shape": 1, "size": 0},
            "C": {"color": 1, "shape": 1, "size": 0},
            "D": {"color": 0, "shape": 0, "size": 1},
            "E": {"color": 2, "shape": [0, 1], "size": 1},
            "F": {"color": 1, "shape": 0, "size": 1},
        },
    })


def test_analysis_finds_the_known_indistinguishable_classes():
    s = hand_made()
    assert identical_signatures(s) == [["B", "C"]]
    # issue 14: A (size not applicable) and D (size big) get different answer distributions under the
    # Bayes channel, so they are not indistinguishable; no group rules one out, so they are a weak pair
    assert indistinguishable_classes(s) == [["B", "C"]]
    from systems.analysis import weakly_distinguishable_pairs
    assert weakly_distinguishable_pairs(s) == [["A", "D"]]


def test_minimal_separating_set_separates_everything_separable():
    s = hand_made()
    chosen = minimal_separating_set(s)
    assert chosen == ["color", "shape"]  # shape ties with size and comes first
    # removing any chosen group leaves a separable pair unseparated
    from systems.analysis import separation_tensor
    sep = separation_tensor(s)
    need = sep.any(axis=0)
    idx = [s.group_index(g) for g in chosen]
    assert (sep[idx].any(axis=0) == need).all()
    for drop in idx:
        rest = [g for g in idx if g != drop]
        assert not (sep[rest].any(axis=0) == need).all()


def test_group_splits_report_blocks_and_not_applicable():
    a = analyze(hand_made())
    size = next(sp for sp in a.splits if sp.group == "size")
    assert size.not_applicable == ["A"]
    assert size.blocks == {"small": ["B", "C"], "big": ["D", "E", "F"]}
    color = next(sp for sp in a.splits if sp.group == "color")
    assert color.pairs_separated == 11  # red {A,D}, blue {B,C,F}, green {E}: 6 + 2 + 3
    assert a.to_dict()["minimal_set_q"] == 5
    assert size.info_bits < color.info_bits
    assert color.info_bits == pytest.approx(-(2 / 6 * np.log2(2 / 6) + 3 / 6 * np.log2(3 / 6) + 1 / 6 * np.log2(1 / 6)))


def test_baseline_system_is_one_group_of_names():
    s = baseline_system(hand_made())
    assert s.n_groups == 1 and s.q_total == 6
    assert s.groups[0].options == s.classes
    assert indistinguishable_classes(s) == []


# --------------------------------------------------------------------------- shipped
@pytest.mark.parametrize("name", ["pokemon_jina16", "pokemon15"])
def test_shipped_systems_load_and_validate(name):
    assert name in list_systems()
    s = load_system(name)
    assert s.n_groups == 5 and s.description


def test_pokemon15_matches_the_jina15_species():
    s = load_system("pokemon15")
    assert set(s.classes) == {"Absol", "Aerodactyl", "Aggron", "Alakazam", "Ampharos", "Arcanine", "Azumarill",
                              "Beedrill", "Bulbasaur", "Caterpie", "Celebi", "Dratini", "Moltres", "Venusaur",
                              "Weedle"}
    assert indistinguishable_classes(s) == []


def test_writeup_system_keeps_its_known_confusion():
    s = load_system("pokemon_jina16")
    assert s.n_classes == 16
    assert ["Bulbasaur", "Venusaur", "Celebi & Venusaur-GX"] in identical_signatures(s)
