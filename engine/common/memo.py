"""A bounded memo shared between threads: what a calibration keeps of the dev-path replays and threshold choices
it has computed, whose keys (a budget, a τ, a target) a server's clients choose."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

MEMO_LIMIT = 256  # entries kept; the least recently used is dropped first (a replay of 100 dev images' paths: a few KB)


class BoundedMemo:
    """``get(key, make)``: the value made for ``key`` earlier, else ``make()`` (kept, then returned). At most
    ``limit`` entries, the least recently used dropped first. ``make`` runs outside the lock, so a slow one does
    not hold up other keys; two threads asking for a new key at once may both make it (the first kept wins)."""

    def __init__(self, limit: int = MEMO_LIMIT):
        if limit < 1:
            raise ValueError(f"limit == {limit}, must be >= 1")
        self.limit = int(limit)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            value = self._items.setdefault(key, value)
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
        return value

    def __getstate__(self) -> dict:
        """What a pickle carries (a calibration sent to Ray actors, a deep copy): the limit, not the lock, and not
        the entries (a cache is remade where it is used)."""
        return {"limit": self.limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["limit"])

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
