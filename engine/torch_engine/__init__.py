"""The adaptive loop on torch tensors, on the device the similarities live on, and the backend choice.

- :func:`classify_batch_torch` (``loop.py``): the torch backend of
  :func:`engine.core.adaptive.classify_batch` (same arguments, same Results within float64 rounding);
- ``scoring.py``, ``policies.py``: the scoring maths and the built-in policies as tensor operations
  (a policy without a tensor version runs on a host copy of its state);
- :class:`TensorSource`, :class:`HostSource` (``sources.py``): device sources;
- :func:`classify`, :func:`resolve_engine` and :data:`ENGINES` (here): the one entry point that picks
  the backend.

The numpy loop in ``engine.core`` is the reference; this package sits above it (it imports torch,
``engine.core``, ``policies`` and ``systems``) and changes no result beyond float rounding. Importing
the package itself loads no torch (``RunConfig`` reads :data:`ENGINES` from here); its modules do.
"""

from __future__ import annotations

import sys
from typing import Any

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
    from engine.torch_engine.sources import is_device_source

    return "torch" if is_device_source(source) and source.device.type == "cuda" else "numpy"


def classify(source: Any, system: Any, policy: Any = "eig", *, engine: str = "auto", **kw) -> list:
    """The adaptive loop on the backend :func:`resolve_engine` picks for ``engine`` and ``source``;
    ``kw`` are :func:`engine.core.adaptive.classify_batch`'s keyword arguments. A few-shot answer model
    (``answer_model``) runs on the numpy loop, on the host: the torch loop has no version of it."""
    model = kw.pop("answer_model", None)
    if model is not None:
        from engine.core.adaptive import classify_batch

        return classify_batch(source, system, policy, answer_model=model, **kw)
    if resolve_engine(engine, source) == "torch":
        from engine.torch_engine.loop import classify_batch_torch as run
    else:
        from engine.core.adaptive import classify_batch as run
    return run(source, system, policy, **kw)


_LAZY = {"classify_batch_torch": "engine.torch_engine.loop", "TensorSource": "engine.torch_engine.sources",
         "HostSource": "engine.torch_engine.sources", "is_device_source": "engine.torch_engine.sources"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENGINES", "HostSource", "TensorSource", "check_engine", "classify", "classify_batch_torch",
           "is_device_source", "resolve_engine"]
