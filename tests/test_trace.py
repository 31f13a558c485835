"""The opt-in trace (issue 20): each step also carries the top-k after it, so a page can replay the path.

Off by default, nothing changes (records keep their shape); on, the last step's top-k is the
result's ``top`` exactly, under both scorers and with the class-name shortlist; ``POST
/v1/classify?trace=1`` answers it, without the flag the answer is as before.
"""

from __future__ import annotations

import json

import pytest

from engine import SimulatedSource, StopRule
from engine.core.results import Result
from engine.core.simulate import sample_classes
from systems.build import with_name_group


def _run(classify, system, trace, seed=0, n=40, **kw):
    truth = sample_classes(n, system.n_classes, seed)
    src = SimulatedSource(system, truth, seed=seed)
    return classify(src, system, "eig", trace=trace, **kw)


@pytest.mark.parametrize("kw", [
    dict(stop=StopRule(tau=0.9)),
    dict(stop=StopRule(tau=0.99, budget=12), scorer="sum", top_k=3),
    dict(stop=StopRule(tau=1.0)),
])
def test_trace_last_step_is_the_final_top_and_changes_nothing_else(classify, p15, kw):
    plain, traced = _run(classify, p15, False, **kw), _run(classify, p15, True, **kw)
    for a, b in zip(plain, traced):
        assert all(s.top is None for s in a.steps)
        assert (a.label, a.confidence, a.top, a.q_spent, a.stop) == (b.label, b.confidence, b.top, b.q_spent, b.stop)
        assert [(s.group, s.eig, s.answer, s.answer_prob, s.confidence_after) for s in a.steps] == \
               [(s.group, s.eig, s.answer, s.answer_prob, s.confidence_after) for s in b.steps]
        assert b.steps, "every image asks something here"
        assert b.steps[-1].top == b.top and b.steps[-1].q_spent == b.q_spent
        assert all(s.q_spent is None for s in a.steps)
        assert [s.q_spent for s in b.steps] == sorted({s.q_spent for s in b.steps}), "q grows each step"
        for s in b.steps:
            k = kw.get("top_k", 5)
            assert len(s.top) == k and all(p1 >= p2 for (_, p1), (_, p2) in zip(s.top, s.top[1:]))
            if kw.get("scorer", "bayes") == "bayes":  # the top of the posterior is the confidence after
                assert s.top[0][1] == pytest.approx(s.confidence_after)


def test_trace_with_the_shortlist(classify, p15):
    system = with_name_group(p15)
    res = _run(classify, system, True, stop=StopRule(tau=0.95), shortlist_size=3)
    names = [r for r in res if any(s.group == "class_name" for s in r.steps)]
    assert names, "some image asks the shortlist"
    for r in res:
        assert r.steps[-1].top == r.top and r.steps[-1].q_spent == r.q_spent


def test_record_shape_without_and_with_trace(classify, p15):
    plain = _run(classify, p15, False, n=3, stop=StopRule(tau=0.9))[0].to_dict()
    assert all(set(s) == {"group", "eig", "answer", "answer_prob", "confidence_after"} for s in plain["asked"])
    traced = _run(classify, p15, True, n=3, stop=StopRule(tau=0.9))[0]
    d = json.loads(json.dumps(traced.to_dict()))
    assert d["asked"][-1]["top"] == d["top"] and d["asked"][-1]["q_spent"] == d["q_spent"]
    back = Result.from_dict(d)
    assert back.steps == traced.steps and back.to_dict() == traced.to_dict()
    assert Result.from_dict(plain).to_dict() == plain


@pytest.mark.slow
def test_api_trace_flag():
    pytest.importorskip("fastapi", reason="twentyq serve needs the serve extra: pip install -e '.[serve,test]'")
    from .support.serving import RED, make_client, parts

    with make_client(max_wait_ms=1) as c:
        plain = c.post("/v1/classify", files=parts(("a.png", RED))).json()["results"][0]
        traced = c.post("/v1/classify?trace=1&top_k=2", files=parts(("a.png", RED))).json()["results"][0]
        body = c.post("/v1/classify", files=parts(("a.png", RED)), params={"trace": "false"}).json()["results"][0]
    assert all("top" not in s and "q_spent" not in s for s in plain["asked"]) and body == plain
    assert traced["asked"] and traced["asked"][-1]["top"] == traced["top"]
    assert traced["asked"][-1]["q_spent"] == traced["q_spent"]
    assert all(len(s["top"]) == 2 for s in traced["asked"])
    assert [s["group"] for s in traced["asked"]] == [s["group"] for s in plain["asked"]]
