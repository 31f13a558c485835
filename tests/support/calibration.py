"""The simulated calibration world: pokemon15 over noise PNGs whose SimEncoder answers as the simulator does,
with per-group reliabilities, calibrated on half of them (the ``world`` fixture of tests/conftest.py)."""

from __future__ import annotations

import csv

import numpy as np

from engine.core.simulate import SimulatedSource
from engine.run.calibration_file import calibrate
from engine.run.classifier import Classifier
from engine.run.config import EncoderSpec
from engine.run.datasets import DataSpec
from systems import load_system

from .data import noise_image
from .encoders import SimEncoder

N_IMAGES = 360
# colour and key trait answered well, form and body shape badly, background applies to no class
MARGIN = (0.12, 0.10, 0.12, 0.10, 0.05)
WRONG = (0.05, 0.6, 0.1, 0.6, 0.0)


def build_world(tmp_path_factory) -> dict:
    """pokemon15, N_IMAGES noise PNGs with simulated answers (a CSV of them), and the SimEncoder."""
    d = tmp_path_factory.mktemp("calworld")
    system = load_system("pokemon15")
    truth = np.arange(N_IMAGES) % system.n_classes
    src = SimulatedSource(system, truth, margin=np.array(MARGIN), wrong_rate=np.array(WRONG), noise=0.03, seed=3)
    sims = np.concatenate([src.similarities(np.arange(N_IMAGES), g) for g in range(system.n_groups)], axis=1)
    rows, paths = {}, []
    for i in range(N_IMAGES):
        im = noise_image(1000 + i, size=(6, 5))
        p = d / f"img{i:03d}.png"
        im.save(p)
        rows[SimEncoder.key(im)] = sims[i]
        paths.append(str(p))
    csv_path = d / "labels.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([(p, system.classes[c]) for p, c in zip(paths, truth)])
    enc = SimEncoder(system, rows)
    clf = Classifier(EncoderSpec(model="sim"), system, encoder=enc)
    cal = calibrate(clf, DataSpec(str(csv_path)), dev_fraction=0.5, seed=0)
    return {"dir": d, "system": system, "truth": truth, "sims": sims, "paths": paths, "csv": str(csv_path),
            "encoder": enc, "clf": clf, "cal": cal}


def calibrated(world, cal=None) -> Classifier:
    """A Classifier over the world's SimEncoder with its calibration (or ``cal``)."""
    return Classifier(EncoderSpec(model="sim"), world["system"], encoder=world["encoder"],
                      calibration=cal if cal is not None else world["cal"])
