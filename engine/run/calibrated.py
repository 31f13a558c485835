"""A Classifier's calibration in use, and how a Classifier's parts are loaded.

- :func:`load_parts`: the encoder settings, the system, the calibration and the model, in the order
  that fails cheapest first (the calibration is checked against the system before the model loads,
  and against the model once it has).
- :class:`CalibrationUse`: what a run takes from the calibration: whether it applies to a
  configuration, the check of settings it cannot serve, and the :class:`RunPlan` of a configuration
  (system, policy, stop rule, λ_g, answer channel, few-shot model), with the τ a target accuracy
  picks (memoised per policy, target, budget and seed).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, NamedTuple

from engine.common.errors import OneLineWarning
from engine.common.memo import BoundedMemo
from engine.core.adaptive import NO_STOP, StopRule, reads_own_information
from engine.run.config import EncoderSpec, RunConfig
from systems import AttributeSystem, baseline_system, load_system


def load_parts(model: str | EncoderSpec, system: Any, encoder: Any = None, calibration: Any = None,
               **encoder_options) -> tuple[EncoderSpec, AttributeSystem, Any, Any]:
    """(spec, system, calibration or None, encoder) for :class:`engine.run.classifier.Classifier`'s arguments.

    ``system`` may be a list of class names (the class-name system, prompt "a photo of a {}.");
    ``encoder`` an already loaded one (not loaded again); ``calibration`` a Calibration or its path.
    """
    from engine.run.calibration_file import as_calibration

    if isinstance(model, EncoderSpec) and encoder_options:
        raise TypeError("pass an EncoderSpec or encoder options, not both")
    spec = model if isinstance(model, EncoderSpec) else EncoderSpec(model=model, **encoder_options)
    if isinstance(system, (list, tuple)):  # plain labels: the class-name system (engine.zero_shot's)
        from systems.build import labels_system

        system = labels_system(list(system), source="system=[labels]")
    system = load_system(system)
    cal = as_calibration(calibration)
    if cal is not None:  # checked before the model loads; moved when the system has other classes
        cal = cal.for_system(system)
    encoder = encoder if encoder is not None else spec.load()
    if cal is not None:
        cal.check(system, str(encoder.model_id), spec.model)
    return spec, system, cal, encoder


class CalibrationWarning(OneLineWarning, UserWarning):
    """A setting the calibration serves, but not as well as the user may think (printed as one line)."""


class CalibrationUse:
    """The calibration (or None) of one Classifier, as its runs use it (see the module docstring)."""

    def __init__(self, calibration: Any, system: AttributeSystem):
        self.calibration, self.system = calibration, system
        self.channel = calibration.channel(system) if calibration is not None else None
        self.answer_model = calibration.answer_model(system) if calibration is not None else None
        self._taus = BoundedMemo()  # τ choices by (policy, target, budget, seed): a server's clients choose them

    def applies(self, config: RunConfig) -> bool:
        """Whether runs of ``config`` use the calibration (it fits the attribute system: adaptive and full)."""
        return self.calibration is not None and config.mode in ("adaptive", "full")

    def check(self, config: RunConfig) -> None:
        """A CalibrationError (one line, the fix) for settings the calibration cannot serve: a few-shot
        posterior needs the bayes scorer and no shortlist; a calibration moved to other classes has no auto
        choice, dev order or τ table; a target accuracy and ``settle="auto"`` need dev paths that describe the run
        (no calibration, a moved one, δ or another random seed are refused by name; both choices are made here
        and memoised for the plan)."""
        self.check_settle(config)
        if config.mode == "adaptive":  # a target accuracy or settle auto the calibration's dev paths cannot serve
            self.target_choice(config)  # (none, moved, another seed): refused by name; both choices memoised
            self.settle_choice(config)
        if self.applies(config) and config.mode == "adaptive" and self.calibration.moved_to:
            from engine.run.calibration_file import resolve_policy

            resolve_policy(self.calibration, config)  # auto, dev-order: refused by name
        if not self.applies(config) or self.answer_model is None:
            return
        am = self.answer_model
        if config.mode == "adaptive" and config.delta > 0 and getattr(am, "conditional", False) \
                and not hasattr(am, "information_gain") and not self._reads_own_information(config):
            warnings.warn(f"--delta {config.delta:g} with calibration {self.calibration.where()} and --policy "
                          f"{config.policy}: δ reads the per-class answer channel's EIG, not the Gaussian "
                          "posterior's own information, which can stop images early; drop --delta, use --policy "
                          "model_eig_per_prompt (δ then reads the model's own), or calibrate with --posterior lr",
                          CalibrationWarning, stacklevel=2)
        if config.scorer != "bayes" or (config.mode == "adaptive" and config.shortlist):
            from engine.run.calibration_file import CalibrationError

            raise CalibrationError(f"calibration {self.calibration.where()} is few-shot: its posterior needs the "
                                   "bayes scorer and no --shortlist; drop --scorer sum / --shortlist, or make a "
                                   "zero-shot one with 'twentyq calibrate --setting zero-shot'")

    def _reads_own_information(self, config: RunConfig) -> bool:
        """Whether the policy this run uses (auto and dev-order resolved through the calibration) reads the
        answer model's own information (``reads_model_eig``) instead of the channel's EIG. False where the
        calibration cannot resolve it (no auto choice or dev order): the run refuses that itself, by name."""
        from engine.run.calibration_file import CalibrationError, resolve_policy

        try:
            policy = resolve_policy(self.calibration, config)
        except CalibrationError:
            return False
        return reads_own_information(policy, self.answer_model)  # the loop's own test

    def check_settle(self, config: RunConfig) -> None:
        """A CalibrationError for an adaptive ``settle`` without a model that predicts the unasked similarities
        (a Gaussian few-shot calibration's)."""
        if config.mode != "adaptive" or config.settle is None or \
                hasattr(self.answer_model if self.applies(config) else None, "settled_probability"):
            return
        from engine.run.calibration_file import CalibrationError

        where = f"calibration {self.calibration.where()}" if self.calibration is not None else "no --calibration"
        raise CalibrationError(f"--settle {config.settle} needs a Gaussian few-shot calibration, which predicts the "
                               f"similarities not yet seen ({where}); make one with 'twentyq calibrate --posterior "
                               "gaussian', or drop --settle")

    def settle_choice(self, config: RunConfig) -> Any:
        """The :class:`engine.core.stopping.ThresholdChoice` for ``settle="auto"`` (None otherwise), from the
        calibration's cross-fitted dev paths of the config's policy, τ and budget (memoised by the calibration;
        :func:`engine.run.calibration_file.settle_choice`, which refuses settings its paths do not describe).
        (``--target-accuracy``, whose τ would replace ``config.tau``, does not combine with settle.)"""
        if config.mode != "adaptive" or config.settle != "auto":
            return None
        from engine.run.calibration_file import settle_choice

        self.check_settle(config)
        return settle_choice(self.calibration, config, self.system)

    def target_choice(self, config: RunConfig) -> Any:
        """The :class:`engine.core.channel_fit.TauChoice` for ``config.target_accuracy`` (None without one),
        from the calibration's dev paths of the config's policy and budget (memoised)."""
        from engine.run.calibration_file import target_choice

        if config.target_accuracy is None:
            return None
        key = (config.policy, float(config.target_accuracy), config.budget, config.seed)  # seed: random's check
        return self._taus.get(key, lambda: target_choice(self.calibration, config, self.system))

    def plan(self, config: RunConfig, logit_scale: float) -> RunPlan:
        """How the loop runs ``config`` (:class:`RunPlan`), checked: a ValueError for a ``logit_scale``
        beside the calibration, a CalibrationError for settings it cannot serve (:meth:`check`).

        The system the mode asks, its policy and stop rule: the class names with a fixed order and no
        stop for baseline and descriptors, every group for full, else the policy the calibration
        resolves and the stop rule (its τ from ``target_accuracy`` when set). The scoring: the
        calibration's λ_g, answer channel and few-shot model when it applies (then
        ``config.logit_scale`` must be unset), else ``config.logit_scale`` or the model's ``logit_scale``.
        """
        from engine.run.calibration_file import resolve_policy

        if config.mode in ("baseline", "descriptors"):
            system, policy, stop = baseline_system(self.system), "fixed", NO_STOP
        elif config.mode == "full":
            system, policy, stop = self.system, "fixed", NO_STOP
        else:
            system, policy, stop = self.system, resolve_policy(self.calibration, config), config.stop_rule()
            choice = self.target_choice(config)
            if choice is not None:
                stop = replace(stop, tau=choice.tau)
            if config.settle == "auto":
                stop = replace(stop, settle=self.settle_choice(config).threshold)
        self.check_settle(config)
        if not self.applies(config):
            lam = logit_scale if config.logit_scale is None else config.logit_scale
            return RunPlan(system, policy, stop, lam, None, None)
        if config.logit_scale is not None:
            raise ValueError("a calibration sets λ per group; drop logit_scale (--logit-scale) or the calibration")
        self.check(config)
        return RunPlan(system, policy, stop, self.calibration.lams, self.channel, self.answer_model)


class RunPlan(NamedTuple):
    """What the adaptive loop is called with for one configuration (:meth:`CalibrationUse.plan`)."""

    system: AttributeSystem
    policy: Any
    stop: StopRule
    logit_scale: Any  # λ: one float, or the calibration's per-group λ_g
    channel: Any  # the calibration's answer channel, or None
    answer_model: Any  # the few-shot model, or None
