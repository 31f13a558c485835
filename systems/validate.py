"""Validation: raw JSON-shaped data -> :class:`AttributeSystem`, or one error listing every problem.

Accepted shapes
---------------
Canonical::

    {"name": "...", "description": "...", "baseline_template": "{}",
     "groups": [{"name": "color", "template": "It is {}.", "options": ["red", "blue"]}, ...],
     "rules": {"ClassA": {"color": 0, ...}, ...}}

``groups`` may also be a mapping ``name -> {"template"|"prompt", "options"}``.

The write-up's (and an LLM draft's) shape::

    {"classification_cot" | "classification_groups": {"color": {"prompt": "...", "options": [...]}},
     "pokemon_rules": {...}}

A rule value is an option index, an option text, a list of those (several
acceptable options) or ``null`` (not applicable). Every class must give a value
for every group; identical rule signatures are *not* an error (see
:mod:`systems.analysis`).
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from typing import Any

from engine.common.errors import UserInputError
from systems.format import PLACEHOLDER, AttributeSystem, Group
from engine.common.printable import control_characters

_MISSING = object()
_EMPTY: frozenset[int] = frozenset()

GROUP_KEYS = ("groups", "classification_cot", "classification_groups")
RULE_KEYS = ("rules", "pokemon_rules")
MAX_PROBLEMS_SHOWN = 50

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 6, 4


def show(value: Any) -> str:
    """A short repr of user data for messages: bounded in length and depth, whatever the junk."""
    return _REPR.repr(value)


class SystemValidationError(UserInputError):
    """Every problem found in a system, each with its path.

    ``problems`` holds the individual messages; ``str(err)`` starts with a one-line summary.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        n = len(self.problems)
        head = f"invalid system {source}: {n} problem{'s' if n != 1 else ''}"
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [head + " (fix them in the system file)"] + [f"  - {p}" for p in shown]
        if n > len(shown):
            lines.append(f"  ... and {n - len(shown)} more")
        super().__init__("\n".join(lines))


def check_printable(text: str, path: str, what: str, problems: list[str]) -> bool:
    """A name or template holds no control character (ESC, BEL, NUL, newline ...: they would reach terminals
    raw, :mod:`engine.common.printable`); else one problem naming them and the path."""
    bad = control_characters(text)
    if bad:
        problems.append(f"{path}: {what} {show(text)} holds control character(s) {', '.join(bad)}; remove them "
                        "(names and templates are printed to terminals)")
        return False
    return True


def check_template(template: Any, path: str, problems: list[str]) -> bool:
    """A template is a string with exactly one ``{}``, no other braces and no control character."""
    if not isinstance(template, str):
        problems.append(f"{path}: template must be a string, got {type(template).__name__}")
        return False
    if not check_printable(template, path, "template", problems):
        return False
    n = template.count(PLACEHOLDER)
    rest = template.replace(PLACEHOLDER, "")
    if n != 1:
        problems.append(f"{path}: template {show(template)} must contain exactly one '{{}}', found {n}")
        return False
    if "{" in rest or "}" in rest:
        problems.append(f"{path}: template {show(template)} has braces other than its one '{{}}'")
        return False
    return True


def _key(name: Any) -> str:
    return show(name) if isinstance(name, str) else str(name)


