"""The attribute-system data model.

An attribute system has ordered *groups* (each a prompt template with one
``{}`` and a list of options) and *rules* that give, for every class and
group, the set of acceptable option indices: usually one, several when more
than one answer fits, and none when the group says nothing about the class
("not applicable").

Systems are validated once, when they are built from data
(:func:`systems.validate.parse_system`), and trusted after that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

PLACEHOLDER = "{}"


@dataclass(frozen=True)
class Group:
    """One question: a prompt template with one ``{}`` and its options."""

    name: str
    template: str
    options: tuple[str, ...]

    @property
    def n_options(self) -> int:
        return len(self.options)

    def prompts(self) -> list[str]:
        """The K_g prompt texts, in option order."""
        return [self.template.replace(PLACEHOLDER, opt) for opt in self.options]


@dataclass(frozen=True)
class AttributeSystem:
    """A validated attribute system.

    Attributes
    ----------
    name : str
    classes : tuple of str, length C
    groups : tuple of Group, length G
    rules : tuple (length C) of tuples (length G) of frozenset of int
        ``rules[c][g]`` is the set of acceptable option indices of group g for
        class c; empty means "not applicable".
    baseline_template : str
        Prompt template for the class-name baseline; ``"{}"`` is the raw name.
    description : str
    """

    name: str
    classes: tuple[str, ...]
    groups: tuple[Group, ...]
    rules: tuple[tuple[frozenset[int], ...], ...]
    baseline_template: str = PLACEHOLDER
    description: str = field(default="", compare=False)

    # ----- sizes -------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @cached_property
    def option_counts(self) -> np.ndarray:
        """K_g for every group, int array of shape (G,)."""
        return np.array([g.n_options for g in self.groups], dtype=np.int64)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start column of each group in the concatenated option axis, shape (G,)."""
        return np.concatenate([[0], np.cumsum(self.option_counts)[:-1]]).astype(np.int64)

    @property
    def q_total(self) -> int:
        """Q: the number of prompts of the full system."""
        return int(self.option_counts.sum())

    # ----- lookups -----------------------------------------------------------
    def group_index(self, name: str) -> int:
        for i, g in enumerate(self.groups):
            if g.name == name:
                return i
        raise KeyError(f"no group {name!r}; groups are {[g.name for g in self.groups]}")

    def class_index(self, name: str) -> int:
        try:
            return self._class_pos[name]
        except KeyError:
            raise KeyError(f"no class {name!r} in system {self.name!r}") from None

    @cached_property
    def _class_pos(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    # ----- array views -------------------------------------------------------
    @cached_property
    def rule_matrix(self) -> np.ndarray:
        """Acceptable options, bool array of shape (C, Q).

        Column ``offsets[g] + k`` is option k of group g. A not-applicable rule
        is an all-False segment.
        """
        m = np.zeros((self.n_classes, self.q_total), dtype=bool)
        offs = self.offsets
        for c, row in enumerate(self.rules):
            for g, opts in enumerate(row):
                for k in opts:
                    m[c, offs[g] + k] = True
        m.setflags(write=False)
        return m

    def signature(self, c: int) -> tuple[frozenset[int], ...]:
        """The rule signature of class c across groups."""
        return self.rules[c]

    # ----- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON shape (options by index; lists for multi-option rules)."""

        def rule_value(opts: frozenset[int]) -> Any:
            if not opts:
                return None
            if len(opts) == 1:
                return next(iter(opts))
            return sorted(opts)

        return {
            "name": self.name,
            "description": self.description,
            "baseline_template": self.baseline_template,
            "groups": [
                {"name": g.name, "template": g.template, "options": list(g.options)}
                for g in self.groups
            ],
            "rules": {
                c: {g.name: rule_value(self.rules[ci][gi]) for gi, g in enumerate(self.groups)}
                for ci, c in enumerate(self.classes)
            },
        }

    def subset(self, classes: list[str], name: str | None = None) -> "AttributeSystem":
        """The same questions restricted to some classes (in the given order)."""
        idx = [self.class_index(c) for c in classes]
        return AttributeSystem(
            name=name or f"{self.name}[{len(idx)}]",
            classes=tuple(self.classes[i] for i in idx),
            groups=self.groups,
            rules=tuple(self.rules[i] for i in idx),
            baseline_template=self.baseline_template,
            description=self.description,
        )
