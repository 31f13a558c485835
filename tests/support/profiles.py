"""Which Hypothesis profile an environment gets (tests/conftest.py registers the profiles)."""

from __future__ import annotations


def hypothesis_profile(environ) -> str:
    """The profile for an environment: ``ci`` when CI is set to anything but an empty, 0, false or no."""
    return "ci" if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no") else "explore"
