"""The settled stop: a lower bound, under the Gaussian few-shot posterior, on the probability that asking every
unasked group would leave the label where it is (engine.core.gaussian.settled_probability), and the loop, config,
CLI and server that stop on it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax

from engine.common.memo import BoundedMemo
from engine.core import gaussian as GP
from tests.test_gaussian_posterior import lda_calibrations, random_gaussian  # noqa: F401 (a fixture)


def monte_carlo(post: GP.GaussianPosterior, sims: np.ndarray, asked: np.ndarray, offset: np.ndarray, n: int,
                seed: int) -> tuple[float, float]:
    """(P(full-system label == label now), its standard error) for one image, by sampling the model: a class from
    the posterior now, the unasked similarities from that class's Gaussian given the asked ones, and the label from
    the model's own full posterior plus ``offset``. Independent of settled_probability's algebra: it conditions
    the joint Gaussian by scipy-free brute force (the joint of (z_A, z_R) given c)."""
    rng = np.random.default_rng(seed)
    cols = np.repeat(np.arange(len(post.sizes)), post.sizes)
    A = asked[cols]
    R = ~A
    z = (sims - post.mean) / post.scale
    now = log_softmax(offset + post.log_posterior(sims[None], asked[None])[0])
    top = int(now.argmax())
    cls = rng.choice(post.n_classes, size=n, p=np.exp(now) / np.exp(now).sum())
    S_aa, S_ar, S_rr = post.cov[np.ix_(A, A)], post.cov[np.ix_(A, R)], post.cov[np.ix_(R, R)]
    gain = np.linalg.solve(S_aa, S_ar).T if A.any() else np.zeros((R.sum(), 0))
    cond = S_rr - gain @ S_ar if A.any() else S_rr
    L = np.linalg.cholesky(cond)
    full = np.tile(z, (n, 1))
    mu = post.means[cls][:, R] + (z[A][None, :] - post.means[cls][:, A]) @ gain.T
    full[:, R] = mu + rng.standard_normal((n, int(R.sum()))) @ L.T
    label = (offset[None, :] + post.log_posterior(full * post.scale + post.mean)).argmax(axis=1)
    p = float((label == top).mean())
    return p, float(np.sqrt(max(p * (1 - p), 1e-4) / n))


@st.composite
def settle_problem(draw, max_classes=4):
    G = draw(st.integers(2, 3))
    sizes = np.array(draw(st.lists(st.integers(1, 3), min_size=G, max_size=G)), dtype=np.int64)
    C = draw(st.integers(2, max_classes))
    asked = np.array(draw(st.lists(st.booleans(), min_size=G, max_size=G)), bool)
    return sizes, C, draw(st.integers(0, 2**16)), asked, draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(settle_problem())
def test_the_bound_is_below_the_models_own_probability_and_exact_with_one_rival(pb):
    """Never above the model's probability (Monte Carlo, 4,000 draws, 5 SE); with two classes the union bound has
    one term and is that probability. The caller's prior (offset) moves both alike."""
    sizes, C, seed, asked, with_offset = pb
    post = random_gaussian(sizes, C, seed)
    rng = np.random.default_rng(seed + 1)
    sims = post.mean + post.scale * (post.means[rng.integers(C)] + rng.normal(0, 0.5, int(sizes.sum())))
    offset = np.log(rng.dirichlet(np.ones(C))) if with_offset else np.zeros(C)
    now = log_softmax(offset + post.log_posterior(sims[None], asked[None])[0])
    got = post.settled_probability(sims[None], asked[None], now[None], offset[None])[0]
    assert 0.0 <= got <= 1.0
    if asked.all():
        assert got == 1.0
        return
    p, se = monte_carlo(post, sims, asked, offset, 4000, seed)
    assert got <= p + 5 * se + 1e-9
    if C == 2:
        assert abs(got - p) <= 5 * se + 1e-9


