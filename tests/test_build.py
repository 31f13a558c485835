"""engine.authoring.table / systems.build: systems from attribute tables, the name group, label alignment,
and the PokeAPI-built systems."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from systems import analyze, load_system
from engine.authoring.pokeapi import align_classes, pokeapi_system
from systems.build import name_key, with_name_group
from engine.common.files import shared_data_path
from engine.authoring.table import BuildReport, bin_index, from_table, quantile_edges, value_to_text

ROWS = [
    {"name": "ann", "color": "red", "shape": "quadruped", "egg": "a|b", "height": "3", "note": ""},
    {"name": "bob", "color": "blue", "shape": "wings", "egg": "b", "height": "10", "note": "x"},
    {"name": "cat", "color": "red", "shape": "", "egg": "c", "height": "", "note": "y"},
    {"name": "dan", "color": "green", "shape": "wings", "egg": "a", "height": "25", "note": "x"},
]


def test_columns_become_groups_with_values_as_options():
    s = from_table(ROWS, "name", ["color", "shape"])
    assert s.classes == ("ann", "bob", "cat", "dan")
    color = s.groups[s.group_index("color")]
    assert color.options[0] == "red"  # the most used value first
    assert set(color.options) == {"red", "blue", "green"}
    assert s.rules[0][0] == frozenset([color.options.index("red")])
    shape = s.groups[s.group_index("shape")]
    assert "a four-legged creature" in shape.options  # built-in readable text


def test_multi_valued_and_empty_cells():
    s = from_table(ROWS, "name", ["egg", "shape"])
    egg = s.groups[0]
    assert s.rules[0][0] == frozenset([egg.options.index("a"), egg.options.index("b")])
    assert s.rules[2][1] == frozenset()  # empty shape cell: not applicable


def test_numeric_columns_are_binned_by_quantiles():
    rep = BuildReport()
    s = from_table(ROWS, "name", ["size=height"], bins=3, report=rep)
    g = s.groups[0]
    assert g.name == "size" and g.options == ("small", "medium-sized", "large")
    assert [r[0] for r in s.rules] == [frozenset([0]), frozenset([1]), frozenset(), frozenset([2])]
    assert rep.numeric["size"] and "bins at" in "\n".join(rep.lines())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60), st.integers(2, 5))
def test_quantile_bins_are_ordered_and_never_empty(values, n_bins):
    x = np.array(values)
    edges = quantile_edges(x, n_bins)
    assert np.all(np.diff(edges) > 0) and len(edges) <= n_bins - 1
    idx = np.array([bin_index(v, edges) for v in x])
    assert set(idx.tolist()) == set(range(len(edges) + 1))  # every bin is used
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(idx[order]) >= 0)  # bins follow the values


def test_value_text_mapping_and_templates_override_defaults():
    s = from_table(ROWS, "name", ["color"], value_text={"color.red": "crimson", "blue": "sky blue"},
                   templates={"color": "a {} thing"})
    assert set(s.groups[0].options) == {"crimson", "sky blue", "green"}
    assert s.groups[0].template == "a {} thing"
    assert value_to_text("habitat", "waters-edge") == "at the water's edge"
    assert value_to_text("anything", "rough-terrain_x") == "rough terrain x"


def test_filter_and_bad_tables_have_clear_errors():
    s = from_table(ROWS, "name", ["color"], where={"note": ["x"]})
    assert s.classes == ("bob", "dan")
    with pytest.raises(ValueError, match="not in the table"):
        from_table(ROWS, "name", ["colour"])
    with pytest.raises(ValueError, match="more than one row"):
        from_table(ROWS + [dict(ROWS[0])], "name", ["color"])
    with pytest.raises(ValueError, match="no rows match"):
        from_table(ROWS, "name", ["color"], where={"note": ["zzz"]})
    with pytest.raises(ValueError, match="same text"):
        from_table(ROWS, "name", ["color"], value_text={"red": "x", "blue": "x"})
    with pytest.raises(ValueError, match="numeric"):
        from_table(ROWS, "name", ["color"], numeric=["color"])


def test_name_group_separates_every_class():
    s = from_table(ROWS, "name", ["note"])
    assert analyze(s).identical_signatures  # bob and dan share "x"
    n = with_name_group(s)
    assert n.groups[-1].options == s.classes and n.q_total == s.q_total + s.n_classes
    assert not analyze(n).identical_signatures and not analyze(n).indistinguishable
    with pytest.raises(ValueError, match="already has"):
        with_name_group(n)


def test_align_classes_renames_spelling_variants_only():
    s = from_table([{"name": "Mr. Mime", "c": "pink"}, {"name": "Farfetch’d", "c": "brown"},
                    {"name": "Abra", "c": "yellow"}], "name", ["c"])
    t, renamed = align_classes(s, ["MrMime", "Farfetchd", "Zubat"])
    assert renamed == {"Mr. Mime": "MrMime", "Farfetch’d": "Farfetchd"}
    assert t.classes == ("MrMime", "Farfetchd", "Abra") and t.rules == s.rules
    assert name_key("Nidoran♀") != name_key("Nidoran♂")
    with pytest.raises(ValueError, match="differ only in spelling"):
        align_classes(s, ["MrMime", "Mr-Mime"])


def test_cli_build_writes_a_loadable_system(tmp_path, capsys):
    import csv

    from engine.cli.app import main

    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    (tmp_path / "vt.json").write_text(json.dumps({"red": "scarlet"}))
    out = tmp_path / "s.json"
    rc = main(["system", "build", "--table", str(table), "--group", "color", "--group", "size=height",
               "--value-text", str(tmp_path / "vt.json"), "--template", "color=a {} creature", "--name-group",
               "--out", str(out)])
    assert rc == 0
    s = load_system(out)
    assert [g.name for g in s.groups] == ["color", "size", "class_name"]
    assert "scarlet" in s.groups[0].options and s.groups[0].template == "a {} creature"
    assert "group size: 3 options" in capsys.readouterr().out
    assert main(["system", "build", "--table", str(table), "--group", "nope", "--out", str(out)]) == 2
    assert "not in the table" in capsys.readouterr().err


ID_ROWS = [dict(r, id=str(10 + i), code=f"k{i}", gen="1", blank="") for i, r in enumerate(ROWS)]


def test_default_columns_skip_constant_and_id_columns_with_a_notice():
    rep = BuildReport()
    s = from_table(ID_ROWS, "name", report=rep)
    assert {g.name for g in s.groups} == {"color", "shape", "egg", "height", "note"}
    assert set(rep.skipped) == {"id", "code", "gen", "blank"}
    text = "\n".join(rep.lines())
    assert "skipped column gen: the one value '1' on every row used" in text
    assert "skipped column blank: no values on every row used" in text
    assert "skipped column id: an id column" in text and "skipped column code: a different value on every row" in text
    # after a filter, the notice says so
    rep = BuildReport()
    from_table(ID_ROWS, "name", where={"note": ["x", "y"]}, report=rep)
    assert "(after --where note=x,y)" in rep.skipped["gen"]
    # a unique numeric measure is an attribute, not an id; an id column named with --group is used
    assert from_table(ID_ROWS, "name", ["height"]).groups[0].n_options == 3
    assert from_table(ID_ROWS, "name", ["code"]).groups[0].n_options == 4


def test_a_constant_column_chosen_by_name_is_an_error_naming_it_and_the_flag():
    with pytest.raises(ValueError, match=r"column 'gen' has the one value '1' .*leave it out of --group") as e:
        from_table(ID_ROWS, "name", ["color", "gen"])
    assert "system file" not in str(e.value)
    with pytest.raises(ValueError, match="no column of the table can make a group.*--group"):
        from_table([dict(name=r["name"], gen="1") for r in ROWS], "name")


def test_an_invalid_table_system_names_the_column_and_the_build_flags():
    with pytest.raises(ValueError) as e:
        from_table(ROWS, "name", ["hue=color"], templates={"hue": "a creature without a placeholder"})
    msg = str(e.value)
    assert "group 'hue' (column 'color')" in msg and "--group" in msg and "system file" not in msg


def test_cli_build_of_a_table_with_constant_and_id_columns(tmp_path, capsys):
    import csv

    from engine.cli.app import main

    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ID_ROWS[0]))
        w.writeheader()
        w.writerows(ID_ROWS)
    out = tmp_path / "s.json"
    assert main(["system", "build", "--table", str(table), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped column gen: the one value '1'" in printed and "skipped column id: an id column" in printed
    assert "gen" not in {g.name for g in load_system(out).groups}
    assert main(["system", "build", "--table", str(table), "--group", "gen", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "column 'gen'" in err and "--group" in err and "system file" not in err


POKEAPI = shared_data_path("pokemon/pokeapi/species_attributes.csv")
needs_pokeapi = pytest.mark.skipif(POKEAPI is None, reason="shared/data/pokemon/pokeapi is absent (see shared/data/README)")


@needs_pokeapi
def test_pokeapi_gen1_system():
    s = pokeapi_system(generations=(1,), labels=["Farfetchd", "MrMime"])
    assert s.n_classes == 151 and "Farfetchd" in s.classes and "MrMime" in s.classes
    assert [g.name for g in s.groups] == ["color", "shape", "habitat", "type1", "type2", "egg_groups", "size"]
    a = analyze(s)
    assert ["Ekans", "Arbok"] in a.identical_signatures  # same colour, shape, habitat, types, eggs, size
    assert not analyze(pokeapi_system(generations=(1,), name_group=True)).indistinguishable
    assert pokeapi_system(generations=(1, 2, 3)).n_classes == 386


@needs_pokeapi
def test_cli_build_of_the_gen1_species_table_skips_generation_and_ids(tmp_path, capsys):
    from engine.cli.app import main

    out = tmp_path / "gen1.json"
    assert main(["system", "build", "--table", str(POKEAPI), "--where", "generation=1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped column generation: the one value '1' on every row used (after --where generation=1)" in printed
    assert "skipped column species_id: an id column" in printed
    s = load_system(out)
    assert s.n_classes == 151 and not {"generation", "species_id", "is_baby"} & {g.name for g in s.groups}
