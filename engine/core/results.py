"""Result records: plain dataclasses that serialise to JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STOP_REASONS = ("confident", "no_gain", "budget", "exhausted")


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top"] = [[lab, p] for lab, p in self.top]
        d["asked"] = d.pop("steps")
        for s in d["asked"]:
            for k in ("top", "q_spent"):
                if s[k] is None:
                    del s[k]  # untraced: the record keeps its old shape
            if "top" in s:
                s["top"] = [[lab, p] for lab, p in s["top"]]
        extra = d.pop("extra")
        d.update(extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        """The inverse of :meth:`to_dict` (keys it does not know go to ``extra``)."""
        known = {"label", "confidence", "top", "asked", "q_spent", "stop", "image", "error"}
        return cls(label=d.get("label"), confidence=float(d.get("confidence", 0.0)),
                   top=[(lab, float(p)) for lab, p in d.get("top", [])],
                   steps=[_step(s) for s in d.get("asked", [])], q_spent=int(d.get("q_spent", 0)),
                   stop=d.get("stop"), image=d.get("image"), error=d.get("error"),
                   extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def failed(cls, error: str, image: str | None = None) -> "Result":
        return cls(label=None, confidence=0.0, top=[], steps=[], q_spent=0, stop=None, image=image, error=error)


def _step(d: dict[str, Any]) -> Step:
    top = d.get("top")
    return Step(**{**d, "top": None if top is None else [(lab, float(p)) for lab, p in top]})
