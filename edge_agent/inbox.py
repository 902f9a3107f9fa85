"""The ordered inbox between paho's network thread and the pipeline worker.

One FIFO keeps signals and labels in arrival order, so a label is applied before
any window that arrived after it is diagnosed. Only signal chunks count against
the bound: when `max_signals` are waiting, new chunks are dropped (and counted)
rather than blocking the network thread. Labels are never dropped here.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from edge_agent.transport import InboundMessage


@dataclass(frozen=True)
class InboxItem:
    kind: str  # "signal" or "label"
    message: InboundMessage
    received: float  # time.monotonic() when paho handed the message over


class Inbox:
    def __init__(self, max_signals: int) -> None:
        self._items: deque[InboxItem] = deque()
        self._signals = 0
        self._cond = threading.Condition()
        self.max_signals = max_signals
        self._closed = False

    def put(self, item: InboxItem) -> bool:
        """Append an item; return False when a signal chunk was dropped because the inbox is full."""
        with self._cond:
            if item.kind == "signal":
                if self._signals >= self.max_signals:
                    return False
                self._signals += 1
            self._items.append(item)
            self._cond.notify()
            return True

    def get_batch(self, max_items: int, timeout_s: float) -> list[InboxItem]:
        """Wait up to `timeout_s` for at least one item, then take up to `max_items`."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            batch: list[InboxItem] = []
            while self._items and len(batch) < max_items:
                item = self._items.popleft()
                if item.kind == "signal":
                    self._signals -= 1
                batch.append(item)
            return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
