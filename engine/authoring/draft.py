"""Attribute systems drafted by an LLM: the prompt that asks for one, and an importer that repairs what is safe.

:func:`build_prompt` writes a prompt, in the spirit of the write-up's, that asks an LLM for the JSON
shape :func:`systems.validate.parse_system` accepts. :func:`import_draft` takes the reply and

* repairs what can be repaired without guessing, recording one :class:`Repair` (path + what was done)
  for each: a markdown code fence or prose around the JSON, ``//``, ``#`` and ``/* */`` comments,
  trailing commas, Python ``None``, near-miss group names in the rules (``colour`` for ``color``),
  near-miss class names (when the asked-for classes are known) and near-miss option texts
  (``White`` for ``white``);
* refuses everything else with :class:`DraftRejected`, a :class:`SystemValidationError` whose
  ``problems`` list every problem with its path.

A near-miss is repaired only when it is unambiguous: exactly one candidate is equal after
normalisation (case, whitespace, punctuation; leading articles for options), or, failing that,
exactly one candidate is within a strict :mod:`difflib` ratio. Two candidates means a refusal.
"""

from __future__ import annotations

import difflib
import json
import re
import textwrap
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.common.files import read_text_capped
from systems.format import AttributeSystem
from systems.io import reject_duplicate_keys
from systems.validate import GROUP_KEYS, RULE_KEYS, SystemValidationError, parse_system, show

GROUP_CUTOFF = 0.85
CLASS_CUTOFF = 0.85
OPTION_CUTOFF = 0.9
_ARTICLES = ("a ", "an ", "the ")

SCHEMA = """{
  "name": "<short system name>",
  "groups": [
    {"name": "<group name>", "template": "<sentence with exactly one {}>", "options": ["<option>", "..."]}
  ],
  "rules": {
    "<class name>": {"<group name>": <option index> | [<option index>, ...] | null}
  }
}"""

EXAMPLE: dict[str, Any] = {
    "name": "fruit_and_sky",
    "groups": [
        {"name": "color", "template": "It is mainly {} in color.", "options": ["red", "blue", "green"]},
        {"name": "shape", "template": "Its shape is {}.", "options": ["round", "flat and wide", "irregular"]},
    ],
    "rules": {
        "Apple": {"color": [0, 2], "shape": 0},
        "Sky": {"color": 1, "shape": 1},
        "Rock": {"color": None, "shape": 2},
    },
}

_PROMPT = """\
I need an attribute system for zero-shot image classification with a CLIP-style image-text embedding
model. The model may not recognise these classes by name, but it does see simple visual attributes
(colours, shapes, parts, textures, poses, backgrounds), so every class must be described by what a
single image of it shows.

Classes ({n}); use these names exactly, as the keys of "rules":
{class_lines}

1. Attribute groups. {group_request}
   Use only visual attributes that can be seen in one image: no names, sounds, behaviour, abilities,
   trivia or anything that needs outside knowledge.
2. For each group:
   - "name": a short snake_case name;
   - "template": a natural-language sentence with exactly one "{{}}" where an option goes, and no
     other braces (e.g. "It is mainly {{}} in color.");
   - "options": at least 2 short, concrete, mutually exclusive phrases, no duplicates, each reading
     naturally inside the template.
3. Rules: map every class to every group:
   - the 0-based index of the option that fits;
   - a list of indices when several options fit equally well;
   - null when the group does not apply to the class.
   Every class needs a value for every group. Choose groups that split the classes in different ways
   so that, together, they tell every class apart.

Reply with one JSON object and nothing else (no markdown, no comments, no trailing commas), in
exactly this schema:
{schema}

A tiny example for the classes Apple, Sky, Rock:
{example}
"""


# ----- classes ----------------------------------------------------------------------------------

def parse_class_list(text: str) -> list[str]:
    """Class names from a comma-separated string; blanks dropped, duplicates refused."""
    return check_classes([c.strip() for c in text.split(",")], "--classes")


