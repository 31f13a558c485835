"""The array operations the adaptive loop and its scoring are written over, and their numpy version.

:func:`engine.core.adaptive.classify_batch` and the scoring functions of :mod:`engine.core.scoring`
take an ``xp``: an object with the few operations below. Arithmetic, ``@``, indexing, boolean masks,
``.any(axis=)``, ``.sum(axis=)`` and ``.T`` are written as operators and methods, which numpy
arrays and torch tensors share; what the two spell differently is here. :data:`NUMPY` is the
reference (scipy's special functions, ``np.add.reduceat``; it extends the table the policies are
written over, :class:`policies.arrays.HostArrays`); the torch version, with its state on
the similarities' device, is ``engine.torch_backend.arrays.TorchArrays`` (same methods, same
results within float64 rounding).

Shapes: ``x`` (n, m) unless said; ``axis`` as numpy's. Every float is float64.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from scipy.special import entr, log_softmax, logsumexp

from policies.arrays import HostArrays


class Arrays(Protocol):
    """What a backend of the adaptive loop provides (see the module docstring)."""

    name: str
    cheap_sync: bool  # whether looking at a mask on the host (``any``) costs nothing worth saving

    def asarray(self, a: Any) -> Any: ...  # float64 on the backend, copied from the host if need be
    def asindex(self, a: Any) -> Any: ...  # int64 on the backend
    def array(self, a: np.ndarray) -> Any: ...  # a writable float64 copy of a host array
    def zeros(self, shape: tuple, dtype: str = "float") -> Any: ...  # dtype "float", "int" or "bool"
    def full(self, shape: tuple, value: Any, dtype: str = "float") -> Any: ...
    def to_host(self, x: Any) -> np.ndarray: ...
    def to_float(self, x: Any) -> Any: ...
    def any(self, x: Any) -> bool: ...  # the one host synchronisation of a mask
    def nonzero(self, mask: Any) -> Any: ...  # (n,) bool -> (k,) int64 indices
    def unique(self, x: Any) -> Any: ...  # the sorted distinct values of an int array
    def searchsorted(self, sorted_: Any, x: Any) -> Any: ...
    def concat(self, xs: list) -> Any: ...  # along the first axis
    def arange(self, n: int) -> Any: ...
    def where(self, cond: Any, a: Any, b: Any) -> Any: ...
    def exp(self, x: Any) -> Any: ...
    def log(self, x: Any) -> Any: ...
    def isfinite(self, x: Any) -> Any: ...
    def amax(self, x: Any, axis: int, keepdims: bool = False) -> Any: ...
    def argmax(self, x: Any, axis: int) -> Any: ...  # first maximum; bool arrays allowed
    def maximum(self, x: Any, lo: float) -> Any: ...  # elementwise max with a number
    def minimum(self, x: Any, hi: float) -> Any: ...
    def logaddexp(self, x: Any, c: float) -> Any: ...  # log(exp(x) + exp(c)), c a number (may be -inf)
    def logsumexp(self, x: Any, axis: int, keepdims: bool = False) -> Any: ...
    def log_softmax(self, x: Any) -> Any: ...  # over each row of (n, K)
    def entr(self, x: Any) -> Any: ...  # -x log x elementwise, 0 at 0
    def gather(self, x: Any, idx: Any) -> Any: ...  # x (n, m), idx (n, k) -> x[i, idx[i, j]]
    def segment_sum(self, x: Any, channel: Any) -> Any: ...  # (..., Q) -> (..., G): the sum over each group
    def channel(self, ch: Any) -> Any: ...  # a Channel with the fields the loop reads on the backend
    def source(self, source: Any) -> Any: ...  # .similarities(images, group, options) -> backend float64
    def select(self, policy: Any, state: Any) -> Any: ...  # (n,) int64 choices of a PolicyState with xp=self
    def errstate(self, **kw: str) -> Any: ...  # np.errstate for numpy; a no-op where nothing warns


class NumpyArrays(HostArrays):
    """The numpy backend (the reference): state on the host, scipy's special functions. The operations
    policies use too come from :class:`policies.arrays.HostArrays`."""

    cheap_sync = True

    def array(self, a):
        return np.array(a, dtype=np.float64)

    def zeros(self, shape, dtype="float"):
        return self.full(shape, 0, dtype)

    def to_float(self, x):
        return np.asarray(x, dtype=np.float64)

    def any(self, x):
        return bool(x.any())

    def nonzero(self, mask):
        return np.nonzero(mask)[0]

    def unique(self, x):
        return np.unique(x)

    def searchsorted(self, sorted_, x):
        return np.searchsorted(sorted_, x)

    def concat(self, xs):
        return np.concatenate(xs)

    errstate = staticmethod(np.errstate)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    isfinite = staticmethod(np.isfinite)
    entr = staticmethod(entr)

    def maximum(self, x, lo):
        return np.maximum(x, lo)

    def minimum(self, x, hi):
        return np.minimum(x, hi)

    def logaddexp(self, x, c):
        return np.logaddexp(x, c)

    def logsumexp(self, x, axis, keepdims=False):
        return logsumexp(x, axis=axis, keepdims=keepdims)

    def log_softmax(self, x):
        return log_softmax(x, axis=1)

    def gather(self, x, idx):
        return np.take_along_axis(x, idx, axis=1)

    def channel(self, ch):
        return ch

    def source(self, source):
        return _HostBlocks(source)

    def select(self, policy, state):
        """The policy's own ``select`` (``state`` is a :class:`policies.PolicyState` of numpy arrays)."""
        return np.asarray(policy.select(state), dtype=np.int64)


class _HostBlocks:
    """A :class:`engine.core.sources.SimilaritySource` whose blocks come back as float64 arrays."""

    def __init__(self, source):
        self.source = source

    def similarities(self, images, group, options=None):
        if options is None:  # a source need not take ``options`` unless the shortlist is on
            return np.asarray(self.source.similarities(images, group), dtype=np.float64)
        return np.asarray(self.source.similarities(images, group, options=options), dtype=np.float64)


#: the numpy backend, the default of every function that takes an ``xp``
NUMPY = NumpyArrays()
