"""engine.authoring.refine: planted rule errors are recovered, templates are chosen by dev likelihood,
dead options and groups are pruned, and the test split never reaches refinement."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from systems.format import AttributeSystem, Group
from engine.authoring.refine import (
    RefineConfig,
    group_information_gain,
    refine,
    split_by_image,
    template_variants,
)


def random_system(seed: int, n_classes: int = 8, n_groups: int = 4, k: int = 4) -> AttributeSystem:
    """Random single-option rules; option texts are unique across groups."""
    rng = np.random.default_rng(seed)
    groups = tuple(Group(f"g{g}", f"template {g} shows {{}}", tuple(f"opt{g}_{j}" for j in range(k)))
                   for g in range(n_groups))
    rules = tuple(tuple(frozenset([int(rng.integers(k))]) for _ in range(n_groups)) for _ in range(n_classes))
    return AttributeSystem("rand", tuple(f"class{c}" for c in range(n_classes)), groups, rules)


class SimPrompts:
    """Similarities that follow a *true* system: sim = 0.2 + margin·[option fits the image's class] + noise.

    The margin depends on the prompt's template (``margins``; ``default`` otherwise); noise is a
    deterministic function of (image id, prompt), so asking again gives the same numbers.
    """

    def __init__(self, true: AttributeSystem, truth: np.ndarray, image_ids: np.ndarray, *, noise: float = 0.02,
                 margins: dict[str, float] | None = None, default: float = 0.05):
        self.true, self.truth, self.ids = true, np.asarray(truth), np.asarray(image_ids)
        self.margins, self.default, self.noise = margins or {}, default, noise
        self.where = {o: (g, k) for g, grp in enumerate(true.groups) for k, o in enumerate(grp.options)}
        self.asked: list[str] = []

    def _col(self, prompt: str) -> np.ndarray:
        hit = [o for o in self.where if o in prompt]
        assert len(hit) == 1, prompt
        g, k = self.where[hit[0]]
        margin = self.margins.get(prompt.replace(hit[0], "{}"), self.default)
        fits = np.array([k in self.true.rules[c][g] for c in self.truth], dtype=float)
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")
        noise = np.array([np.random.default_rng([seed, int(i)]).normal() for i in self.ids])
        return 0.2 + margin * fits + self.noise * noise

    def __call__(self, prompts):
        self.asked.extend(prompts)
        return np.stack([self._col(p) for p in prompts], axis=1)


def planted(true: AttributeSystem, n_errors: int, seed: int) -> tuple[AttributeSystem, set[tuple[int, int]]]:
    """Copy of ``true`` with ``n_errors`` (class, group) rules moved to another option."""
    rng = np.random.default_rng(seed)
    cells = [(c, g) for c in range(true.n_classes) for g in range(true.n_groups)]
    chosen = [cells[i] for i in rng.choice(len(cells), n_errors, replace=False)]
    rules = [list(r) for r in true.rules]
    for c, g in chosen:
        k = next(iter(true.rules[c][g]))
        rules[c][g] = frozenset([(k + 1 + int(rng.integers(true.groups[g].n_options - 1))) % true.groups[g].n_options])
    return AttributeSystem("planted", true.classes, true.groups, tuple(tuple(r) for r in rules)), set(chosen)


RULES_ONLY = RefineConfig(calibrate=False, templates=False, prune=False, lam=100.0, eps=0.05)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), n_errors=st.integers(1, 5))
def test_refinement_recovers_planted_rule_errors(seed, n_errors):
    true = random_system(seed)
    wrong, cells = planted(true, n_errors, seed + 1)
    truth = np.repeat(np.arange(true.n_classes), 12)
    sims = SimPrompts(true, truth, np.arange(len(truth)))
    refined, report = refine(wrong, sims, truth, RULES_ONLY)
    assert refined.rules == true.rules
    changed = {(true.class_index(ch.cls), true.group_index(ch.group)) for ch in report.rule_changes}
    assert changed == cells
    assert all(ch.new_score > ch.old_score for ch in report.rule_changes)


def test_correct_rules_are_left_alone():
    true = random_system(3)
    truth = np.repeat(np.arange(true.n_classes), 12)
    refined, report = refine(true, SimPrompts(true, truth, np.arange(len(truth))), truth, RULES_ONLY)
    assert refined.rules == true.rules and report.rule_changes == []


def test_classes_with_too_few_dev_images_keep_their_rules():
    true = random_system(5)
    wrong, cells = planted(true, 4, 9)
    counts = np.full(true.n_classes, 12)
    starved = sorted({c for c, _ in cells})[0]
    counts[starved] = 2
    truth = np.repeat(np.arange(true.n_classes), counts)
    cfg = RefineConfig(calibrate=False, templates=False, prune=False, min_images=3)
    refined, report = refine(wrong, SimPrompts(true, truth, np.arange(len(truth))), truth, cfg)
    assert refined.rules[starved] == wrong.rules[starved]
    assert true.classes[starved] in report.rules_left_alone
    others = [c for c in range(true.n_classes) if c != starved]
    assert all(refined.rules[c] == true.rules[c] for c in others)


def test_rule_prior_keeps_given_rule_when_evidence_is_weak():
    true = random_system(7)
    wrong, _ = planted(true, 3, 8)
    truth = np.repeat(np.arange(true.n_classes), 12)
    cfg = RefineConfig(calibrate=False, templates=False, prune=False, rule_prior=50.0)
    refined, report = refine(wrong, SimPrompts(true, truth, np.arange(len(truth))), truth, cfg)
    assert refined.rules == wrong.rules and not report.rule_changes


def test_template_selection_picks_the_template_the_model_answers_best():
    true = random_system(11)
    truth = np.repeat(np.arange(true.n_classes), 10)
    good = "a photo of {}."
    sims = SimPrompts(true, truth, np.arange(len(truth)), margins={good: 0.08}, default=0.01)
    cfg = RefineConfig(calibrate=False, rules=False, prune=False)
    refined, report = refine(true, sims, truth, cfg)
    assert all(g.template == good for g in refined.groups)
    assert all(report.templates[g.name]["new_ll"] > report.templates[g.name]["old_ll"] for g in true.groups)
    # each distinct candidate prompt was embedded (scored) once
    assert report.text_prompts_embedded == len(set(sims.asked)) == len(sims.asked)


def test_extra_templates_are_tried_and_bad_ones_dropped():
    assert template_variants("x {}", ["y {}", "no placeholder", "{} and {}"])[:1] == ["x {}"]
    v = template_variants("x {}", ["y {}", "no placeholder", "{} and {}"])
    assert "y {}" in v and "no placeholder" not in v and "{} and {}" not in v and len(v) == len(set(v))


def test_pruning_drops_unused_options_and_groups_without_information():
    base = random_system(13, n_groups=3, k=4)
    # group 3: every class says the same option, so it carries no information on any data
    flat = Group("flat", "flat {}", ("flatA", "flatB"))
    rules = tuple(row + (frozenset([0]),) for row in base.rules)
    system = AttributeSystem("p", base.classes, base.groups + (flat,), rules)
    truth = np.repeat(np.arange(system.n_classes), 10)
    sims = SimPrompts(system, truth, np.arange(len(truth)))
    refined, report = refine(system, sims, truth, RefineConfig(calibrate=False, rules=False, templates=False))
    assert "flat" not in {g.name for g in refined.groups}
    assert report.pruned_options["flat"] == ["flatB"]
    assert report.q_after == refined.q_total < system.q_total
    for g in refined.groups:  # every remaining option is used by some class
        gi = refined.group_index(g.name)
        assert set().union(*(r[gi] for r in refined.rules)) == set(range(g.n_options))
    assert refined.classes == system.classes


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), n_classes=st.integers(1, 6), frac=st.floats(0.1, 0.9), seed=st.integers(0, 99))
def test_split_is_a_stratified_partition_and_seeded(n, n_classes, frac, seed):
    truth = np.random.default_rng(seed).integers(n_classes, size=n)
    dev, test = split_by_image(truth, frac, seed)
    assert len(np.intersect1d(dev, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([dev, test])), np.arange(n))
    for c in np.unique(truth):
        if (truth == c).sum() >= 2:
            assert (truth[dev] == c).any() and (truth[test] == c).any()
    d2, t2 = split_by_image(truth, frac, seed)
    assert np.array_equal(dev, d2) and np.array_equal(test, t2)


@pytest.mark.slow  # over 1 s on an idle machine: out of the quick loop (-m 'not slow')
def test_refinement_never_sees_the_test_split():
    """The refined system depends on dev images only: changing every test image changes nothing,
    and refinement never asks for a test image's similarities."""
    true = random_system(17)
    wrong, _ = planted(true, 3, 4)
    truth = np.repeat(np.arange(true.n_classes), 10)
    dev, test = split_by_image(truth, 0.5, 0)

    def run(test_offset: int):
        ids = np.arange(len(truth))
        ids[test] += test_offset  # different noise for every test image
        full = SimPrompts(true, truth, ids)
        return refine(wrong, lambda prompts: full(prompts)[dev], truth[dev], RefineConfig())

    (a, ra), (b, rb) = run(0), run(10_000)
    assert a == b and ra.rule_changes == rb.rule_changes and ra.lam == rb.lam
    assert a.classes == wrong.classes


def test_information_gain_zero_for_a_flat_group_and_positive_for_a_telling_one():
    from engine.core.scoring import build_channel, group_log_probs

    truth = np.repeat(np.arange(2), 20)
    rm = np.array([[1, 0], [0, 1]], dtype=bool)
    P = build_channel(rm, np.array([2]), 0.05).P
    telling = group_log_probs(np.where(truth[:, None] == np.arange(2)[None, :], 0.3, 0.2), 100.0)
    flat = group_log_probs(np.full((40, 2), 0.25), 100.0)
    assert group_information_gain(telling, truth, P) > 0.5
    assert abs(group_information_gain(flat, truth, P)) < 1e-12


def test_bad_inputs_have_clear_errors():
    s = random_system(1)
    with pytest.raises(ValueError, match="at least one"):
        refine(s, lambda p: np.zeros((0, len(p))), np.array([], dtype=int))
    with pytest.raises(ValueError, match="outside"):
        refine(s, lambda p: np.zeros((1, len(p))), np.array([99]))
    with pytest.raises(ValueError, match="shape"):
        refine(s, lambda p: np.zeros((1, 1)), np.array([0]), RULES_ONLY)
    with pytest.raises(ValueError, match="dev_frac"):
        split_by_image(np.zeros(4, dtype=int), 1.0)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_template_log_lik_matches_a_naive_loop(data):
    from scipy.special import logsumexp

    from engine.authoring.refine import template_log_lik

    k = data.draw(st.integers(1, 5))
    n_classes = data.draw(st.integers(1, 4))
    rules = [frozenset(data.draw(st.sets(st.integers(0, k - 1), max_size=k))) for _ in range(n_classes)]
    truth = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=8)))
    raw = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=len(truth) * k, max_size=len(truth) * k)))
    log_p = raw.reshape(len(truth), k)
    log_p = log_p - logsumexp(log_p, axis=1, keepdims=True)
    vals = [logsumexp(log_p[i, sorted(rules[t])]) for i, t in enumerate(truth) if rules[t]]
    expected = float(np.mean(vals)) if vals else 0.0
    assert abs(template_log_lik(log_p, truth, rules) - expected) < 1e-9


