"""engine.common.files: the one atomic writer, capped reads and the shared-data resolver."""

from __future__ import annotations

import json
import os
import stat

import pytest

from engine.common.files import (
    atomic_write, atomic_write_json, check_regular_file, read_text_capped, shared_data_path, shared_data_root,
)


def test_atomic_write_gives_0644_and_replaces_whole(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "s.json"
        atomic_write_json(p, {"x": float("nan"), "y": [1, 2]})
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        assert json.loads(p.read_text()) == {"x": None, "y": [1, 2]}  # strict JSON
        atomic_write(p, b"new")
        assert p.read_bytes() == b"new" and list(tmp_path.iterdir()) == [p]  # no temp file left
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"old")

    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old" and list(tmp_path.iterdir()) == [p]


def test_capped_reads_refuse_fifos_and_oversize_files(tmp_path):
    (tmp_path / "big.txt").write_text("x" * 100)
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        read_text_capped(tmp_path / "big.txt", 10)
    assert read_text_capped(tmp_path / "big.txt", 100) == "x" * 100
    os.mkfifo(tmp_path / "f")
    with pytest.raises(ValueError, match="not a regular file"):
        check_regular_file(tmp_path / "f")  # refused before open(), which would block
    with pytest.raises(IsADirectoryError):
        check_regular_file(tmp_path)


def test_shared_data_honours_twentyq_data(tmp_path, monkeypatch):
    (tmp_path / "pokemon").mkdir()
    (tmp_path / "pokemon" / "x.csv").write_text("a")
    monkeypatch.setenv("TWENTYQ_DATA", str(tmp_path))
    assert shared_data_root() == tmp_path and shared_data_path("pokemon/x.csv") == tmp_path / "pokemon" / "x.csv"
    assert shared_data_path("pokemon/nope.csv") is None
    monkeypatch.setenv("TWENTYQ_DATA", str(tmp_path / "absent"))
    assert shared_data_path("pokemon/x.csv") is None  # the variable wins even when it points nowhere
