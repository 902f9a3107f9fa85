"""Helpers of the service and fault tests: a tiny checkpoint, configs, agent processes.

The checkpoint is an untrained embedding: these tests count messages, not accuracy.
Windows, hops and chunks are all `WINDOW` samples, so each signal chunk completes
exactly one window. A chunk redelivered after a crash then rebuilds the same window,
which lets the tests require that no diagnosis is lost.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from edge_agent.checkpoint import save_checkpoint
from edge_agent.datasets.cwru import Recording
from edge_agent.model import EmbeddingNet

FS = 12000.0
WINDOW = 600
ARCHITECTURE = {"channels": [4, 8], "kernel_size": 3, "embedding_dim": 8}
# The agent's log line once it is connected with its model loaded (READY=1 to systemd).
READY_LINE = "edge_agent.agent: ready"


def make_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = EmbeddingNet(**ARCHITECTURE).eval()
    save_checkpoint(path, model, {
        "window_size": WINDOW,
        "input_transform": "log_spectrum_v1",
        "sample_rate_hz": FS,
        "classes": ["a", "b"],
        "algorithm": "protonet",
        "architecture": dict(ARCHITECTURE),
    })
    return path


def synthetic_recordings(n_classes: int = 3, seconds: float = 4.0) -> list[Recording]:
    """One sine recording per class, at 500 Hz apart, with a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * FS)) / FS
    recordings = []
    for index in range(n_classes):
        tone = np.sin(2 * np.pi * (500.0 + 500.0 * index) * t)
        signal_ = (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        recordings.append(Recording(f"syn{index}", f"class_{index}", 0, 1797.0, FS, signal_))
    return recordings


def agent_config(folder: Path, port: int, checkpoint: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "agent_id": "svc",
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.5, "reconnect_max_s": 1, "signal_qos": 1},
        "window": {"size": WINDOW, "hop": WINDOW},
        "model": {"checkpoint": str(checkpoint), "device": "cpu"},
        "storage": {"dir": str(folder / "state")},
        "status": {"interval_s": 1},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


class AgentProcess:
    """`edge-agent run` as a child process, its output in a log file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config_path)],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env,
            )
        self.starts += 1

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout_s: float, count: int = 1) -> bool:
        return wait_until(lambda: self.log_text().count(text) >= count, timeout_s, poll_s=0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class NotifySocket:
    """A fake systemd: a datagram socket that records what the agent sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def received(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def count(self, line: str) -> int:
        return sum(1 for message in self.received() if line in message.split("\n"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.socket.close()
