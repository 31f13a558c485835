"""The torch array backend of the adaptive loop: the loop itself is :func:`engine.core.adaptive.classify_batch`.

- :class:`TorchArrays` (``arrays.py``): :mod:`engine.core.arrays`' operations on tensors on one device,
  float64; :class:`TorchChannel`, the answer channel there;
- ``policies.py``: how a policy runs there (the built-ins, written over ``state.xp``, on the tensors;
  any other on a host copy of its state, unless it registers a tensor version with ``torch_policy``);
- :class:`TensorSource`, :class:`HostSource` (``sources.py``): device sources.

Importing this package imports torch. ``engine.run.engines`` (``classify(..., engine=...)``) picks
the backend and imports this package only when torch is asked for.
"""

from engine.torch_backend.arrays import TorchArrays, TorchChannel
from engine.torch_backend.policies import TORCH_POLICIES, torch_policy
from engine.torch_backend.sources import HostSource, TensorSource, is_device_source

__all__ = ["HostSource", "TORCH_POLICIES", "TensorSource", "TorchArrays", "TorchChannel", "is_device_source",
           "torch_policy"]