@pytest.mark.parametrize("C, seed", [(20, 1), (24, 2), (40, 3)])
def test_with_more_classes_than_components_the_rest_of_the_mass_counts_as_moving(C, seed):
    """Beyond the SETTLE_COMPONENTS most probable classes the bound gives nothing (their mass counts as the label
    moving), so it stays below the model's own probability (Monte Carlo, 4,000 draws) on flat posteriors too."""
    sizes = np.array([3, 3, 2])
    post = random_gaussian(sizes, C, seed, temperature=0.3)  # a low temperature: flat posteriors over many classes
    rng = np.random.default_rng(seed)
    asked = np.array([True, False, False])
    for i in range(3):
        sims = post.mean + post.scale * (post.means[rng.integers(C)] + rng.normal(0, 0.3, 8))
        now = post.log_posterior(sims[None], asked[None])[0]
        assert np.sort(np.exp(now))[::-1][:GP.SETTLE_COMPONENTS].sum() < 0.999  # the cut matters here
        got = post.settled_probability(sims[None], asked[None], now[None])[0]
        p, se = monte_carlo(post, sims, asked, np.zeros(C), 4000, seed + i)
        assert got <= p + 5 * se + 1e-9


def test_a_clear_image_is_settled_and_a_borderline_one_is_not():
    """Far from every rival with the informative groups asked: near 1. Midway between two classes with nothing
    asked: near or below ½ (the unasked similarities decide)."""
    sizes = np.array([2, 2, 2])
    means = np.zeros((2, 6))
    means[1] = 3.0
    post = GP.GaussianPosterior(mean=np.zeros(6), scale=np.ones(6), means=means, cov=np.eye(6),
                                log_prior_c=np.log([0.5, 0.5]), temperature=1.0, shrink=0.0, sizes=sizes,
                                n_dev=np.ones(2, dtype=np.int64))
    clear = np.full(6, 3.0)
    asked = np.array([True, True, False])
    lp = post.log_posterior(clear[None], asked[None])
    assert post.settled_probability(clear[None], asked[None], lp)[0] > 0.999
    mid = np.full(6, 1.5)
    none = np.zeros(3, bool)
    lp = post.log_posterior(mid[None], none[None])
    assert post.settled_probability(mid[None], none[None], lp)[0] <= 0.5 + 1e-9


