"""twentyq's engine: scoring, the adaptive loop, similarity sources."""

from .adaptive import NO_STOP, SCORERS, StopRule, classify_batch
from .results import STOP_REASONS, Result, Step
from .scoring import Channel, build_channel, expected_information_gain
from .simulate import SimulatedSource
from .sources import ArraySource, SimilaritySource

__all__ = [
    "NO_STOP", "SCORERS", "STOP_REASONS", "ArraySource", "Channel", "Result", "SimilaritySource",
    "SimulatedSource", "Step", "StopRule", "build_channel", "classify_batch", "expected_information_gain",
]
