"""The adaptive loop's timing cases (random systems and similarities, no model) and how to run and compare them.

``bench.engine_speed`` times them on the CPU (numpy against torch, or this code against an older checkout),
``bench.gpu_engine`` on a device, ``bench.speed`` and ``bench.simulate`` time one EIG selection step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine import ArraySource, StopRule, classify_batch
from engine.core.scoring import build_channel, expected_information_gain
from engine.run.engines import classify
from engine.torch_backend import TensorSource
from policies import PolicyState, get_policy
from systems import AttributeSystem, load_system

from .synthetic import random_sims, random_system

#: the logit scale, rule noise and stopping threshold of every case
LAM, EPS, TAU = 100.0, 0.05, 0.9


@dataclass
class Case:
    """One timing case: a system, its (B, Q) similarities, the policy and the stopping rule."""

    name: str
    system: AttributeSystem
    sims: np.ndarray  # (B, Q) float64
    policy: str
    stop: StopRule


def cases(images: int = 4096, big_images: int = 1024, n_classes: int = 1000, n_groups: int = 50, k: int = 10,
          budget: int = 100, seed: int = 0) -> list[Case]:
    """The issue-17 cases: pokemon15 with ``images`` images (eig, τ=0.9); a random N=``n_classes`` G=``n_groups``
    K=``k`` system with ``big_images`` images (eig τ=0.9, the same with a budget, and the full system)."""
    p15 = load_system("pokemon15")
    big = random_system(n_classes, n_groups, k, seed)
    big_sims = random_sims(big, big_images, seed)
    return [
        Case("pokemon15, eig τ=0.9", p15, random_sims(p15, images, seed), "eig", StopRule(tau=TAU)),
        Case(f"N={n_classes} G={n_groups} K={k}, eig τ=0.9", big, big_sims, "eig", StopRule(tau=TAU)),
        Case(f"N={n_classes} G={n_groups} K={k}, eig τ=0.9 budget {budget}", big, big_sims, "eig",
             StopRule(tau=TAU, budget=budget)),
        Case(f"N={n_classes} G={n_groups} K={k}, full system", big, big_sims, "fixed", StopRule()),
    ]


def run_numpy(c: Case) -> list:
    """The case on the numpy loop (the reference)."""
    return classify_batch(ArraySource(c.sims, c.system), c.system, c.policy, stop=c.stop, logit_scale=LAM, eps=EPS,
                          top_k=1)


def run_torch(c: Case, source: TensorSource | None = None) -> list:
    """The case on the torch loop; ``source``: the similarities already on a device (else the CPU)."""
    src = source if source is not None else TensorSource(torch.as_tensor(c.sims), c.system)
    return classify(src, c.system, c.policy, engine="torch", stop=c.stop, logit_scale=LAM, eps=EPS, top_k=1)


def agree(a: list, b: list) -> dict[str, Any]:
    """How far two backends' Results are apart: label, Q, stop and path mismatches; max |Δconfidence|."""
    return {"labels_differ": sum(x.label != y.label for x, y in zip(a, b)),
            "q_differ": sum(x.q_spent != y.q_spent for x, y in zip(a, b)),
            "stops_differ": sum(x.stop != y.stop for x, y in zip(a, b)),
            "paths_differ": sum([s.group for s in x.steps] != [s.group for s in y.steps] for x, y in zip(a, b)),
            "max_confidence_diff": max((abs(x.confidence - y.confidence) for x, y in zip(a, b)), default=0.0)}


def eig_selection_step(n_images=256, n_classes=1000, n_groups=50, k=10, seed=0):
    """A zero-argument callable that chooses the next group by EIG once for a batch.

    It computes every group's EIG for n_images posteriors over a random system
    and lets the ``eig`` policy pick among ~70% available groups.
    """
    system = random_system(n_classes, n_groups, k, seed)
    ch = build_channel(system.rule_matrix, system.option_counts, 0.05)
    rng = np.random.default_rng(seed)
    post = rng.dirichlet(np.ones(n_classes), size=n_images)
    avail = rng.random((n_images, n_groups)) < 0.7
    avail[:, 0] = True
    pol = get_policy("eig")
    state = dict(post=post, available=avail, budget_left=np.full(n_images, np.inf), images=np.arange(n_images),
                 channel=ch)

    def step():
        pol.select(PolicyState(eig=expected_information_gain(post, ch), **state))

    return step