def test_batches_group_images_by_asked_set_and_keep_each_rows_answer():
    """One call over many images with different asked sets (and more than a chunk of them) gives each image what a
    call on it alone gives."""
    system_sizes = np.array([3, 2, 4])
    post = random_gaussian(system_sizes, 5, 11)
    rng = np.random.default_rng(0)
    B = GP.SETTLE_CHUNK + 7
    sims = rng.normal(0, 0.3, (B, 9))
    asked = rng.random((B, 3)) < 0.5
    offset = np.log(rng.dirichlet(np.ones(5), size=B))
    lp = log_softmax(offset + post.log_posterior(sims, asked), axis=1)
    many = post.settled_probability(sims, asked, lp, offset)
    for i in (0, 1, B // 2, B - 1):
        one = post.settled_probability(sims[i:i + 1], asked[i:i + 1], lp[i:i + 1], offset[i:i + 1])
        assert many[i] == pytest.approx(one[0], abs=1e-12)
    assert (many[asked.all(axis=1)] == 1.0).all()


def test_the_loop_stops_settled_once_the_bound_reaches_settle_and_only_then():
    """Each image stops, reason "settled", at the first step whose bound is ≥ settle (recomputed here from its
    trace); confident, exhausted and budget stops take precedence; numpy and torch agree; settle = 1 never fires."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from engine.run.engines import classify
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = random_gaussian(sizes, system.n_classes, 7, temperature=1.0)
    rng = np.random.default_rng(2)
    truth = rng.integers(system.n_classes, size=12)
    sims = post.mean + post.scale * (post.means[truth] + rng.normal(0, 0.6, (12, int(sizes.sum()))))
    src = ArraySource(sims, system)
    names = [g.name for g in system.groups]
    settle = 0.9
    prior = rng.dirichlet(np.full(system.n_classes, 0.3))
    for offset in (None, np.log(prior)):  # the caller's prior is part of the full system the bound is about
        res = classify_batch(src, system, "fixed", stop=StopRule(settle=settle), answer_model=post, top_k=1,
                             prior=None if offset is None else prior)
        assert {r.stop for r in res} <= {"settled", "exhausted"} and any(r.stop == "settled" for r in res)
        off = np.zeros((1, system.n_classes)) if offset is None else offset[None]
        for i, r in enumerate(res):
            asked = np.zeros((1, len(sizes)), bool)
            bounds = []
            for s in [None] + r.steps:
                if s is not None:
                    asked[0, names.index(s.group)] = True
                lp = log_softmax(off + post.log_posterior(sims[i:i + 1], asked), axis=1)
                bounds.append(post.settled_probability(sims[i:i + 1], asked, lp, off)[0])
            assert all(b < settle for b in bounds[:-1])  # it did not stop early
            if r.stop == "settled":
                assert bounds[-1] >= settle
            else:
                assert asked.all()
    res = classify_batch(src, system, "fixed", stop=StopRule(settle=settle), answer_model=post, top_k=1)
    never = classify_batch(src, system, "fixed", stop=StopRule(settle=1.0), answer_model=post, top_k=1)
    assert {r.stop for r in never} == {"exhausted"}
    both = classify_batch(src, system, "fixed", stop=StopRule(tau=0.6, settle=settle), answer_model=post, top_k=1)
    assert all(r.stop in ("confident", "settled", "exhausted") for r in both)
    assert all(a.q_spent <= b.q_spent for a, b in zip(both, res))
    other = classify(src, system, "fixed", engine="torch", stop=StopRule(settle=settle), answer_model=post, top_k=1)
    assert [(a.label, a.q_spent, a.stop) for a in other] == [(b.label, b.q_spent, b.stop) for b in res]


def test_the_loop_hands_the_model_what_it_has_seen_and_the_callers_prior():
    """The bound is asked about the images still going, with their similarities seen so far, asked sets, posterior
    now and the caller's log prior as the full system's offset."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = random_gaussian(sizes, system.n_classes, 3)
    calls = []

    class Spy:
        conditional, has_head = True, False

        def __getattr__(self, name):
            return getattr(post, name)

        def settled_probability(self, sims, asked, log_post, offset):
            calls.append((sims.copy(), asked.copy(), log_post.copy(), offset.copy()))
            return np.zeros(len(sims))

    rng = np.random.default_rng(1)
    sims = rng.normal(0, 0.3, (4, int(sizes.sum())))
    prior = rng.dirichlet(np.ones(system.n_classes))
    classify_batch(ArraySource(sims, system), system, "fixed", stop=StopRule(settle=0.5), answer_model=Spy(),
                   prior=prior)
    assert len(calls) == len(sizes)  # before each question, never once all are asked
    cols = np.repeat(np.arange(len(sizes)), sizes)
    for j, (seen, asked, lp, off) in enumerate(calls):
        assert (asked.sum(axis=1) == j).all()
        np.testing.assert_allclose(off, np.broadcast_to(np.log(prior), off.shape), atol=1e-12)
        np.testing.assert_allclose(seen[:, asked[0][cols]], sims[:, asked[0][cols]])
        np.testing.assert_allclose(lp, log_softmax(np.log(prior) + post.log_posterior(sims, asked), axis=1),
                                   atol=1e-9)


@pytest.mark.parametrize("value", [0, -0.1, 1.5, True, float("nan"), "0.9"])
def test_a_bad_settle_is_refused(value):
    from engine.core.adaptive import StopRule

    with pytest.raises(ValueError, match="settle == .*must be in \\(0, 1\\]"):
        StopRule(settle=value)


def test_settle_without_a_model_that_predicts_its_similarities_is_refused_in_one_line(tmp_path):
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from engine.run.calibrated import CalibrationUse
    from engine.run.calibration_file import CalibrationError
    from engine.run.config import RunConfig
    from systems import load_system

    system = load_system("pokemon15")
    src = ArraySource(np.zeros((1, system.q_total)), system)
    with pytest.raises(ValueError, match="settle == 0.9 needs an answer model"):
        classify_batch(src, system, "fixed", stop=StopRule(settle=0.9))
    with pytest.raises(CalibrationError, match="--settle 0.9 needs a Gaussian few-shot calibration.*no --calibration"):
        CalibrationUse(None, system).plan(RunConfig(settle=0.9), 100.0)
    CalibrationUse(None, system).plan(RunConfig(mode="full", settle=0.9), 100.0)  # not read outside adaptive
    with pytest.raises(ValueError, match="does not apply with --settle"):
        RunConfig(settle=0.9, target_accuracy=0.8)
    assert "settle" not in RunConfig().to_dict() and RunConfig(settle=0.9).to_dict()["settle"] == 0.9
    assert type(RunConfig(settle=np.float32(0.5)).to_dict()["settle"]) is float  # a numpy number: JSON-able
    assert RunConfig(settle=0.9).stop_rule().settle == 0.9 and RunConfig().stop_rule().settle == 1.0


def test_a_gaussian_calibration_serves_settle_and_an_lr_one_refuses_it(lda_calibrations):
    from engine.core.adaptive import classify_batch
    from engine.core.sources import ArraySource
    from engine.run.calibrated import CalibrationUse
    from engine.run.calibration_file import CalibrationError
    from engine.run.config import RunConfig
    system, sims, _, cals, _ = lda_calibrations
    plan = CalibrationUse(cals["auto"], system).plan(RunConfig(settle=0.95, tau=1.0), 100.0)
    assert plan.stop.settle == 0.95
    res = classify_batch(ArraySource(sims, system), system, plan.policy, stop=plan.stop, logit_scale=plan.logit_scale,
                         channel=plan.channel, answer_model=plan.answer_model)
    assert any(r.stop == "settled" for r in res)
    with pytest.raises(CalibrationError, match="needs a Gaussian few-shot calibration.*calibration"):
        CalibrationUse(cals["lr"], system).check(RunConfig(settle=0.95))


def test_settled_paths_cut_at_a_threshold_are_what_the_loop_does_with_that_settle():
    """trace_paths(settled=True) holds each point's bound; cutting it at s (bench.channels.tau_stop, which the dev
    choice of s uses) gives every image the label and Q of the loop run with StopRule(settle=s)."""
    from bench.channels import tau_stop
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from engine.run.calibration_file import trace_paths
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = random_gaussian(sizes, system.n_classes, 5, temperature=1.0)
    post = replace(post, means=0.15 * post.means)  # classes the full system cannot always tell apart: the bound
    rng = np.random.default_rng(8)  # is then below the confidence (far apart, the two nearly agree)
    truth = rng.integers(system.n_classes, size=20)
    sims = post.mean + post.scale * (post.means[truth] + rng.normal(0, 0.7, (20, int(sizes.sum()))))
    lam = np.full(system.n_groups, 100.0)
    from engine.core.scoring import build_channel

    channel = build_channel(system.rule_matrix, system.option_counts, 0.05)
    paths = trace_paths(sims, truth, system, "eig", lam, channel, post, settled=True)
    plain = trace_paths(sims, truth, system, "eig", lam, channel, post)
    np.testing.assert_array_equal(np.isnan(paths.conf), np.isnan(plain.conf))
    assert not np.allclose(np.nan_to_num(paths.conf), np.nan_to_num(plain.conf))
    for s in (0.6, 0.9, 0.99):
        cor, q = tau_stop(paths, s)
        res = classify_batch(ArraySource(sims, system), system, "eig", stop=StopRule(settle=s), logit_scale=lam,
                             channel=channel, answer_model=post, top_k=1)
        np.testing.assert_array_equal(q, [r.q_spent for r in res])
        np.testing.assert_array_equal(cor, [r.label == system.classes[t] for r, t in zip(res, truth)])
    with pytest.raises(ValueError, match="settled paths need an answer model"):
        trace_paths(sims, truth, system, "eig", lam, channel, None, settled=True)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**16), st.sampled_from([0.0, 0.01, 0.2]),
       st.booleans())
