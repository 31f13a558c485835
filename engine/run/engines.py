"""Which backend runs the adaptive loop: the one place that chooses between numpy and torch.

``classify(source, system, policy, engine="auto"|"numpy"|"torch", **kw)`` runs
:func:`engine.core.adaptive.classify_batch` (the one loop) with ``xp`` the numpy backend
(:data:`engine.core.arrays.NUMPY`) or the torch backend on the source's device
(:class:`engine.torch_backend.TorchArrays`). "auto" is torch for a device source on CUDA, numpy
otherwise. This module loads no torch: ``RunConfig`` reads :data:`ENGINES` from here, and the torch
backend is imported the first time "torch" is chosen (torch takes seconds to import, and the CLI's
numpy runs and the decode workers never need it).
"""

from __future__ import annotations

import sys
from typing import Any

from engine.core.adaptive import classify_batch
from engine.core.arrays import NUMPY, Arrays

#: the backends of the adaptive loop: "auto" is torch for a device source on CUDA, numpy otherwise
ENGINES = ("auto", "numpy", "torch")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine == {engine!r}, must be one of {list(ENGINES)}")
    return engine


def resolve_engine(engine: str, source: Any) -> str:
    """"numpy" or "torch" for ``engine`` (one of :data:`ENGINES`) and this source."""
    if check_engine(engine) != "auto":
        return engine
    if "torch" not in sys.modules:  # no torch loaded: the source cannot hold device tensors
        return "numpy"
    from engine.torch_backend import is_device_source  # torch is loaded already

    return "torch" if is_device_source(source) and source.device.type == "cuda" else "numpy"


def arrays_for(engine: str, source: Any) -> Arrays:
    """The array backend :func:`resolve_engine` picks, bound to the source's device."""
    if resolve_engine(engine, source) == "numpy":
        return NUMPY
    from engine.torch_backend import TorchArrays  # imports torch: only when torch is asked for

    return TorchArrays.for_source(source)


def classify(source: Any, system: Any, policy: Any = "eig", *, engine: str = "auto", **kw) -> list:
    """:func:`engine.core.adaptive.classify_batch` on the backend chosen for ``engine`` and ``source``;
    ``kw`` are its keyword arguments."""
    return classify_batch(source, system, policy, xp=arrays_for(engine, source), **kw)