def _parse_groups(raw: Any, path: str, problems: list[str]) -> tuple[list[Group], set[Any]]:
    """Valid groups, and every declared group name (valid or not)."""
    items: list[tuple[Any, Any, str]] = []  # (name, spec, path)
    if isinstance(raw, Mapping):
        items = [(name, spec, f"{path}[{_key(name)}]") for name, spec in raw.items()]
    elif isinstance(raw, list):
        for i, spec in enumerate(raw):
            name = spec.get("name") if isinstance(spec, Mapping) else None
            items.append((name, spec, f"{path}[{i}]"))
    else:
        problems.append(f"{path}: must be a list of groups or a mapping of name to group, "
                        f"got {type(raw).__name__}")
        return [], set()
    if not items:
        problems.append(f"{path}: the system has no groups")
    groups: list[Group] = []
    seen: set[str] = set()
    for name, spec, gpath in items:
        name_ok = isinstance(name, str) and bool(name.strip()) and name not in seen
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{gpath}.name: group name must be a non-empty string, got {show(name)}")
        elif name in seen:
            problems.append(f"{gpath}.name: duplicate group {show(name)}")
        else:
            name_ok = check_printable(name, f"{gpath}.name", "group name", problems)
        if not isinstance(spec, Mapping):
            problems.append(f"{gpath}: group must be an object with a template and options, "
                            f"got {type(spec).__name__}")
            continue
        tkey = "template" if "template" in spec else "prompt"
        if tkey not in spec:
            problems.append(f"{gpath}: missing 'template' (or 'prompt')")
        else:
            check_template(spec[tkey], f"{gpath}.{tkey}", problems)
        opts = spec.get("options")
        opts_ok = isinstance(opts, list)
        if not opts_ok:
            problems.append(f"{gpath}.options: must be a list of strings, got {type(opts).__name__}")
        else:
            if len(opts) == 0:
                problems.append(f"{gpath}.options: empty group (a group needs at least 2 options)")
            elif len(opts) == 1:
                problems.append(f"{gpath}.options: only one option {show(opts[0])} "
                                "(a one-option group cannot tell classes apart; add options or drop it)")
            seen_opts: set[str] = set()
            for k, o in enumerate(opts):
                if not isinstance(o, str) or not o.strip():
                    problems.append(f"{gpath}.options[{k}]: option must be a non-empty string, got {show(o)}")
                    opts_ok = False
                elif o in seen_opts:
                    problems.append(f"{gpath}.options[{k}]: duplicate option {show(o)}")
                elif not check_printable(o, f"{gpath}.options[{k}]", "option", problems):
                    opts_ok = False
                else:
                    seen_opts.add(o)
        if name_ok:
            seen.add(name)
        # A group with usable options is kept even if something else is wrong with it, so that
        # the rules that use it are still checked; any problem raises in the end anyway.
        if name_ok and opts_ok:
            groups.append(Group(name=name, template=str(spec.get(tkey, "")), options=tuple(opts)))
    return groups, seen


def _parse_rule_value(value: Any, group: Group, path: str, problems: list[str]) -> frozenset[int] | None:
    """One rule value -> set of option indices (empty for not applicable); None on error."""
    if value is None:
        return frozenset()
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        problems.append(f"{path}: empty list; use null for not applicable")
        return None
    out: set[int] = set()
    ok = True
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            problems.append(f"{path}: rule must be an option index, an option text, a list of those "
                            f"or null, got {show(item)}")
            ok = False
        elif isinstance(item, int):
            if not 0 <= item < group.n_options:
                problems.append(f"{path}: option index {item} out of range 0..{group.n_options - 1}")
                ok = False
            else:
                out.add(item)
        else:
            try:
                out.add(group.options.index(item))
            except ValueError:
                problems.append(f"{path}: unknown option {show(item)}, not in {show(list(group.options))}")
                ok = False
    if ok and isinstance(value, list) and len(out) != len(value):
        problems.append(f"{path}: the same option is listed twice in {show(value)}")
        ok = False
    return frozenset(out) if ok else None


