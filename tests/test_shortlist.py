"""The shortlist question: "which of these m class names is it?", asked once candidates are few."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ArraySource, SimulatedSource, StopRule, build_channel
from engine.core.scoring import (
    bayes_loglik, expected_information_gain, group_log_probs, shortlist, shortlist_eig, shortlist_loglik,
)
from systems.build import with_name_group
from systems.format import AttributeSystem, Group

from .strategies import EPS, LOGIT_SCALES, make_system, posteriors, rule_tables, similarity_arrays

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def virtual_channel(cand_row: np.ndarray, n_classes: int, eps: float):
    """The shortlist as an ordinary one-group channel: candidate j has rule {j}, others not applicable."""
    m = len(cand_row)
    rm = np.zeros((n_classes, m), dtype=bool)
    rm[cand_row, np.arange(m)] = True
    return build_channel(rm, np.array([m]), eps)


@SETTINGS
@given(data=st.data(), lam=LOGIT_SCALES, eps=EPS, n_classes=st.integers(2, 8))
def test_shortlist_is_an_ordinary_group_over_its_candidates(data, lam, eps, n_classes):
    m = data.draw(st.integers(2, n_classes))
    post = data.draw(posteriors(n_classes, 3))
    cand = shortlist(post, m)
    sims = data.draw(similarity_arrays(3, m))
    lp = group_log_probs(sims, lam)
    ll = shortlist_loglik(lp, cand, n_classes, eps)
    eig = shortlist_eig(post, cand, eps)
    for b in range(3):
        ch = virtual_channel(cand[b], n_classes, eps)
        np.testing.assert_allclose(ll[b], bayes_loglik(lp[b:b + 1], ch.P)[0], atol=1e-9)
        np.testing.assert_allclose(eig[b], expected_information_gain(post[b:b + 1], ch)[0], atol=1e-9)
    assert np.isfinite(ll).all() and (eig >= 0).all()


@SETTINGS
@given(data=st.data(), m=st.integers(1, 9))
def test_shortlist_picks_the_most_probable_distinct_classes(data, m):
    post = data.draw(posteriors(6, 4))
    cand = shortlist(post, m)
    assert cand.shape == (4, min(m, 6))
    for row, c in zip(post, cand):
        assert len(set(c.tolist())) == len(c)
        rest = np.setdiff1d(np.arange(6), c)
        if len(rest):
            assert row[c].min() >= row[rest].max()


def twins_system() -> AttributeSystem:
    """Six classes in three pairs with identical rules: no attribute tells a pair apart."""
    groups = (Group("color", "{}", ("red", "green", "blue")), Group("size", "{}", ("small", "large")))
    rules = []
    for pair in range(3):
        for _ in range(2):
            rules.append((frozenset([pair]), frozenset([pair % 2])))
    return AttributeSystem("twins", tuple(f"c{i}" for i in range(6)), groups, tuple(rules))


class Recording(ArraySource):
    """An ArraySource that also records the options asked of each group."""

    def __init__(self, sims, system):
        super().__init__(sims, system)
        self.options: list[tuple[int, object]] = []

    def similarities(self, images, group, options=None):
        self.options.append((int(group), None if options is None else np.asarray(options).tolist()))
        return super().similarities(images, group, options)


def test_shortlist_tells_twins_apart_for_m_prompts_and_asks_only_candidate_names(classify):
    system = with_name_group(twins_system())
    truth = np.repeat(np.arange(6), 30)
    src = SimulatedSource(system, truth, margin=0.1, noise=0.01, seed=1)
    sims = np.concatenate([src.similarities(np.arange(len(truth)), g) for g in range(system.n_groups)], axis=1)
    plain = classify(ArraySource(sims[:, :5], twins_system()), twins_system(), "eig",
                           stop=StopRule(tau=0.9), logit_scale=100.0, eps=0.05)
    rec = Recording(sims, system)
    short = classify(rec, system, "eig", stop=StopRule(tau=0.9), logit_scale=100.0, eps=0.05,
                           shortlist_size=2)
    acc_plain = np.mean([r.label == system.classes[c] for r, c in zip(plain, truth)])
    acc_short = np.mean([r.label == system.classes[c] for r, c in zip(short, truth)])
    assert acc_plain <= 0.6 and acc_short >= 0.95
    for r in short:
        names = [s for s in r.steps if s.group == "class_name"]
        assert len(names) == 1 and names[0].answer in system.classes
        assert r.q_spent == 3 + 2 + 2  # both attribute groups, then two names
    name_asks = [opts for g, opts in rec.options if g == system.group_index("class_name")]
    assert name_asks and all(opts is not None for opts in name_asks)  # never the whole name group


@SETTINGS
@given(data=st.data(), budget=st.integers(0, 12), m=st.integers(2, 4))
def test_shortlist_respects_the_budget_and_is_asked_at_most_once(classify, data, budget, m):
    rules, sizes = data.draw(rule_tables(max_classes=5, max_groups=3, min_k=2))
    system = with_name_group(make_system(rules, sizes))
    sims = data.draw(similarity_arrays(4, system.q_total))
    res = classify(ArraySource(sims, system), system, "eig", stop=StopRule(tau=0.9, budget=budget),
                         logit_scale=50.0, eps=0.05, shortlist_size=m)
    for r in res:
        assert r.q_spent <= budget
        assert sum(s.group == "class_name" for s in r.steps) <= 1
        assert abs(sum(p for _, p in r.top) - 1) < 1e-9 or len(r.top) < system.n_classes


def test_shortlist_refuses_systems_without_a_name_group_and_the_sum_scorer(classify):
    s = twins_system()
    src = ArraySource(np.zeros((1, s.q_total)), s)
    with pytest.raises(ValueError, match="--name-group"):
        classify(src, s, "eig", shortlist_size=2)
    n = with_name_group(s)
    with pytest.raises(ValueError, match="bayes"):
        classify(ArraySource(np.zeros((1, n.q_total)), n), n, "eig", shortlist_size=2, scorer="sum")
    with pytest.raises(ValueError, match=">= 2"):
        classify(ArraySource(np.zeros((1, n.q_total)), n), n, "eig", shortlist_size=1)


def test_encoder_source_embeds_only_the_asked_names():
    import torch

    from engine.run.encoder_source import EncoderSource
    from engine.encoders.text_cache import TextCache

    from .support.encoders import HashEncoder

    enc = HashEncoder()
    system = with_name_group(twins_system())
    tc = TextCache(enc)
    emb = torch.nn.functional.normalize(torch.randn(3, enc.embed_dim), dim=-1)
    src = EncoderSource(enc, tc, system, emb)
    g = system.group_index("class_name")
    out = src.similarities(np.arange(3), g, options=np.array([1, 4]))
    assert out.shape == (3, 2) and tc.text_encodes == 2
    full = src.similarities(np.arange(3), g)
    np.testing.assert_allclose(out, full[:, [1, 4]], atol=1e-6)
