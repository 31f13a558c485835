"""Which registered policies a policy sweep in the tests covers."""

from __future__ import annotations

from policies import list_policies

#: policies that, with no calibration (no fitted order, no recorded choice), ask exactly as ``fixed`` does
#: (policies/builtin.py; checked by tests/test_engine.py)
FIXED_WITHOUT_CALIBRATION = frozenset({"dev-order", "auto"})


def distinct_policies() -> list[str]:
    """Every registered policy that is not ``fixed`` in disguise without a calibration: what a test sweeps."""
    return [p for p in list_policies() if p not in FIXED_WITHOUT_CALIBRATION]
