"""Thread-safe counters and a rate-limited warning log for rejected input."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Any


class Counters:
    """Named monotonic counters, shared by the transport thread and the workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._values.items()))


class Rejections:
    """Counts rejected messages by reason and keeps the latest few as records.

    Each rejection is logged at WARNING, at most once per `log_interval_s` for each
    reason, with the number suppressed since the last line.
    """

    def __init__(self, logger: logging.Logger, *, keep: int = 20, log_interval_s: float = 10.0) -> None:
        self._log = logger
        self._lock = threading.Lock()
        self._by_reason: Counter[str] = Counter()
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._interval_s = log_interval_s

    def record(self, topic: str, reason: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._by_reason[reason] += 1
            self._recent.append({"ts": time.time(), "topic": topic, "reason": reason, "message": message[:300]})
            last = self._last_logged.get(reason)
            if last is not None and now - last < self._interval_s:
                self._suppressed[reason] += 1
                return
            suppressed = self._suppressed.pop(reason, 0)
            self._last_logged[reason] = now
        more = f" ({suppressed} more of this kind suppressed)" if suppressed else ""
        self._log.warning("rejected message on %s: %s%s", topic, message[:300], more)

    def by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._by_reason.items()))

    def total(self) -> int:
        with self._lock:
            return sum(self._by_reason.values())

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._recent)
