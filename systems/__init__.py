"""Attribute systems, the bottom layer: the format, validation, analysis, derived systems, files.

Nothing here imports :mod:`engine`. Building systems from tables, LLM drafts and
refinement on images uses the engine, so it lives above it, in :mod:`engine.authoring`.
"""

from systems.analysis import analyze
from systems.build import baseline_system
from systems.format import AttributeSystem, Group
from systems.io import list_systems, load_system, save_system
from systems.validate import SystemValidationError, parse_system, validate_system

__all__ = [
    "AttributeSystem", "Group", "SystemValidationError", "analyze", "baseline_system",
    "list_systems", "load_system", "parse_system", "save_system", "validate_system",
]
