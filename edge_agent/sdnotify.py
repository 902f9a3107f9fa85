"""The systemd notification protocol (sd_notify), for a `Type=notify` service.

systemd passes the path of a datagram socket in `NOTIFY_SOCKET`. Each state change is
one datagram of newline-separated `KEY=VALUE` lines, such as `READY=1`, `STATUS=...`,
`RELOADING=1`, `STOPPING=1` or `WATCHDOG=1` (systemd.service(5) and sd_notify(3)).
A path starting with `@` names a socket in the Linux abstract namespace.

Outside systemd (no `NOTIFY_SOCKET`), every call does nothing, so the daemon needs no
special case when run by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _socket_address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class Notifier:
    """Send sd_notify messages to systemd; a no-op when `NOTIFY_SOCKET` is unset.

    `watchdog_interval_s` is half of systemd's `WatchdogSec=` (from `WATCHDOG_USEC`),
    the keep-alive period sd_watchdog_enabled(3) recommends, or None when the watchdog
    is off or meant for another process (`WATCHDOG_PID`).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = self._watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._last_failure_log = 0.0
        if self.socket_path is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        usec = env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not an integer; watchdog keep-alives are off", usec)
            return None
        return value / 1e6 / 2 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message of `KEY=VALUE` lines; return True when it was sent.

        A failed send is logged (at most every 60 s) and not raised, because a
        missing notification must not stop the daemon: systemd then acts on its
        own timeouts.
        """
        if self._socket is None or self.socket_path is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), _socket_address(self.socket_path))
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_failure_log > 60.0:
                self._last_failure_log = now
                log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self._send_state("READY", status)

    def reloading(self, status: str | None = None) -> bool:
        # systemd 253 and newer also want MONOTONIC_USEC with RELOADING=1, to match it
        # with the reload request (Type=notify-reload); older versions ignore it.
        fields: dict[str, str | int] = {"RELOADING": 1, "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def stopping(self, status: str | None = None) -> bool:
        return self._send_state("STOPPING", status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def _send_state(self, key: str, status: str | None) -> bool:
        fields: dict[str, str | int] = {key: 1}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