def read_classes_file(path: str | Path) -> list[str]:
    """Class names from a file, one per line; blank lines and lines starting with ``#`` skipped."""
    text = read_text_capped(path, what="classes file")  # regular files only, at most TEXT_INPUT_LIMIT bytes
    lines = [ln.strip() for ln in text.splitlines()]
    return check_classes([ln for ln in lines if not ln.startswith("#")], str(path))


def read_draft(path: str | Path) -> tuple[str, str, str | None]:
    """A draft's text, its source for messages and its stem (None for stdin); ``-`` reads stdin.

    Only a regular file (or stdin) is read, and at most ``engine.common.files.TEXT_INPUT_LIMIT``
    bytes of it: a FIFO or device is refused, a larger input is refused naming the cap.
    """
    if str(path) == "-":
        return read_text_capped("-", what="draft on stdin"), "<stdin>", None
    return read_text_capped(path, what="draft"), str(path), Path(path).stem


def check_classes(names: list[str], source: str) -> list[str]:
    """The non-blank names, in order; a one-line ValueError when there are none or one repeats."""
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{source}: no class names given (list at least two, e.g. --classes 'Apple,Sky')")
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen:
            dups.append(n)
        seen.add(n)
    if dups:
        raise ValueError(f"{source}: duplicate class names {dups}; list each class once")
    return names


# ----- the prompt -------------------------------------------------------------------------------

def build_prompt(classes: Sequence[str], groups: Sequence[str] | None = None) -> str:
    """The prompt asking an LLM for a system over ``classes`` in the loader's canonical JSON shape.

    ``groups`` names the attribute groups wanted (e.g. ``["colour", "shape"]``); without it the LLM
    is offered the write-up's five kinds of question.
    """
    classes = check_classes(list(classes), "classes")
    if groups:
        group_request = ("Create these groups, with exactly these names: "
                         + ", ".join(f'"{g}"' for g in groups)
                         + ". Add further groups only if they are needed to tell every class apart.")
    else:
        group_request = ("Create groups covering, for example: the dominant colour; what kind of thing "
                         "or creature it looks like (primary form); its most distinctive visual feature; "
                         "its overall shape or silhouette; its texture or pattern; the typical "
                         "background or setting it is shown in.")
    return _PROMPT.format(
        n=len(classes),
        class_lines="\n".join(f"- {c}" for c in classes),
        group_request=textwrap.fill(group_request, 100, initial_indent=" " * 20,
                                    subsequent_indent="   ", break_on_hyphens=False)[20:],
        schema=SCHEMA,
        example=_compact_json(EXAMPLE),
    )


def _compact_json(system: Mapping[str, Any]) -> str:
    """A canonical-shaped system as JSON with one line per group and per class."""
    d = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    groups = ",\n".join(f"    {d(g)}" for g in system["groups"])
    rules = ",\n".join(f"    {d(c)}: {d(r)}" for c, r in system["rules"].items())
    return (f'{{\n  "name": {d(system["name"])},\n  "groups": [\n{groups}\n  ],\n'
            f'  "rules": {{\n{rules}\n  }}\n}}')


