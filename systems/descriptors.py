"""Descriptor files (DCLIP / CuPL / WaffleCLIP): ``{"class": ["description", ...], ...}``.

Three uses:

- :func:`load_descriptors` reads and checks a file (one-line errors naming the entry).
- Classification by description (``--descriptors FILE``, mode ``descriptors``): class c's
  prompts are ``"{c}, which (is/has/etc) {d}."`` for each of its descriptors d (DCLIP's
  wording, :func:`descriptor_prompts`); its score is the mean similarity of the image to
  them. Every prompt is embedded once; Q is the number of descriptor prompts.
- :func:`descriptor_system` turns descriptors into an attribute system the adaptive engine
  can ask (see its docstring for the method), and :func:`random_descriptors` is the
  WaffleCLIP-style control (random character words in place of real descriptions).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from systems.errors import UserInputError

#: how a class name and one of its descriptors become a prompt (DCLIP's wording)
DESCRIPTOR_PROMPT = "{cls}, which (is/has/etc) {desc}."
#: the group template of systems built from descriptors (the same wording without the class)
DESCRIPTOR_TEMPLATE = "a photo of something which (is/has/etc) {}."
MAX_PER_CLASS = 200

Descriptors = dict[str, tuple[str, ...]]


class DescriptorError(UserInputError):
    """A descriptor file that cannot be used (one line naming the entry and the fix)."""


def clean(desc: str) -> str:
    """A descriptor as it is used: whitespace collapsed, a leading '-' and a final '.' dropped."""
    return re.sub(r"\s+", " ", desc).strip().lstrip("-• ").rstrip(".").strip()


def check_descriptors(data: Any, source: str = "descriptors") -> Descriptors:
    """``{class: (descriptor, ...)}`` from JSON-shaped data, cleaned; DescriptorError otherwise."""
    if not isinstance(data, Mapping):
        raise DescriptorError(f"{source}: a descriptor file is a JSON object {{\"class\": [\"description\", ...]}}, "
                              f"got {type(data).__name__}")
    if len(data) < 2:
        raise DescriptorError(f"{source}: {len(data)} class(es); give descriptors for at least two classes")
    out: Descriptors = {}
    for cls, descs in data.items():
        name = str(cls).strip()
        if not name or "{" in name or "}" in name:
            raise DescriptorError(f"{source}: class {cls!r} is empty or holds a brace; rename it")
        if name in out:
            raise DescriptorError(f"{source}: class {name!r} is listed twice; list each class once")
        if not isinstance(descs, (list, tuple)) or not descs:
            raise DescriptorError(f"{source}: class {name!r} needs a non-empty list of description strings")
        if len(descs) > MAX_PER_CLASS:
            raise DescriptorError(f"{source}: class {name!r} has {len(descs)} descriptors, more than "
                                  f"{MAX_PER_CLASS}; keep fewer")
        kept: list[str] = []
        for i, d in enumerate(descs):
            if not isinstance(d, str) or not clean(d):
                raise DescriptorError(f"{source}: {name!r}[{i}] is {d!r}; each descriptor is a non-empty string")
            if "{" in d or "}" in d:
                raise DescriptorError(f"{source}: {name!r}[{i}] {d!r} holds a brace; remove it")
            if clean(d) not in kept:
                kept.append(clean(d))
        out[name] = tuple(kept)
    return out


def load_descriptors(path: str | os.PathLike) -> Descriptors:
    """Read a descriptor JSON file (see :func:`check_descriptors`)."""
    from systems.files import read_json_capped

    data = read_json_capped(path, what="descriptor file", shape='a JSON object {"class": ["description", ...]}',
                            error=DescriptorError)
    return check_descriptors(data, f"descriptor file {str(path)!r}")


def descriptor_prompts(cls: str, descs: tuple[str, ...]) -> tuple[str, ...]:
    """Class ``cls``'s prompts, one per descriptor (DCLIP's wording, :data:`DESCRIPTOR_PROMPT`)."""
    return tuple(DESCRIPTOR_PROMPT.format(cls=cls, desc=d) for d in descs)


def descriptors_hash(descs: Mapping[str, tuple[str, ...]]) -> str:
    return hashlib.sha256(json.dumps({k: list(v) for k, v in descs.items()}, ensure_ascii=False,
                                     sort_keys=True).encode()).hexdigest()


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
    """Cluster labels (n,) of unit rows x (n, D) into k clusters by cosine (k-means++ start, seeded)."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.array(centres).T, axis=1)
        d = np.clip(d, 0, None)
        p = d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=p)])
    c = np.array(centres)
    labels = np.full(n, -1)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if (new == labels).all():
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                m = members.sum(axis=0)
                c[j] = m / (np.linalg.norm(m) or 1.0)
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


