"""The diagnosis outbox: every diagnosis goes through SQLite on its way to the broker.

The pipeline inserts each diagnosis (topic, payload, QoS) and the outbox's publisher
thread sends the rows in insertion order while the transport is connected. A row is
deleted only when the broker has acknowledged it (PUBACK for QoS 1, PUBCOMP for QoS
2; at once for QoS 0). So a diagnosis survives a broker outage, a dropped connection
and a crash of the agent: after a restart the rows left are sent again.

A crash between the broker's acknowledgement and the delete sends that row twice, so
delivery is at least once, as MQTT QoS 1 itself is.

The outbox contains at most `max_messages` rows. When it is full the oldest rows are
dropped. The number dropped is stored with the rows, so it survives a restart, and
reported on the status topic.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.errors import StorageError

log = logging.getLogger(__name__)

# Message keys remembered for de-duplication: at 100 windows per second, over a minute and a half.
KEYS_KEPT = 10000
DROP_LOG_INTERVAL_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_keys (
    key TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS outbox_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class Publisher(Protocol):
    """The part of `MqttTransport` the outbox uses; `publish` returns paho's `MQTTMessageInfo`."""

    connected: threading.Event

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> Any: ...


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    in_flight: int
    dropped: int
    published: int


class Outbox:
    """A bounded, ordered, on-disk queue of messages, drained by `run()` on its own thread.

    `window` bounds the messages handed to the transport and not yet acknowledged, so
    a reconnect resends at most that many from paho's memory, and the rest stay on disk.
    """

    def __init__(self, path: Path, *, max_messages: int, window: int = 100) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self.window = window
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._in_flight: deque[tuple[int, Any]] = deque()
        self._published = 0
        self._closed = False
        self._keys_put = 0
        self.duplicates = 0
        self.dropped_since_start = 0
        self._last_drop_log = float("-inf")
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL syncs the WAL at each commit, so an inserted diagnosis survives a power loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"cannot open the outbox {self.path}: {exc}; check that the folder is writable, "
                f"or move a corrupt file aside (diagnoses still in it are then lost)"
            ) from exc
        self._pending = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        # Rows above this id have not been handed to the transport yet.
        self._sent_up_to = 0

    # Producer side (pipeline thread)

    def put(self, topic: str, payload: bytes, qos: int, retain: bool = False, *, key: str | None = None) -> bool:
        """Insert one message; return False when a message with the same `key` was put before.

        `key` names what the message is about (for a diagnosis, its stream and window
        start), so that work redone after a crash (a signal chunk redelivered because
        its acknowledgement was lost) does not publish the same diagnosis twice. The
        last `KEYS_KEPT` keys are remembered, also across restarts.
        """
        return self.put_many([(topic, payload, qos, retain, key)]) == 1

    def put_many(self, messages: Sequence[tuple[str, bytes, int, bool, str | None]]) -> int:
        """Insert (topic, payload, qos, retain, key) messages in one transaction; return how many were new.

        One commit, and so one fsync, covers the whole batch of an inference pass.
        """
        now = time.time()
        added = 0
        with self._lock:
            db = self._require_open()
            db.execute("BEGIN IMMEDIATE")
            try:
                for topic, payload, qos, retain, key in messages:
                    if key is not None:
                        seen = db.execute("INSERT OR IGNORE INTO outbox_keys (key) VALUES (?)", (key,)).rowcount == 0
                        if seen:
                            self.duplicates += 1
                            continue
                        self._keys_put += 1
                        if self._keys_put % 1000 == 0:
                            db.execute(
                                "DELETE FROM outbox_keys WHERE rowid <= (SELECT max(rowid) FROM outbox_keys) - ?",
                                (KEYS_KEPT,),
                            )
                    db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                        (topic, payload, qos, int(retain), now),
                    )
                    added += 1
                dropped = self._drop_oldest(db, self._pending + added - self.max_messages)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._pending += added - dropped
            if added:
                self._wake.notify_all()
        if dropped:
            self.dropped_since_start += dropped
            if time.monotonic() - self._last_drop_log >= DROP_LOG_INTERVAL_S:
                self._last_drop_log = time.monotonic()
                log.warning(
                    "outbox full (limits.max_outbox=%d): dropping the oldest diagnoses, %d so far since start; "
                    "is the broker reachable?", self.max_messages, self.dropped_since_start,
                )
        return added

    def _drop_oldest(self, db: sqlite3.Connection, excess: int) -> int:
        if excess <= 0:
            return 0
        in_flight_ids = {row_id for row_id, _ in self._in_flight}
        rows = db.execute("SELECT id FROM outbox ORDER BY id LIMIT ?", (excess + len(in_flight_ids),)).fetchall()
        victims = [row_id for (row_id,) in rows if row_id not in in_flight_ids][:excess]
        db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id in victims])
        db.execute(
            "INSERT INTO outbox_meta (key, value) VALUES ('dropped', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (len(victims),),
        )
        return len(victims)

    # Consumer side (publisher thread)

    def run(self, transport: Callable[[], Publisher], stop: threading.Event, poll_s: float = 0.05) -> None:
        """Send rows in order while connected and delete acknowledged ones, until `stop` is set.

        `transport` returns the current transport, which a live reload may replace.
        """
        while not stop.is_set():
            self.pump(transport())
            with self._lock:
                self._wake.wait(poll_s)

    def pump(self, transport: Publisher) -> int:
        """Do one round of work: delete acknowledged rows, send new ones; return rows deleted."""
        deleted = self._collect_acknowledged()
        if not transport.connected.is_set():
            # paho keeps the unacknowledged messages and resends them on reconnect.
            return deleted
        with self._lock:
            room = self.window - len(self._in_flight)
            if room <= 0 or self._connection_closed():
                return deleted
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (self._sent_up_to, room),
            ).fetchall()
        for row_id, topic, payload, qos, retain in rows:
            info = transport.publish(topic, bytes(payload), qos=qos, retain=bool(retain))
            if info.rc != 0 and qos == 0:
                # The connection dropped in between and paho discarded the QoS 0
                # message; it is sent again from disk. paho keeps QoS 1 and 2
                # messages queued across the reconnect, so those stay in flight.
                break
            with self._lock:
                self._in_flight.append((row_id, info))
                self._sent_up_to = row_id
        return deleted

    def _collect_acknowledged(self) -> int:
        with self._lock:
            done = [row_id for row_id, info in self._in_flight if info.is_published()]
            if not done or self._connection_closed():
                return 0
            done_ids = set(done)
            self._in_flight = deque(item for item in self._in_flight if item[0] not in done_ids)
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id in done])
            self._pending -= len(done)
            self._published += len(done)
        return len(done)

    def forget_in_flight(self) -> None:
        """Send the in-flight rows again from disk; call it after replacing the transport,
        whose client took their unacknowledged messages with it."""
        with self._lock:
            self._in_flight.clear()
            self._sent_up_to = 0

    def flush(self, transport: Publisher, timeout_s: float) -> bool:
        """Send and confirm every row within `timeout_s`; return True when the outbox is empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump(transport)
            if self.stats().pending == 0:
                return True
            time.sleep(0.02)
        return self.stats().pending == 0

    # Inspection

    def stats(self) -> OutboxStats:
        with self._lock:
            if self._connection_closed():
                return OutboxStats(self._pending, 0, 0, self._published)
            row = self._db.execute("SELECT value FROM outbox_meta WHERE key = 'dropped'").fetchone()
            return OutboxStats(
                pending=self._pending,
                in_flight=len(self._in_flight),
                dropped=int(row[0]) if row else 0,
                published=self._published,
            )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._db.close()
                self._closed = True

    def _connection_closed(self) -> bool:
        return self._closed

    def _require_open(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError(f"outbox {self.path} is closed")
        return self._db