# ----- reports ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Repair:
    """One repair made to a draft: where (a JSON path, or a line and column of the text) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"repaired {self.path}: {self.message}"


class DraftRejected(SystemValidationError):
    """A draft that cannot be imported: every problem with its path, plus the repairs already made."""

    def __init__(self, source: str, problems: list[str], repairs: list[Repair]):
        super().__init__(source, problems)
        self.repairs = list(repairs)


@dataclass
class DraftImport:
    """A draft imported into a valid system, with every repair that was needed."""

    system: AttributeSystem
    repairs: list[Repair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----- text level: fences, prose, comments, trailing commas, None -------------------------------

_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)


def _line_col(text: str, pos: int) -> str:
    """``line L column C`` (both from 1) of position ``pos`` in ``text``."""
    line, line_start = text.count("\n", 0, pos) + 1, text.rfind("\n", 0, pos) + 1
    return f"line {line} column {pos - line_start + 1}"


def _blank(chars: list[str], start: int, end: int) -> None:
    """Replace chars[start:end] by spaces, keeping newlines, so that line/column numbers hold."""
    for i in range(start, end):
        if chars[i] != "\n":
            chars[i] = " "


def _strip_wrapping(text: str, repairs: list[Repair], problems: list[str]) -> list[str]:
    """Blank out a markdown fence and any prose around the one JSON object."""
    chars = list(text)
    fences = list(_FENCE.finditer(text))
    if len(fences) > 1:
        problems.append(f"text: {len(fences)} markdown code blocks; the reply must hold exactly one JSON object")
        return chars
    lo, hi = 0, len(text)
    if fences:
        lo, hi = fences[0].start(1), fences[0].end(1)
        outside = (text[:fences[0].start()] + text[fences[0].end():]).strip()
        repairs.append(Repair(_line_col(text, fences[0].start()), "markdown code fence removed"
                              + (f", and the text outside it ({show(outside)})" if outside else "")))
    elif text.lstrip().startswith("```"):  # an opening fence with no closing one (a cut-off reply)
        start = text.index("```")
        nl = text.find("\n", start)
        lo = len(text) if nl < 0 else nl + 1
        repairs.append(Repair(_line_col(text, start), "unclosed markdown code fence removed"))
    first, last = text.find("{", lo, hi), text.rfind("}", lo, hi)
    if first < 0:
        problems.append("text: no JSON object found; the reply must be one JSON object "
                        "(see `twentyq system prompt` for the schema)")
        return chars
    before, after = text[lo:first], text[last + 1:hi]
    if _is_prose(before):
        repairs.append(Repair(_line_col(text, lo + len(before) - len(before.lstrip())),
                              f"text before the JSON removed ({show(before.strip())})"))
        lo = first
    if _is_prose(after):
        repairs.append(Repair(_line_col(text, last + 1 + len(after) - len(after.lstrip())),
                              f"text after the JSON removed ({show(after.strip())})"))
        hi = last + 1
    _blank(chars, 0, lo)
    _blank(chars, hi, len(chars))
    return chars


def _is_prose(part: str) -> bool:
    """Text around the JSON that is safe to drop: not blank, not a comment (reported as one later),
    and no brackets that could be JSON."""
    part = part.strip()
    return bool(part) and not part.startswith(("//", "#", "/*")) and not any(b in part for b in "{}[]")


def _comment_end(text: str, i: int) -> int:
    """End of the comment starting at ``i`` (``/* */`` up to its close, else up to the line end)."""
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        return len(text) if j < 0 else j + 2
    j = text.find("\n", i)
    return len(text) if j < 0 else j


def strip_json_extras(chars: list[str], text: str, repairs: list[Repair]) -> None:
    """Blank out comments and trailing commas, and replace bare Python ``None``, outside strings, in place."""
    i, n = 0, len(chars)
    pending_comma = -1  # position of a ',' followed so far only by whitespace and comments
    while i < n:
        c = chars[i]
        if c == '"':
            i += 1
            while i < n and chars[i] != '"':
                i += 2 if chars[i] == "\\" else 1
            i += 1
            pending_comma = -1
            continue
        if c == "#" or (c == "/" and i + 1 < n and chars[i + 1] in "/*"):
            end = _comment_end(text, i)
            kind = "#" if c == "#" else "//" if chars[i + 1] == "/" else "/* */"
            repairs.append(Repair(_line_col(text, i), f"{kind} comment removed ({show(text[i:end].strip())})"))
            _blank(chars, i, end)
            i = end
            continue
        if c in "}]" and pending_comma >= 0:
            repairs.append(Repair(_line_col(text, pending_comma), "trailing comma removed"))
            chars[pending_comma] = " "
        if c == "N" and text.startswith("None", i) and not _ident(chars, i - 1) and not _ident(chars, i + 4):
            repairs.append(Repair(_line_col(text, i), "Python None replaced by null"))
            chars[i:i + 4] = list("null")
        if not c.isspace():
            pending_comma = i if c == "," else -1
        i += 1


def _ident(chars: list[str], i: int) -> bool:
    return 0 <= i < len(chars) and (chars[i].isalnum() or chars[i] == "_")


def parse_draft_text(text: str, repairs: list[Repair]) -> tuple[Any, list[str]]:
    """Repair the text of a draft and parse it: (data or None, problems). Repairs are appended."""
    problems: list[str] = []
    text = text.lstrip("\ufeff")
    chars = _strip_wrapping(text, repairs, problems)
    if problems:
        return None, problems
    found: list[Repair] = []
    strip_json_extras(chars, text, found)
    repairs += sorted(found, key=lambda r: [int(x) for x in re.findall(r"\d+", r.path)])
    cleaned = "".join(chars)
    try:
        return json.loads(cleaned, object_pairs_hook=reject_duplicate_keys), []
    except json.JSONDecodeError as e:
        hint = "JSON strings and keys need double quotes" if cleaned[e.pos:e.pos + 1] == "'" else \
            "fix the draft by hand, or ask the LLM again"
        return None, [f"line {e.lineno} column {e.colno}: not JSON: {e.msg} ({hint})"]
    except ValueError as e:
        return None, [f"text: {e}"]
    except RecursionError:
        return None, ["text: JSON nested too deeply to be a system"]


# ----- near misses ------------------------------------------------------------------------------

def _norm(s: str, articles: bool = False) -> str:
    """Casefolded, NFKC, without whitespace or punctuation (and leading articles, for options)."""
    s = " ".join(unicodedata.normalize("NFKC", s).casefold().split())
    if articles:
        for a in _ARTICLES:
            if s.startswith(a):
                s = s[len(a):]
                break
    return "".join(ch for ch in s if ch.isalnum())


def near_match(word: str, candidates: Sequence[str], cutoff: float,
               articles: bool = False) -> tuple[list[str], str]:
    """Candidates ``word`` is a near miss of, and how: ``([one], why)`` is unambiguous.

    Tier 1: equal after :func:`_norm`. Tier 2 (only if tier 1 finds none): :mod:`difflib` ratio of
    the normalised texts at least ``cutoff``. More than one candidate in the deciding tier is
    ambiguous and is never repaired.
    """
    key = _norm(word, articles)
    normed = {c: _norm(c, articles) for c in candidates}
    equal = [c for c in candidates if normed[c] == key and key]
    if equal:
        what = "case/whitespace/punctuation" + ("/article" if articles else "")
        return equal, f"differs only in {what}"
    close = []
    for c in candidates:
        ratio = difflib.SequenceMatcher(None, key, normed[c]).ratio()
        if key and ratio >= cutoff:
            close.append((ratio, c))
    close.sort(key=lambda rc: -rc[0])
    if close:
        return [c for _, c in close], f"close spelling: difflib ratio {close[0][0]:.2f} >= {cutoff}"
    return [], ""


def _declared_groups(data: Mapping) -> dict[str, list[Any] | None]:
    """Declared group name -> its options (None when unusable), read leniently."""
    gkeys = [k for k in GROUP_KEYS if k in data]
    if len(gkeys) != 1:
        return {}
    raw = data[gkeys[0]]
    items = raw.items() if isinstance(raw, Mapping) else \
        ((s.get("name"), s) for s in raw if isinstance(s, Mapping)) if isinstance(raw, list) else ()
    out: dict[str, list[Any] | None] = {}
    for name, spec in items:
        if isinstance(name, str):
            opts = spec.get("options") if isinstance(spec, Mapping) else None
            out[name] = opts if isinstance(opts, list) and all(isinstance(o, str) for o in opts) else None
    return out


def _rules_of(data: Mapping) -> tuple[str, Mapping | None]:
    rkeys = [k for k in RULE_KEYS if k in data]
    if len(rkeys) != 1 or not isinstance(data[rkeys[0]], Mapping):
        return "rules", None
    return rkeys[0], data[rkeys[0]]


@dataclass(frozen=True)
class Refusal:
    """A problem found while repairing: its report line, and the loader messages it supersedes."""

    path: str
    message: str
    supersedes: str  # loader problems starting with this are about the same thing, and dropped

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _sole_match(word: str, candidates: Sequence[str], rivals: Sequence[str], cutoff: float,
                articles: bool = False) -> tuple[str | None, list[str], list[str], str]:
    """``(target, candidates, rivals, why)``: target is set only when ``word`` near-misses exactly one
    candidate and no rival word near-misses that candidate too."""
    cands, why = near_match(word, candidates, cutoff, articles)
    if len(cands) != 1:
        return None, cands, [], why
    clash = [r for r in rivals if r != word and near_match(r, cands, cutoff, articles)[0]]
    return (None if clash else cands[0]), cands, clash, why


def _repair_classes(rules: dict[str, Any], rpath: str, expected: list[str],
                    repairs: list[Repair], refused: list[Refusal]) -> dict[str, Any]:
    """Rename near-miss class keys to the asked-for classes; refuse missing and extra classes."""
    missing = [c for c in expected if c not in rules]
    extra = [k for k in rules if k not in expected]
    rename: dict[str, str] = {}
    for key in extra:
        path = f"{rpath}[{show(key)}]"
        target, cands, clash, why = _sole_match(key, missing, extra, CLASS_CUTOFF)
        if target:
            rename[key] = target
            repairs.append(Repair(path, f"class {show(key)} renamed to the asked-for class {show(target)} ({why})"))
        elif len(cands) > 1:
            refused.append(Refusal(path, f"class not asked for, and a near miss of several asked-for classes "
                                   f"{show(cands)}: ambiguous, not renamed (rename it by hand)", f"{path}: "))
        elif clash:
            refused.append(Refusal(path, f"class not asked for; it and {show(clash)} are near misses of "
                                   f"{show(cands[0])}: ambiguous, not renamed (rename one by hand)", f"{path}: "))
        else:
            refused.append(Refusal(path, "class not asked for (remove it, or add it to --classes)", f"{path}: "))
    for c in missing:
        if c not in rename.values():
            path = f"{rpath}[{show(c)}]"
            refused.append(Refusal(path, "missing class: asked for, but the draft gives it no rules", f"{path}: "))
    return {rename.get(k, k): v for k, v in rules.items()}


def _repair_group_keys(crules: Mapping, cpath: str, groups: Sequence[str],
                       repairs: list[Repair], refused: list[Refusal]) -> dict[str, Any]:
    """One class's rules with near-miss group names renamed to the declared ones."""
    out: dict[str, Any] = {}
    unknown = [k for k in crules if k not in groups]
    for key, value in crules.items():
        if key in groups:
            out[key] = value
            continue
        path = f"{cpath}[{show(key)}]"
        target, cands, clash, why = _sole_match(key, groups, unknown, GROUP_CUTOFF)
        if target and target not in crules:
            out[target] = value
            repairs.append(Repair(path, f"group {show(key)} renamed to the declared group {show(target)} ({why})"))
            continue
        out[key] = value
        if len(cands) > 1:
            msg = (f"unknown group, a near miss of several groups {show(cands)}: ambiguous, "
                   "not renamed (use the exact group name)")
        elif target:
            msg = f"unknown group, a near miss of {show(target)}, which is given too (keep one)"
        elif clash:
            msg = (f"unknown group; it and {show(clash)} are near misses of {show(cands[0])}: "
                   "ambiguous, not renamed (keep one, with the exact group name)")
        else:
            continue  # not near anything: the loader reports the unknown group
        refused.append(Refusal(path, msg, f"{path}: "))
    return out


