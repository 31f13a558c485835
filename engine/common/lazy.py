"""Lazy re-exports for a package's ``__init__`` (PEP 562), shared by :mod:`engine` and :mod:`engine.encoders`.

A package lists ``{name: module}`` and gets a module ``__getattr__`` that imports the module on first
use of the name (and keeps the value), and a ``__dir__`` that lists the names. Importing the package
then costs nothing: ``import engine.core`` stays free of torch, and a decode worker imports
:mod:`engine.encoders.images` without the encoders' torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package``, whose globals are ``namespace``; ``exports``: name -> module."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