def test_a_model_bias_toward_one_option_changes_no_rule():
    """An option the model favours for every image (the stand-in's 'purple') is a bias, not evidence."""
    true = random_system(21)
    truth = np.repeat(np.arange(true.n_classes), 15)
    sims = SimPrompts(true, truth, np.arange(len(truth)))
    biased_opt = true.groups[0].options[0]

    def biased(prompts):
        out = sims(prompts)
        return out + np.array([0.08 if biased_opt in p else 0.0 for p in prompts])[None, :]

    refined, report = refine(true, biased, truth, RULES_ONLY)
    assert report.rule_changes == [] and refined.rules == true.rules


def test_the_class_name_group_keeps_its_identity_rules():
    from systems.build import with_name_group

    true = with_name_group(random_system(23))
    truth = np.repeat(np.arange(true.n_classes), 12)
    # names the model confuses: every name prompt gets the same similarity, so some name "wins" by noise
    sims = SimPrompts(true, truth, np.arange(len(truth)), margins={"{}": 0.0}, default=0.05)
    refined, report = refine(true, sims, truth, RefineConfig(rule_prior=0.0, templates=False))
    assert not any(ch.group == "class_name" for ch in report.rule_changes)
    if "class_name" in {g.name for g in refined.groups}:
        g = refined.group_index("class_name")
        assert refined.groups[g].options == refined.classes
        assert all(row[g] == frozenset([c]) for c, row in enumerate(refined.rules))


