"""A private Mosquitto broker on a free loopback port, for the demo and the tests.

Only loopback addresses are ever used: the broker listens on 127.0.0.1 and nowhere else.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge_agent.errors import TransportError

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def mosquitto_path() -> str | None:
    """Return the mosquitto binary on PATH or in /usr/sbin, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    candidate = Path("/usr/sbin/mosquitto")
    return str(candidate) if candidate.exists() else None


def wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return True
        time.sleep(0.05)
    return False


class MosquittoBroker:
    """Start, stop and restart one mosquitto process bound to 127.0.0.1.

    With `persistence=True` the broker keeps sessions and queued QoS 1 messages
    across its own restarts, in a folder under `workdir`.
    """

    def __init__(self, workdir: str | Path | None = None, *, port: int | None = None, persistence: bool = False) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise TransportError(
                "mosquitto is not installed; install it with 'apt-get install mosquitto' "
                "or point the command at an existing broker with --broker mqtt://HOST:PORT"
            )
        self.binary = binary
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_loopback_port()
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            # Large enough for a replay at 20x real time with several assets.
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if self.persistence:
            lines += [
                # Started as root, mosquitto 2 switches to the user "mosquitto", which
                # cannot write its database into our folder; stay the user we are.
                f"user {getpass.getuser()}",
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def start(self, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        config = self._write_config()
        log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        if not wait_for_port(self.port, timeout_s):
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-500:]
            raise TransportError(f"mosquitto did not listen on {LOOPBACK}:{self.port} within {timeout_s} s: {tail}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "MosquittoBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
