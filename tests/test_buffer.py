"""Task buffer: persistence, idempotent labels, eviction, window size and corrupt files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.buffer import SCHEMA_VERSION, LabelResult, TaskBuffer
from edge_agent.errors import StorageError
from edge_agent.payloads import LabelEvent
from edge_agent.windowing import Window

SIZE = 32


def make_windows(n: int, *, start: float = 100.0, size: int = SIZE, stream: str = "line1/pump") -> list[Window]:
    rng = np.random.default_rng(int(start))
    windows = []
    for index in range(n):
        start_ts = start + index * 0.01
        samples = rng.standard_normal(size).astype(np.float32)
        windows.append(Window(stream, start_ts, start_ts + 0.02, samples, index, 0.0))
    return windows


def event(label: str = "inner_race_007", start: float = 100.0, end: float = 110.0, label_id: str | None = None) -> LabelEvent:
    return LabelEvent(start=start, end=end, label=label, label_id=label_id)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "task_buffer.sqlite"


def test_add_and_read_support(path: Path) -> None:
    windows = make_windows(3)
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        result = buffer.add_label("line1/pump", event(), windows)
        support = buffer.support()
        counts = buffer.counts()
        applied = buffer.labels_applied()
    assert result == LabelResult(added=3, duplicates=0, evicted=0, already_applied=False)
    assert support["inner_race_007"].shape == (3, SIZE)
    assert support["inner_race_007"].dtype == np.float32
    np.testing.assert_array_equal(support["inner_race_007"], np.stack([w.samples for w in windows]))
    assert counts == {"inner_race_007": 3}
    assert applied == 1


def test_persists_across_reopen(path: Path) -> None:
    windows = make_windows(4)
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(), windows)
        buffer.add_label("line1/pump", event("normal", 200.0, 210.0), make_windows(2, start=200.0))
    with TaskBuffer(path, max_shots_per_class=10) as reopened:
        assert reopened.counts() == {"inner_race_007": 4, "normal": 2}
        assert reopened.labels_applied() == 2
        assert reopened.window_size() == SIZE
        np.testing.assert_array_equal(
            reopened.support()["inner_race_007"], np.stack([w.samples for w in windows])
        )


def test_database_settings(path: Path) -> None:
    TaskBuffer(path, max_shots_per_class=1).close()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        connection.close()


def test_redelivered_label_idempotent(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(), make_windows(3))
        again = buffer.add_label("line1/pump", event(), make_windows(3))
        assert again == LabelResult(added=0, duplicates=0, evicted=0, already_applied=True)
        assert buffer.counts() == {"inner_race_007": 3}
        assert buffer.labels_applied() == 1


def test_same_label_id_idempotent(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(label_id="op-1"), make_windows(3))
        again = buffer.add_label("line1/pump", event(end=109.0, label_id="op-1"), make_windows(2))
        assert again.already_applied
        assert buffer.labels_applied() == 1


def test_same_label_other_stream_applied(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(), make_windows(3))
        other = buffer.add_label("line1/fan", event(), make_windows(3, stream="line1/fan"))
        assert other.added == 3
        assert buffer.counts() == {"inner_race_007": 6}


def test_overlapping_labels_count_duplicates(path: Path) -> None:
    windows = make_windows(5)
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(end=110.0), windows[:3])
        result = buffer.add_label("line1/pump", event(end=111.0), windows[1:])
        assert result == LabelResult(added=2, duplicates=2, evicted=0)
        assert buffer.counts() == {"inner_race_007": 5}


def test_label_without_windows_not_stored(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        assert buffer.add_label("line1/pump", event(), []) == LabelResult(0, 0, 0)
        assert buffer.labels_applied() == 0
        assert buffer.add_label("line1/pump", event(), make_windows(2)).added == 2


def test_eviction_keeps_newest(path: Path) -> None:
    first, second = make_windows(3, start=100.0), make_windows(3, start=300.0)
    with TaskBuffer(path, max_shots_per_class=4) as buffer:
        buffer.add_label("line1/pump", event(start=100.0, end=110.0), first)
        result = buffer.add_label("line1/pump", event(start=300.0, end=310.0), second)
        support = buffer.support()["inner_race_007"]
    assert result == LabelResult(added=3, duplicates=0, evicted=2)
    expected = np.stack([w.samples for w in first[2:] + second])
    np.testing.assert_array_equal(support, expected)


def test_eviction_bound_per_class(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=5) as buffer:
        buffer.add_label("line1/pump", event("normal", 50.0, 60.0), make_windows(2, start=50.0))
        for index in range(6):
            start = 100.0 + index * 10
            buffer.add_label("line1/pump", event(start=start, end=start + 5), make_windows(3, start=start))
        assert buffer.counts() == {"inner_race_007": 5, "normal": 2}


def test_one_label_beyond_bound(path: Path) -> None:
    windows = make_windows(8)
    with TaskBuffer(path, max_shots_per_class=3) as buffer:
        result = buffer.add_label("line1/pump", event(), windows)
        support = buffer.support()["inner_race_007"]
    assert result == LabelResult(added=8, duplicates=0, evicted=5)
    np.testing.assert_array_equal(support, np.stack([w.samples for w in windows[5:]]))


def test_delete_class(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(), make_windows(3))
        buffer.add_label("line1/pump", event("normal", 200.0, 210.0), make_windows(2, start=200.0))
        assert buffer.delete_class("inner_race_007") == 3
        assert buffer.counts() == {"normal": 2}
        assert buffer.labels_applied() == 1
        # The deleted class's label applies afresh when sent again.
        assert buffer.add_label("line1/pump", event(), make_windows(3)).added == 3


def test_other_window_size_rejected(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=10) as buffer:
        buffer.add_label("line1/pump", event(), make_windows(2))
        with pytest.raises(StorageError, match="contains windows of 32 samples, but the new windows have 64"):
            buffer.add_label("line1/pump", event("normal", 200.0, 210.0), make_windows(2, start=200.0, size=64))
        assert buffer.labels_applied() == 1
        assert buffer.counts() == {"inner_race_007": 2}


def test_corrupt_file(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match=r"task_buffer.sqlite is not a readable SQLite database .* move it aside"):
        TaskBuffer(path, max_shots_per_class=5)


def test_foreign_database_rejected(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE readings (x REAL)")
    connection.close()
    with pytest.raises(StorageError, match="not an edge-agent task buffer"):
        TaskBuffer(path, max_shots_per_class=5)


def test_newer_schema_rejected(path: Path) -> None:
    TaskBuffer(path, max_shots_per_class=5).close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, but this edge-agent reads"):
        TaskBuffer(path, max_shots_per_class=5)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open task buffer .* check that its directory exists"):
        TaskBuffer(tmp_path / "absent" / "buffer.sqlite", max_shots_per_class=5)


def test_closed_buffer(path: Path) -> None:
    buffer = TaskBuffer(path, max_shots_per_class=5)
    buffer.close()
    buffer.close()
    with pytest.raises(StorageError, match="is closed"):
        buffer.counts()


def test_threads_share_buffer(path: Path) -> None:
    with TaskBuffer(path, max_shots_per_class=100) as buffer:

        def add(offset: float) -> None:
            for index in range(10):
                start = offset + index * 10
                buffer.add_label("line1/pump", event(start=start, end=start + 5), make_windows(2, start=start))

        threads = [threading.Thread(target=add, args=(1000.0 * n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert buffer.labels_applied() == 40
        assert buffer.counts() == {"inner_race_007": 80}