@pytest.mark.slow
def test_cli_refine_end_to_end_with_a_tiny_clip(tmp_path, capsys):
    import json

    from engine.cli.app import main
    from systems import load_system, save_system

    from .support.data import five_group_system, noise_image

    from .support.encoders import tiny_model_dir

    system = five_group_system(k=3, n_classes=3)
    save_system(system, tmp_path / "s.json")
    for c, cls in enumerate(system.classes):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            noise_image(10 * c + i).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / system.classes[0] / "bad.png").write_bytes(b"not an image")
    out, rep = tmp_path / "s2.json", tmp_path / "r.json"
    rc = main(["system", "refine", "--data", str(tmp_path / "data"), "--system", str(tmp_path / "s.json"),
               "--out", str(out), "--report", str(rep), "--model", str(tiny_model_dir("clip")), "--quiet",
               "--min-images", "1"])
    captured = capsys.readouterr()
    assert rc == 1 and "skipped bad image" in captured.err  # the bad image is reported, the rest refined
    refined = load_system(out)
    assert refined.classes == system.classes
    report = json.loads(rep.read_text())
    assert report["n_dev"] + report["n_test"] == 12 and report["n_dev"] == 6
    assert {"full, before", "full, after", "shuffled rules, after"} <= set(report["test"])
    assert "test split (never seen by refinement)" in captured.out
    assert main(["system", "refine", "--data", str(tmp_path / "data"), "--system", str(out),
                 "--out", str(out), "--model", str(tiny_model_dir("clip"))]) == 2
    assert "would overwrite" in capsys.readouterr().err
