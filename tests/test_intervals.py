"""Issue 25 item 5: accuracy intervals are exact (Clopper–Pearson), not the percentile bootstrap,
wherever an accuracy interval is recorded or printed (eval summaries, --by, compare, report)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from engine.core.metrics import accuracy_ci, bootstrap_ci, exact_ci


def test_zero_and_all_right_give_non_degenerate_exact_intervals():
    lo, hi = exact_ci(0, 52)
    assert lo == 0.0 and hi == pytest.approx(0.0683, abs=5e-4)  # the bootstrap said [0, 0]
    assert bootstrap_ci(np.zeros(52)) == (0.0, 0.0)  # why it is not used for accuracy
    lo, hi = exact_ci(52, 52)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.0683, abs=5e-4)
    assert exact_ci(7, 85) == pytest.approx((0.0338, 0.1622), abs=5e-4)  # the 7/85
    assert accuracy_ci(np.array([True] * 7 + [False] * 78)) == exact_ci(7, 85)
    assert all(np.isnan(exact_ci(0, 0)))
    with pytest.raises(ValueError):
        exact_ci(3, 2)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 2000), frac=st.floats(0, 1), level=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_exact_interval_contains_k_over_n_inside_0_1_and_has_its_tail_mass(n, frac, level):
    k = int(round(frac * n))
    lo, hi = exact_ci(k, n, level)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert lo < hi  # never degenerate
    a = (1 - level) / 2
    # Clopper–Pearson's defining tails: at p = lo, P(X >= k) = a; at p = hi, P(X <= k) = a
    if k > 0:
        assert binom.sf(k - 1, n, lo) == pytest.approx(a, rel=1e-6, abs=1e-12)
    if k < n:
        assert binom.cdf(k, n, hi) == pytest.approx(a, rel=1e-6, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 300), extra=st.integers(0, 300))
def test_wider_at_higher_level_and_narrower_with_more_data(k, extra):
    n = k + extra
    if n == 0:
        return
    lo95, hi95 = exact_ci(k, n)
    lo99, hi99 = exact_ci(k, n, 0.99)
    assert lo99 <= lo95 and hi95 <= hi99
    lo4, hi4 = exact_ci(4 * k, 4 * n)
    assert hi4 - lo4 < hi95 - lo95


def test_eval_summary_records_the_exact_interval_for_all_wrong_and_by(tmp_path):
    from engine.run.classifier import Classifier
    from engine.run.evaluation import evaluate_classifier

    from .support.data import COLOUR_SYSTEM, solid

    from .support.encoders import FakeEncoder

    rows = ["path,label,source"]
    for i in range(6):  # red images labelled "leaf": every one wrong
        solid("red").save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,leaf,{'a' if i < 2 else 'b'}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    clf = Classifier("fake", COLOUR_SYSTEM, encoder=FakeEncoder())
    rep = evaluate_classifier(clf, str(tmp_path / "d.csv"), by="source")  # adaptive: red is a cherry
    assert rep.accuracy == 0.0 and rep.ci95 == pytest.approx(exact_ci(0, 6)) and rep.ci95[1] > 0.4
    assert rep.ci_method == "Clopper-Pearson"
    assert rep.by["source"]["a"]["ci95"] == pytest.approx(list(exact_ci(0, 2)))
    assert json.loads(json.dumps(rep.to_dict()))["ci_method"] == "Clopper-Pearson"


def test_report_prints_the_exact_interval_even_for_an_old_bootstrap_summary(tmp_path, capsys):
    from engine.cli.app import main

    (tmp_path / "s.json").write_text(json.dumps({"mode": "baseline", "accuracy": 0.0, "ci95": [0.0, 0.0],
                                                 "mean_q": 3.0, "n": 52}))
    assert main(["report", str(tmp_path / "s.json"), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "| s.json | baseline | - | - | 52 | 0.000 | 0.000 | 0.068 |" in out
    import csv

    row = next(csv.DictReader((tmp_path / "t.csv").open()))
    assert float(row["ci95_hi"]) == pytest.approx(exact_ci(0, 52)[1])
