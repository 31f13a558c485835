"""What a result depends on, as hashes and versions (for fingerprints and summaries)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from systems.format import AttributeSystem


@lru_cache(maxsize=1)
def package_version() -> str:
    """twentyq's installed version ("unknown" when run from a checkout that is not installed)."""
    try:
        return version("twentyq")
    except PackageNotFoundError:
        return "unknown"


def system_hash(system: AttributeSystem) -> str:
    """sha256 of the system's canonical JSON (classes, groups, templates, options, rules)."""
    return hashlib.sha256(json.dumps(system.to_dict(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def groups_hash(system: AttributeSystem) -> str:
    """sha256 of the system's questions alone: every group's name, template and options, in order (not its
    classes or rules). Two systems with equal groups hashes ask the same prompts, so what a calibration learns
    about how a model answers each question (λ_g, option confusions, reliabilities) applies to both."""
    groups = [{"name": g.name, "template": g.template, "options": list(g.options)} for g in system.groups]
    return hashlib.sha256(json.dumps(groups, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
