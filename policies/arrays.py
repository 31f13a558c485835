"""The array operations a policy is written over, for numpy: :data:`HOST`.

A built-in policy's ``select`` reads its arrays' operations from ``state.xp``: this numpy table by
default, or the adaptive loop's backend (``engine.core.arrays``: numpy, whose table extends this one,
or torch on a device, with the same methods), so one ``select`` runs on either. Arithmetic, ``@``,
indexing, masks and ``abs`` are written as operators, which numpy arrays and torch tensors share.
"""

from __future__ import annotations

import numpy as np

_DTYPES = {"float": np.float64, "int": np.int64, "bool": bool}


class HostArrays:
    """numpy's spelling of the operations policies use (``engine.core.arrays.Arrays`` lists them all)."""

    name = "numpy"

    def asarray(self, a):
        return np.asarray(a, dtype=np.float64)

    def asindex(self, a):
        return np.asarray(a, dtype=np.int64)

    def to_host(self, x):
        return np.asarray(x)

    def full(self, shape, value, dtype="float"):
        return np.full(shape, value, dtype=_DTYPES[dtype])

    def arange(self, n):
        return np.arange(n)

    where = staticmethod(np.where)

    def amax(self, x, axis, keepdims=False):
        return x.max(axis=axis, keepdims=keepdims)  # the method: no Python-level dispatch of np.max

    def argmax(self, x, axis):  # the first maximum; bool arrays allowed
        return x.argmax(axis=axis)

    def segment_sum(self, x, channel):
        """(..., Q) -> (..., G): the sum over each group's columns."""
        return np.add.reduceat(x, channel.offsets, axis=-1)


#: numpy, the default ``PolicyState.xp``
HOST = HostArrays()
