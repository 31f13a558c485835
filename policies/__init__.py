"""Question policies: small objects with one method, ``select``, and a registry by name."""

from . import builtin  # noqa: F401  (registers the built-ins)
from .base import POLICIES, Policy, PolicyState, get_policy, list_policies, register

__all__ = ["POLICIES", "Policy", "PolicyState", "get_policy", "list_policies", "register"]