def _repair_value(value: Any, options: list[str], path: str,
                  repairs: list[Repair], refused: list[Refusal]) -> Any:
    """A rule value with near-miss option texts replaced by their indices."""
    items = value if isinstance(value, list) else [value]
    fixed = []
    for item in items:
        if not isinstance(item, str) or item in options:
            fixed.append(item)
            continue
        cands, why = near_match(item, options, OPTION_CUTOFF, articles=True)
        if len(cands) == 1:
            k = options.index(cands[0])
            repairs.append(Repair(path, f"near-miss option text {show(item)} matched to option {k} "
                                  f"{show(cands[0])} ({why})"))
            fixed.append(k)
            continue
        fixed.append(item)
        if len(cands) > 1:
            refused.append(Refusal(path, f"unknown option {show(item)}, a near miss of several options "
                                   f"{show(cands)}: ambiguous, not matched (use an index or the exact text)",
                                   f"{path}: unknown option {show(item)}"))
    return fixed if isinstance(value, list) else fixed[0]


def repair_structure(data: Any, expected: list[str] | None = None) -> tuple[Any, list[Repair], list[Refusal]]:
    """Repair near-miss class, group and option names in parsed draft data.

    Returns ``(data, repairs, refused)``; each refusal supersedes what the loader would say about
    the same thing.
    """
    repairs: list[Repair] = []
    refused: list[Refusal] = []
    if not isinstance(data, Mapping):
        return data, repairs, refused
    data = dict(data)
    rpath, rules = _rules_of(data)
    if rules is None:
        return data, repairs, refused
    rules = dict(rules)
    if expected is not None:
        rules = _repair_classes(rules, rpath, expected, repairs, refused)
    groups = _declared_groups(data)
    for cname, crules in list(rules.items()):
        if not isinstance(crules, Mapping):
            continue
        cpath = f"{rpath}[{show(cname)}]"
        crules = _repair_group_keys(crules, cpath, list(groups), repairs, refused) if groups else dict(crules)
        for gname, value in crules.items():
            if groups.get(gname):
                crules[gname] = _repair_value(value, groups[gname], f"{cpath}[{show(gname)}]", repairs, refused)
        rules[cname] = crules
    data[rpath] = rules
    return data, repairs, refused


