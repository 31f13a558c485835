"""A calibration file: how well a model answers a system's questions, fitted on dev images, and used.

    twentyq calibrate --data dev.csv --system S --model M --out cal.json
    twentyq eval --data test.csv --system S --model M --calibration cal.json --target-accuracy 0.8

Contract (these names are stable; the CLI, the Python API, Ray and the benchmarks use them):

- :class:`Calibration` (frozen): ``channels`` (:class:`engine.core.channel_fit.AnswerChannels`: λ_g,
  confusions, reliability, n_dev, ε), ``model`` / ``model_id`` / ``revision`` (the model string, the
  loaded encoder's ``model_id`` and the hub revision), ``system_name`` / ``system_sha256``
  (:func:`engine.run.provenance.system_hash`), ``sizes`` (G,) K_g, ``dev`` (the dev split: data source,
  rows hash, ``image_sha256`` of every dev image, ``seed``, ``fraction``), ``metrics`` (dev NLL, ECE and
  accuracy of the full system and of adaptive ``eig`` at τ=0.9, before and after, in sample on the dev images),
  ``paths`` ({policy: :class:`PolicyPaths`}, one τ=1 cross-fitted run per built-in policy on the select part,
  i.e. every dev image), ``dev_order``
  (the dev-order policy's order), ``auto`` (the auto policy's choice and figures), ``select``
  (:class:`SelectPart`: the select part's similarities, classes and folds), ``crossfit`` (one
  :class:`FoldModel` per fold), ``path`` / ``sha256`` (the file it was
  read from or written to; None before).

  ``channel(system)`` the fitted answer channel; ``check(system, model_id=None)`` refuses a mismatch
  (:class:`CalibrationMismatch`; ``check(system, model_id, model)``); ``tau_for(policy, target, budget=None, alpha=0.1)`` a
  :class:`engine.core.channel_fit.TauChoice`; ``provenance()`` what summaries record; ``to_dict()``.
- :func:`calibrate` (a loaded Classifier, a DataSpec → Calibration): the dev images are embedded once,
  every prompt's similarity computed, and :func:`fit_calibration` fits on them. The other images (the
  test split) are never read.
- :func:`fit_calibration` the same from arrays (dev similarities and true classes).
- :func:`save_calibration`, :func:`load_calibration` (JSON, schema :data:`SCHEMA`); ``load_calibration`` also
  takes the name of a calibration shipped with the package (:func:`shipped_calibrations`, e.g.
  ``pokemon15_gen1.sprites``, the shipped probe's on ``pokemon15_gen1``) when its argument is not an
  existing path, so ``--calibration pokemon15_gen1.sprites`` works wherever twentyq is installed.
- :func:`exclude_dev` drops a dataset's rows whose image content is a dev image of the calibration;
  :func:`image_sha256` is that content hash (a file's sha256, as the image cache keys images).
- :class:`CalibrationError` (a file that cannot be used, exit 2), :class:`CalibrationMismatch`.

Cross-fitting (issue 26): the answer model and the dev order shipped are fitted on *every* dev image.
Whatever needs held-out predictions (the τ tables, the auto choice, the keep-the-better decisions) uses
cross-fitted ones: the dev images are dealt into 3 stratified folds
(:func:`engine.core.answer_models.stratified_folds`, seeded; ``select.fold`` in the file), and each
fold's images are traced by the loop with the model (and dev order) fitted on the other folds
(``crossfit``: one :class:`FoldModel` per fold, with the same settings — rule variant, L2 strengths,
head — as the shipped model). Choosing τ on images the model never saw is what makes learn-then-test's
guarantee hold (on the fitted images themselves the posterior is optimistic); the fold models see 2/3
of dev, the shipped one all of it, so the tables are slightly pessimistic for it (checked by
``bench.target_repeats``). The select part (``select``) is now every dev image. Files made with a
disjoint fit/select split (an earlier twentyq, ``dev['fit_select']``) still load and work as before.

Moving a zero-shot calibration to other classes: how a model answers each question (λ_g, the option
confusions M_g, the reliabilities w_g) does not depend on which classes are asked about, so a
calibration may be used on a system with other classes that asks the same questions: ``check`` keys on
``groups_sha256`` (:func:`engine.run.provenance.groups_hash`: every group's name, template and options)
when the system hash differs, and refuses a few-shot file (its posterior and per-class channel are for
its own classes) and a file without that hash. :meth:`Calibration.for_system` is what the CLI and the
Classifier use: on another system it drops the τ tables, select part, dev order and auto choice (fitted
on the source classes) and refuses their use by name. The file records ``source`` (system, the classes
fitted on, dev data). The "cannot hurt" rule is the source's: a fitted part was kept only when it beat the
uncalibrated channel on held-out dev images of the source classes; nothing can check it on the target
classes without labels (``twentyq eval`` with and without ``--calibration`` on labelled target images does).

Policies of a calibration: ``dev_order`` (a static order, greedy by dev accuracy gain per prompt on the
fit part; ``--policy dev-order``) and ``auto`` (``--policy auto``: among fixed, dev-order, eig and
lookahead, the highest normalised budget AUC on the cross-fitted paths, fixed unless clearly beaten; the
choice, every candidate's AUC with its 95% CI and its difference to fixed are recorded).
:func:`resolve_policy` turns a RunConfig's policy into the object that runs.

Target accuracy: a deterministic policy's path does not depend on τ (τ only cuts it short), so one
run at τ=1 per policy, with the confidence and correctness after every step, gives the outcome at
every τ; :func:`engine.core.channel_fit.choose_tau` picks τ by learn-then-test (fixed-sequence
exact binomial tests, error level α=0.1, i.e. the chosen τ's accuracy among images that stop on
confidence is ≥ the target with 90% confidence). For ``auto`` the level is α divided by the number of
candidates (Bonferroni: the policy was chosen on the same select images). Assumptions, checked where
they can be:

- under a ``budget`` the loop skips a group the remaining budget cannot pay for and asks a later,
  cheaper one, so a budgeted path is not a cut of the τ=1 one. The file keeps the select part's
  similarities and classes (``select``), and :meth:`Calibration.tau_for` replays the loop itself on
  them under that budget (exact, every policy). Only a file without them (an older twentyq), or a
  call without the system, falls back to cutting each τ=1 path after its last step with Q ≤ B
  (exact only while no path meets an unaffordable group);
- the tables are for the Bayes scorer, no shortlist and δ=0 (RunConfig refuses other settings with a
  target accuracy), and the ``random`` policy's seed 0;
- only the built-in policies (those of the ``policies`` package) have tables: a plug-in policy is
  refused, since the calibration cannot know its paths.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import numpy as np

from engine.common.errors import UserInputError
from engine.common.files import hash_file, json_safe
from engine.common.memo import BoundedMemo
from engine.core import answer_models as AM, gaussian as GP
from engine.core.adaptive import NAME_GROUP
from engine.core.answer_models import FewShotModel
from engine.core.channel_fit import (
    AnswerChannels, TauChoice, choose_tau, dev_greedy_order, expected_calibration_error, fit_answer_channels,
    full_log_posterior, pick_policy, split_by_image, true_class_nll,
)
from engine.core.metrics import budget_aucs, budget_grid
from engine.core.predictive import PredictivePosterior
from engine.core.scoring import check_confusion, check_eps, check_logit_scales
from engine.core.sources import ArraySource
from engine.run.config import DEFAULT_EPS
from engine.run.provenance import groups_hash, package_version, system_hash
from engine.run.store import fingerprint
from policies import POLICIES, get_policy, list_policies
from policies.builtin import AUTO_CANDIDATES
from systems.format import AttributeSystem

SCHEMA = "twentyq-calibration-v2"  # v2 adds "setting", "few_shot" and "decision" (issue 26)
SCHEMA_V1 = "twentyq-calibration-v1"  # still read: a zero-shot calibration without a recorded decision
SETTINGS = ("auto", "few-shot", "zero-shot")
#: few-shot posteriors: auto (the Gaussian when it beats the group-masked LR on held-out dev; fit_answer_model),
#: either one alone
POSTERIORS = ("auto", "lr", "gaussian")
DEFAULT_ALPHA = 0.1  # choose_tau's error level: target reached with 90% confidence
METRIC_POLICY, METRIC_TAU = "eig", 0.9  # the adaptive setting whose dev accuracy the file reports
N_BINS = 10
FIT_FRACTION_DEPRECATED = ("fit_fraction (--fit-fraction) is deprecated and ignored: calibrate now fits on every dev "
                           "image and chooses τ and the auto policy on cross-fitted folds")
AUTO_BUDGETS = 9  # budget points of the auto policy's sweep (engine.core.metrics.budget_grid)
AUTO_BOOT = 1000


class CalibrationError(UserInputError, ValueError):
    """A calibration file that cannot be read or used (one line naming the file and the fix)."""


class CalibrationMismatch(CalibrationError):
    """A calibration fitted for another model or system."""


@dataclass(frozen=True, eq=False)
class PolicyPaths:
    """One policy's τ=1 paths on the dev images, for :func:`choose_tau`.

    conf : (B, S) max posterior before any question (column 0, the prior) and after each step; NaN after
        an image's last step. correct : (B, S) bool, whether the top class then is the true one.
    q : (B, S) prompts spent by then (-1 after the last step).
    """

    conf: np.ndarray
    correct: np.ndarray
    q: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        n = (~np.isnan(self.conf)).sum(axis=1)
        return {"conf": [self.conf[i, :k].tolist() for i, k in enumerate(n)],
                "correct": [self.correct[i, :k].astype(int).tolist() for i, k in enumerate(n)],
                "q": [self.q[i, :k].tolist() for i, k in enumerate(n)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicyPaths":
        rows = [(np.asarray(c, float), np.asarray(k, bool), np.asarray(q, np.int64))
                for c, k, q in zip(d["conf"], d["correct"], d["q"], strict=True)]
        if any(not (len(c) == len(k) == len(q) >= 1) for c, k, q in rows):
            raise ValueError("every path needs as many conf, correct and q entries, at least one")
        s = max((len(c) for c, _, _ in rows), default=1)
        conf, correct, q = np.full((len(rows), s), np.nan), np.zeros((len(rows), s), bool), np.full((len(rows), s), -1)
        for i, (c, k, qq) in enumerate(rows):
            conf[i, :len(c)], correct[i, :len(c)], q[i, :len(c)] = c, k, qq
        return cls(conf, correct, q)


@dataclass(frozen=True, eq=False)
class SelectPart:
    """The select part of the dev images (the images whose held-out paths give the τ tables), as the loop sees them.

    sims : (B, Q) similarities to every prompt; truth : (B,) class indices; fold : (B,) the cross-fitting
    fold of each image (its paths run on :attr:`Calibration.crossfit`'s model of that fold), or None for a
    disjoint select part (files from a fit/select split). Enough to replay any policy's path under any
    budget exactly (:meth:`Calibration.replay`); JSON floats round-trip exactly.
    """

    sims: np.ndarray
    truth: np.ndarray
    fold: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"sims": self.sims.tolist(), "truth": self.truth.tolist()}
        if self.fold is not None:
            out["fold"] = self.fold.tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SelectPart":
        sims = np.asarray(d["sims"], dtype=np.float64)
        truth = np.asarray(d["truth"], dtype=np.int64)
        if sims.ndim != 2 or truth.shape != (sims.shape[0],) or not np.isfinite(sims).all():
            raise ValueError("select: sims should be finite (B, Q) and truth (B,)")
        if (truth < 0).any():
            raise ValueError("select: truth should hold class indices (whole numbers >= 0)")
        fold = None if d.get("fold") is None else np.asarray(d["fold"], dtype=np.int64)
        if fold is not None and (fold.shape != truth.shape or (fold < 0).any()):
            raise ValueError("select: fold should hold one fold index (a whole number >= 0) per image")
        return cls(sims, truth, fold)


@dataclass(frozen=True, eq=False)
class FoldModel:
    """The answer model fitted on the dev images outside one cross-fitting fold (its images' paths run on it).

    channels : the rule channel's :class:`AnswerChannels`; few_shot : a FewShotModel or None, as the
    calibration's; dev_order : the dev order fitted on the same images (group indices).
    """

    channels: AnswerChannels
    few_shot: Any = None
    dev_order: tuple[int, ...] | None = None

    def channel(self, system: AttributeSystem):
        if self.few_shot is not None:
            return self.few_shot.channel(system.rule_matrix, system.option_counts, self.channels.eps)
        return self.channels.channel(system.rule_matrix, system.option_counts)

    def answer_model(self):
        return None if self.few_shot is None else self.few_shot.posterior


@dataclass(frozen=True, eq=False)
class Calibration:
    """A fitted calibration (see the module docstring for every field)."""

    channels: AnswerChannels
    model: str
    model_id: str
    system_name: str
    system_sha256: str
    sizes: tuple[int, ...]
    groups: tuple[str, ...]
    lam0: float
    revision: str | None = None
    dev: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, PolicyPaths] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None
    setting: str = "zero-shot"
    few_shot: Any = None  # an engine.core.answer_models.FewShotModel in the few-shot setting
    decision: dict[str, Any] = field(default_factory=dict)
    dev_order: tuple[int, ...] | None = None  # the dev-order policy's order (group indices), None in older files
    auto: dict[str, Any] = field(default_factory=dict)  # the auto policy's choice and its select-part figures
    select: "SelectPart | None" = None  # the select part's similarities and classes, for exact budgeted paths
    # zero-shot transfer to other classes (see "Moving a zero-shot calibration" in the module docstring)
    groups_sha256: str | None = None  # engine.run.provenance.groups_hash of the system fitted for; None in older files
    source: dict[str, Any] = field(default_factory=dict)  # the classes and data the channels were fitted on
    moved_to: dict[str, Any] = field(default_factory=dict)  # {system, sha256} once moved (:meth:`for_system`)
    crossfit: tuple = ()  # one FoldModel per fold of select.fold; () for a disjoint select part
    predictive: Any = None  # engine.core.predictive.PredictiveTerms: the few-shot posterior's own EIG (None: the channel's)
    # memoised replays and threshold choices ((policy, budget) -> PolicyPaths, ...), bounded: a server's clients
    # choose the budgets and τs
    _replayed: BoundedMemo = field(default_factory=BoundedMemo, repr=False)

    # ------------------------------------------------------------------ use
    def channel(self, system: AttributeSystem):
        """The fitted answer channel for ``system`` (checked against it first)."""
        self.check(system)
        if self.few_shot is not None:
            return self.few_shot.channel(system.rule_matrix, system.option_counts, self.channels.eps)
        return self.channels.channel(system.rule_matrix, system.option_counts)

    def answer_model(self, system: AttributeSystem):
        """The few-shot posterior the loop reports and stops on (None: the channel's Bayes update); with the
        predictive terms, wrapped so that the loop's EIG is the predictive's (engine.core.predictive)."""
        self.check(system)
        post = None if self.few_shot is None else self.few_shot.posterior
        if post is not None and self.predictive is not None:
            from engine.core.predictive import PredictivePosterior

            return PredictivePosterior(post, self.predictive)
        return post

    @property
    def lams(self) -> np.ndarray:
        """(G,) λ_g."""
        return self.channels.lams

    def check(self, system: AttributeSystem, model_id: str | None = None, model: str | None = None) -> None:
        """Refuse (CalibrationMismatch, one line naming both and the fix) a system or model it was not fitted for.
        A system with other classes but the same questions passes when the calibration can move there
        (:meth:`check_transfer`)."""
        got = system_hash(system)
        fix = (f"run 'twentyq calibrate --data DEV.csv --system {system.name} --model MODEL --out cal.json' "
               "for this model and system")
        if got != self.system_sha256:
            self.check_transfer(system, got, fix)
        if model_id is not None and model_id != self.model_id:
            raise CalibrationMismatch(f"calibration {self.where()} was fitted for model {self.model!r} (id "
                                      f"{self.model_id}), not {'this model' if model is None else repr(model)} (id {model_id}); {fix}")
        if tuple(int(k) for k in system.option_counts) != self.sizes:  # unreachable with equal hashes
            raise CalibrationMismatch(f"calibration {self.where()}: its group sizes {self.sizes} do not match "
                                      f"system {system.name!r}; {fix}")
        if got == self.system_sha256 and self.select is not None and (self.select.truth >= system.n_classes).any():
            raise CalibrationError(f"calibration {self.where()} is damaged: field select.truth names a class index "
                                   f"beyond the system's {system.n_classes} classes; make it again with 'twentyq calibrate'")

    def check_transfer(self, system: AttributeSystem, got: str, fix: str) -> None:
        """Refuse (CalibrationMismatch) using this calibration on ``system`` (system hash ``got``, not the one it
        was fitted for) unless it can move there: the same questions (groups hash) and nothing class-specific
        in use (no few-shot model). Only λ_g, the option confusions and the reliabilities then apply."""
        was = (f"calibration {self.where()} was fitted for system {self.system_name!r} (sha256 "
               f"{self.system_sha256[:12]}), not system {system.name!r} (sha256 {got[:12]})")
        if self.groups_sha256 is not None and groups_hash(system) != self.groups_sha256:
            raise CalibrationMismatch(f"{was}, and the questions differ (templates or options; groups sha256 "
                                      f"{self.groups_sha256[:12]} vs {groups_hash(system)[:12]}): a calibration moves "
                                      f"to other classes only with the same questions; {fix}")
        if self.few_shot is None and self.groups_sha256 is None:
            raise CalibrationMismatch(f"{was}, and it records no hash of its questions (made by an older twentyq), "
                                      f"so it cannot move to other classes; {fix}")
        if self.few_shot is not None:
            raise CalibrationMismatch(f"{was}; it is few-shot, and its posterior and per-class answer distributions "
                                      f"are for the classes of {self.system_name!r} only: to move a calibration to "
                                      "other classes make a zero-shot one ('twentyq calibrate --setting zero-shot'), "
                                      "or calibrate on labelled images of these classes")

    def transferred(self, system: AttributeSystem) -> bool:
        """Whether ``system`` is not the one it was fitted for (it has other classes; :meth:`check` passed)."""
        return system_hash(system) != self.system_sha256

    def for_system(self, system: AttributeSystem) -> "Calibration":
        """This calibration as it applies to ``system`` (checked first): itself for the system it was fitted for;
        for another one with the same questions (zero-shot transfer) a copy without the parts fitted on the
        source classes (τ tables, select part and fold models, dev order, auto choice), whose use is then refused by name."""
        self.check(system)
        if not self.transferred(system) or self.moved_to.get("sha256") == system_hash(system):
            return self
        return replace(self, paths={}, select=None, crossfit=(), dev_order=None, auto={}, _replayed=BoundedMemo(),
                       moved_to={"system": system.name, "sha256": system_hash(system)})

    def refuse_moved(self, what: str, fix: str) -> None:
        """A CalibrationError when this calibration was moved to other classes (``what`` does not transfer)."""
        if self.moved_to:
            raise CalibrationError(f"{what}: calibration {self.where()} was fitted on the classes of system "
                                   f"{self.system_name!r} and moved to system {self.moved_to['system']!r} (zero-shot: "
                                   f"only λ_g, option confusions and reliabilities transfer), and its {what} was "
                                   f"fitted on those other classes; {fix}, or calibrate on labelled images of these "
                                   "classes")

    def where(self) -> str:
        return repr(self.path) if self.path else "(in memory)"

    def tau_for(self, policy: str, target: float, budget: int | None = None, alpha: float = DEFAULT_ALPHA,
                system: AttributeSystem | None = None) -> TauChoice:
        """The τ for ``target`` accuracy among images that stop on confidence, from the select-part paths of
        ``policy`` (``auto``: of its choice, at α / number of candidates) under ``budget`` (replayed exactly
        when ``system`` is given and the file holds the select part; see the module docstring). A policy
        without tables is a CalibrationError."""
        self.refuse_moved("τ table for --target-accuracy", "stop at a fixed --tau instead")
        if system is not None and self.transferred(system):  # not moved yet: its paths are of the source classes
            self.for_system(system).refuse_moved("τ table for --target-accuracy", "stop at a fixed --tau instead")
        if policy == "auto":
            policy = self.auto_choice()
            alpha = alpha / len(AUTO_CANDIDATES)
        if policy not in self.paths:
            if not is_builtin_policy(policy):
                raise CalibrationError(f"--target-accuracy: policy {policy!r} is a plug-in, and the calibration "
                                       f"holds dev paths for the built-in policies only ({', '.join(sorted(self.paths))}); "
                                       "use one of them, or --tau instead of --target-accuracy")
            raise CalibrationError(f"--target-accuracy: calibration {self.where()} holds no dev paths for policy "
                                   f"{policy!r} (made by an older twentyq); rerun 'twentyq calibrate' to add them")
        p = self.paths[policy]
        if budget is not None and (p.q > budget).any():  # some path meets the budget: not the τ=1 one
            if system is not None and self.select is not None:
                p = self.replay(policy, budget, system)
            else:  # an older file, or no system: the τ=1 path cut after its last step within the budget
                conf = p.conf.copy()
                conf[p.q > budget] = np.nan
                p = PolicyPaths(conf, p.correct, p.q)
        return choose_tau(p.conf, p.correct, target, alpha=alpha)

    def replay(self, policy: str, budget: int | None, system: AttributeSystem) -> PolicyPaths:
        """``policy``'s paths on the select part under ``budget``, traced by the loop itself (memoised)."""
        from engine.core.adaptive import StopRule

        if self.select is None:
            raise CalibrationError(f"calibration {self.where()} holds no select-part similarities (made by an "
                                   "older twentyq); rerun 'twentyq calibrate'")
        return self._replayed.get((policy, budget), lambda: self.select_paths(policy, system,
                                                                            stop=StopRule(budget=budget)))

    def fold_runs(self, system: AttributeSystem) -> list[tuple[np.ndarray, Any, Any, Any, Any]]:
        """How the select images are traced: [(their indices, λ_g, channel, answer model, dev order)], one entry
        per cross-fitting fold (its model fitted on the other folds), or one with the shipped model for a
        disjoint select part."""
        self.check(system)
        sel = self.select
        if not self.crossfit:
            return [(np.arange(len(sel.truth)), self.lams, self.channel(system), self.answer_model(system),
                     self.dev_order)]
        return [(np.nonzero(sel.fold == f)[0], fm.channels.lams, fm.channel(system), self._fold_answer_model(f, fm),
                 fm.dev_order) for f, fm in enumerate(self.crossfit)]

    def _fold_answer_model(self, f: int, fm: FoldModel) -> Any:
        """Fold ``f``'s posterior; with predictive terms, its EIG from the dev images outside the fold (their
        out-of-fold terms, whose posteriors did see fold ``f``'s images: a second-order leak, not measured)."""
        post = fm.answer_model()
        if post is None or self.predictive is None:
            return post

        return PredictivePosterior(post, self.predictive.without_fold(f))

    def select_paths(self, policy: str, system: AttributeSystem, stop: Any = None) -> PolicyPaths:
        """``policy``'s paths (:func:`trace_paths`) on the select images, each fold by its own model."""
        p = self.select_stop_paths(policy, system, stop)
        return PolicyPaths(p.conf, p.label == self.select.truth[:, None], p.q)

    def select_stop_paths(self, policy: str, system: AttributeSystem, stop: Any = None, settled: bool = False
                          ) -> StopPaths:
        """``policy``'s traced paths (:func:`trace_stop_paths`) on the select images, each fold by its own model."""
        parts = [(idx, trace_stop_paths(self.select.sims[idx], system, self.policy_object(policy, order), lams, ch, am,
                                        stop, settled=settled))
                 for idx, lams, ch, am, order in self.fold_runs(system) if len(idx)]
        return StopPaths.stack(parts, len(self.select.truth))

    def settle_for(self, policy: str, budget: int | None, system: AttributeSystem, tau: float = 1.0) -> Any:
        """The settled stop's threshold for ``policy`` under ``budget`` and confidence stop ``tau`` (``--settle
        auto``): an :class:`engine.core.stopping.ThresholdChoice` on the select images' cross-fitted paths (each
        fold traced by the Gaussian fitted on the other folds), against the label each path ends with without the
        settled stop (memoised)."""
        from engine.core.adaptive import StopRule
        from engine.core.stopping import SETTLE_GRID, choose_threshold

        self.refuse_moved("settle threshold for --settle auto", "pass a number to --settle")
        if self.select is None or not self.crossfit:
            raise CalibrationError(f"--settle auto: calibration {self.where()} holds no cross-fitted dev paths (made "
                                   "by an older twentyq); rerun 'twentyq calibrate', or pass a number to --settle")
        if policy == "auto":
            policy = self.auto_choice()
        def choose():
            p = self._replayed.get(("settle paths", policy, budget), lambda: self.select_stop_paths(
                policy, system, stop=StopRule(budget=budget), settled=True))
            before = (np.nan_to_num(p.conf, nan=-np.inf) >= tau) if tau < 1.0 else None  # the loop's comparison
            return choose_threshold(p.bound, p.label, p.q, grid=SETTLE_GRID, before=before)

        return self._replayed.get(("settle", policy, budget, float(tau)), choose)

    def auto_choice(self) -> str:
        """The policy ``auto`` runs with this calibration (a CalibrationError for a file without the choice)."""
        self.refuse_moved("auto policy choice", "use --policy fixed, eig or lookahead")
        if not self.auto.get("choice"):
            raise CalibrationError(f"--policy auto: calibration {self.where()} holds no auto choice (made by an "
                                   "older twentyq); rerun 'twentyq calibrate'")
        return str(self.auto["choice"])

    def policy_object(self, name: str, order: tuple[int, ...] | None = None) -> Any:
        """The policy object ``name`` runs as with this calibration (dev-order with its order — or ``order``, a
        fold's —, auto as its choice, random with seed 0, as traced)."""
        if name == "auto":
            name = self.auto_choice()
        if name == "dev-order":
            self.refuse_moved("dev order", "use --policy fixed, eig or lookahead")
            order = self.dev_order if order is None else order
            if order is None:
                raise CalibrationError(f"--policy dev-order: calibration {self.where()} holds no dev order (made by "
                                       "an older twentyq); rerun 'twentyq calibrate'")
            return get_policy("dev-order", order=order)
        return get_policy(name)

    def provenance(self) -> dict[str, Any]:
        """What a summary records: the file, its sha256, the model and the system it was fitted for."""
        return {"path": self.path, "sha256": self.sha256, "model": self.model, "model_id": self.model_id,
                "system": self.system_name, "system_sha256": self.system_sha256,
                "dev_images": len(self.dev.get("image_sha256", ())),
                **({"moved_to": self.moved_to["system"], "source": self.source} if self.moved_to else {})}

    def identity(self) -> dict[str, Any]:
        """What changes results (for fingerprints): the file's content hash, model and system; not its path."""
        return {"sha256": self.sha256 or content_sha256(self.to_dict()), "model_id": self.model_id,
                "system_sha256": self.system_sha256}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        ch = self.channels
        groups = _groups_dict(ch, self.groups, self.sizes)
        return {"format": SCHEMA, "twentyq": package_version(), "setting": self.setting,
                "few_shot": None if self.few_shot is None else self.few_shot.to_dict(), "decision": self.decision,
                "model": {"model": self.model, "model_id": self.model_id, "revision": self.revision},
                "system": {"name": self.system_name, "sha256": self.system_sha256,
                           **({} if self.groups_sha256 is None else {"groups_sha256": self.groups_sha256})},
                **({"source": self.source} if self.source else {}),
                "channels": {"eps": float(ch.eps), "lam0": float(self.lam0), "groups": groups},
                "dev": self.dev, "metrics": self.metrics,
                "policies": {k: v.to_dict() for k, v in sorted(self.paths.items())},
                **policy_choice_dict(self), **crossfit_dict(self)}

    @classmethod
    def from_dict(cls, d: Any, *, path: str | None = None, sha256: str | None = None) -> "Calibration":
        """The inverse of :meth:`to_dict`; a CalibrationError names what is wrong."""
        where = repr(path) if path else "calibration"
        fix = "make it again with 'twentyq calibrate'"
        if not isinstance(d, dict) or d.get("format") not in (SCHEMA, SCHEMA_V1):
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise CalibrationError(f"{where} is not a twentyq calibration this version reads (format {got!r}, "
                                   f"expected {SCHEMA!r} or {SCHEMA_V1!r}); {fix}")
        _check_calibration_fields(d, where, fix)
        try:
            gs = d["channels"]["groups"]
            sizes = tuple(int(g["options"]) for g in gs)
            channels = _channels_from(gs, d["channels"]["eps"])
            paths = {str(k): PolicyPaths.from_dict(v) for k, v in d.get("policies", {}).items()}
            try:
                few = None if d.get("few_shot") is None else few_shot_from_dict(d["few_shot"])
            except (KeyError, TypeError, ValueError, OverflowError) as e:  # name the field: arrays checked only here
                what = f"missing key {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
                raise ValueError(f"field few_shot (the few-shot model): {what}") from None
            if few is not None and few.P.shape[1] != sum(sizes):
                raise ValueError(f"few-shot model has {few.P.shape[1]} option columns, the groups {sum(sizes)}")
            m, s = d["model"], d["system"]
            names = tuple(str(g["name"]) for g in gs)
            choice, crossfit = policy_choice_from_dict(d, names), crossfit_from_dict(d, names, sizes)
            if isinstance(d.get("predictive"), dict) and d["predictive"].get("from") == PREDICTIVE_FROM_CROSSFIT:
                pr = d["predictive"]
                choice["predictive"] = crossfit_predictive(
                    choice["select"], crossfit, max_classes=int(pr["max_classes"]),
                    max_per_class=int(pr["max_per_class"]), seed=int(pr.get("seed", 0)))
            cal = cls(channels=channels, model=str(m["model"]), model_id=str(m["model_id"]),
                       revision=m.get("revision"), system_name=str(s["name"]), system_sha256=str(s["sha256"]),
                       sizes=sizes, groups=names, lam0=float(d["channels"]["lam0"]),
                       dev=dict(d.get("dev", {})), metrics=dict(d.get("metrics", {})), paths=paths, path=path,
                       sha256=sha256, setting=str(d.get("setting", "zero-shot")), few_shot=few,
                       decision=dict(d.get("decision") or {}), groups_sha256=s.get("groups_sha256"),
                       source=dict(d.get("source") or {}),
                       **choice, crossfit=crossfit)
            _check_predictive(cal)
            return cal
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: a number past float or int64
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise CalibrationError(f"{where} is damaged ({what}); {fix}") from None


def few_shot_from_dict(d: dict[str, Any]) -> FewShotModel:
    """A :class:`FewShotModel` from its dict, its posterior read by its ``kind``: none for the group-masked LR
    (:class:`engine.core.answer_models.FewShotPosterior`), ``"gaussian"`` for :class:`engine.core.gaussian.
    GaussianPosterior`. Raises ValueError on an unknown kind or a damaged part."""
    post = d.get("posterior")
    kind = post.get("kind") if isinstance(post, dict) else None
    if kind is None:
        return FewShotModel.from_dict(d)
    if kind != GP.KIND:
        raise ValueError(f"few_shot.posterior.kind == {kind!r}: this twentyq reads the group-masked LR (no kind) "
                         f"and {GP.KIND!r}")
    few = FewShotModel.from_dict({**d, "posterior": None})
    gp = GP.GaussianPosterior.from_dict(post)
    if not np.array_equal(gp.sizes, few.sizes) or gp.n_classes != few.P.shape[0]:
        raise ValueError("few-shot posterior: its group sizes or classes differ from the model's")
    return replace(few, posterior=gp)


def _check_predictive(cal: "Calibration") -> None:
    """A ValueError naming the field when the stored predictive terms do not belong to the calibration: the
    few-shot posterior's classes and group sizes, and the cross-fitted paths' folds (one fold posterior each)."""
    pr = cal.predictive
    if pr is None:
        return
    post = None if cal.few_shot is None else cal.few_shot.posterior
    if post is None:
        raise ValueError("predictive: stored without a few-shot posterior")
    if getattr(post, "conditional", False):
        raise ValueError("predictive: its per-group terms do not fit a conditional (Gaussian) posterior; remove "
                         "the key or recalibrate")
    if pr.n_classes != post.n_classes or [int(k) for k in pr.posteriors[0].sizes] != list(cal.sizes):
        raise ValueError(f"predictive: its fold posteriors are for {pr.n_classes} classes and sizes "
                         f"{[int(k) for k in pr.posteriors[0].sizes]}, the calibration's {post.n_classes} and "
                         f"{list(cal.sizes)}")
    if cal.crossfit:
        fold = None if cal.select is None else cal.select.fold
        if len(pr.posteriors) != len(cal.crossfit) or fold is None or not np.array_equal(pr.folds, fold):
            raise ValueError("predictive: its folds differ from the cross-fitted select part's")


def _groups_dict(ch: AnswerChannels, names: Sequence[str], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The file's ``channels.groups`` entries of answer channels ``ch``."""
    return [{"name": name, "options": int(k), "lam": float(ch.lams[g]),
             "reliability": None if np.isnan(ch.reliability[g]) else float(ch.reliability[g]),  # null: no dev evidence
             "n_dev": int(ch.n_dev[g]),
             "confusion": None if ch.confusions[g] is None else np.asarray(ch.confusions[g]).tolist()}
            for g, (name, k) in enumerate(zip(names, sizes))]


def _channels_from(gs: list[dict[str, Any]], eps: Any) -> AnswerChannels:
    """The inverse of :func:`_groups_dict` (ValueError/KeyError/TypeError on a damaged entry)."""
    confs = []
    for g in gs:
        m = None if g["confusion"] is None else np.asarray(g["confusion"], dtype=np.float64)
        if m is not None:
            check_confusion(m, int(g["options"]))  # checked, not replaced: its renormalised copy differs in the last
            m.setflags(write=False)  # digits from the M_g that traced the stored τ paths (JSON floats round-trip)
        confs.append(m)
    arrays = {"lams": np.array([float(g["lam"]) for g in gs]),
              "reliability": np.array([np.nan if g["reliability"] is None else float(g["reliability"]) for g in gs]),
              "n_dev": np.array([int(g["n_dev"]) for g in gs], dtype=np.int64)}
    check_logit_scales(arrays["lams"], len(gs))
    for a in arrays.values():
        a.setflags(write=False)
    return AnswerChannels(lams=arrays["lams"], confusions=tuple(confs), reliability=arrays["reliability"],
                          n_dev=arrays["n_dev"], eps=check_eps(float(eps)))


def crossfit_dict(cal: Calibration) -> dict[str, Any]:
    """The file's ``crossfit`` key: each fold's model (absent for a disjoint select part)."""
    if not cal.crossfit:
        return {}
    return {"crossfit": [{"channels": {"eps": float(fm.channels.eps),
                                       "groups": _groups_dict(fm.channels, cal.groups, cal.sizes)},
                          "few_shot": None if fm.few_shot is None else fm.few_shot.to_dict(),
                          "dev_order": None if fm.dev_order is None else [cal.groups[g] for g in fm.dev_order]}
                         for fm in cal.crossfit]}


def crossfit_from_dict(d: dict[str, Any], groups: tuple[str, ...], sizes: tuple[int, ...]) -> tuple:
    """The inverse of :func:`crossfit_dict` (ValueError/KeyError/TypeError on a damaged entry): the fold models,
    checked against the select part's fold indices."""
    raw = d.get("crossfit")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ValueError("field crossfit should be a list of fold models")
    folds = []
    for i, x in enumerate(raw):
        gs = x["channels"]["groups"]
        if tuple(int(g["options"]) for g in gs) != tuple(sizes):
            raise ValueError(f"field crossfit[{i}]: its group sizes differ from the calibration's")
        few = None if x.get("few_shot") is None else few_shot_from_dict(x["few_shot"])
        if few is not None and few.P.shape[1] != sum(sizes):
            raise ValueError(f"field crossfit[{i}].few_shot: {few.P.shape[1]} option columns, the groups {sum(sizes)}")
        order = x.get("dev_order")
        if order is not None:
            if sorted(order) != sorted(groups):
                raise ValueError(f"field crossfit[{i}].dev_order should name every group once")
            order = tuple(groups.index(str(g)) for g in order)
        folds.append(FoldModel(channels=_channels_from(gs, x["channels"]["eps"]), few_shot=few, dev_order=order))
    sel = d.get("select") or {}
    fold = sel.get("fold")
    if fold is None or any(not isinstance(f, int) or isinstance(f, bool) or not 0 <= f < len(folds) for f in fold):
        raise ValueError(f"field select.fold should give every select image a fold index in 0..{len(folds) - 1}")
    return tuple(folds)


# --------------------------------------------------------------------------- field checks
class _Bad(Exception):
    """One wrong field: its dotted path and what it must be."""

    def __init__(self, path: str, value: Any, must: str):
        r = reprlib.Repr()
        r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 40, 40, 4, 4, 2
        super().__init__(f"field {path} is {r.repr(value)}; it must be {must}")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _num(x: Any, path: str, must: str, ok: Callable[[float], bool]) -> float:
    """``x`` as a float when it is a finite JSON number that passes ``ok``; else _Bad naming ``path``."""
    if not _is_num(x) or not math.isfinite(x) or not ok(float(x)):
        raise _Bad(path, x, must)
    return float(x)


def _whole(x: Any, path: str, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < lo:
        raise _Bad(path, x, f"a whole number >= {lo}")
    return x


def _of(x: Any, kind: type, path: str, must: str) -> Any:
    if not isinstance(x, kind):
        raise _Bad(path, x, must)
    return x


def _check_calibration_fields(d: dict[str, Any], where: str, fix: str) -> None:
    """Type- and range-check every field of a calibration's JSON ``d`` (a CalibrationError naming the file,
    the field's path and what it must be). :meth:`Calibration.from_dict` calls this first, then only builds.

    One function so new fields get their check here, beside the others.
    """
    try:
        _check_fields(d)
    except _Bad as e:
        raise CalibrationError(f"{where} is damaged: {e}; {fix}") from None


def _check_fields(d: dict[str, Any]) -> None:
    m = _of(d.get("model"), dict, "model", "an object {model, model_id, revision}")
    _of(m.get("model"), str, "model.model", "a string")
    _of(m.get("model_id"), str, "model.model_id", "a string")
    if m.get("revision") is not None:
        _of(m["revision"], str, "model.revision", "a string or null")
    sy = _of(d.get("system"), dict, "system", "an object {name, sha256}")
    _of(sy.get("name"), str, "system.name", "a string")
    _of(sy.get("sha256"), str, "system.sha256", "a string")
    if sy.get("groups_sha256") is not None:
        _of(sy["groups_sha256"], str, "system.groups_sha256", "a string (the hash of the questions)")
    if d.get("source") is not None:
        src = _of(d["source"], dict, "source", "an object {system, classes, data, domain}")
        if any(not isinstance(c, str) for c in _of(src.get("classes", []), list, "source.classes", "a list")):
            raise _Bad("source.classes", src.get("classes"), "a list of class names")
    ch = _of(d.get("channels"), dict, "channels", "an object {eps, lam0, groups}")
    _num(ch.get("eps"), "channels.eps", "a number in [0, 1)", lambda x: 0.0 <= x < 1.0)
    _num(ch.get("lam0"), "channels.lam0", "a finite number > 0 (the model's logit scale)", lambda x: x > 0)
    groups = _of(ch.get("groups"), list, "channels.groups", "a list of groups")
    for i, g in enumerate(groups):
        at = f"channels.groups[{i}]"
        _of(g, dict, at, "an object {name, options, lam, reliability, n_dev, confusion}")
        _of(g.get("name"), str, f"{at}.name", "a string")
        k = _whole(g.get("options"), f"{at}.options", 1)
        _num(g.get("lam"), f"{at}.lam", "a finite number > 0", lambda x: x > 0)
        if g.get("reliability") is not None:
            _num(g["reliability"], f"{at}.reliability", "null or a number in [0, 1]", lambda x: 0.0 <= x <= 1.0)
        _whole(g.get("n_dev"), f"{at}.n_dev", 0)
        conf = g.get("confusion")
        if conf is not None:
            rows = _of(conf, list, f"{at}.confusion", f"null or a {k}x{k} list of rows")
            if len(rows) != k or any(not isinstance(r, list) or len(r) != k for r in rows):
                raise _Bad(f"{at}.confusion", conf, f"null or a {k}x{k} list of rows (one per option)")
            for j, r in enumerate(rows):
                for c, x in enumerate(r):
                    _num(x, f"{at}.confusion[{j}][{c}]", "a probability in [0, 1]", lambda x: 0.0 <= x <= 1.0)
                if abs(math.fsum(r) - 1.0) > 1e-6:
                    raise _Bad(f"{at}.confusion[{j}]", r, "a row of probabilities summing to 1")
    dev = d.get("dev", {})
    _of(dev, dict, "dev", "an object")
    if "image_sha256" in dev:
        hashes = _of(dev["image_sha256"], list, "dev.image_sha256", "a list of sha256 hex strings")
        for i, h in enumerate(hashes):
            if not isinstance(h, str) or len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise _Bad(f"dev.image_sha256[{i}]", h, "a sha256 hex string (64 characters 0-9a-f)")
    _of(d.get("metrics", {}), dict, "metrics", "an object")
    if d.get("setting") is not None and d["setting"] not in ("few-shot", "zero-shot"):
        raise _Bad("setting", d["setting"], "'few-shot' or 'zero-shot'")
    if d.get("few_shot") is not None:  # its arrays' shapes and values are checked by FewShotModel.from_dict
        fs = _of(d["few_shot"], dict, "few_shot", "null or an object {sizes, posterior, per_class_channel, beta, n_dev}")
        if fs.get("posterior") is not None:
            _of(fs["posterior"], dict, "few_shot.posterior", "null or an object {sizes, mean, scale, W, m, b, n_dev, "
                "reg} or {kind: 'gaussian', sizes, mean, scale, means, cov, log_prior, temperature, shrink, n_dev}")
    if d.get("decision") is not None:
        _of(d["decision"], dict, "decision", "an object")
    pols = _of(d.get("policies", {}), dict, "policies", "an object {policy: {conf, correct, q}}")
    for name, p in pols.items():
        at = f"policies.{name}"
        _of(p, dict, at, "an object {conf, correct, q}")
        for key in ("conf", "correct", "q"):
            rows = _of(p.get(key), list, f"{at}.{key}", "a list of paths (lists)")
            if any(not isinstance(r, list) for r in rows):
                raise _Bad(f"{at}.{key}", rows, "a list of paths (lists)")
        for i, path in enumerate(p["conf"]):
            for j, x in enumerate(path):
                _num(x, f"{at}.conf[{i}][{j}]", "a confidence in [0, 1]", lambda x: 0.0 <= x <= 1.0)
        for i, path in enumerate(p["correct"]):
            for j, x in enumerate(path):
                if x not in (0, 1) or not _is_num(x):
                    raise _Bad(f"{at}.correct[{i}][{j}]", x, "0 or 1")
        for i, path in enumerate(p["q"]):
            for j, x in enumerate(path):
                _whole(x, f"{at}.q[{i}][{j}]", 0)


def content_sha256(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(json_safe(d), sort_keys=True, allow_nan=False).encode()).hexdigest()


def save_calibration(cal: Calibration, path: str | Path) -> Calibration:
    """Write ``cal`` as JSON (atomically); returns it with ``path`` and the file's ``sha256``. A calibration
    larger than one may be when read (:data:`engine.common.files.TEXT_INPUT_LIMIT`: the select part's similarities
    grow with select images × prompts) is refused before anything is written, so an existing file at
    ``path`` is kept and no unreadable one is left."""
    from engine.common.files import TEXT_INPUT_LIMIT, atomic_write_text, json_safe

    data = (json.dumps(json_safe(cal.to_dict()), ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode()
    if len(data) > TEXT_INPUT_LIMIT:
        n_sel = 0 if cal.select is None else len(cal.select.truth)
        raise CalibrationError(f"calibration for {path}: {len(data):,} bytes, over the {TEXT_INPUT_LIMIT:,} a calibration "
                               f"file may have ({n_sel} dev images × {sum(cal.sizes)} prompts are stored for exact "
                               "τ tables); nothing was written: calibrate on fewer dev images (a smaller "
                               "--dev-fraction, or --limit)")
    atomic_write_text(path, data.decode())
    return replace(cal, path=str(path), sha256=hashlib.sha256(data).hexdigest())


# Calibrations that ship with the package (package data beside the shipped probe): NAME is the file
# engine/encoders/data/probe/NAME.cal.json of the installed package, wherever it is installed.
SHIPPED_PACKAGE, SHIPPED_FOLDER, SHIPPED_SUFFIX = "engine.encoders", ("data", "probe"), ".cal.json"


def _shipped_folder():
    return files(SHIPPED_PACKAGE).joinpath(*SHIPPED_FOLDER)


def shipped_calibrations() -> list[str]:
    """The names of the calibrations that ship with the package, sorted (e.g. 'pokemon15_gen1.sprites')."""
    return sorted(f.name[:-len(SHIPPED_SUFFIX)] for f in _shipped_folder().iterdir()
                  if f.name.endswith(SHIPPED_SUFFIX) and f.is_file())


def load_calibration(path: str | Path) -> Calibration:
    """A calibration: a file (capped read), or, when ``path`` is not an existing path, the name of a shipped
    one (:func:`shipped_calibrations`; 'NAME' or 'NAME.cal.json'). A CalibrationError (exit 2) when it is
    neither, naming the shipped ones, or when the file is not a calibration."""
    if isinstance(path, Path) or os.path.lexists(path) or str(path) == "-":
        return _load_calibration_file(path)
    name = str(path)
    name = name[:-len(SHIPPED_SUFFIX)] if name.endswith(SHIPPED_SUFFIX) else name
    shipped = shipped_calibrations()
    if name not in shipped:
        raise CalibrationError(f"calibration {str(path)!r}: no such file, nor a calibration shipped with twentyq "
                               f"(shipped: {', '.join(shipped) or 'none'}); give a file made by 'twentyq calibrate' "
                               "or one of those names")
    with as_file(_shipped_folder().joinpath(name + SHIPPED_SUFFIX)) as file:
        return _load_calibration_file(file)


def _load_calibration_file(path: str | Path) -> Calibration:
    """A calibration file, read once through the guarded reader (a regular file of at most 16 MiB: a FIFO,
    device or larger file is refused unread); a CalibrationError (exit 2) naming the file, and the field
    when a value is wrong, when it is not one."""
    from engine.common.files import TEXT_INPUT_LIMIT, UnreadableInput, parse_json_text, read_bytes_capped

    try:
        raw = read_bytes_capped(path, TEXT_INPUT_LIMIT, what="calibration")
    except UnreadableInput as e:
        raise CalibrationError(str(e)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CalibrationError(f"calibration {str(path)!r} is not UTF-8 text; make it again with "
                               "'twentyq calibrate'") from None
    d = parse_json_text(text, path, what="calibration", shape="a calibration written by 'twentyq calibrate'",
                        error=CalibrationError)
    return Calibration.from_dict(d, path=str(path), sha256=hashlib.sha256(raw).hexdigest())


def target_choice(cal: Calibration | None, config: Any, system: AttributeSystem | None = None) -> TauChoice | None:
    """The τ choice for ``config.target_accuracy`` (None without one); a CalibrationError without a calibration.
    ``system`` (the calibration's) makes a budgeted table exact (:meth:`Calibration.tau_for`)."""
    if getattr(config, "target_accuracy", None) is None:
        return None
    if cal is None:
        raise CalibrationError("--target-accuracy needs a calibration: add --calibration cal.json (made by "
                               "'twentyq calibrate'), or use --tau")
    if config.policy == "random" and getattr(config, "seed", 0) != 0:
        raise CalibrationError("--target-accuracy with --policy random: the calibration traced the random order of "
                               f"seed 0, not seed {config.seed}; use --seed 0, or another policy")
    return cal.tau_for(config.policy, config.target_accuracy, config.budget, system=system)


def settle_value(cal: Calibration | None, config: Any, system: AttributeSystem) -> float | None:
    """The settled stop's threshold a run of ``config`` uses: None without one, the number given, or for "auto"
    the calibration's choice (:func:`settle_choice`)."""
    settle = getattr(config, "settle", None)
    if settle is None or getattr(config, "mode", "adaptive") != "adaptive":
        return None
    return float(settle) if settle != "auto" else settle_choice(cal, config, system).threshold


def settle_choice(cal: Calibration | None, config: Any, system: AttributeSystem) -> Any:
    """``--settle auto``'s :class:`engine.core.stopping.ThresholdChoice` for ``config`` (its policy, τ and budget;
    :meth:`Calibration.settle_for`). A CalibrationError, naming the fix, where the calibration's dev paths are not
    the run's: no calibration, δ (the paths are traced without it), or the random policy with a seed other than
    the traced one."""
    fix = "or pass a number to --settle"
    if cal is None:
        raise CalibrationError(f"--settle auto needs a Gaussian few-shot calibration: add --calibration cal.json "
                               f"(made by 'twentyq calibrate'), {fix}")
    if getattr(config, "delta", 0) != 0:
        raise CalibrationError(f"--settle auto chooses its threshold on dev paths traced without δ, which would not "
                               f"describe a run with --delta {config.delta:g}; drop --delta, {fix}")
    if config.policy == "random" and getattr(config, "seed", 0) != 0:
        raise CalibrationError(f"--settle auto with --policy random: the calibration traced the random order of seed "
                               f"0, not seed {config.seed}; use --seed 0, another policy, {fix}")
    return cal.settle_for(config.policy, config.budget, system, config.tau)


def choice_dict(choice: TauChoice | None, config: Any) -> dict[str, Any] | None:
    """What a summary records of a τ choice (None without a target)."""
    if choice is None:
        return None
    return {"target_accuracy": choice.target, "confidence": 1.0 - choice.alpha, "tau": choice.tau,
            "reached": choice.reached, "policy": config.policy, "budget": config.budget,
            "dev_stopped": choice.n_stopped, "dev_right": choice.n_right, "dev_lower_bound": choice.lower_bound,
            "method": "learn-then-test, fixed sequence from high τ, exact binomial tests (choose_tau)"}


def as_calibration(cal: Calibration | str | Path | None) -> Calibration | None:
    """A Calibration, a path to one, or None."""
    return cal if cal is None or isinstance(cal, Calibration) else load_calibration(cal)


# --------------------------------------------------------------------------- dev-order and auto
def policy_choice_dict(cal: Calibration) -> dict[str, Any]:
    """The file's keys for the dev order, the auto choice and the select part (absent when not fitted)."""
    out: dict[str, Any] = {}
    if cal.dev_order is not None:
        out["dev_order"] = [cal.groups[g] for g in cal.dev_order]
    if cal.auto:
        out["auto"] = cal.auto
    if cal.select is not None:
        out["select"] = cal.select.to_dict()
    if cal.predictive is not None:
        out["predictive"] = (_predictive_reference(cal.predictive) if _predictive_rests_on_crossfit(cal)
                             else cal.predictive.to_dict())
    return out


PREDICTIVE_FROM_CROSSFIT = "select+crossfit"


def _predictive_rests_on_crossfit(cal: "Calibration") -> bool:
    """Whether the predictive terms are the select part's images with the cross-fitted fold posteriors (what
    fit_calibration makes): then the file stores a reference to them instead of a second copy."""
    pr, sel = cal.predictive, cal.select
    if not cal.crossfit or sel is None or sel.fold is None or len(pr.posteriors) != len(cal.crossfit):
        return False
    if not (np.array_equal(pr.sims, sel.sims) and np.array_equal(pr.truth, sel.truth)
            and np.array_equal(pr.folds, sel.fold)):
        return False
    return all(fm.few_shot is not None and fm.few_shot.posterior is not None
               and (p is fm.few_shot.posterior or p.to_dict() == fm.few_shot.posterior.to_dict())
               for p, fm in zip(pr.posteriors, cal.crossfit))


def _predictive_reference(pr: Any) -> dict[str, Any]:
    return {"method": "out-of-fold per-group terms of the dev images (engine.core.predictive): the select part's "
                      "similarities, classes and folds with the crossfit fold models' posteriors",
            "from": PREDICTIVE_FROM_CROSSFIT, "max_classes": int(pr.max_classes),
            "max_per_class": int(pr.max_per_class), "seed": int(pr.seed)}


def crossfit_predictive(select: Any, crossfit: tuple, **settings) -> Any:
    """The :class:`engine.core.predictive.PredictiveTerms` of the cross-fitted select part: every dev image's
    similarities, class and fold, with each fold model's posterior (``settings``: max_classes, max_per_class,
    seed). What fit_calibration makes and what a ``"from": "select+crossfit"`` entry names; a ValueError naming
    the field when the select part or the fold posteriors are not there."""
    from engine.core.predictive import PredictiveTerms

    if select is None or select.fold is None or not crossfit:
        raise ValueError("predictive: refers to the cross-fitted select part, which the file does not hold")
    posts = tuple(None if fm.few_shot is None else fm.few_shot.posterior for fm in crossfit)
    if any(p is None for p in posts):
        raise ValueError("predictive: a crossfit fold model has no few-shot posterior")
    return PredictiveTerms(sims=select.sims, truth=select.truth, folds=np.asarray(select.fold, dtype=np.int64),
                           posteriors=posts, **settings)


def policy_choice_from_dict(d: dict[str, Any], groups: tuple[str, ...]) -> dict[str, Any]:
    """The inverse of :func:`policy_choice_dict` (ValueError/KeyError on a damaged entry)."""
    order = d.get("dev_order")
    if order is not None:
        if sorted(order) != sorted(groups):
            raise ValueError("dev_order should name every group once")
        order = tuple(groups.index(str(g)) for g in order)
    auto = dict(d.get("auto") or {})
    if auto and auto.get("choice") not in AUTO_CANDIDATES:
        raise ValueError(f"auto choice {auto.get('choice')!r} is not one of {list(AUTO_CANDIDATES)}")
    select = SelectPart.from_dict(d["select"]) if d.get("select") is not None else None
    predictive = None  # the few-shot posterior's predictive EIG (engine.core.predictive); a reference to the
    pr = d.get("predictive")  # cross-fitted part is resolved by Calibration.from_dict once crossfit is loaded
    if pr is not None and not isinstance(pr, dict):
        raise ValueError(f"predictive should be an object, got {type(pr).__name__}")
    if pr is not None and pr.get("from") != PREDICTIVE_FROM_CROSSFIT:
        from engine.core.predictive import PredictiveTerms

        predictive = PredictiveTerms.from_file(pr, n_groups=len(groups))
    return {"dev_order": order, "auto": auto, "select": select, "predictive": predictive}


def needs_calibration_line(policy: str) -> str:
    """The one-line refusal of ``--policy dev-order`` without a calibration."""
    return (f"--policy {policy} needs --calibration CAL.json: its group order is fitted on labelled dev images by "
            "'twentyq calibrate'; add the calibration, or use --policy fixed")


def resolve_policy(cal: Calibration | None, config: Any) -> Any:
    """The policy object a run of ``config`` uses: dev-order with the calibration's order (a CalibrationError
    without one), auto as the calibration's choice (fixed without a calibration), any other as
    ``config.make_policy()``."""
    if config.policy == "dev-order":
        if cal is None:
            raise CalibrationError(needs_calibration_line("dev-order"))
        return cal.policy_object("dev-order")
    if config.policy == "auto":
        return config.make_policy() if cal is None else cal.policy_object("auto")
    return config.make_policy()


def policy_label(cal: Calibration | None, config: Any) -> str:
    """The policy a summary names: ``auto (lookahead)`` for auto, what it ran; the policy's name otherwise."""
    if config.policy == "auto":
        return "auto (fixed: no calibration)" if cal is None else f"auto ({cal.auto_choice()})"
    return config.policy


def policy_line(cal: Calibration | None, config: Any) -> str | None:
    """What ``--policy auto`` / ``dev-order`` will run, in one line (None for other policies)."""
    if config.policy == "auto":
        if cal is None:
            return "--policy auto without --calibration: runs fixed (auto chooses on a calibration's dev images)"
        a = cal.auto
        figs = ", ".join(f"{k} {v['auc']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                         for k, v in a.get("candidates", {}).items())
        return (f"--policy auto: runs {cal.auto_choice()} (chosen by 'twentyq calibrate' on {a.get('n_images')} "
                f"dev image(s){' (cross-fitted paths)' if cal.crossfit else ''} by normalised budget AUC: {figs}; "
                f"{a.get('rule', '')})")
    if config.policy == "dev-order" and cal is not None and cal.dev_order is not None:
        return f"--policy dev-order: asks {' > '.join(cal.groups[g] for g in cal.dev_order)} (fitted on dev images)"
    return None


# --------------------------------------------------------------------------- dev images
def image_sha256(item: Any) -> str | None:
    """The content hash of an image input (an Item, a path or bytes): sha256 of the file's bytes, as
    :func:`engine.encoders.image_cache.content_hash` keys files. None when it cannot be read."""
    data = getattr(item, "data", None) if not isinstance(item, (bytes, bytearray, memoryview)) else item
    if data is not None:
        return hashlib.sha256(bytes(data)).hexdigest()
    path = getattr(item, "path", item)

    try:  # the guarded reader: a FIFO or a symlink to /dev/zero in a data row is refused, never waited on
        return hash_file(path, what="image")
    except (OSError, ValueError):
        return None  # a missing or unreadable image is that image's error later, not a dev image


def exclude_dev(items: Sequence[Any], cal: Calibration | None) -> tuple[list[Any], int]:
    """``items`` without those whose image is one of the calibration's dev images (by content); and how many.
    A CalibrationError (exit 2) when every one of them is: nothing would be left to score."""
    items = list(items)
    if cal is None:
        return items, 0
    dev = set(cal.dev.get("image_sha256", ()))
    kept = [it for it in items if image_sha256(it) not in dev]
    if items and not kept:
        raise CalibrationError(f"all {len(items)} image(s) of the data are dev images of calibration {cal.where()} "
                               "(it was fitted on them and they are left out), so none is left to score; evaluate "
                               "on images it was not fitted on (e.g. the whole --data that 'twentyq calibrate' "
                               "split, whose test part it never read), or drop --calibration")
    return kept, len(items) - len(kept)


def is_builtin_policy(name: str) -> bool:
    """A policy of the ``policies`` package itself (not a plug-in)."""
    list_policies()
    cls = POLICIES.get(name)
    return cls is not None and (cls.__module__ == "policies" or cls.__module__.startswith("policies."))


def builtin_policies() -> list[str]:
    return [p for p in list_policies() if is_builtin_policy(p)]


# --------------------------------------------------------------------------- fitting
def trace_paths(sims: np.ndarray, truth: np.ndarray, system: AttributeSystem, policy: Any, lams: np.ndarray,
                channel: Any, answer_model: Any = None, stop: Any = None, settled: bool = False) -> PolicyPaths:
    """One policy's τ=1 paths over dev similarities (B, Q) with true classes (B,): see :class:`PolicyPaths`.
    With a few-shot ``answer_model`` column 0 is its prior (the loop starts there), else the uniform prior.
    ``stop`` : a StopRule with τ = 1 (e.g. a budget; default none). ``settled``: ``conf`` holds the answer model's
    settled bound (:meth:`engine.core.gaussian.GaussianPosterior.settled_probability`) before any question and after
    each step instead of the confidence, so that cutting the paths at a threshold is what ``StopRule.settle`` does."""
    return trace_stop_paths(sims, system, policy, lams, channel, answer_model, stop,
                            settled=settled).policy_paths(truth, settled)


@dataclass(frozen=True)
class StopPaths:
    """τ = 1 paths traced point by point (column 0 before any question): conf (B, S) the max posterior, bound
    (B, S) the settled bound (None unless asked for), label (B, S) the class index on top, q (B, S) the prompts
    spent; NaN / -1 after each path's last point. What :func:`engine.core.stopping.choose_threshold` reads."""

    conf: np.ndarray
    bound: np.ndarray | None
    label: np.ndarray
    q: np.ndarray

    @classmethod
    def stack(cls, parts: list[tuple[Any, "StopPaths"]], n_images: int) -> "StopPaths":
        """One (n_images, S) set from parts traced on subsets of the images ([(rows, StopPaths)]: rows an index or
        mask into the n_images), each padded to the longest path; bound kept when every part has it."""
        S = max(p.conf.shape[1] for _, p in parts)
        settled = all(p.bound is not None for _, p in parts)
        conf, label = np.full((n_images, S), np.nan), np.full((n_images, S), -1, dtype=np.int64)
        q = np.full((n_images, S), -1, dtype=np.int64)
        bound = np.full((n_images, S), np.nan) if settled else None
        for rows, p in parts:
            s = p.conf.shape[1]
            conf[rows, :s], label[rows, :s], q[rows, :s] = p.conf, p.label, p.q
            if settled:
                bound[rows, :s] = p.bound
        return cls(conf, bound, label, q)

    def policy_paths(self, truth: np.ndarray, settled: bool = False) -> PolicyPaths:
        """These paths as :class:`PolicyPaths` against the true classes ``truth`` (B,): ``conf`` the settled bound
        with ``settled``, else the confidence; ``correct`` whether the label at each point is the true class."""
        return PolicyPaths(self.bound if settled else self.conf, self.label == np.asarray(truth)[:, None], self.q)


def trace_stop_paths(sims: np.ndarray, system: AttributeSystem, policy: Any, lams: np.ndarray, channel: Any,
                     answer_model: Any = None, stop: Any = None, settled: bool = False) -> StopPaths:
    """One run of the loop at τ = 1 and δ = 0 (``stop``: a StopRule with only a budget, or None), traced."""
    from engine.core.adaptive import NO_STOP, classify_batch
    from engine.core.scoring import shortlist

    stop = NO_STOP if stop is None else stop
    if stop.tau != 1.0 or stop.delta != 0 or stop.settle != 1.0:
        raise ValueError("trace_paths: a path is traced at τ = 1, δ = 0 and no settle (they only cut it short)")
    res = classify_batch(ArraySource(sims, system), system, policy, stop=stop, logit_scale=lams, channel=channel,
                         top_k=1, trace=True, answer_model=answer_model)
    B, C = len(res), system.n_classes
    S = 1 + max((len(r.steps) for r in res), default=0)
    conf, label, q = np.full((B, S), np.nan), np.full((B, S), -1, dtype=np.int64), np.full((B, S), -1, dtype=np.int64)
    conf[:, 0], label[:, 0], q[:, 0] = 1.0 / C, 0, 0  # the uniform prior: class 0 on top
    if answer_model is not None:
        prior = np.exp(answer_model.log_prior(1))
        top = int(shortlist(prior, 1)[0, 0])
        conf[:, 0], label[:, 0] = prior[0, top], top
    index = {c: k for k, c in enumerate(system.classes)}
    for i, r in enumerate(res):
        for j, st in enumerate(r.steps, start=1):
            conf[i, j], label[i, j], q[i, j] = st.confidence_after, index[st.top[0][0]], st.q_spent
    bound = _settled_column(sims, system, res, answer_model, conf) if settled else None
    return StopPaths(conf, bound, label, q)


def _settled_column(sims: np.ndarray, system: AttributeSystem, res: list, answer_model: Any,
                    conf: np.ndarray) -> np.ndarray:
    """``conf`` (B, S) with each traced point's settled bound in place of its confidence (NaN stays NaN)."""
    if not hasattr(answer_model, "settled_probability"):
        raise ValueError("settled paths need an answer model with settled_probability (a Gaussian posterior)")
    names = {g.name: j for j, g in enumerate(system.groups)}
    out = np.full_like(conf, np.nan)
    asked = np.zeros((len(res), system.n_groups), dtype=bool)
    for j in range(conf.shape[1]):
        rows = np.nonzero(~np.isnan(conf[:, j]))[0]
        if j > 0:
            for i in rows:
                asked[i, names[res[i].steps[j - 1].group]] = True
        lp = answer_model.log_posterior(sims[rows], asked[rows])
        out[rows, j] = answer_model.settled_probability(sims[rows], asked[rows], lp)
    return out


def _full_metrics(sims, truth, system, lam, eps, channel=None, answer_model=None) -> dict[str, float]:
    if answer_model is not None:
        lp = answer_model.log_posterior(sims)
    else:
        lp = full_log_posterior(sims, system.rule_matrix, system.option_counts, lam, eps, channel=channel)
    conf, pred = np.exp(lp.max(axis=1)), lp.argmax(axis=1)
    correct = pred == truth
    return {"accuracy": float(correct.mean()), "nll": true_class_nll(lp, truth),
            "ece": expected_calibration_error(conf, correct, N_BINS), "mean_confidence": float(conf.mean())}


def _adaptive_metrics(sims, truth, system, lam, eps, channel=None, answer_model=None) -> dict[str, float]:
    from engine.core.adaptive import StopRule, classify_batch

    res = classify_batch(ArraySource(sims, system), system, METRIC_POLICY, stop=StopRule(tau=METRIC_TAU),
                         logit_scale=lam, eps=eps, channel=channel, top_k=1, answer_model=answer_model)
    correct = np.array([r.label == system.classes[t] for r, t in zip(res, truth)])
    conf = np.array([r.stop == "confident" for r in res])
    return {"accuracy": float(correct.mean()), "mean_q": float(np.mean([r.q_spent for r in res])),
            "confident": int(conf.sum()), "accuracy_confident": float(correct[conf].mean()) if conf.any() else None}


MIN_FEW_SHOT_IMAGES = 2  # dev images per class for "auto" to pick few-shot (each class in two folds at least)


def fit_answer_model(sims: np.ndarray, truth: np.ndarray, system: AttributeSystem, *, lam0: float, eps: float,
                     setting: str = "auto", seed: int = 0, prior_strength: float | None = None,
                     posterior: str = "auto"
                     ) -> tuple[Any, Any, dict[str, Any], tuple[np.ndarray, tuple]]:
    """The answer model of a calibration, chosen on cross-fitted (held-out) dev images; nothing is kept that is
    worse there than what it would replace.

    sims : (B, Q) dev similarities; truth : (B,) class indices; lam0, eps : the uncalibrated λ and ε.
    setting : "few-shot" (dev images of the classes being classified), "zero-shot" (only the class-agnostic
    rule channel: λ_g, option confusions, reliabilities) or "auto" (few-shot when every class has at least
    MIN_FEW_SHOT_IMAGES dev images, else zero-shot).
    prior_strength : fit the rule channel with this α only (no choice among the variants).
    posterior : which few-shot posterior competes with the rule channel (:data:`POSTERIORS`): "auto" the Gaussian
    when it beats the group-masked LR on held-out dev (below), else the LR; "lr" or "gaussian" that one.

    Steps, scored on 3 stratified folds (each fold by the fit on the others):
    1. zero-shot: the rule-channel variants (:data:`engine.core.answer_models.RULE_VARIANTS`, from uncalibrated to
       free λ_g); the fitted one with the lowest held-out NLL among those that beat uncalibrated in held-out NLL
       and in accuracy by at least a paired standard error (:func:`engine.core.answer_models.replaces`), else
       uncalibrated;
    2. few-shot: the group-masked LR posterior (L2 strength by the same folds) replaces the step-1 channel's
       posterior only when it beats it the same way; its generative half is the
       per-class channel (α = 5) on top of the step-1 channel, tempered by β_g fitted on cross-fitted prefixes.
       Classes with no dev image ("few-shot" asked with partial coverage): no LR (it cannot score a class it
       never saw); the per-class channel alone, whose rows for those classes are the rule channel's, kept only
       when it beats the rule channel on held-out dev images the same way (else zero-shot). Its held-out images
       are all of covered classes, so this check is optimistic when the images to classify are not.
       The posterior's full-system head (a plain LR on all Q similarities, fitted on full rows) is kept when its
       held-out full-system NLL is no higher than the masked model's. The Gaussian posterior
       (:mod:`engine.core.gaussian`, LDA over the similarities, exact for any asked set) replaces the LR when it
       beats it the same way over the asked sets the loop uses (each held-out image's full row and random
       prefixes: :func:`engine.core.answer_models.heldout_scores_any_set`) and is no less accurate than it on the
       held-out full rows; then no predictive EIG is made (it needs per-group terms) and the policies read the
       tempered per-class channel.
    Returns (AnswerChannels, FewShotModel or None, the decision as a dict for the file, (folds (B,), one
    :class:`FoldModel` per fold: the same choices fitted on the other folds, without dev order; () when the dev
    images make fewer than 2 folds)).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting == {setting!r}, must be one of {list(SETTINGS)}")
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior == {posterior!r}, must be one of {list(POSTERIORS)}")
    r, sizes, C = system.rule_matrix, system.option_counts, system.n_classes
    skip = tuple(i for i, g in enumerate(system.groups) if g.name == NAME_GROUP)
    counts = np.bincount(truth, minlength=C)
    covered = int((counts >= MIN_FEW_SHOT_IMAGES).sum())
    resolved = setting if setting != "auto" else ("few-shot" if covered == C else "zero-shot")
    folds = AM.stratified_folds(truth, AM.N_FOLDS, seed)
    variants = (AM.RULE_VARIANTS if prior_strength is None else
                {"uncalibrated": None, f"fitted, α={prior_strength:g}": {"prior_strength": float(prior_strength)}})
    held = AM.crossfit_rule_variants(sims, truth, r, sizes, lam0=lam0, eps=eps, folds=folds, skip_groups=skip,
                                     variants=variants)
    rule = AM.choose_rule_variant(held)
    kw = variants[rule]
    # "uncalibrated" is the fit with every group skipped: λ0 and the ε channel everywhere
    def fit_rule(tr):  # "uncalibrated" is the fit with every group skipped: λ0 and the ε channel everywhere
        return fit_answer_channels(sims[tr], truth[tr], r, sizes, lam0=lam0, eps=eps, **(kw or {}),
                                   skip_groups=skip if kw is not None else tuple(range(len(sizes))))

    ch = fit_rule(slice(None))
    fold_ids = [int(f) for f in np.unique(folds)] if len(np.unique(folds)) > 1 else []
    fold_ch = [fit_rule(folds != f) for f in fold_ids]
    fold_few: list[Any] = [None] * len(fold_ids)
    decision: dict[str, Any] = {
        "requested": setting, "setting": resolved, "folds": AM.N_FOLDS, "seed": int(seed),
        "classes_with_dev_images": int((counts > 0).sum()), "classes": C, "rule_channel": rule,
        "heldout": {f"rule channel, {k}": v for k, v in AM.public_scores(held).items()},
        "method": "3 stratified folds of the dev images, each scored by the fit on the others; a fitted part is "
                  "kept only when its held-out full-system NLL is no higher than what it replaces and its accuracy "
                  "higher by at least one paired standard error"}
    few = None
    if resolved == "few-shot":
        rule_P = ch.channel(r, sizes).P
        if (counts > 0).all():
            pf = AM.fit_few_shot_posterior(sims, truth, sizes, C, seed=seed)
            lr = AM.heldout_scores(pf.heldout_log_post, truth)
            name = "few-shot posterior (group-masked LR" + (", full-system head)" if pf.posterior.has_head else ")")
            if pf.heldout_head is not None:
                for k, lp in (("group-masked LR alone", pf.heldout_masked), ("full-system head", pf.heldout_head)):
                    decision["heldout"][f"few-shot posterior: {k}"] = AM.public_scores(
                        {"x": AM.heldout_scores(lp, truth)})["x"]
            decision["heldout"]["few-shot posterior"] = AM.public_scores({"x": lr})["x"]  # as kept (head or not)
            decision["posterior_cv"] = [{"reg": a, "heldout_nll_prefixes": b, "heldout_accuracy_full": c,
                                         "heldout_nll_full": d} for a, b, c, d in pf.cv]
            decision["head_cv"] = [{"reg": a, "heldout_nll_full": b, "heldout_accuracy_full": c}
                                   for a, b, c, _ in pf.head_cv]
            decision["head"] = pf.head_kept
            post, scores, fold_posts = pf.posterior, lr, pf.fold_posteriors
            if not (pf.folds is not None and np.array_equal(pf.folds, folds)):
                raise RuntimeError("the posterior's folds differ from the calibration's")  # both stratified_folds
            gf = GP.fit_gaussian_posterior(sims, truth, sizes, C, seed=seed) if posterior != "lr" else None
            if gf is not None and gf.heldout_log_post is not None:
                # the Gaussian posterior replaces the LR only when it beats it over the asked sets the loop uses
                # (every image's full row and random prefixes, held out) and is no less accurate on the full rows,
                # or when asked for by name
                gs = AM.heldout_scores(gf.heldout_log_post, truth)
                decision["heldout"]["few-shot posterior: Gaussian (LDA)"] = AM.public_scores({"x": gs})["x"]
                any_set = {name: AM.heldout_scores_any_set(posts, folds, sims, truth, len(sizes), seed=seed)
                           for name, posts in (("LR", pf.fold_posteriors), ("Gaussian", gf.fold_posteriors))}
                decision["gaussian"] = {"asked": posterior, "shrink": gf.posterior.shrink,
                                        "temperature": gf.posterior.temperature,
                                        "cv": [{"shrink": a, "heldout_log_density": b} for a, b in gf.cv],
                                        "heldout_any_asked_set": AM.public_scores(any_set)}
                if posterior == "gaussian" or (AM.replaces(any_set["Gaussian"], any_set["LR"])
                                               and gs["accuracy"] >= lr["accuracy"]):
                    if not np.array_equal(gf.folds, folds):
                        raise RuntimeError("the Gaussian posterior's folds differ from the calibration's")
                    post, scores, fold_posts = gf.posterior, gs, gf.fold_posteriors
                    why = ("asked for by name" if posterior == "gaussian" else
                           "better than the group-masked LR on held-out dev")
                    name = f"few-shot posterior (Gaussian, LDA: {why})"
            if AM.replaces(scores, held[rule]):
                P, beta = AM.fit_per_class_tempered(sims, truth, sizes, ch.lams, rule_P, folds=folds, seed=seed)
                few = AM.FewShotModel(posterior=post, P=P, beta=beta, alpha=AM.PER_CLASS_ALPHA, n_dev=counts,
                                      sizes=np.asarray(sizes))
                decision["posterior"] = name
                fold_few = [_fold_few(few, fold_posts[i], sims[folds != f], truth[folds != f], fold_ch[i],
                                      r, sizes) for i, f in enumerate(fold_ids)]
            else:
                decision["setting"] = "zero-shot"
                decision["posterior"] = f"rule channel ({rule}): the few-shot posterior was not better on held-out dev"
        else:
            pc = AM.crossfit_per_class(sims, truth, r, sizes, ch.lams, rule_P, eps, folds=folds)
            decision["heldout"]["per-class channel (no LR: some classes have no dev image)"] = \
                AM.public_scores({"x": pc})["x"]
            missing = int((counts == 0).sum())
            if AM.replaces(pc, held[rule]):
                P = AM.per_class_channel(AM.soft_answers(sims, sizes, ch.lams), truth, rule_P, AM.PER_CLASS_ALPHA)
                few = AM.FewShotModel(posterior=None, P=P, beta=np.ones(len(sizes)), alpha=AM.PER_CLASS_ALPHA,
                                      n_dev=counts, sizes=np.asarray(sizes))
                fold_few = [_fold_few(few, None, sims[folds != f], truth[folds != f], fold_ch[i], r, sizes)
                            for i, f in enumerate(fold_ids)]
                decision["posterior"] = (f"per-class channel: {missing} class(es) have no dev image and use the rule "
                                         "channel's answer distributions")
            else:
                decision["setting"] = "zero-shot"
                decision["posterior"] = (f"rule channel ({rule}): {missing} class(es) have no dev image, and the "
                                         "per-class channel was not better on held-out dev")
    else:
        decision["posterior"] = f"rule channel ({rule})"
    fold_models = tuple(FoldModel(channels=c, few_shot=f) for c, f in zip(fold_ch, fold_few))
    return ch, few, decision, (folds, fold_models)


def _fold_few(few: Any, posterior: Any, sims: np.ndarray, truth: np.ndarray, ch: AnswerChannels, rule_matrix,
              sizes) -> Any:
    """The few-shot model ``few`` refitted on one fold's training images (sims (b, Q), truth (b,)): its
    posterior ``posterior`` (fitted there by the cross-validation), the per-class channel on these images over
    the fold's rule channel ``ch``, and ``few``'s β (fitted on cross-fitted prefixes already)."""
    rule_P = ch.channel(rule_matrix, sizes).P
    P = AM.per_class_channel(AM.soft_answers(sims, sizes, ch.lams), truth, rule_P, few.alpha)
    return AM.FewShotModel(posterior=posterior, P=P, beta=few.beta, alpha=few.alpha,
                           n_dev=np.bincount(truth, minlength=rule_P.shape[0]), sizes=np.asarray(sizes))


def fit_calibration(sims: np.ndarray, truth: np.ndarray, system: AttributeSystem, *, lam0: float, eps: float,
                    model: str, model_id: str, revision: str | None = None, dev: dict[str, Any] | None = None,
                    policies: Sequence[str] | None = None, prior_strength: float | None = None,
                    setting: str = "auto", seed: int = 0, auto: bool = True, posterior: str = "auto") -> Calibration:
    """Fit a calibration on dev similarities.

    sims : (B, Q) similarities of the dev images to every prompt of ``system``; truth : (B,) class indices.
    lam0 : the model's own λ (groups that cannot be fitted keep it; "before" metrics use it); eps : ε.
    dev : what to record about the dev split (data, rows hash, image hashes, seed, fraction).
    policies : whose τ=1 paths to keep (default: every built-in policy).
    setting, prior_strength, seed, posterior : see :func:`fit_answer_model`.
    The answer model and the dev order are fitted on every dev image; the τ tables and the auto choice come
    from cross-fitted paths (each fold's images traced with the model fitted on the other folds; see the
    module docstring). With fewer than 2 folds (under 2 dev images) the paths are in-sample, and the file
    says so.
    auto : choose the auto policy (budget sweeps of its candidates on the cross-fitted paths).
    """
    sims = np.asarray(sims, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    ch, few, decision, (folds, fold_models) = fit_answer_model(sims, truth, system, lam0=lam0, eps=eps,
                                                               setting=setting, seed=seed,
                                                               prior_strength=prior_strength, posterior=posterior)
    predictive = None
    if few is not None:
        channel = few.channel(system.rule_matrix, system.option_counts, eps)
        model_post = few.posterior
        if model_post is not None and fold_models and not getattr(model_post, "conditional", False):
            # the EIG of what this posterior will do: every dev image's out-of-fold terms, by the fold
            # posteriors the cross-validation fitted (the same folds as the cross-fitted paths)
            predictive = crossfit_predictive(SelectPart(sims, truth, folds), fold_models, seed=seed)
    else:
        channel, model_post = ch.channel(system.rule_matrix, system.option_counts), None
    metrics = {
        "n_images": int(len(truth)), "in_sample": True,
        "full": {"before": _full_metrics(sims, truth, system, lam0, eps),
                 "after": _full_metrics(sims, truth, system, ch.lams, eps, channel, model_post)},
        "adaptive": {"policy": METRIC_POLICY, "tau": METRIC_TAU,
                     "before": _adaptive_metrics(sims, truth, system, lam0, eps),
                     "after": _adaptive_metrics(sims, truth, system, ch.lams, eps, channel, model_post)},
        "heldout": decision["heldout"],
    }
    G = system.n_groups
    order = (dev_greedy_order(sims, truth, ch.lams, channel, answer_model=model_post) if len(truth)
             else tuple(range(G)))
    fold_models = tuple(
        replace(fm, dev_order=dev_greedy_order(sims[folds != f], truth[folds != f], fm.channels.lams,
                                               fm.channel(system), answer_model=fm.answer_model()))
        for f, fm in enumerate(fold_models))
    dev = dict(dev or {})
    dev["crossfit"] = ({"folds": len(fold_models), "seed": int(seed),
                       "split": "by image, stratified by class (engine.core.answer_models.stratified_folds); each "
                                "fold's paths traced with the model and dev order fitted on the other folds",
                       "used_for": {"every dev image": "answer model, dev order (shipped)",
                                    "cross-fitted paths": "τ tables, auto policy; held-out decisions"}}
                      if fold_models else
                      {"folds": 0, "why": f"{len(truth)} dev image(s) make fewer than 2 folds: the τ tables and "
                                          "the auto choice are in-sample (optimistic)"})
    cal = Calibration(channels=ch, model=model, model_id=model_id, revision=revision, system_name=system.name,
                      system_sha256=system_hash(system), **transfer_fields(system, truth, dev),
                      sizes=tuple(int(k) for k in system.option_counts),
                      groups=tuple(g.name for g in system.groups), lam0=float(lam0), dev=dev, metrics=metrics,
                      setting=decision["setting"], few_shot=few, decision=decision, dev_order=order,
                      select=SelectPart(sims, truth, folds if fold_models else None), crossfit=fold_models,
                      predictive=predictive)
    names = [p for p in (builtin_policies() if policies is None else list(policies)) if p != "auto"]
    paths = {p: cal.select_paths(p, system) for p in names} if len(truth) else {}
    choice = choose_auto(cal, system) if auto and len(truth) else {}
    return replace(cal, paths=paths, auto=choice)


def transfer_fields(system: AttributeSystem, fit_truth: np.ndarray, dev: dict[str, Any]) -> dict[str, Any]:
    """What a calibration records for zero-shot transfer: the hash of the questions and its source (the system,
    the classes the answer channels were fitted on, the dev data and its name, the domain)."""
    classes = [system.classes[c] for c in np.unique(np.asarray(fit_truth, dtype=np.int64))]
    return {"groups_sha256": groups_hash(system),
            "source": {"system": system.name, "classes": classes, "data": dev.get("data"), "domain": dev.get("name")}}


def budget_sweep(cal: Calibration, system: AttributeSystem, policy: str, budgets: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image outcomes of ``policy`` on the select images along a budget sweep at τ = 1, each fold by its
    own model (:meth:`Calibration.fold_runs`).

    Returns correct (B, nb) float and q (B, nb) float: image i right / prompts spent at budget b.
    """
    from engine.core.adaptive import StopRule, classify_batch

    sel = cal.select
    correct, q = np.zeros((len(sel.truth), len(budgets))), np.zeros((len(sel.truth), len(budgets)))
    for idx, lams, ch, am, order in cal.fold_runs(system):
        if not len(idx):
            continue
        for j, b in enumerate(budgets):
            res = classify_batch(ArraySource(sel.sims[idx], system), system, cal.policy_object(policy, order),
                                 stop=StopRule(budget=int(b)), logit_scale=lams, channel=ch, top_k=1, answer_model=am)
            correct[idx, j] = [r.label == system.classes[t] for r, t in zip(res, sel.truth[idx])]
            q[idx, j] = [r.q_spent for r in res]
    return correct, q


def choose_auto(cal: Calibration, system: AttributeSystem, *, n_budgets: int = AUTO_BUDGETS,
                n_boot: int = AUTO_BOOT, seed: int = 0) -> dict[str, Any]:
    """The auto policy on the select part: every candidate's normalised budget AUC with a paired bootstrap CI
    (:func:`engine.core.metrics.budget_aucs`), and the choice (:func:`engine.core.channel_fit.pick_policy`)."""
    budgets = budget_grid(int(system.q_total), n_budgets)
    curves = {p: budget_sweep(cal, system, p, budgets) for p in AUTO_CANDIDATES}
    aucs = budget_aucs(curves, float(system.q_total), n_boot=n_boot, seed=seed)
    choice, diffs = pick_policy(aucs, "fixed")
    return {"choice": choice, "n_images": int(len(cal.select.truth)), "budgets": budgets, "n_boot": n_boot,
            "rule": "highest AUC if its paired 95% CI against fixed is above 0, else fixed",
            "candidates": {p: {"auc": aucs[p]["auc"], "ci95": aucs[p]["ci95"], "minus_fixed": diffs[p]["diff"],
                               "minus_fixed_ci95": diffs[p]["diff_ci95"]} for p in AUTO_CANDIDATES}}


SKIPPED_KEPT = 20  # unreadable dev images named in a calibration's dev record (the rest are counted)


def calibrate(classifier: Any, data: Any, *, dev_fraction: float = 0.5, seed: int = 0, eps: float | None = None,
              dataset: Any = None, chunk_size: int = 64, progress: Callable[[int], None] | None = None,
              policies: Sequence[str] | None = None, setting: str = "auto",
              fit_fraction: float | None = None, posterior: str = "auto") -> Calibration:
    """Fit a calibration for a loaded Classifier's model and system on the dev split of labelled images
    (every dev image fitted on; τ and auto from cross-fitted paths: :func:`fit_calibration`).
    fit_fraction : deprecated and ignored (a DeprecationWarning): the fit/select split it set is gone.
    setting, posterior : see :func:`fit_answer_model`.

    data : a :class:`engine.run.datasets.DataSpec` (``dataset``: it already loaded). The images are split
    by image, stratified by class and seeded (:func:`engine.core.channel_fit.split_by_image`, ``dev_fraction``
    of each class to dev); only the dev images are embedded (once each), and their similarities to every
    prompt computed once. Dev images that fail to load are left out (counted in ``dev['bad_images']``).
    """
    from engine.run.encoder_source import EncoderSource

    if fit_fraction is not None:
        import warnings

        warnings.warn(FIT_FRACTION_DEPRECATED, DeprecationWarning, stacklevel=2)
    system = classifier.system
    ds = dataset if dataset is not None else data.load(system.classes)
    items = list(ds.items)
    if not items:
        raise CalibrationError(f"no images in {data.source!r} to calibrate on; point --data at labelled images")
    truth_all = np.array([system.class_index(it.label) for it in items], dtype=np.int64)
    dev_idx, _ = split_by_image(truth_all, dev_fraction, seed)
    dev_items = [items[i] for i in dev_idx]
    if not dev_items:  # a data problem (too few images per class), not unreadable files
        raise CalibrationError(f"the dev split of {data.source!r} is empty: its {len(items)} image(s) leave no class "
                               f"with 2 or more images (a class needs one dev and one test image); give more images "
                               "per class (a larger --limit, or no --limit)")
    embs, good_rows, bad, skipped = [], [], 0, []
    for start in range(0, len(dev_items), chunk_size):
        chunk = dev_items[start:start + chunk_size]
        emb, good, errs = classifier.images.embed([it.source for it in chunk], [it.path for it in chunk])
        if len(good):
            embs.append(EncoderSource(classifier.encoder, classifier.text_cache, system, emb).all_similarities())
            good_rows += [start + int(j) for j in good]
        bad += len(errs)
        skipped += [errs[j] for j in sorted(errs)][:SKIPPED_KEPT - len(skipped)]
        if progress:
            progress(len(chunk))
    if not good_rows:
        raise CalibrationError(f"none of the {len(dev_items)} dev image(s) of {data.source!r} could be read; "
                               "check the paths in --data")
    sims = np.concatenate(embs)
    truth = truth_all[dev_idx][good_rows]
    dev = {"data": str(data.source), "name": ds.name, "rows": len(items), "n_images": len(good_rows),
           "bad_images": bad, "fraction": float(dev_fraction), "seed": int(seed), "split": "by image, stratified",
           "sha256": fingerprint({}, [it.path for it in dev_items], [it.label for it in dev_items]),
           "image_sha256": sorted({h for h in map(image_sha256, dev_items) if h is not None})}
    if skipped:  # the first few, named (the file of a clean run has no such key)
        dev["skipped"] = skipped
    enc = classifier.encoder
    return fit_calibration(sims, truth, system, lam0=float(enc.logit_scale), eps=DEFAULT_EPS if eps is None else eps,
                           model=classifier.spec.model, model_id=str(enc.model_id), revision=classifier.spec.revision,
                           dev=dev, policies=policies, setting=setting, seed=seed, posterior=posterior)
