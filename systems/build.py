"""Systems derived from other systems or plain lists (pure data transforms; no files, no engine).

- :func:`baseline_system`: the class-name baseline as a one-group system.
- :func:`with_name_group`: add the class names as one more, optional question.
- :func:`shuffled_rules`: the shuffled-rules control.
- :func:`name_key`: a spelling-insensitive key for class names.

Building systems from tables, LLM drafts and the PokeAPI table is authoring
(:mod:`engine.authoring`).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from engine.common.errors import UserInputError
from systems.format import PLACEHOLDER, AttributeSystem, Group
from systems.validate import parse_system

BASELINE_GROUP = "class_name"

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


#: the prompt template of a system built from plain class names (``--labels``)
LABELS_TEMPLATE = "a photo of a {}."


def labels_system(labels: list[str] | tuple[str, ...], template: str = LABELS_TEMPLATE,
                  source: str = "--labels") -> AttributeSystem:
    """The class-name system of plain labels (``twentyq classify --labels "cat,dog"``), validated.

    Labels are stripped; an empty, repeated or brace-holding label, or fewer than two, is a
    :class:`engine.common.errors.UserInputError` naming it.
    """
    labels = [str(x).strip() for x in labels]
    labels = [x for x in labels if x]
    if len(labels) < 2:
        example = '--labels "cat,dog,bird"' if source.startswith("--") else '["cat", "dog", "bird"]'
        raise UserInputError(f"{source}: {len(labels)} label(s); give at least two class names, e.g. {example}")
    seen = set()
    for x in labels:
        if x in seen:
            raise UserInputError(f"{source}: label {x!r} is listed twice; list each class once")
        if "{" in x or "}" in x:
            raise UserInputError(f"{source}: label {x!r} has a brace; class names cannot hold '{{' or '}}'")
        seen.add(x)
    return parse_system(baseline_system(labels, template).to_dict() | {"name": "labels"}, source=source)


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
