"""Systems built from other systems, from plain lists and from attribute tables.

- :func:`baseline_system`: the class-name baseline as a one-group system.
- :func:`from_table` (in :mod:`systems.table`): one group per table column.
- :func:`with_name_group`: add the class names as one more, optional question.
- :func:`align_classes`: rename classes to a dataset's spelling of the same names.
- :func:`pokeapi_system`: the PokeAPI species table as a system, for any generations.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Iterable

import numpy as np

from .format import PLACEHOLDER, AttributeSystem, Group
from .table import DEFAULT_TEMPLATES, VALUE_TEXT, BuildReport, from_table

BASELINE_GROUP = "class_name"

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

__all__ = [
    "BASELINE_GROUP", "BuildReport", "DEFAULT_TEMPLATES", "POKEAPI_GROUPS", "POKEAPI_TABLE", "VALUE_TEXT",
    "align_classes", "baseline_system", "derangement", "from_table", "name_key", "pokeapi_system", "shared_data_path",
    "shuffled_rules", "shuffled_system", "with_name_group",
]


def baseline_system(system_or_classes: AttributeSystem | list[str], template: str | None = None) -> AttributeSystem:
    """The class-name baseline as a one-group system.

    Its one group's options are the N class names with identity rules, so the
    engine scores the baseline with the same machinery as any other system
    (Q = N). ``template`` defaults to the system's ``baseline_template``.
    """
    if isinstance(system_or_classes, AttributeSystem):
        classes = system_or_classes.classes
        name = f"{system_or_classes.name}:baseline"
        template = template or system_or_classes.baseline_template
    else:
        classes = tuple(system_or_classes)
        name = "baseline"
        template = template or PLACEHOLDER
    group = Group(name=BASELINE_GROUP, template=template, options=tuple(classes))
    return AttributeSystem(
        name=name,
        classes=tuple(classes),
        groups=(group,),
        rules=tuple((frozenset([i]),) for i in range(len(classes))),
        baseline_template=template,
        description="one question whose options are the class names",
    )


def with_name_group(system: AttributeSystem, template: str | None = None) -> AttributeSystem:
    """``system`` plus one last group whose options are the class names (identity rules).

    The class name is a question like any other: it costs N prompts, so a cost-aware
    policy (``eig_per_prompt``) or a budget leaves it for when the attribute questions
    have run out, and it separates every class the attributes cannot.
    """
    if BASELINE_GROUP in {g.name for g in system.groups}:
        raise ValueError(f"system {system.name!r} already has a {BASELINE_GROUP!r} group")
    template = template or system.baseline_template
    group = Group(name=BASELINE_GROUP, template=template, options=system.classes)
    return AttributeSystem(
        name=f"{system.name}+names",
        classes=system.classes,
        groups=system.groups + (group,),
        rules=tuple(row + (frozenset([c]),) for c, row in enumerate(system.rules)),
        baseline_template=system.baseline_template,
        description=system.description,
    )


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (n >= 2)."""
    if n < 2:
        return np.arange(n)
    while True:
        p = rng.permutation(n)
        if (p != np.arange(n)).all():
            return p


def shuffled_system(system: AttributeSystem, perm: np.ndarray) -> AttributeSystem:
    """The same groups with class c given the rules of class perm[c]."""
    return AttributeSystem(name=f"{system.name}[shuffled]", classes=system.classes, groups=system.groups,
                           rules=tuple(system.rules[int(p)] for p in perm),
                           baseline_template=system.baseline_template, description=system.description)


def shuffled_rules(system: AttributeSystem, seed: int = 0) -> AttributeSystem:
    """The shuffled-rules control: every class gets another class's rules (a seeded derangement)."""
    return shuffled_system(system, derangement(system.n_classes, np.random.default_rng(seed)))


def name_key(name: str) -> str:
    """A spelling-insensitive key: ``"Mr. Mime"``, ``"MrMime"`` and ``"mr-mime"`` all give ``"mrmime"``."""
    folded = unicodedata.normalize("NFKD", name).casefold()
    return re.sub(r"[^0-9a-z]+", "", folded.replace("♀", "f").replace("♂", "m"))


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


def shared_data_path(rel: str | os.PathLike) -> Path | None:
    """``shared/data/<rel>`` looked for under ``$TWENTYQ_DATA``, then beside the working directory and
    beside this checkout; None when absent. The one place that finds the shared data (cli.default_data too)."""
    rel = Path(rel)
    bases = [Path(os.environ["TWENTYQ_DATA"])] if os.environ.get("TWENTYQ_DATA") else []
    here = Path(__file__).resolve().parents[1]
    bases += [b / "shared" / "data" for b in (Path.cwd().parent, here.parent, Path.cwd())]
    for base in bases:
        if (base / rel).exists():
            return base / rel
    return None


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
