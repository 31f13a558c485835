"""Attribute systems: the format, validation, builders, analysis and the shipped system files."""

from .analysis import analyze
from .build import baseline_system
from .draft import DraftRejected, build_prompt, import_draft
from .format import AttributeSystem, Group
from .io import list_systems, load_system, save_system
from .validate import SystemValidationError, parse_system, validate_system

__all__ = [
    "AttributeSystem", "Group", "SystemValidationError", "analyze", "baseline_system",
    "list_systems", "load_system", "parse_system", "save_system", "validate_system",
]
__all__ += ["DraftRejected", "build_prompt", "import_draft"]
