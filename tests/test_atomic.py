"""Atomic file replacement keeps the old content when writing fails."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from edge_agent.atomic import write_atomically


def test_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomically(path, lambda handle: handle.write(b"new"))
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def fail_halfway(handle: BinaryIO) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail_halfway)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_creates_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "models" / "v1.pt"
    write_atomically(path, lambda handle: handle.write(b"x"))
    assert path.read_bytes() == b"x"