def test_choose_threshold_takes_the_smallest_from_which_every_threshold_keeps_the_label(B, S, seed, margin, before):
    """Brute force, path by path: every grid threshold from the chosen one up keeps ≥ 1 − margin of the paths on
    the label they end with without the stop (at their first ``before`` point, else their last), the one below
    does not; 1 (never) when the top of the grid fails or the chosen one saves no prompt; mean Q and agreement are
    those of the chosen one."""
    from engine.core.stopping import SETTLE_GRID, choose_threshold

    rng = np.random.default_rng(seed)
    stat = rng.choice([0.3, 0.55, 0.8, 0.9, 0.96, 0.999, 1.0], size=(B, S))
    length = rng.integers(1, S + 1, size=B)
    for i, n in enumerate(length):
        stat[i, n:] = np.nan
    label = rng.integers(0, 3, size=(B, S))
    q = np.cumsum(rng.integers(1, 5, size=(B, S)), axis=1).astype(float)
    pre = rng.random((B, S)) < 0.15 if before else None

    def stop_at(i, thr):
        n = length[i]
        return next((j for j in range(n) if (pre is not None and pre[i, j]) or (thr < 1 and stat[i, j] >= thr)),
                    n - 1)

    def share(thr):
        return np.mean([label[i, stop_at(i, thr)] == label[i, stop_at(i, 1.0)] for i in range(B)])

    got = choose_threshold(stat, label, q, margin=margin, before=pre)
    grid = list(SETTLE_GRID) + [1.0]
    ok = [share(t) >= 1 - margin - 1e-12 for t in grid]
    j = len(grid) - 1
    while j > 0 and ok[j - 1]:
        j -= 1
    mean_q = {t: np.mean([q[i, stop_at(i, t)] for i in range(B)]) for t in grid}
    if mean_q[grid[j]] >= mean_q[1.0]:  # saves no prompt: never
        j = len(grid) - 1
    assert got.threshold == grid[j] and ok[-1]
    assert got.saves_nothing == (got.threshold == 1.0 and ok[-2])
    assert got.agreement == pytest.approx(share(got.threshold))
    assert got.mean_q == pytest.approx(np.mean([q[i, stop_at(i, got.threshold)] for i in range(B)]))
    assert got.mean_q_without == pytest.approx(np.mean([q[i, stop_at(i, 1.0)] for i in range(B)]))
    assert got.n_images == B and [t for t, _, _ in got.table] == grid
    with pytest.raises(ValueError, match="one shape"):
        choose_threshold(stat, label[:, :-1] if S > 1 else label[:0], q)


