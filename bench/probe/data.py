"""Training data of the attribute probe: Gen 2–3 sprites, attribute captions, the manifest and the leak guard.

Images: every art style of Pokémon species 152–386 in ``sprites386/labels.csv``
— never Gen 1 (species 1–151), which is what the probe is evaluated on.

Captions: the attribute system built from the PokeAPI table for generations 2
and 3 (:func:`systems.build.pokeapi_system`) gives, per species, one caption per
acceptable option of every group — the *same* templates and value texts that
the Gen-1 system asks about ("a picture of a creature that is mainly green in
color", "a picture of a four-legged creature", "a creature that lives on a
grassy meadow", ...) — plus a few free templates that combine several
attributes (:data:`COMBOS`). No caption names a species (:func:`leak_problems`
checks every name of the table).

Each caption records its *facts*, the (group, option) pairs it asserts, so a
caption is true for every species whose rules hold all of them
(``TrainingData.truth``): the contrastive loss counts those as positives too.

The training manifest (image paths, species ids, captions) is hashed into the
probe's ``data_sha256``; 10% of the species (seeded) are held out for early
stopping and the λ fit.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.authoring.pokeapi import pokeapi_system
from systems import AttributeSystem

from ..lib import harness as C

POKEMON = C.SHARED_DATA / "pokemon"
SPRITES_CSV = POKEMON / "sprites386" / "labels.csv"
TABLE_CSV = POKEMON / "pokeapi" / "species_attributes.csv"
WEB150_CSV = POKEMON / "web150" / "labels.csv"
JINA15_CSV = POKEMON / "jina15.csv"
TRAIN_SPECIES = (152, 386)  # inclusive: generations 2 and 3
GEN1_MAX = 151
VAL_FRACTION = 0.1

#: Free templates combining several groups of the system: (groups, template with {group} slots).
#: Slots are filled with the group's option text (the same text its prompts use).
COMBOS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("shape", "color"), "a picture of {shape}, mainly {color} in color"),
    (("size", "color", "habitat"), "a {size} {color} creature that lives {habitat}"),
    (("color", "type1"), "a {color} creature of the {type1} type"),
    (("shape", "egg_groups"), "a picture of {shape} that looks like {egg_groups}"),
    (("type1", "type2"), "a creature of the {type1} and {type2} types"),
)


def data_available() -> bool:
    return SPRITES_CSV.is_file() and TABLE_CSV.is_file()


def require_data() -> None:
    """Raise FileNotFoundError (one line, naming the fix) when the shared Pokémon data is absent."""
    missing = [p for p in (SPRITES_CSV, TABLE_CSV) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: the probe trains on ../shared/data/pokemon "
                                "(sprites386 and pokeapi); put the shared data beside the repository")


# --------------------------------------------------------------------------- table
def read_species(table: Path = TABLE_CSV) -> list[dict[str, str]]:
    with open(table, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def name_tokens(text: str) -> list[str]:
    """Lower-case alphanumeric tokens (accents folded; ♀/♂ as f/m)."""
    t = unicodedata.normalize("NFKD", text.replace("♀", " f").replace("♂", " m")).casefold()
    return re.findall(r"[0-9a-z]+", t)


@lru_cache(maxsize=None)
def _name_key(name: str) -> str:
    return "".join(name_tokens(name))


def names_in(text: str, names: list[str]) -> list[str]:
    """The names that occur in ``text`` as whole words, in any spelling ("Mr. Mime", "mr mime", "MrMime")."""
    toks = name_tokens(text)
    spans = {"".join(toks[i:j]) for i in range(len(toks)) for j in range(i + 1, min(len(toks), i + 3) + 1)}
    return [n for n in names if _name_key(n) in spans]


# --------------------------------------------------------------------------- captions
@dataclass(frozen=True)
class Caption:
    """A caption and the (group, option) pairs it asserts."""

    text: str
    facts: tuple[tuple[int, int], ...]


def species_captions(system: AttributeSystem, c: int, combos=COMBOS) -> list[Caption]:
    """Every caption of class c: one per acceptable option of each group, then the combinations.

    A group that does not apply to c (empty rule) gives no caption and no combination.
    """
    out = []
    for g, grp in enumerate(system.groups):
        for k in sorted(system.rules[c][g]):
            out.append(Caption(grp.prompts()[k], ((g, k),)))
    gi = {grp.name: g for g, grp in enumerate(system.groups)}
    for names, template in combos:
        if any(n not in gi for n in names):
            continue
        choices = [sorted(system.rules[c][gi[n]]) for n in names]
        for ks in itertools.product(*choices):  # empty when a group does not apply
            slots = {n: system.groups[gi[n]].options[k] for n, k in zip(names, ks)}
            out.append(Caption(template.format(**slots), tuple(sorted((gi[n], k) for n, k in zip(names, ks)))))
    return out


# --------------------------------------------------------------------------- the training set
@dataclass
class TrainingData:
    """Everything training needs, built once from the shared data.

    system : the Gen 2–3 PokeAPI system (C classes = species, in table order).
    species_ids : (C,) PokeAPI species id of each class.
    images : N dicts {path (relative to sprites386/), abs_path, species_id, cls, style}.
    image_cls : (N,) class index of each image.
    captions : M unique caption texts; caption_facts : their facts.
    truth : (M, C) bool — caption m is true for class c.
    class_captions : per class, the indices of its own captions.
    val_classes : sorted class indices held out (seeded).
    """

    system: AttributeSystem
    species_ids: np.ndarray
    images: list[dict]
    image_cls: np.ndarray
    captions: list[str]
    caption_facts: list[tuple[tuple[int, int], ...]]
    truth: np.ndarray
    class_captions: list[list[int]]
    val_classes: np.ndarray
    seed: int
    meta: dict = field(default_factory=dict)

    @property
    def train_classes(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.system.n_classes), self.val_classes)

    def image_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train image indices, validation image indices)."""
        val = np.isin(self.image_cls, self.val_classes)
        return np.flatnonzero(~val), np.flatnonzero(val)

    def manifest(self) -> dict:
        """The training manifest: image paths with species ids, and each species' captions."""
        return {"images": [[im["path"], int(im["species_id"])] for im in self.images],
                "captions": {str(int(self.species_ids[c])): [self.captions[m] for m in self.class_captions[c]]
                             for c in range(self.system.n_classes)},
                "val_species": [int(self.species_ids[c]) for c in self.val_classes]}

    def sha256(self) -> str:
        blob = json.dumps(self.manifest(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_training_data(*, seed: int = 0, val_fraction: float = VAL_FRACTION, species: int | None = None,
                        styles: int | None = None, guard: bool = True) -> TrainingData:
    """The probe's training set (see the module docstring).

    species : keep only the first this many training species (tests); styles :
    at most this many images per species (tests). Both None: everything.
    guard : run the leak guard (it hashes every Gen-1 image, seconds); False only to
    recompute :meth:`TrainingData.sha256` of a set that was guarded when it was trained on.
    """
    require_data()
    rows = read_species()
    id_of = {r["name"]: int(r["species_id"]) for r in rows}
    system = pokeapi_system(TABLE_CSV, generations=(2, 3))
    ids = np.array([id_of[c] for c in system.classes], dtype=np.int64)
    lo, hi = TRAIN_SPECIES
    if not ((ids >= lo) & (ids <= hi)).all():
        raise ValueError(f"the generation 2–3 system holds species outside {lo}–{hi}; check {TABLE_CSV}")
    keep = np.argsort(ids, kind="stable")
    if species is not None:
        keep = keep[:species]
    system = system.subset([system.classes[i] for i in keep], name=system.name)
    ids = ids[keep]
    cls_of = {int(s): c for c, s in enumerate(ids)}
    images, per_species = [], {}
    with open(SPRITES_CSV, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            sid = int(r["species_id"])
            if sid not in cls_of:  # Gen 1 (and anything outside the kept species) never enters
                continue
            if styles is not None and per_species.get(sid, 0) >= styles:
                continue
            per_species[sid] = per_species.get(sid, 0) + 1
            images.append({"path": r["path"], "abs_path": str(SPRITES_CSV.parent / r["path"]), "species_id": sid,
                           "cls": cls_of[sid], "style": r["style"]})
    texts: dict[str, int] = {}
    facts: list[tuple[tuple[int, int], ...]] = []
    class_caps: list[list[int]] = []
    for c in range(system.n_classes):
        mine = []
        for cap in species_captions(system, c):
            if cap.text not in texts:
                texts[cap.text] = len(texts)
                facts.append(cap.facts)
            elif facts[texts[cap.text]] != cap.facts:
                raise ValueError(f"caption {cap.text!r} asserts two different fact sets; fix COMBOS")
            mine.append(texts[cap.text])
        class_caps.append(list(dict.fromkeys(mine)))
    truth = np.zeros((len(texts), system.n_classes), dtype=bool)
    for m, fs in enumerate(facts):
        truth[m] = np.all([[k in system.rules[c][g] for c in range(system.n_classes)] for g, k in fs], axis=0)
    n_val = max(1, int(round(val_fraction * system.n_classes)))
    val = np.sort(np.random.default_rng(seed).choice(system.n_classes, size=n_val, replace=False))
    data = TrainingData(system, ids, images, np.array([im["cls"] for im in images], dtype=np.int64),
                        list(texts), facts, truth, class_caps, val, seed,
                        meta={"species": int(system.n_classes), "images": len(images), "captions": len(texts),
                              "val_species": int(n_val), "styles": sorted({im["style"] for im in images})})
    problems = leak_problems(data) if guard else []
    if problems:
        raise ValueError(f"leak guard: {problems[0]} ({len(problems)} problem(s)); the probe must never see Gen 1")
    return data


# --------------------------------------------------------------------------- leak guard
def gen1_names(rows: list[dict[str, str]] | None = None) -> list[str]:
    return [r["name"] for r in (rows or read_species()) if int(r["species_id"]) <= GEN1_MAX]


def gen1_image_hashes() -> set[str]:
    """Content hashes of every Gen-1 evaluation image: sprites of species 1–151, web150, jina15's Gen-1 rows."""
    from engine.encoders.image_cache import content_hash

    paths = [p for p, _ in gen1_sprites()]
    if WEB150_CSV.is_file():
        paths += [p for p, _ in csv_rows(WEB150_CSV)]
    return {content_hash(p) for p in paths}


def csv_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(str(path.parent / r["path"]), r["label"]) for r in csv.DictReader(f)]


def gen1_sprites() -> list[tuple[str, str]]:
    """(absolute path, label) of every sprite of species 1–151."""
    with open(SPRITES_CSV, newline="", encoding="utf-8") as f:
        return [(str(SPRITES_CSV.parent / r["path"]), r["label"]) for r in csv.DictReader(f)
                if int(r["species_id"]) <= GEN1_MAX]


def leak_problems(data: TrainingData, *, all_names: bool = True) -> list[str]:
    """Every way Gen 1 could reach training, as one line each (empty: none).

    Checks: no image of species <= 151, no image in a Gen-1 species' folder, no
    caption containing a species name (every name of the table when
    ``all_names``, else the 151 Gen-1 names), no class that is a Gen-1 species.
    """
    rows = read_species()
    g1 = gen1_names(rows)
    names = [r["name"] for r in rows] if all_names else g1
    g1_dirs = {n for n in g1}
    out = []
    for im in data.images:
        if im["species_id"] <= GEN1_MAX:
            out.append(f"image {im['path']} is species {im['species_id']} (Gen 1)")
        if Path(im["path"]).parts[1:2] and Path(im["path"]).parts[1] in g1_dirs:
            out.append(f"image {im['path']} lies in a Gen-1 species folder")
    for c in data.system.classes:
        if c in g1_dirs:
            out.append(f"class {c!r} is a Gen-1 species")
    for text in data.captions:
        hit = names_in(text, names)
        if hit:
            out.append(f"caption {text!r} names {hit}")
    return out


# --------------------------------------------------------------------------- frozen features
def image_features(backbone, paths: list[str], cache_dir: str | Path | None, *, chunk: int = 1024,
                   log=None):
    """(N, 1280) float32 backbone features of ``paths``, through the on-disk cache keyed by file hash.

    backbone : an :class:`engine.encoders.probe.ProbeBackbone`. Images already in
    ``cache_dir/images/`` are not re-encoded; new ones are saved every ``chunk`` images.
    """
    import torch

    from engine.encoders.image_cache import ImageCache

    cache = ImageCache(backbone, cache_dir)
    parts, t0 = [], time.perf_counter()
    for i in range(0, len(paths), chunk):
        parts.append(cache.encode(paths[i:i + chunk]))
        if log and cache.encoded:
            log(f"features: {min(i + chunk, len(paths))}/{len(paths)} images ({cache.encoded} encoded, "
                f"{time.perf_counter() - t0:.0f} s)")
    if not parts:
        return torch.empty((0, backbone.embed_dim))
    return torch.cat(parts).cpu()
