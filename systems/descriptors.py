"""Descriptor files (DCLIP / WaffleCLIP / CuPL): ``{"class": ["description", ...], ...}``.

Read as their authors' code reads them (:func:`read_descriptors`, :func:`load_descriptor_file`):

- an empty list, and entries that are blank or punctuation only (CuPL's ``"."``), are dropped,
  with **one** notice listing them all; a class left with nothing falls back to its name (DCLIP
  and WaffleCLIP turn ``[]`` into ``['']``, i.e. the class name alone);
- braces left over from a generator are stripped, with a notice;
- every problem that makes a file unusable (an entry that is not a string, a class named twice
  ...) is reported at once, in one :class:`DescriptorError`.

Each file has a *style* (:data:`STYLES`), detected from its text or named
(``--descriptor-style``); it decides the wording of the prompts and how they are pooled:

==========  ========================================================  ==================================
style       prompt of class c and descriptor d                        a class's score
==========  ========================================================  ==================================
``dclip``   ``"{c}, which is/has {d}"`` (:func:`descriptor_sentence`)  mean similarity to its prompts
``waffle``  ``"A photo of a {c}, which is/has {d}."``                  mean similarity to its prompts
``cupl``    ``d`` as it is (a whole caption)                           similarity to the mean embedding
==========  ========================================================  ==================================

(``{c}`` with underscores as spaces, DCLIP's ``wordify``). Detection: CuPL's generator ends
every caption with ``"."``, so a file whose entries mostly end with a full stop is ``cupl``;
anything else is ``dclip`` (WaffleCLIP's files are DCLIP-style; name ``waffle`` for its wording).

Two more uses: :func:`descriptor_system` turns descriptors into an attribute system the adaptive
engine can ask, and :func:`random_descriptors` is the WaffleCLIP-style control (random character
words in place of real descriptions).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.common.errors import UserInputError
from engine.common.files import read_json_capped
from systems.build import LABELS_TEMPLATE
from systems.validate import GROUP_KEYS, RULE_KEYS, parse_system

STYLES = ("dclip", "waffle", "cupl")
#: how each style pools a class's prompts (engine.run.encoder_source.PooledGroup's ``how``)
POOLING = {"dclip": "mean_similarity", "waffle": "mean_similarity", "cupl": "mean_embedding"}
#: the group template of systems built from descriptors: the option is DCLIP's sentence ("which has ...")
DESCRIPTOR_TEMPLATE = "a photo of something, {}."
MAX_PER_CLASS = 1000  # CuPL's fullest files hold about 100 captions per class
MAX_PROBLEMS_SHOWN = 50

Descriptors = dict[str, tuple[str, ...]]


class DescriptorError(UserInputError):
    """A descriptor file that cannot be used: every problem found, each naming its entry.

    ``problems`` holds them; ``str(err)`` is one line for one problem, else a summary line and
    one line per problem.
    """

    def __init__(self, source: str, problems: list[str] | str):
        self.source = source
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            msg = f"{source}: {self.problems[0]}" if source else self.problems[0]
        else:
            shown = [f"  - {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN]]
            more = len(self.problems) - len(shown)
            msg = "\n".join([f"{source}: {len(self.problems)} problems (fix them in the file)", *shown]
                            + ([f"  ... and {more} more"] if more > 0 else []))
        super().__init__(msg)


class DescriptorNotice(UserWarning):
    """What reading descriptors left out or changed (empty lists, blank entries, braces), for Python callers."""


@dataclass(frozen=True)
class DescriptorFile:
    """A descriptor file as read: ``descriptors`` ``{class: (text, ...)}`` (a class may hold none: it
    falls back to its name), its ``style`` and whether that was ``detected``, and the ``notices``
    (one line each) on what was dropped or changed."""

    descriptors: Descriptors
    style: str
    detected: bool = False
    notices: tuple[str, ...] = ()

    @property
    def n_descriptors(self) -> int:
        return sum(map(len, self.descriptors.values()))

    def summary(self) -> str:
        empty = sum(1 for v in self.descriptors.values() if not v)
        return (f"{len(self.descriptors)} classes, {self.n_descriptors} descriptors"
                + (f" ({empty} class{'es' if empty != 1 else ''} by name only)" if empty else "")
                + f", style {self.style} ({'detected' if self.detected else 'as named'})")


def wordify(name: str) -> str:
    """A class name as DCLIP and WaffleCLIP put it in a prompt: underscores as spaces."""
    return name.replace("_", " ")


def descriptor_sentence(desc: str) -> str:
    """DCLIP's ``make_descriptor_sentence`` (and WaffleCLIP's copy), rule for rule: a descriptor
    starting with the letter "a" (so "a", "an", and also "antennae") reads "which is ...";
    one starting with has/often/typically/may/can reads "which ..."; "used..." reads
    "which is ..."; any other reads "which has ..."."""
    if desc.startswith("a"):
        return f"which is {desc}"
    if desc.startswith(("has", "often", "typically", "may", "can")):
        return f"which {desc}"
    if desc.startswith("used"):
        return f"which is {desc}"
    return f"which has {desc}"


def descriptor_prompts(cls: str, descs: tuple[str, ...], style: str = "dclip") -> tuple[str, ...]:
    """Class ``cls``'s prompts in ``style`` (see the module docstring); with no descriptors, the
    class name alone (``waffle``: "A photo of a {name}."), as DCLIP's ``['']`` gives."""
    check_style(style)
    name = wordify(cls)
    if style == "cupl":
        return tuple(descs) or (name,)
    if style == "waffle":
        return tuple(f"A photo of a {name}, {descriptor_sentence(d)}." for d in descs) or (f"A photo of a {name}.",)
    return tuple(f"{name}, {descriptor_sentence(d)}" for d in descs) or (name,)