@pytest.mark.parametrize("budget, tau", [(None, 1.0), (None, 0.9), (5, 1.0)])  # Q = 8
def test_settle_auto_keeps_the_label_each_dev_run_would_end_with_without_it(lda_calibrations, budget, tau):
    """Run each fold's select images through the loop with that fold's Gaussian, the run's τ and budget, with and
    without the chosen settle: ≥ 99% end on the same label, and the grid's next lower threshold fails it or one
    above fails (independent of how settle_for traces them). Under a budget the label compared is where the
    budgeted run ends, not the full system's."""
    from engine.core.adaptive import StopRule, classify_batch
    from engine.core.sources import ArraySource
    from engine.core.stopping import SETTLE_GRID

    system, _, _, cals, _ = lda_calibrations
    cal = cals["auto"]
    choice = cal.settle_for("fixed", budget, system, tau)
    assert choice is cal.settle_for("fixed", budget, system, tau)  # memoised, by budget and τ

    def run(thr):
        out = []
        for idx, lams, ch, am, _ in cal.fold_runs(system):
            res = classify_batch(ArraySource(cal.select.sims[idx], system), system, "fixed",
                                 stop=StopRule(tau=tau, budget=budget, settle=thr), logit_scale=lams, channel=ch,
                                 answer_model=am, top_k=1)
            out += [(r.label, r.q_spent) for r in res]
        return out

    without = run(1.0)

    def share(thr):
        return np.mean([a[0] == b[0] for a, b in zip(run(thr), without)])

    if choice.saves_nothing:  # here the thresholds that keep the labels all stop after τ = 0.9 does
        keeps = [share(t) >= 0.99 for t in SETTLE_GRID]
        lowest = next(t for i, t in enumerate(SETTLE_GRID) if all(keeps[i:]))
        assert choice.threshold == 1.0 and tau < 1.0
        assert np.mean([q for _, q in run(lowest)]) == np.mean([q for _, q in without]) == choice.mean_q
        return
    assert choice.threshold < 1.0 and share(choice.threshold) >= 0.99
    assert choice.agreement == pytest.approx(share(choice.threshold))
    assert choice.mean_q == pytest.approx(np.mean([q for _, q in run(choice.threshold)]))
    assert choice.mean_q_without == pytest.approx(np.mean([q for _, q in without]))
    lower = [t for t in SETTLE_GRID if t < choice.threshold]
    if lower:  # every threshold from the chosen one up passes, so the one below must fail
        assert share(lower[-1]) < 0.99
    if budget is not None:
        assert max(q for _, q in without) <= budget


