"""The cost of ``twentyq system from-descriptors`` on a 1,000-class descriptor file (issue 25).

The real DCLIP ImageNet file is not shipped (its repository publishes no licence), so
:func:`imagenet_like` writes one with its shape: 1,000 classes, 5 to 10 descriptors each
(DCLIP's averages about 6), drawn so that common phrases ("a long tail", "small eyes") are
shared by many classes, as they are in DCLIP's file. Seeded.

    python -m bench.descriptor_cost [--classes 1000] [--model offline]

prints, apart, the model load, the embedding of the distinct descriptors, the clustering, and
the building and validation of the system; the command's own wall time excludes the load.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from engine.encoders.text_shapes import encode_texts_by_length
from systems.descriptors import descriptor_system, read_descriptors

COLOURS = ["red", "brown", "black", "white", "grey", "green", "yellow", "orange", "blue", "pink", "tan", "olive"]
PARTS = ["tail", "head", "body", "legs", "eyes", "ears", "beak", "fins", "wings", "handle", "wheels", "roof",
         "door", "screen", "shell", "snout", "feet", "neck", "lid", "blade", "base", "frame", "strap", "leaves"]
SHAPES = ["long", "short", "round", "flat", "small", "large", "thin", "thick", "curved", "pointed", "striped",
          "spotted", "smooth", "shiny", "furry", "scaly", "metal", "wooden", "plastic", "glass"]
KINDS = ["a four-limbed animal", "a bird", "a fish", "a reptile", "an insect", "a tool", "a vehicle", "a container",
         "a building", "a musical instrument", "a piece of clothing", "a piece of furniture", "a food", "a plant"]


def imagenet_like(n_classes: int = 1000, seed: int = 0) -> dict[str, list[str]]:
    """A DCLIP-ImageNet-shaped descriptor mapping: n classes, 5-10 descriptors each, many shared."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for c in range(n_classes):
        descs = [str(rng.choice(KINDS))]
        while len(descs) < int(rng.integers(5, 11)):
            form = rng.integers(4)
            if form == 0:  # a shared phrase: "a long tail"
                d = f"a {rng.choice(SHAPES)} {rng.choice(PARTS)}"
            elif form == 1:
                d = f"{rng.choice(COLOURS)} or {rng.choice(COLOURS)} {rng.choice(PARTS)}"
            elif form == 2:
                d = f"{rng.choice(SHAPES)}, {rng.choice(SHAPES)} {rng.choice(PARTS)} with {rng.choice(COLOURS)} markings"
            else:
                d = f"often seen near {rng.choice(COLOURS)} {rng.choice(PARTS)} of class {c}"
            if d not in descs:
                descs.append(d)
        out[f"class_{c:04d} {rng.choice(SHAPES)} {rng.choice(PARTS)}"] = descs
    return out


def main(argv: list[str] | None = None) -> None:
    from engine.run.config import EncoderSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--model", default="offline")
    ap.add_argument("--write", default=None, help="also write the generated file here")
    ap.add_argument("--unsorted", dest="sorted", action="store_false",
                    help="embed in the given order in one call (the command before issue 25), for comparison")
    args = ap.parse_args(argv)
    data = imagenet_like(args.classes)
    if args.write:
        Path(args.write).write_text(json.dumps(data, indent=1))
    t = time.perf_counter()
    enc = EncoderSpec(model=args.model, device="cpu").load()
    load = time.perf_counter() - t
    cpu0, t0 = time.process_time(), time.perf_counter()
    read = read_descriptors(data, "generated")
    seconds: dict[str, float] = {}
    cpu_embed: list[float] = []

    def embed(texts):  # as the command embeds: distinct texts, shortest first, in chunks
        s, c = time.perf_counter(), time.process_time()
        x = encode_texts_by_length(enc, texts) if args.sorted else enc.encode_texts(texts).float().cpu().numpy()
        seconds["embed"] = seconds.get("embed", 0.0) + time.perf_counter() - s
        cpu_embed.append(time.process_time() - c)
        return x

    system = descriptor_system(read.descriptors, embed, style=read.style, timings=seconds)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = sum(map(len, data.values()))
    distinct = len({d for v in data.values() for d in v})
    print(f"{args.classes} classes, {n} descriptors ({distinct} distinct), model {args.model}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"model load {load:.1f} s (not counted); from-descriptors wall {wall:.1f} s, process CPU {cpu:.1f} s "
          f"(embedding {sum(cpu_embed):.1f} s of it; torch threads {torch.get_num_threads()})")
    for k, v in seconds.items():
        print(f"  {k:<12} {v:6.1f} s  ({100 * v / wall:4.1f}% of wall)")
    print(f"system: {system.n_classes} classes, {system.n_groups} groups, Q={system.q_total}")


if __name__ == "__main__":
    main()