# ----- import -----------------------------------------------------------------------------------

def _text_option_note(data: Mapping) -> list[str]:
    """A note when rules give option texts instead of indices (accepted as they are)."""
    _, rules = _rules_of(data)
    groups = _declared_groups(data)
    n = 0
    for crules in (rules or {}).values():
        if isinstance(crules, Mapping):
            for g, v in crules.items():
                for item in v if isinstance(v, list) else [v]:
                    n += isinstance(item, str) and item in (groups.get(g) or ())
    return [f"note: {n} rule value{'s' if n != 1 else ''} give option text instead of an index; "
            "accepted as is (the loader matches exact option text)"] if n else []


def import_draft(text: str, source: str = "<draft>", classes: Sequence[str] | None = None,
                 name: str | None = None) -> DraftImport:
    """Validate an LLM's draft, repairing only what is unambiguous.

    Parameters
    ----------
    text : the draft (an LLM reply: JSON, possibly fenced, commented or with trailing commas)
    source : where it came from, for messages
    classes : the asked-for classes; when given, near-miss class names are renamed to them and
        missing or extra classes are refused
    name : the system's name when the draft gives none (default ``"draft"``)

    Raises
    ------
    DraftRejected
        listing every problem with its path (and carrying the repairs made so far).
    """
    repairs: list[Repair] = []
    data, text_problems = parse_draft_text(text, repairs)
    if text_problems:
        raise DraftRejected(source, text_problems, repairs)
    expected = check_classes(list(classes), "classes") if classes is not None else None
    data, struct_repairs, refused = repair_structure(data, expected)
    repairs += struct_repairs
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": name or "draft", **data}
    problems = [str(r) for r in refused]
    try:
        system = parse_system(data, source=source)
    except SystemValidationError as e:
        problems += [p for p in e.problems if not any(p.startswith(r.supersedes) for r in refused)]
    if problems:
        raise DraftRejected(source, problems, repairs)
    return DraftImport(system=system, repairs=repairs, notes=_text_option_note(data))