def check_style(style: str) -> str:
    if style not in STYLES:
        raise DescriptorError("--descriptor-style", f"style {style!r} is not one of {list(STYLES)}")
    return style


def detect_style(descriptors: Mapping[str, tuple[str, ...]]) -> str:
    """``"cupl"`` when most entries end with a full stop (CuPL's generator appends one to every
    caption), else ``"dclip"`` (short phrases; WaffleCLIP's files look the same)."""
    entries = [d for ds in descriptors.values() for d in ds]
    full_stops = sum(d.endswith(".") for d in entries)
    return "cupl" if entries and full_stops >= 0.5 * len(entries) else "dclip"


def _usable(text: str) -> bool:
    """Whether an entry says anything: it holds a letter or a digit."""
    return any(ch.isalnum() for ch in text)


def _show(items: list[str]) -> str:
    return ", ".join(items)


def _json_type(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "an object" if isinstance(value, Mapping) else f"a {type(value).__name__}"


def read_descriptors(data: Any, source: str = "descriptors", style: str | None = None) -> DescriptorFile:
    """A :class:`DescriptorFile` from JSON-shaped data ``{class: [text, ...]}``, read as the authors'
    loaders read it (module docstring). Every unusable entry is one problem of one
    :class:`DescriptorError`; what is dropped or changed is a notice.

    Entries keep their text (whitespace runs collapse, which the CLIP tokenizers do anyway) and their
    repeats: a repeated caption weighs twice in CuPL's mean, as in its code.
    """
    if style is not None:
        check_style(style)
    if not isinstance(data, Mapping):
        raise DescriptorError(source, 'a descriptor file is a JSON object {"class": ["description", ...]}, '
                                      f"got {type(data).__name__}")
    problems: list[str] = []
    empty: list[str] = []
    blank: list[str] = []
    braced: list[str] = []
    out: Descriptors = {}
    for cls, descs in data.items():
        raw = str(cls)
        name = re.sub(r"\s+", " ", raw.replace("{", "").replace("}", "")).strip()
        if name != raw.strip() and ("{" in raw or "}" in raw):
            braced.append(f"class {raw!r}")
        if not _usable(name):
            problems.append(f"class {raw!r} has no name (blank or punctuation only); name it")
            continue
        if name in out:
            problems.append(f"class {name!r} is listed twice; list each class once")
            continue
        if not isinstance(descs, (list, tuple)):
            problems.append(f"class {name!r} holds {_json_type(descs)}, not a list of description strings")
            continue
        if len(descs) > MAX_PER_CLASS:
            problems.append(f"class {name!r} has {len(descs)} descriptors, more than {MAX_PER_CLASS}; keep fewer")
            continue
        kept: list[str] = []
        for i, d in enumerate(descs):
            if not isinstance(d, str):
                problems.append(f"{name!r}[{i}] is {_json_type(d)}; each descriptor is a string")
                continue
            text = re.sub(r"\s+", " ", d).strip()
            if "{" in text or "}" in text:
                text = re.sub(r"\s+", " ", text.replace("{", " ").replace("}", " ")).strip()
                braced.append(f"{name!r}[{i}]")
            if _usable(text):
                kept.append(text)
            else:
                blank.append(f"{name!r}[{i}] {d!r}")
        if not descs:
            empty.append(repr(name))
        out[name] = tuple(kept)
    if not problems and len(out) < 2:
        problems.append(f"{len(out)} class(es); give descriptors for at least two classes")
    if problems:
        raise DescriptorError(source, problems)
    by_name = [repr(c) for c, v in out.items() if not v and repr(c) not in empty]
    notices = []
    if blank:
        notices.append(f"{source}: dropped {len(blank)} blank or punctuation-only entr{'ies' if len(blank) != 1 else 'y'}: "
                       f"{_show(blank)}")
    if braced:
        notices.append(f"{source}: stripped stray braces (left by the generator) from {len(braced)} "
                       f"entr{'ies' if len(braced) != 1 else 'y'}: {_show(braced)}")
    if empty or by_name:
        names = empty + by_name
        many = len(names) != 1
        notices.append(f"{source}: {len(names)} class{'es' if many else ''} without descriptors "
                       f"({'an empty list' if empty else 'every entry dropped'}) fall{'' if many else 's'} back to "
                       f"the class name, as DCLIP does: {_show(names)}")
    detected = style is None
    return DescriptorFile(out, detect_style(out) if detected else style, detected, tuple(notices))





def load_descriptor_file(path: str | os.PathLike, style: str | None = None) -> DescriptorFile:
    """Read a descriptor JSON file (:func:`read_descriptors`); ``style`` None detects it."""
    where = f"descriptor file {str(path)!r}"
    data = read_json_capped(path, what="descriptor file", shape='a JSON object {"class": ["description", ...]}',
                            error=lambda msg: DescriptorError("", msg))  # the message names the file
    return read_descriptors(data, where, style)


def load_descriptors(path: str | os.PathLike) -> Descriptors:
    """The ``{class: (descriptor, ...)}`` of a descriptor file; notices as :class:`DescriptorNotice` warnings."""
    read = load_descriptor_file(path)
    for notice in read.notices:
        warnings.warn(notice, DescriptorNotice, stacklevel=2)
    return read.descriptors


def looks_like_descriptors(data: Any) -> bool:
    """Whether JSON data is meant as a descriptor file, not a system: an object with none of a system's
    group or rule keys whose values are mostly lists (a few wrong values are then its problems)."""
    if not isinstance(data, Mapping) or not data or any(k in data for k in GROUP_KEYS + RULE_KEYS):
        return False
    return 2 * sum(isinstance(v, list) for v in data.values()) > len(data)


def descriptors_hash(descs: Mapping[str, tuple[str, ...]], style: str = "dclip") -> str:
    payload = {k: list(v) for k, v in descs.items()}
    if style != "dclip":  # dclip hashes as before styles existed, so earlier runs keep their fingerprint
        payload = {"style": style, "descriptors": payload}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def random_descriptors(classes: list[str] | Mapping[str, Any], per_class: int | None = None, seed: int = 0,
                       word_lengths: tuple[int, int] = (3, 8)) -> Descriptors:
    """The WaffleCLIP control: each class gets random "descriptors" of two random-character words.

    classes : class names, or a descriptor mapping (then each class gets as many random
        descriptors as it had real ones, unless ``per_class`` is given). Seeded; the same
        random descriptors for every class (as WaffleCLIP), so only the class name differs.
    """
    names = list(classes)
    counts = {c: per_class or (len(classes[c]) if isinstance(classes, Mapping) else 8) for c in names}
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def word() -> str:
        return "".join(rng.choice(letters, int(rng.integers(word_lengths[0], word_lengths[1] + 1))))

    pool = [f"{word()} {word()}" for _ in range(max(counts.values()))]
    return {c: tuple(pool[:counts[c]]) for c in names}


# --------------------------------------------------------------------------- descriptors -> attribute system
def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster labels (n,) of unit rows x (n, D) into k clusters by cosine (k-means++ start, seeded).

    The k-means++ start keeps each row's distance to its nearest centre so far and updates it with
    the newest centre only (O(n·k·D) in all, not O(n·k²·D)); the centres are then updated as the
    normalised sums of their members (one scatter-add per iteration).
    """
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    chosen = [first]
    nearest = np.clip(1.0 - x @ x[first], 0, None)  # (n,) distance to the nearest centre so far
    for _ in range(1, k):
        total = nearest.sum()
        p = nearest / total if total > 0 else np.full(n, 1.0 / n)
        j = int(rng.choice(n, p=p))
        chosen.append(j)
        np.minimum(nearest, np.clip(1.0 - x @ x[j], 0, None), out=nearest)
    c = x[chosen].copy()
    labels = np.full(n, -1)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if (new == labels).all():
            break
        labels = new
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        has = norms[:, 0] > 0  # an empty cluster keeps its centre
        c[has] = sums[has] / norms[has]
    return labels


def _merge_singletons(clusters: list[np.ndarray], x: np.ndarray, max_options: int) -> list[np.ndarray]:
    """A group needs two options: each one-descriptor cluster joins the nearest cluster (cosine to
    its mean) that has room; one with nowhere to go takes its nearest descriptor from a group of
    three or more (only with ``max_options`` 2 can a group end with three)."""
    if sum(map(len, clusters)) < 2:
        raise ValueError("the descriptors hold only one distinct description; a question needs two")
    keep = [c for c in clusters if len(c) > 1]
    for single in (c for c in clusters if len(c) == 1):
        def near(cands):
            return max(cands, key=lambda i: float(x[single[0]] @ x[keep[i]].mean(axis=0)))
        room = [i for i, c in enumerate(keep) if len(c) < max_options]
        if room:
            i = near(room)
            keep[i] = np.sort(np.concatenate([keep[i], single]))
        else:
            keep.append(single)
    if keep and len(keep[-1]) == 1:  # nowhere with room: pair it with its nearest descriptor of a big group
        last = keep.pop()
        big = [i for i, c in enumerate(keep) if len(c) > 2]
        if big:
            i, j = max(((i, j) for i in big for j in keep[i]), key=lambda ij: float(x[last[0]] @ x[ij[1]]))
            keep[i] = keep[i][keep[i] != j]
            keep.append(np.sort(np.array([last[0], j])))
        else:  # every group is a pair (max_options 2): one becomes three
            i = max(range(len(keep)), key=lambda k: float(x[last[0]] @ x[keep[k]].mean(axis=0)))
            keep[i] = np.sort(np.concatenate([keep[i], last]))
    return keep


def _slug(text: str, n: int = 3) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "_".join(words[:n]) or "group"


def descriptor_system(descriptors: Mapping[str, tuple[str, ...]] | DescriptorFile,
                      embed: Callable[[list[str]], np.ndarray], *, max_options: int = 8, n_groups: int | None = None,
                      seed: int = 0, name: str = "descriptors", source: str = "descriptors", style: str | None = None,
                      timings: dict[str, float] | None = None) -> Any:
    """An attribute system whose questions are clusters of descriptors.

    The method (deterministic for a seed):

    1. The distinct descriptors are embedded once with ``embed`` (the frozen text encoder; rows
       are L2-normalised here). A class without descriptors contributes its name (DCLIP's fallback).
    2. They are clustered by cosine with spherical k-means (k-means++ start, seeded) into
       ``n_groups`` clusters (default ceil(distinct / max_options)); a cluster larger than
       ``max_options`` is split again the same way until none is. A group needs two
       options, so a one-descriptor cluster joins the nearest cluster with room, or else
       pairs with its nearest descriptor taken from a larger group.
    3. Each cluster is a group: its options are its descriptors, in first-seen order, worded as
       the style asks (``dclip``/``waffle``: DCLIP's sentence, "which has webbed feet", in the template
       :data:`DESCRIPTOR_TEMPLATE`; ``cupl``: the caption as it is, template ``"{}"``); its name is
       the slug of its most central descriptor. A descriptor shared by several classes is one option.
    4. Rules: class c accepts, in group g, the options among c's own descriptors; a class
       with none of g's descriptors gets "not applicable" (null), which the engine treats as
       uninformative for that class.

    ``style`` None: the DescriptorFile's, or detected. ``timings``, when given, receives the seconds
    spent clustering and building/validating the system (``embed`` is timed by its caller).
    Returns the validated AttributeSystem (``baseline_template`` "a photo of a {}.").
    """
    if max_options < 2:
        raise ValueError(f"max_options == {max_options!r}, must be >= 2")
    if not isinstance(descriptors, DescriptorFile):
        descriptors = read_descriptors(descriptors, source, style)
    style = style or descriptors.style
    check_style(style)
    own = {c: (ds or (wordify(c),)) for c, ds in descriptors.descriptors.items()}  # the name stands in for none
    distinct = list(dict.fromkeys(d for ds in own.values() for d in ds))
    x = np.asarray(embed(distinct), dtype=np.float64)
    if x.shape[0] != len(distinct) or not np.isfinite(x).all():
        raise ValueError(f"the encoder returned {x.shape} non-finite or misshapen embeddings for {len(distinct)} "
                         "descriptors")
    t0 = time.perf_counter()
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    k = n_groups or -(-len(distinct) // max_options)
    todo = [np.arange(len(distinct))]
    clusters: list[np.ndarray] = []
    first = True
    while todo:
        idx = todo.pop(0)
        kk = k if first else -(-len(idx) // max_options)
        first = False
        labels = spherical_kmeans(x[idx], kk, seed)
        parts = [idx[labels == j] for j in range(kk) if (labels == j).any()]
        if len(parts) == 1 and len(idx) > max_options:  # identical vectors: split by order
            parts = [idx[i:i + max_options] for i in range(0, len(idx), max_options)]
        for part in parts:
            (todo if len(part) > max_options else clusters).append(np.sort(part))
    clusters = _merge_singletons(clusters, x, max_options)
    clusters.sort(key=lambda p: p[0])
    t1 = time.perf_counter()
    wording = (lambda d: d) if style == "cupl" else descriptor_sentence
    template = "{}" if style == "cupl" else DESCRIPTOR_TEMPLATE
    groups, names, where = [], set(), {}
    for gi, part in enumerate(clusters):
        centre = x[part].sum(axis=0)
        central = distinct[part[int(np.argmax(x[part] @ centre))]]
        gname = base = _slug(central)
        i = 2
        while gname in names:
            gname, i = f"{base}_{i}", i + 1
        names.add(gname)
        groups.append({"name": gname, "template": template, "options": [wording(distinct[j]) for j in part]})
        for k_opt, j in enumerate(part):
            where[distinct[j]] = (gname, k_opt)
    rules = {}
    for cls, descs in own.items():
        hits: dict[str, list[int]] = {}
        for d in dict.fromkeys(descs):
            g, k_opt = where[d]
            hits.setdefault(g, []).append(k_opt)
        rules[cls] = {g["name"]: (sorted(hits[g["name"]]) if len(hits.get(g["name"], ())) > 1
                                  else (hits[g["name"]][0] if g["name"] in hits else None)) for g in groups}
    data = {"name": name, "description": f"built from {source} ({style} style) by twentyq system from-descriptors "
                                         f"(spherical k-means, at most {max_options} options per group, seed {seed})",
            "baseline_template": LABELS_TEMPLATE, "groups": groups, "rules": rules}
    system = parse_system(data, source=source)
    if timings is not None:
        timings["cluster"] = timings.get("cluster", 0.0) + t1 - t0
        timings["build"] = timings.get("build", 0.0) + time.perf_counter() - t1
    return system
