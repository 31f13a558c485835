"""The PokeAPI species table as a system, and renaming classes to a dataset's spelling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from systems.build import name_key, with_name_group
from engine.common.files import shared_data_path
from systems.format import AttributeSystem

from .table import BuildReport, from_table

#: The PokeAPI species table, relative to the shared data folder.
POKEAPI_TABLE = Path("pokemon/pokeapi/species_attributes.csv")

#: group name -> column of species_attributes.csv, in asking order.
POKEAPI_GROUPS: dict[str, str] = {
    "color": "color",
    "shape": "shape",
    "habitat": "habitat",
    "type1": "type1",
    "type2": "type2",
    "egg_groups": "egg_groups",
    "size": "height_dm",
}


def align_classes(system: AttributeSystem, labels: Iterable[str]) -> tuple[AttributeSystem, dict[str, str]]:
    """Rename the system's classes to the dataset's spelling where the two differ only in
    case, spaces and punctuation (``Farfetch’d`` -> ``Farfetchd``).

    Returns (system, {old name: new name}) — only renamed classes are in the mapping.
    Classes with no matching label keep their name. Two labels with the same key are an error.
    """
    by_key: dict[str, str] = {}
    for label in dict.fromkeys(labels):
        k = name_key(label)
        if k in by_key and by_key[k] != label:
            raise ValueError(f"labels {by_key[k]!r} and {label!r} differ only in spelling; fix the dataset labels")
        by_key[k] = label
    renamed = {c: by_key[name_key(c)] for c in system.classes if name_key(c) in by_key and by_key[name_key(c)] != c}
    if not renamed:
        return system, {}
    classes = tuple(renamed.get(c, c) for c in system.classes)
    if len(set(classes)) != len(classes):
        raise ValueError("aligning to the labels would merge two classes; rename them in the table")
    return AttributeSystem(
        name=system.name, classes=classes, groups=system.groups, rules=system.rules,
        baseline_template=system.baseline_template, description=system.description,
    ), renamed


def pokeapi_system(
    table: str | os.PathLike | None = None,
    generations: Iterable[int] = (1,),
    name_group: bool = False,
    labels: Iterable[str] | None = None,
    bins: int = 3,
    report: BuildReport | None = None,
) -> AttributeSystem:
    """The PokeAPI species table as a system: colour, shape, habitat, type1, type2, egg groups, size.

    table : ``species_attributes.csv``; default: the shared data copy
    generations : keep species of these generations (1 = the 151 Gen-1 species)
    name_group : add the class names as a last, optional group (:func:`with_name_group`)
    labels : a dataset's labels; classes are renamed to their spelling (:func:`align_classes`)
    bins : size bins (quantiles of height over the kept species)
    """
    path = Path(table) if table is not None else shared_data_path(POKEAPI_TABLE)
    if path is None:
        raise FileNotFoundError(f"{POKEAPI_TABLE} not found under shared/data; pass the table path explicitly")
    gens = sorted({int(g) for g in generations})
    system = from_table(
        path, "name", POKEAPI_GROUPS, bins=bins, where={"generation": [str(g) for g in gens]},
        name=f"pokeapi_gen{''.join(map(str, gens))}",
        description=f"PokeAPI species table, generation(s) {gens}: colour, shape, habitat, types, egg groups, size",
        report=report,
    )
    if labels is not None:
        system, _ = align_classes(system, labels)
    return with_name_group(system) if name_group else system
