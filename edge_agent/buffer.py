"""The task buffer: labelled windows (the support set) kept in SQLite across restarts.

Each applied label event is stored once, with the windows it selected as examples of
its class. A redelivered label (same stream, start, end and label, or the same
sender-given id) changes nothing, so MQTT's at-least-once delivery is safe. Each class
keeps at most `max_shots_per_class` examples and the oldest are evicted first.

All examples share one window size. A window of another size (the configuration
changed) raises StorageError rather than mixing sizes in one support set, because a
model takes one input length and the old examples cannot be cut again without their
raw signal.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from edge_agent.errors import StorageError
from edge_agent.payloads import LabelEvent
from edge_agent.windowing import Window

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    label TEXT NOT NULL,
    label_id TEXT,
    received REAL NOT NULL,
    UNIQUE (stream, start, "end", label)
);
CREATE UNIQUE INDEX labels_by_id ON labels (stream, label_id) WHERE label_id IS NOT NULL;
CREATE TABLE examples (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    stream TEXT NOT NULL,
    start_ts REAL NOT NULL,
    window_size INTEGER NOT NULL,
    samples BLOB NOT NULL,
    created REAL NOT NULL,
    UNIQUE (label, stream, start_ts)
);
"""

_SAMPLE_DTYPE: Final = np.dtype("<f4")


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """Run the block in a write transaction, committed on success and rolled back on error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


@dataclass(frozen=True)
class LabelResult:
    """Outcome of `TaskBuffer.add_label`.

    `added` counts new examples, `duplicates` windows that were already examples of
    the class, and `evicted` old examples removed to respect the per-class maximum.
    `already_applied` is True when the label had been stored before, and then
    nothing changed.
    """

    added: int
    duplicates: int
    evicted: int
    already_applied: bool = False


class TaskBuffer:
    """SQLite store of the support set, safe to share between threads.

    The connection is opened with check_same_thread=False and every method holds
    one lock, so the MQTT thread and the adaptation worker can both use it.

    Raises StorageError when the file cannot be opened, is corrupt, or was written
    by a newer schema.
    """

    def __init__(self, path: Path, *, max_shots_per_class: int) -> None:
        if max_shots_per_class < 1:
            raise ValueError(f"max_shots_per_class must be at least 1, got {max_shots_per_class}")
        self.path = Path(path)
        self.max_shots_per_class = max_shots_per_class
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

        try:
            # isolation_level=None: transactions are opened explicitly with BEGIN IMMEDIATE.
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise self._open_failed(exc) from exc
        try:
            self._open(connection)
        except sqlite3.OperationalError as exc:
            connection.close()
            raise self._open_failed(exc) from exc
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise StorageError(
                f"task buffer {self.path} is not a readable SQLite database ({exc}); "
                f"move it aside (for example to {self.path}.corrupt) and restart the "
                "agent, which then starts with an empty support set"
            ) from exc
        except StorageError:
            connection.close()
            raise
        self._connection = connection

    def _open_failed(self, exc: sqlite3.OperationalError) -> StorageError:
        return StorageError(
            f"cannot open task buffer {self.path}: {exc}; check that its directory "
            "exists and is writable by the agent"
        )

    def _open(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, synchronous=NORMAL keeps the file consistent, but a commit may
        # roll back after a power loss. FULL also syncs the WAL at each commit, so an
        # applied label survives a power cut (stated in the SQLite-derived Android
        # reference for SQLiteDatabase.SYNC_MODE_NORMAL). Commits are rare, one per label.
        connection.execute("PRAGMA synchronous=FULL")

        check = connection.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check failed: {check}")

        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"task buffer {self.path} has schema version {version}, but this edge-agent "
                f"reads version {SCHEMA_VERSION}; upgrade edge-agent or move the file aside"
            )
        tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise StorageError(
                f"{self.path} is an SQLite database but not an edge-agent task buffer; "
                "point the buffer path at another file"
            )
        # One transaction, so a crash cannot leave tables without the version mark.
        connection.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        )

    def __enter__(self) -> TaskBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; later calls do nothing."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def add_label(self, stream: str, event: LabelEvent, windows: Sequence[Window]) -> LabelResult:
        """Store a label event and its windows as examples of class `event.label`.

        Runs as one transaction. A label seen before returns already_applied=True and
        changes nothing. A label with no windows is not stored, so a redelivery after
        the signal has arrived can still apply it. Raises StorageError if a window's
        size differs from the stored examples' size.
        """
        if not windows:
            # A label redelivered after a restart finds no windows in memory, but may
            # have been stored before the crash: report it as applied then.
            with self._lock:
                exists = self._label_exists(self._require_open(), stream, event)
            return LabelResult(added=0, duplicates=0, evicted=0, already_applied=exists)
        size = self._check_window_sizes(windows)

        with self._lock:
            connection = self._require_open()
            now = time.time()
            with _transaction(connection):
                if self._label_exists(connection, stream, event):
                    return LabelResult(added=0, duplicates=0, evicted=0, already_applied=True)
                self._check_stored_size(connection, size)

                connection.execute(
                    'INSERT INTO labels (stream, start, "end", label, label_id, received)'
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (stream, event.start, event.end, event.label, event.label_id, now),
                )
                added = 0
                for window in windows:
                    blob = np.ascontiguousarray(window.samples, dtype=_SAMPLE_DTYPE).tobytes()
                    cursor = connection.execute(
                        "INSERT OR IGNORE INTO examples"
                        " (label, stream, start_ts, window_size, samples, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (event.label, stream, window.start_ts, size, blob, now),
                    )
                    added += cursor.rowcount
                evicted = self._evict(connection, event.label)
        return LabelResult(added=added, duplicates=len(windows) - added, evicted=evicted)

    def support(self) -> dict[str, np.ndarray]:
        """Return the examples of each class as a float32 array of shape (n_shot, size).

        Rows are in the order the examples were added.
        """
        with self._lock:
            rows = self._require_open().execute(
                "SELECT label, window_size, samples FROM examples ORDER BY label, id"
            ).fetchall()

        grouped: dict[str, list[np.ndarray]] = {}
        for label, size, blob in rows:
            if len(blob) != size * _SAMPLE_DTYPE.itemsize:
                raise StorageError(
                    f"task buffer {self.path} has an example of class {label!r} with "
                    f"{len(blob)} bytes instead of {size} float32 samples; delete the class "
                    "or move the file aside"
                )
            grouped.setdefault(label, []).append(np.frombuffer(blob, dtype=_SAMPLE_DTYPE))
        return {label: np.stack(arrays).astype(np.float32) for label, arrays in grouped.items()}

    def counts(self) -> dict[str, int]:
        """Return the number of examples of each class; classes without any are absent."""
        with self._lock:
            rows = self._require_open().execute(
                "SELECT label, count(*) FROM examples GROUP BY label ORDER BY label"
            ).fetchall()
        return {label: count for label, count in rows}

    def labels_applied(self) -> int:
        """Return the number of stored label events."""
        with self._lock:
            return int(self._require_open().execute("SELECT count(*) FROM labels").fetchone()[0])

    def window_size(self) -> int | None:
        """Return the window size of the stored examples, or None when there are none."""
        with self._lock:
            row = self._require_open().execute("SELECT window_size FROM examples LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def delete_class(self, name: str) -> int:
        """Delete a class's examples and label events and return the number of examples deleted.

        Because its label events are deleted too, the same labels sent again apply afresh.
        """
        with self._lock:
            connection = self._require_open()
            with _transaction(connection):
                deleted = connection.execute("DELETE FROM examples WHERE label = ?", (name,)).rowcount
                connection.execute("DELETE FROM labels WHERE label = ?", (name,))
        return deleted

    def _require_open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StorageError(f"task buffer {self.path} is closed")
        return self._connection

    def _check_window_sizes(self, windows: Sequence[Window]) -> int:
        sizes = {len(window.samples) for window in windows}
        if len(sizes) > 1:
            raise ValueError(f"windows of one label must have one size, got sizes {sorted(sizes)}")
        return sizes.pop()

    def _check_stored_size(self, connection: sqlite3.Connection, size: int) -> None:
        row = connection.execute("SELECT window_size FROM examples LIMIT 1").fetchone()
        if row is not None and row[0] != size:
            raise StorageError(
                f"task buffer {self.path} contains windows of {row[0]} samples, but the new "
                f"windows have {size}; set the window size back to {row[0]}, or move the "
                "file aside to start an empty support set at the new size"
            )

    @staticmethod
    def _label_exists(connection: sqlite3.Connection, stream: str, event: LabelEvent) -> bool:
        row = connection.execute(
            'SELECT 1 FROM labels WHERE stream = ? AND ((start = ? AND "end" = ? AND label = ?)'
            " OR (label_id IS NOT NULL AND label_id = ?))",
            (stream, event.start, event.end, event.label, event.label_id),
        ).fetchone()
        return row is not None

    def _evict(self, connection: sqlite3.Connection, label: str) -> int:
        """Delete the oldest examples of `label` beyond the per-class maximum."""
        cursor = connection.execute(
            "DELETE FROM examples WHERE id IN ("
            " SELECT id FROM examples WHERE label = ? ORDER BY id DESC LIMIT -1 OFFSET ?)",
            (label, self.max_shots_per_class),
        )
        return cursor.rowcount
