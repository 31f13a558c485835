"""Result records: plain dataclasses that serialise to JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STOP_REASONS = ("confident", "no_gain", "budget", "exhausted", "settled")


@dataclass
class Step:
    """One question asked of one image."""

    group: str
    eig: float  # expected information gain when chosen (nats)
    answer: str  # the answer distribution's top option
    answer_prob: float
    confidence_after: float  # max posterior after the update
    # only when traced (classify_batch(trace=True)): the top-k (label, prob) after this step under the
    # scorer, and the prompts spent so far (the record's ``top`` and ``q_spent`` as they stood then);
    # absent from the record otherwise
    top: list[tuple[str, float]] | None = None
    q_spent: int | None = None


@dataclass
class Result:
    """The outcome for one image.

    ``top`` holds (label, probability) pairs, best first. Under the Bayes
    scorer these are posterior probabilities; under the sum scorer they are the
    sum scores normalised to sum to 1. ``error`` is None for a good image, and
    a message (with ``label`` None) for an image that could not be scored.
    """

    label: str | None
    confidence: float
    top: list[tuple[str, float]]
    steps: list[Step]
    q_spent: int
    stop: str | None
    image: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    true_label: str | None = None  # the image's label when the input had one (eval); not a result

    def to_dict(self, *, top_records: bool = False) -> dict[str, Any]:
        """The record: what ``twentyq classify --json`` prints, the server answers and every result file holds.

        Keys in this order: label, confidence, top, q_spent, stop, image, error, asked (the steps),
        the ``extra`` keys, then ``true_label`` when there is one. ``top`` (and a traced step's ``top``)
        is a list of ``[label, prob]`` pairs, or of ``{"label", "prob"}`` records with ``top_records``
        (the form result files hold). Built in one pass, straight from the Result.
        """
        top = _records if top_records else _pairs
        d = {"label": self.label, "confidence": self.confidence, "top": top(self.top), "q_spent": self.q_spent,
             "stop": self.stop, "image": self.image, "error": self.error,
             "asked": [_step_dict(s, top) for s in self.steps]}
        d.update(self.extra)
        if self.true_label is not None:
            d["true_label"] = self.true_label
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        """The inverse of :meth:`to_dict` (either form of ``top``; keys it does not know go to ``extra``)."""
        known = {"label", "confidence", "top", "asked", "q_spent", "stop", "image", "error", "true_label"}
        return cls(label=d.get("label"), confidence=float(d.get("confidence", 0.0)),
                   top=[_pair(t) for t in d.get("top") or []],
                   steps=[_step(s) for s in d.get("asked") or []], q_spent=int(d.get("q_spent", 0)),
                   stop=d.get("stop"), image=d.get("image"), error=d.get("error"),
                   extra={k: v for k, v in d.items() if k not in known}, true_label=d.get("true_label"))

    @classmethod
    def failed(cls, error: str, image: str | None = None) -> "Result":
        return cls(label=None, confidence=0.0, top=[], steps=[], q_spent=0, stop=None, image=image, error=error)


def _pairs(top: list[tuple[str, float]]) -> list[list[Any]]:
    return [[lab, p] for lab, p in top]


def _records(top: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"label": lab, "prob": p} for lab, p in top]


def _pair(t: Any) -> tuple[str, float]:
    """A (label, prob) pair from either form of a ``top`` entry."""
    if isinstance(t, dict):
        return t["label"], float(t["prob"])
    return t[0], float(t[1])


def _step_dict(s: Step, top) -> dict[str, Any]:
    d = {"group": s.group, "eig": s.eig, "answer": s.answer, "answer_prob": s.answer_prob,
         "confidence_after": s.confidence_after}
    if s.top is not None:  # traced only: an untraced record keeps its old shape
        d["top"] = top(s.top)
    if s.q_spent is not None:
        d["q_spent"] = s.q_spent
    return d


def _step(d: dict[str, Any]) -> Step:
    top = d.get("top")
    return Step(d["group"], d["eig"], d["answer"], d["answer_prob"], d["confidence_after"],
                None if top is None else [_pair(t) for t in top], d.get("q_spent"))