def descriptor_system(descriptors: Mapping[str, tuple[str, ...]], embed: Callable[[list[str]], np.ndarray], *,
                      max_options: int = 8, n_groups: int | None = None, seed: int = 0, name: str = "descriptors",
                      source: str = "descriptors") -> Any:
    """An attribute system whose questions are clusters of descriptors.

    The method (deterministic for a seed):

    1. The distinct descriptors (after :func:`clean`) are embedded once with ``embed``
       (the frozen text encoder; rows are L2-normalised here).
    2. They are clustered by cosine with spherical k-means (k-means++ start, seeded) into
       ``n_groups`` clusters (default ceil(distinct / max_options)); a cluster larger than
       ``max_options`` is split again the same way until none is. A group needs two
       options, so a one-descriptor cluster joins the nearest cluster with room, or else
       pairs with its nearest descriptor taken from a larger group.
    3. Each cluster is a group: its options are its descriptors, in first-seen order; its
       template is :data:`DESCRIPTOR_TEMPLATE`; its name is the slug of its most central
       descriptor. A descriptor shared by several classes is one option of its group.
    4. Rules: class c accepts, in group g, the options among c's own descriptors; a class
       with none of g's descriptors gets "not applicable" (null), which the engine treats as
       uninformative for that class.

    Returns the validated AttributeSystem (``baseline_template`` "a photo of a {}.").
    """
    from systems.build import LABELS_TEMPLATE
    from systems.validate import parse_system

    if max_options < 2:
        raise ValueError(f"max_options == {max_options!r}, must be >= 2")
    descriptors = check_descriptors(descriptors, source)
    distinct = list(dict.fromkeys(d for ds in descriptors.values() for d in ds))
    x = np.asarray(embed(distinct), dtype=np.float64)
    if x.shape[0] != len(distinct) or not np.isfinite(x).all():
        raise ValueError(f"the encoder returned {x.shape} non-finite or misshapen embeddings for {len(distinct)} "
                         "descriptors")
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
    groups, names = [], set()
    for part in clusters:
        centre = x[part].sum(axis=0)
        central = distinct[part[int(np.argmax(x[part] @ centre))]]
        gname = base = _slug(central)
        i = 2
        while gname in names:
            gname, i = f"{base}_{i}", i + 1
        names.add(gname)
        groups.append({"name": gname, "template": DESCRIPTOR_TEMPLATE, "options": [distinct[j] for j in part]})
    rules = {}
    for cls, descs in descriptors.items():
        own = set(descs)
        rules[cls] = {}
        for g in groups:
            hit = [k for k, o in enumerate(g["options"]) if o in own]
            rules[cls][g["name"]] = hit if len(hit) > 1 else (hit[0] if hit else None)
    data = {"name": name, "description": f"built from {source} by twentyq system from-descriptors "
                                         f"(spherical k-means, at most {max_options} options per group, seed {seed})",
            "baseline_template": LABELS_TEMPLATE, "groups": groups, "rules": rules}
    return parse_system(data, source=source)
