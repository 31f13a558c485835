"""Result folders written by the real ``twentyq eval`` over the fake encoder, for the report and page tests."""

from __future__ import annotations

import json
from pathlib import Path

from engine.run.store import ResultStore, fingerprint

from .data import COLOUR_SYSTEM, COLOURS
from .encoders import FakeEncoder


def two_eval_runs(tmp: Path, monkeypatch) -> list[Path]:
    """Two result folders from ``twentyq eval --out`` over colour images with the fake encoder: the
    mixed colours are answered wrong, the pure ones right."""
    from PIL import Image

    from engine.cli.app import main
    from engine.run.config import EncoderSpec

    real_load = EncoderSpec.load
    monkeypatch.setattr(EncoderSpec, "load", lambda self: FakeEncoder() if self.model == "fake" else real_load(self))
    (tmp / "sys.json").write_text(json.dumps(COLOUR_SYSTEM))
    rows = ["path,label"]
    labels = {"red": "cherry", "green": "leaf", "blue": "sea"}
    for i in range(4):
        for c, lab in labels.items():
            Image.new("RGB", (40, 30), COLOURS[c]).save(tmp / f"{c}{i}.png")
            rows.append(f"{c}{i}.png,{lab}")
    mixed = [("purple", (120, 30, 200), "cherry"), ("teal", (30, 150, 150), "cherry"), ("olive", (130, 130, 30), "sea")]
    for name, rgb, lab in mixed:
        Image.new("RGB", (40, 30), rgb).save(tmp / f"{name}.png")
        rows.append(f"{name}.png,{lab}")
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    runs = []
    for name, flags in (("eig.jsonl", ["--policy", "eig", "--tau", "0.9"]),
                        ("random.jsonl", ["--policy", "random", "--tau", "0.99", "--budget", "5"])):
        rc = main(["eval", "--data", str(tmp / "labels.csv"), "--system", str(tmp / "sys.json"), "--model", "fake",
                   "--quiet", "--out", str(tmp / name), *flags])
        assert rc == 0
        runs.append(tmp / name)
    return runs


def store_at(out, n=10, size=4, settings=None, resume=False, fp=None):
    """A ResultStore for ``n`` rows in shards of ``size`` at ``out``, fingerprinted on placeholder inputs."""
    settings = settings or {"m": 1}
    return ResultStore.open(out, n_rows=n, shard_size=size, settings=settings, resume=resume,
                            fingerprint=fp or fingerprint(settings, [f"i{i}" for i in range(n)]))
