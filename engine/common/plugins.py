"""Third-party plug-ins through Python entry points, loaded lazily, once per group.

A package registers a policy or an encoder backend in its ``pyproject.toml``::

    [project.entry-points."twentyq.policies"]
    first_group = "my_pkg.policies:FirstGroup"      # a policies.Policy subclass

    [project.entry-points."twentyq.encoders"]
    my-encoder = "my_pkg.encoders:load"             # load(model, *, device, dtype, ...) -> encoder

The entry point's name is what users type (``--policy first_group``, ``--model my-encoder``).
A plug-in that fails to import or is of the wrong kind is skipped with one warning line
naming it (logger ``twentyq.plugins``); it never breaks a command that does not use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("twentyq.plugins")

POLICY_GROUP = "twentyq.policies"
ENCODER_GROUP = "twentyq.encoders"

_loaded: dict[str, dict[str, Any]] = {}


def entry_points(group: str) -> list[Any]:
    """The installed entry points of ``group`` (importlib.metadata), by name, first one kept."""
    from importlib.metadata import entry_points as eps

    seen: dict[str, Any] = {}
    for ep in eps(group=group):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def load_plugins(group: str, check: Callable[[str, Any], str | None]) -> dict[str, Any]:
    """{name: loaded object} of ``group``'s entry points, loaded the first time only.

    check(name, obj) returns None when ``obj`` is usable, else why not; an unusable or
    broken plug-in is left out with one warning line naming it.
    """
    if group in _loaded:
        return _loaded[group]
    out: dict[str, Any] = {}
    _loaded[group] = out  # set first: a plug-in that asks for the registry while loading sees no loop
    for ep in entry_points(group):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        where = f"plugin {ep.name!r} ({ep.value}{', from ' + dist if dist else ''})"
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001  (any failure of third-party code: skip it, say so)
            first = str(e).splitlines()[0][:200] if str(e) else ""
            log.warning("%s in %s failed to load (%s: %s); skipping it — fix or uninstall that package",
                        where, group, type(e).__name__, first)
            continue
        why = check(ep.name, obj)
        if why:
            log.warning("%s in %s is not usable (%s); skipping it", where, group, why)
            continue
        out[ep.name] = obj
    return out


def reset(group: str | None = None) -> None:
    """Forget what was loaded (tests), so the next call looks again."""
    if group is None:
        _loaded.clear()
    else:
        _loaded.pop(group, None)
