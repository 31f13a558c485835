"""Test data written or built in memory: the colour system and its solid images, noise images, labelled folders,
small systems, hostile PNG bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from systems.format import AttributeSystem, Group

REPO = Path(__file__).resolve().parents[2]  # the repository root

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

COLOUR_SYSTEM = {
    "name": "colours",
    "baseline_template": "a photo of {}",
    "groups": [
        {"name": "color", "template": "something {} in color", "options": ["red", "green", "blue"]},
        {"name": "texture", "template": "it looks {}", "options": ["smooth", "rough"]},
        {"name": "glow", "template": "it is {}", "options": ["bright", "dark"]},
    ],
    "rules": {
        "cherry": {"color": "red", "texture": "smooth", "glow": "bright"},
        "leaf": {"color": "green", "texture": "rough", "glow": "dark"},
        "sea": {"color": "blue", "texture": "smooth", "glow": None},
    },
}


def solid(colour: str, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[colour])


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    """The image encoded as ``fmt`` (PNG), as bytes."""
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


def write_colour_data(folder: Path, n: int, *, csv_name: str = "d.csv", subdir: str = "", varied_sizes: bool = False,
                      missing: bool = False, system_file: str | None = "sys.json") -> Path:
    """``n`` solid red/green/blue PNGs (in turn) labelled cherry/leaf/sea by the colour system, their CSV
    (path,label) and, unless ``system_file`` is None, the colour system as JSON; returns ``folder``.
    ``varied_sizes``: widths 8..12 so images differ in bytes; ``missing``: one more row naming no file."""
    import json

    folder = Path(folder)
    labels = {"red": "cherry", "green": "leaf", "blue": "sea"}
    if subdir:
        (folder / subdir).mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(n):
        col = list(COLOURS)[i % 3]
        name = f"{subdir}/{i:03d}.png" if subdir else f"{i}.png"
        solid(col, (8 + i % 5, 8) if varied_sizes else (16, 16)).save(folder / name)
        rows.append(f"{name},{labels[col]}")
    if missing:
        rows.append("missing.png,sea")  # a bad image: an error row with no label
    (folder / csv_name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    if system_file:
        (folder / system_file).write_text(json.dumps(COLOUR_SYSTEM), encoding="utf-8")
    return folder


def noise_image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_labelled_noise(folder: Path, system: AttributeSystem, n: int = 24, prefix: str = "") -> Path:
    """n noise PNGs ``{prefix}{i}.png`` in ``folder``, labelled with ``system``'s classes in turn, and their
    ``labels.csv`` (path,label); returns the CSV's path."""
    import csv

    folder = Path(folder)
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in range(n):
            noise_image(i).save(folder / f"{prefix}{i}.png")
            w.writerow([f"{prefix}{i}.png", system.classes[i % system.n_classes]])
    return folder / "labels.csv"


def five_group_system(k: int = 3, n_classes: int = 6) -> AttributeSystem:
    """5 groups of k options each; class c takes option (c + g) % k in group g."""
    groups = tuple(Group(name=f"g{g}", template=f"question {g}: is it {{}}?",
                         options=tuple(f"opt{g}_{j}" for j in range(k))) for g in range(5))
    rules = tuple(tuple(frozenset([(c * (g + 1)) % k]) for g in range(5)) for c in range(n_classes))
    return AttributeSystem(name="five", classes=tuple(f"class{c}" for c in range(n_classes)), groups=groups,
                           rules=rules)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (1-bit) with a tiny, bogus IDAT: a decompression bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
