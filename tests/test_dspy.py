"""engine.authoring.dspy_opt offline: DSPy's DummyLM proposes templates; a fake frozen model scores them."""

from __future__ import annotations

import numpy as np
import pytest

dspy = pytest.importorskip("dspy")
from dspy.utils import DummyLM  # noqa: E402

from systems import parse_system  # noqa: E402
from engine.authoring.dspy_opt import DevAccuracy, SystemProposer, optimize_system  # noqa: E402

SYSTEM = parse_system({
    "name": "toy",
    "groups": [
        {"name": "color", "template": "It is {}.", "options": ["red", "blue"]},
        {"name": "shape", "template": "Shape: {}.", "options": ["round", "square"]},
    ],
    "rules": {"A": {"color": 0, "shape": 0}, "B": {"color": 0, "shape": 1},
              "C": {"color": 1, "shape": 0}, "D": {"color": 1, "shape": 1}},
})
TRUTH = np.array([0, 1, 2, 3, 3, 2, 1, 0])
GOOD = {"color": "A photo of something {}.", "shape": "A photo of a {} thing."}
WORSE = {"color": "Maybe {}?", "shape": "Perhaps {}?"}


class FrozenModel:
    """prompts -> (8, P) similarities: the original and WORSE templates point at the wrong option,
    the GOOD ones at the right one. Counts every prompt it embeds; unknown prompts are an error."""

    def __init__(self):
        self.embedded: list[str] = []
        self.table: dict[str, np.ndarray] = {}
        for gi, g in enumerate(SYSTEM.groups):
            right = np.array([[k in SYSTEM.rules[c][gi] for k in range(g.n_options)] for c in TRUTH], float)
            for template, sims in ((g.template, 1 - right), (WORSE[g.name], 0.5 - 0.5 * right),
                                   (GOOD[g.name], right)):
                for k, opt in enumerate(g.options):
                    self.table[template.replace("{}", opt)] = 0.3 * sims[:, k]

    def __call__(self, prompts):
        self.embedded += list(prompts)
        return np.stack([self.table[p] for p in prompts], axis=1)


def test_the_best_valid_candidate_wins_and_invalid_proposals_are_dropped():
    lm = DummyLM([
        {"new_template": "It has {} and {} colours."}, {"new_template": GOOD["shape"]},  # attempt 1
        {"new_template": GOOD["color"]}, {"new_template": GOOD["shape"]},                # attempt 2
    ])
    model = FrozenModel()
    result = optimize_system(SYSTEM, model, TRUTH, lm=lm, n=3)
    assert result.baseline_accuracy == 0.0 and result.dev_accuracy == 1.0 and result.improved
    assert [g.template for g in result.system.groups] == [GOOD["color"], GOOD["shape"]]
    assert result.system.rules == SYSTEM.rules and result.system.classes == SYSTEM.classes
    # attempt 1 kept the colour template (its proposal had two {}); attempt 2 reached 1.0 and stopped
    assert [changes for changes, _ in result.tried] == [{"shape": GOOD["shape"]}, GOOD]
    assert result.tried[1][1] == 1.0
    assert len(model.embedded) == len(set(model.embedded)) == result.n_prompts_embedded == 8  # 2 templates x 4 prompts


def test_the_original_is_kept_when_no_candidate_beats_it():
    good = SYSTEM.to_dict()
    for g in good["groups"]:
        g["template"] = GOOD[g["name"]]
    start = parse_system(good)
    lm = DummyLM([{"new_template": WORSE["color"]}, {"new_template": WORSE["shape"]}] * 2)
    result = optimize_system(start, FrozenModel(), TRUTH, lm=lm, n=2)
    assert result.system == start and not result.improved
    assert result.dev_accuracy == result.baseline_accuracy == 1.0
    assert len(result.tried) == 2 and all(acc < 1.0 for _, acc in result.tried)


def test_metric_works_with_dspy_evaluate_signature():
    metric = DevAccuracy(FrozenModel(), TRUTH)
    with dspy.context(lm=DummyLM([{"new_template": GOOD["color"]}, {"new_template": "no placeholder"}])):
        pred = SystemProposer()(system=SYSTEM)
    assert pred.changes == {"color": GOOD["color"]}
    assert metric.metric(dspy.Example(system=SYSTEM), pred) == metric.accuracy(pred.system)
    with pytest.raises(ValueError, match="n must be at least 1"):
        optimize_system(SYSTEM, FrozenModel(), TRUTH, n=0)
