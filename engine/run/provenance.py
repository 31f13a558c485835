"""What a result depends on, as hashes and versions (for fingerprints and summaries)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from systems.format import AttributeSystem


@lru_cache(maxsize=1)
def package_version() -> str:
    """twentyq's installed version ("unknown" when run from a checkout that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twentyq")
    except PackageNotFoundError:
        return "unknown"


def system_hash(system: AttributeSystem) -> str:
    """sha256 of the system's canonical JSON (classes, groups, templates, options, rules)."""
    return hashlib.sha256(json.dumps(system.to_dict(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