def test_settle_auto_resolves_in_the_plan_and_is_refused_where_it_cannot_be_chosen(lda_calibrations, tmp_path):
    from engine.run.calibrated import CalibrationUse
    from engine.run.calibration_file import CalibrationError, settle_value
    from engine.run.config import RunConfig

    system, _, _, cals, _ = lda_calibrations
    config = RunConfig(policy="fixed", settle="auto", tau=1.0)
    assert config.to_dict()["settle"] == "auto" and config.stop_rule().settle == 1.0
    plan = CalibrationUse(cals["auto"], system).plan(config, 100.0)
    assert plan.stop.settle == cals["auto"].settle_for("fixed", None, system, 1.0).threshold < 1.0
    assert settle_value(cals["auto"], config, system) == plan.stop.settle
    assert settle_value(cals["auto"], RunConfig(mode="full", settle="auto"), system) is None
    with pytest.raises(ValueError, match="settle == 'soon', must be a number in \\(0, 1\\] or 'auto'"):
        RunConfig(settle="soon")
    with pytest.raises(CalibrationError, match="--settle auto needs a Gaussian few-shot calibration"):
        CalibrationUse(cals["lr"], system).plan(config, 100.0)
    with pytest.raises(CalibrationError, match="--settle auto needs a Gaussian"):
        settle_value(None, config, system)
    from dataclasses import replace as dc_replace

    old = dc_replace(cals["auto"], select=None, crossfit=(), _replayed=BoundedMemo())
    with pytest.raises(CalibrationError, match="holds no cross-fitted dev paths.*pass a number to --settle"):
        old.settle_for("fixed", None, system)