def parse_system(data: Any, source: str = "<data>") -> AttributeSystem:
    """Validate raw JSON-shaped data and build the system.

    Raises
    ------
    SystemValidationError
        listing every problem found, each with its path.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise SystemValidationError(source, [f"top level: must be a JSON object, got {type(data).__name__}"])

    gkeys = [k for k in GROUP_KEYS if k in data]
    rkeys = [k for k in RULE_KEYS if k in data]
    for keys, found in ((GROUP_KEYS, gkeys), (RULE_KEYS, rkeys)):
        if len(found) != 1:
            near = [(k, m[0]) for k in data if isinstance(k, str) and k not in GROUP_KEYS + RULE_KEYS
                    for m in [difflib.get_close_matches(k, keys, n=1, cutoff=0.75)] if m]
            hint = f" (is {show(near[0][0])} a misspelling of {near[0][1]!r}?)" if near and not found else ""
            problems.append(f"top level: need exactly one of {list(keys)}, found {found or 'none'}{hint}")
    name = data.get("name", "system")
    if not isinstance(name, str) or not name:
        problems.append(f"name: must be a non-empty string, got {show(name)}")
        name = "system"
    elif not check_printable(name, "name", "system name", problems):
        name = "system"
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(f"description: must be a string, got {type(description).__name__}")
        description = ""
    baseline = data.get("baseline_template", PLACEHOLDER)
    check_template(baseline, "baseline_template", problems)

    groups, declared = _parse_groups(data[gkeys[0]], gkeys[0], problems) if len(gkeys) == 1 else ([], set())
    by_name = {g.name: g for g in groups}

    classes: list[str] = []
    rules: list[tuple[frozenset[int], ...]] = []
    raw_rules = data[rkeys[0]] if len(rkeys) == 1 else {}
    rpath = rkeys[0] if len(rkeys) == 1 else "rules"
    if not isinstance(raw_rules, Mapping):
        problems.append(f"{rpath}: must be a mapping of class name to its rules, got {type(raw_rules).__name__}")
        raw_rules = {}
    elif len(rkeys) == 1 and not raw_rules:
        problems.append(f"{rpath}: the system has no classes")
    # per group: the singleton option sets (shared by every class) and text -> index
    fast = [(tuple(frozenset((k,)) for k in range(g.n_options)), {o: k for k, o in enumerate(g.options)})
            for g in groups]
    for cname, crules in raw_rules.items():
        cpath = f"{rpath}[{_key(cname)}]"
        if not isinstance(cname, str) or not cname.strip():
            problems.append(f"{cpath}: class name must be a non-empty string")
            continue
        if not cname.isprintable() and not check_printable(cname, cpath, "class name", problems):
            continue
        if not isinstance(crules, Mapping) or not crules:
            problems.append(f"{cpath}: class has no rules (give an option, a list of options or null "
                            "for every group)")
            continue
        for gname in crules:
            if gname not in declared and len(gkeys) == 1:  # without a groups list every name would be unknown
                problems.append(f"{cpath}[{_key(gname)}]: unknown group, groups are {show(list(by_name))}")
        row: list[frozenset[int]] = []
        complete = True
        for g, (single, by_text) in zip(groups, fast):
            value = crules.get(g.name, _MISSING)
            # fast path (almost every rule of a valid system): one in-range index, one known text, or null
            if type(value) is int and 0 <= value < len(single):
                row.append(single[value])
                continue
            if type(value) is str and value in by_text:
                row.append(single[by_text[value]])
                continue
            if value is None:
                row.append(_EMPTY)
                continue
            gpath = f"{cpath}[{show(g.name)}]"
            if value is _MISSING:
                problems.append(f"{gpath}: missing rule (use null if the group does not apply)")
                complete = False
                continue
            opts = _parse_rule_value(value, g, gpath, problems)
            if opts is None:
                complete = False
            else:
                row.append(opts)
        if complete:
            classes.append(cname)
            rules.append(tuple(row))
    if problems:
        raise SystemValidationError(source, problems)
    return AttributeSystem(
        name=name,
        classes=tuple(classes),
        groups=tuple(groups),
        rules=tuple(rules),
        baseline_template=baseline,
        description=description,
    )


def validate_system(system: Any, source: str = "<data>") -> AttributeSystem:
    """Validate a raw mapping or an :class:`AttributeSystem` built in code; return the system."""
    if isinstance(system, AttributeSystem):
        return parse_system(system.to_dict(), source=f"{system.name!r}")
    return parse_system(system, source=source)
