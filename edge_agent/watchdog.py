"""Feeding systemd's watchdog only while the pipeline worker makes progress.

The main loop calls `ProgressWatchdog.tick()` about twice a second. It sends
`WATCHDOG=1` every `interval_s` (half of `WatchdogSec=`) as long as the worker's
heartbeat, the monotonic time of its last loop turn, is younger than `stall_timeout_s`.
The worker turns its loop at least every 0.2 s when idle, so an old heartbeat means
a batch is stuck (a hung inference, a blocked store). The keep-alives then stop and
systemd kills and restarts the service once `WatchdogSec=` has passed, which
`Restart=on-failure` covers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_agent.sdnotify import Notifier

log = logging.getLogger(__name__)


class ProgressWatchdog:
    """Send keep-alives through `notifier` while `heartbeat()` stays recent."""

    def __init__(
        self,
        notifier: Notifier,
        heartbeat: Callable[[], float],
        *,
        stall_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.stall_timeout_s = stall_timeout_s
        self.interval_s = notifier.watchdog_interval_s
        self._clock = clock
        self._last_sent = float("-inf")
        self.stalled = False
        self.keepalives_sent = 0

    def tick(self) -> None:
        """Send a keep-alive when one is due and the worker is healthy."""
        if self.interval_s is None:
            return
        now = self._clock()
        age_s = now - self.heartbeat()
        if age_s > self.stall_timeout_s:
            if not self.stalled:
                self.stalled = True
                log.error(
                    "pipeline worker made no progress for %.0f s (service.stall_timeout_s=%g); "
                    "watchdog keep-alives stopped so that systemd restarts the agent",
                    age_s, self.stall_timeout_s,
                )
            return
        if self.stalled:
            self.stalled = False
            log.warning("pipeline worker made progress again; watchdog keep-alives resumed")
        if now - self._last_sent >= self.interval_s:
            if self.notifier.watchdog():
                self.keepalives_sent += 1
            self._last_sent = now