def test_the_cli_reads_settle_auto_and_refuses_other_words(capsys):
    from engine.cli import main
    from engine.cli.options import settle_arg

    assert settle_arg("auto") == "auto" and settle_arg(" AUTO ") == "auto" and settle_arg("0.85") == 0.85
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        main(["classify", "x.png", "--settle", "soon"])
    assert e.value.code == 2
    assert "--settle: 'soon' is neither a number in (0, 1] nor 'auto'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", "x.png", "--settle", "x" * 3000])
    assert len(capsys.readouterr().err.splitlines()[-1]) < 200  # a long value is cut, not echoed whole
    assert main(["eval", "--data", "x.csv", "--system", "pokemon15", "--mode", "full", "--settle", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "--settle 0.9: the full mode scores every prompt" in err and len(err.strip().splitlines()) == 1


def test_calibrate_says_what_settle_auto_will_choose_when_it_can(lda_calibrations):
    from engine.cli.calibrate_cmd import settle_summary

    system, _, _, cals, _ = lda_calibrations
    line = settle_summary(cals["auto"], system)
    want = cals["auto"].settle_for("fixed", None, system, 0.9)  # the fixture's calibrations have no auto choice
    assert want.saves_nothing  # at τ = 0.9 the confidence stop ends every dev run first
    assert line == (f"settle auto (fixed, τ=0.9, budget none): the smallest threshold from which on every one keeps "
                    f"the labels saves no prompt on the calibration's {want.n_images} cross-fitted dev images (mean Q "
                    f"{want.mean_q_without:.1f} without it); settle=1, so no image stops settled (chosen again for "
                    "each run's policy, τ and budget)")
    from engine.cli.options import settle_line
    from engine.run.config import RunConfig

    saving = cals["auto"].settle_for("fixed", None, system, 1.0)
    assert settle_line(saving, RunConfig(policy="fixed", settle="auto", tau=1.0)).startswith(
        f"settle auto (fixed, τ=1, budget none): {saving.threshold:g} chosen on the calibration's "
        f"{saving.n_images} cross-fitted dev images")
    assert settle_summary(cals["lr"], system) is None


def test_a_threshold_that_passes_by_luck_below_one_that_fails_is_not_chosen():
    """100 three-point paths that all end on label 0. Path E would stop at 0.5 on label 1; paths C and D get past
    0.5 on label 0 and would stop at 0.6 on label 1. So 0.5 keeps 99 (passes), 0.6 keeps 98 (fails), 0.7 and up
    keep all: the rule takes 0.7, not the 0.5 that passed once."""
    from engine.core.stopping import choose_threshold

    stat = np.tile([0.75, 0.8, 1.0], (100, 1))
    label = np.zeros((100, 3), dtype=int)
    q = np.tile([0.0, 5.0, 10.0], (100, 1))
    stat[0], label[0] = [0.52, 0.3, 1.0], [1, 0, 0]  # E
    stat[1], label[1] = [0.55, 0.65, 1.0], [0, 1, 0]  # C
    stat[2], label[2] = [0.55, 0.62, 1.0], [0, 1, 0]  # D
    got = choose_threshold(stat, label, q, grid=(0.5, 0.6, 0.7, 0.8))
    shares = {t: a for t, a, _ in got.table}
    assert shares == {0.5: 0.99, 0.6: 0.98, 0.7: 1.0, 0.8: 1.0, 1.0: 1.0}  # pass, fail, pass
    assert got.threshold == 0.7 and got.agreement == 1.0


def test_first_stop_reads_the_last_point_that_is_not_nan_and_refuses_bad_shapes():
    from engine.core.stopping import choose_threshold, first_stop

    stat = np.array([[0.2, np.nan, 0.3], [np.nan, np.nan, np.nan], [0.95, 0.96, np.nan]])
    np.testing.assert_array_equal(first_stop(stat, 0.5), [2, 0, 0])
    np.testing.assert_array_equal(first_stop(stat, 1.0), [2, 0, 1])  # 1: never on the statistic
    np.testing.assert_array_equal(first_stop(stat, 0.96), [2, 0, 1])  # ≥, exactly as the loop compares
    np.testing.assert_array_equal(first_stop(stat, 1.0, before=np.array([[0, 0, 1], [1, 1, 1], [0, 1, 0]], bool)),
                                  [2, 0, 1])
    with pytest.raises(ValueError, match="before should have stat's shape"):
        first_stop(stat, 0.5, before=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"\(B, S\) array"):
        first_stop(np.ones(3), 0.5)
    empty = choose_threshold(np.zeros((0, 2)), np.zeros((0, 2), int), np.zeros((0, 2)))
    assert empty.threshold == 1.0 and empty.n_images == 0  # no path, no evidence: never
    assert not empty.saves_nothing  # for want of paths, not of a saving


def test_settle_auto_refuses_runs_its_dev_paths_do_not_describe(lda_calibrations):
    from engine.run.calibrated import CalibrationUse
    from engine.run.calibration_file import CalibrationError
    from engine.run.config import RunConfig

    system, _, _, cals, _ = lda_calibrations
    use = CalibrationUse(cals["auto"], system)
    with pytest.raises(CalibrationError, match="traced without δ.*--delta 0.2"):
        use.plan(RunConfig(policy="fixed", settle="auto", delta=0.2), 100.0)
    with pytest.raises(CalibrationError, match="random order of seed 0, not seed 3"):
        use.plan(RunConfig(policy="random", seed=3, settle="auto"), 100.0)
    assert use.plan(RunConfig(policy="random", settle="auto"), 100.0).stop.settle <= 1.0  # seed 0: traced
    from engine.run.calibrated import CalibrationWarning

    with pytest.warns(CalibrationWarning, match="delta 0.2"):  # δ with a Gaussian warns, as before; a number is
        assert use.plan(RunConfig(policy="fixed", settle=0.9, delta=0.2), 100.0).stop.settle == 0.9  # as given


def test_a_traced_path_starts_on_the_answer_models_prior():
    from engine.run.calibration_file import trace_stop_paths
    from systems import load_system

    system = load_system("pokemon15")
    sizes = np.asarray(system.option_counts)
    post = random_gaussian(sizes, system.n_classes, 9)
    top = int(np.argmax(post.log_prior_c))
    assert top != 0
    p = trace_stop_paths(np.zeros((2, int(sizes.sum()))), system, "fixed", np.full(system.n_groups, 100.0), None,
                         post, settled=True)
    assert (p.label[:, 0] == top).all() and np.allclose(p.conf[:, 0], np.exp(post.log_prior(1)).max())


def test_the_calibrations_memo_of_settle_choices_stays_bounded(lda_calibrations):
    """A server's clients choose τ and budgets: the replays and choices kept per calibration are capped."""
    system, _, _, cals, _ = lda_calibrations
    cal = replace(cals["auto"], _replayed=BoundedMemo(limit=3))
    first = cal.settle_for("fixed", None, system, 0.9)
    for tau in (0.5, 0.6, 0.7, 0.8):
        cal.settle_for("fixed", None, system, tau)
    assert len(cal._replayed) == 3
    again = cal.settle_for("fixed", None, system, 0.9)  # dropped, made again: the same choice
    assert again is not first and again.threshold == first.threshold and again.agreement == first.agreement


def test_settle_auto_takes_no_threshold_that_saves_no_prompt_and_says_so(lda_calibrations):
    """Under a budget that affords no question every threshold keeps every label and saves nothing: the choice is
    1 (never), and the line says it is for want of a saving (it printed 'mean Q 0.0 instead of 0.0')."""
    from engine.cli.options import settle_line
    from engine.run.config import RunConfig

    system, _, _, cals, _ = lda_calibrations
    assert min(len(g.options) for g in system.groups) > 1
    choice = cals["auto"].settle_for("fixed", 1, system, 1.0)
    assert choice.threshold == 1.0 and choice.saves_nothing and choice.mean_q == choice.mean_q_without == 0.0
    line = settle_line(choice, RunConfig(policy="fixed", budget=1, tau=1.0, settle="auto"))
    assert "from which on every one keeps the labels saves no prompt on the calibration's" in line
    assert "mean Q 0.0 without it); settle=1" in line and "instead of" not in line
    assert not cals["auto"].settle_for("fixed", None, system, 1.0).saves_nothing  # it does save without a budget


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 10), st.integers(1, 6), st.integers(0, 2**16), st.floats(0.0, 1.0))
def test_hindsight_stop_is_the_first_point_on_the_final_label_and_no_threshold_stops_sooner_keeping_it(B, S, seed,
                                                                                                     t):
    """Brute force, path by path: the first column whose label is the path's last; and a threshold stop that
    keeps every path's final label never stops a path before that column (it is a bound from below)."""
    from engine.core.stopping import first_stop, hindsight_stop

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, size=(B, S))
    stat = rng.random((B, S))
    length = rng.integers(1, S + 1, size=B)
    for i, n in enumerate(length):
        label[i, n:], stat[i, n:] = -1, np.nan
    got = hindsight_stop(label)
    want = [next(j for j in range(n) if label[i, j] == label[i, n - 1]) for i, n in enumerate(length)]
    np.testing.assert_array_equal(got, want)
    at = first_stop(stat, t)
    rows = np.arange(B)
    keeps = label[rows, at] == label[rows, length - 1]
    assert (at[keeps] >= got[keeps]).all()


def test_hindsight_stop_refuses_bad_shapes_and_empty_paths():
    from engine.core.stopping import hindsight_stop

    assert hindsight_stop(np.zeros((0, 3), int)).shape == (0,)
    np.testing.assert_array_equal(hindsight_stop(np.array([[2, 1, 2, -1], [0, 1, 1, 1]])), [0, 1])
    with pytest.raises(ValueError, match=r"\(B, S\) array"):
        hindsight_stop(np.ones(3, int))
    with pytest.raises(ValueError, match="needs its first point"):
        hindsight_stop(np.array([[-1, -1]]))
