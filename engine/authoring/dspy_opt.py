"""DSPy around a system-proposal step (optional: ``pip install 'twentyq[dspy]'``).

The write-up's "automated construction with DSPy": an LLM program proposes a new version of the
attribute system, each version is scored by its accuracy on held-out dev images, and the best one
is kept; the embedding model stays frozen throughout.

* :class:`SystemProposer` is the DSPy program: for every group it asks the LM (signature
  :class:`ProposeTemplate`) for a new prompt template. A proposal without exactly one ``{}`` (or
  with other braces) is dropped and the group keeps its template, so every candidate is valid.
* :class:`DevAccuracy` is the metric: the engine's full-system Bayes accuracy
  (:mod:`engine.core.scoring`) on the dev images, from similarities given by ``prompt_sims`` (prompts
  ``(P,) -> (B, P)`` cosine similarities of the cached dev image embeddings, e.g.
  :class:`engine.authoring.refine_images.PromptSims`). Each prompt is embedded once and memoised.
* :func:`optimize_system` runs the proposer ``n`` times with :class:`dspy.BestOfN` against the
  metric and returns the best candidate, or the original system when no candidate beats it.

The engine never imports this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import dspy
import numpy as np

from engine.core.scoring import build_channel, full_bayes_log_posterior, group_log_probs

from systems.format import AttributeSystem, Group
from systems.validate import check_template

PromptSims = Callable[[Sequence[str]], np.ndarray]


class ProposeTemplate(dspy.Signature):
    """Rewrite the prompt template of one question of an attribute system, so that a CLIP-style
    image-text embedding model matches each image with the right option more often. The template
    is a short visual caption with exactly one {} where an option is inserted, and no other braces."""

    group: str = dspy.InputField(desc="the question's name")
    template: str = dspy.InputField(desc="the current template")
    options: list[str] = dspy.InputField(desc="the options that replace {}")
    classes: list[str] = dspy.InputField(desc="the classes the question helps tell apart")
    new_template: str = dspy.OutputField(desc="one template with exactly one {}")


def valid_template(text: object) -> str | None:
    """The stripped template if it has exactly one ``{}`` and no other braces, else None."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text if check_template(text, "template", []) else None


class SystemProposer(dspy.Module):
    """DSPy program: a system in, a candidate system (one proposed template per group) out."""

    def __init__(self):
        super().__init__()
        self.propose = dspy.Predict(ProposeTemplate)

    def forward(self, system: AttributeSystem) -> dspy.Prediction:
        groups: list[Group] = []
        changes: dict[str, str] = {}
        for g in system.groups:
            out = self.propose(group=g.name, template=g.template, options=list(g.options),
                               classes=list(system.classes))
            new = valid_template(getattr(out, "new_template", None))
            if new and new != g.template:
                changes[g.name] = new
                groups.append(dataclasses.replace(g, template=new))
            else:
                groups.append(g)
        candidate = dataclasses.replace(system, groups=tuple(groups))
        return dspy.Prediction(system=candidate, changes=changes)


class DevAccuracy:
    """The metric: full-system Bayes accuracy on the dev images, prompts embedded once each.

    prompt_sims : prompts (P,) -> (B, P) similarities of the B dev images (the frozen model).
    truth : (B,) class indices into the systems' classes (every candidate keeps the classes).
    lam, eps : logit scale and rule noise of the engine's scorer.
    ``history`` records (changes, accuracy) for every candidate scored through ``__call__``.
    """

    def __init__(self, prompt_sims: PromptSims, truth: np.ndarray, lam: float = 100.0, eps: float = 0.05):
        self.prompt_sims = prompt_sims
        self.truth = np.asarray(truth, dtype=np.int64)
        self.lam, self.eps = lam, eps
        self._memo: dict[str, np.ndarray] = {}
        self.history: list[tuple[dict[str, str], float]] = []

    def _sims(self, prompts: list[str]) -> np.ndarray:
        new = [p for p in dict.fromkeys(prompts) if p not in self._memo]
        if new:
            cols = np.asarray(self.prompt_sims(new), dtype=np.float64)
            if cols.shape != (len(self.truth), len(new)):
                raise ValueError(f"prompt_sims returned shape {cols.shape}, expected {(len(self.truth), len(new))}")
            self._memo.update({p: cols[:, i] for i, p in enumerate(new)})
        return np.stack([self._memo[p] for p in prompts], axis=1)

    @property
    def n_prompts_embedded(self) -> int:
        return len(self._memo)

    def accuracy(self, system: AttributeSystem) -> float:
        """Dev accuracy of the full system (every group, Bayes scorer)."""
        log_probs = [group_log_probs(self._sims(g.prompts()), self.lam) for g in system.groups]
        channel = build_channel(system.rule_matrix, system.option_counts, self.eps)
        pred = full_bayes_log_posterior(log_probs, channel).argmax(axis=1)
        return float((pred == self.truth).mean())

    def __call__(self, args: dict, pred: dspy.Prediction) -> float:
        """``dspy.BestOfN`` reward: the candidate's dev accuracy."""
        acc = self.accuracy(pred.system)
        self.history.append((dict(pred.changes), acc))
        return acc

    def metric(self, example: dspy.Example, pred: dspy.Prediction, trace: object = None) -> float:
        """The same score in the signature DSPy's optimizers and ``dspy.Evaluate`` expect."""
        return self.accuracy(pred.system)


@dataclass
class OptimizeResult:
    """The system kept, its dev accuracy, the original's, and every candidate tried."""

    system: AttributeSystem
    dev_accuracy: float
    baseline_accuracy: float
    tried: list[tuple[dict[str, str], float]] = field(default_factory=list)
    n_prompts_embedded: int = 0

    @property
    def improved(self) -> bool:
        return self.dev_accuracy > self.baseline_accuracy


def optimize_system(system: AttributeSystem, prompt_sims: PromptSims, truth: np.ndarray, *,
                    lm: dspy.LM | None = None, n: int = 4, lam: float = 100.0, eps: float = 0.05) -> OptimizeResult:
    """Propose ``n`` candidate systems with the LM and keep the best by dev accuracy.

    ``lm`` defaults to the one set with ``dspy.configure``. The original system is returned
    unless a candidate is strictly more accurate on the dev images.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    metric = DevAccuracy(prompt_sims, truth, lam=lam, eps=eps)
    base = metric.accuracy(system)
    best_of = dspy.BestOfN(SystemProposer(), N=n, reward_fn=metric, threshold=1.0)
    with dspy.context(lm=lm) if lm is not None else nullcontext():
        pred = best_of(system=system)
    acc = metric.accuracy(pred.system)
    keep, keep_acc = (pred.system, acc) if acc > base else (system, base)
    return OptimizeResult(system=keep, dev_accuracy=keep_acc, baseline_accuracy=base,
                          tried=metric.history, n_prompts_embedded=metric.n_prompts_embedded)
