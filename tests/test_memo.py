"""engine.common.memo.BoundedMemo: what a calibration keeps of its replays, bounded because a server's clients
choose the keys."""

from __future__ import annotations

import copy
import threading

import pytest

from engine.common.memo import BoundedMemo


def test_it_makes_each_key_once_and_drops_the_least_recently_used_past_its_limit():
    made = []

    def maker(k):
        return lambda: made.append(k) or f"v{k}"

    m = BoundedMemo(limit=3)
    assert [m.get(k, maker(k)) for k in (1, 2, 3)] == ["v1", "v2", "v3"]
    assert m.get(1, maker(1)) == "v1" and made == [1, 2, 3]  # kept: not made again; 1 is now the most recent
    m.get(4, maker(4))  # over the limit: 2, the least recently used, goes
    assert len(m) == 3 and 2 not in m and 1 in m and 3 in m and 4 in m
    m.get(2, maker(2))
    assert made == [1, 2, 3, 4, 2] and 3 not in m
    with pytest.raises(ValueError, match="limit == 0"):
        BoundedMemo(limit=0)


def test_threads_asking_for_one_key_get_one_value():
    m = BoundedMemo(limit=8)
    out, start = [], threading.Barrier(8)

    def ask():
        start.wait()
        out.append(m.get("k", lambda: object()))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 8 and all(v is out[0] for v in out) and len(m) == 1


def test_it_travels_by_copy_without_its_lock_or_entries():
    """A calibration holding one goes to Ray actors serialised (tests/test_ray.py sends one); copying uses the same
    __getstate__: the memo arrives empty, with its limit, and works."""
    m = BoundedMemo(limit=5)
    m.get("k", lambda: 1)
    for back in (copy.deepcopy(m), copy.copy(m)):
        assert back.limit == 5 and len(back) == 0 and "k" not in back
        assert back.get("k", lambda: 2) == 2 and back.get("k", lambda: 3) == 2
    assert m.get("k", lambda: 4) == 1
