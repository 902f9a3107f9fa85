"""Fault tests with real processes: Mosquitto with persistence, `edge-agent run`, a replay.

The line is synthetic (see service_harness): one sine recording per class, played as
two assets at real time, three labels, and every later window scored. Each test
prints its numbers: outages survived, labels lost, diagnoses lost and duplicated.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.broker import MosquittoBroker
from edge_agent.buffer import TaskBuffer
from edge_agent.checkpoint import load_checkpoint
from edge_agent.line import LinePlan, plan_line
from edge_agent.payloads import encode_signal_binary
from edge_agent.replay import ReplayOptions, run_replay
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport, Subscription
from service_harness import (
    FS,
    WINDOW,
    NotifySocket,
    READY_LINE,
    AgentProcess,
    agent_config,
    make_checkpoint,
    synthetic_recordings,
    wait_until,
    write_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

N_SHOT = 3
OUTAGES = 3
# Seconds the broker stays down in each outage.
OUTAGE_S = 10.0


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model.pt")


@pytest.fixture
def agent(tmp_path: Path, broker: MosquittoBroker, checkpoint: Path, request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    param = getattr(request, "param", {})
    env = param.get("env", {})
    config = write_yaml(
        tmp_path / "agent.yaml", agent_config(tmp_path, broker.port, checkpoint, **param.get("config", {}))
    )
    process = AgentProcess(config, tmp_path / "agent.log", env=env)
    try:
        yield process
    finally:
        process.close()
        print(process.log_text()[-4000:])


class ReplayThread:
    """`run_replay` on a thread, so the test can break things while it plays."""

    def __init__(self, broker: MosquittoBroker, seconds: float, n_assets: int = 2) -> None:
        recordings = synthetic_recordings(n_classes=3, seconds=seconds)
        self.recordings = {r.record_id: r.signal for r in recordings}
        self.plan: LinePlan | None = None

        def make_plan(window_size: int, hop: int, t0: float) -> LinePlan:
            self.plan = plan_line(
                recordings, n_assets=n_assets, window_size=window_size, hop=hop, n_shot=N_SHOT,
                segment_s=1.0, gap_s=0.5, t0=t0, seed=0,
            )
            return self.plan

        options = ReplayOptions(
            speed=1.0, chunk_samples=WINDOW, agent_id="svc", agent_wait_s=60,
            label_wait_s=30, drain_timeout_s=90,
        )
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None

        def play() -> None:
            try:
                self.report = run_replay(broker.url, make_plan, self.recordings, options)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the test thread
                self.error = exc

        self.thread = threading.Thread(target=play, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout_s: float) -> dict[str, Any]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the replay did not finish"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def print_numbers(capsys: pytest.CaptureFixture[str], title: str, report: dict[str, Any], **extra: Any) -> None:
    numbers = {
        **extra,
        "labels_published": report["labels_published"],
        "labels_applied": report["labels_applied"],
        "labels_lost": report["labels_published"] - report["labels_applied"],
        "windows_scored": report["windows_scored"],
        "diagnoses_lost": report["windows_scored"] - report["diagnoses_received"],
        "diagnoses_duplicated": report["diagnoses_duplicated"],
        "diagnoses_redelivered": report["diagnoses_redelivered"],
    }
    with capsys.disabled():
        print(f"\n{title}: " + ", ".join(f"{key} {value}" for key, value in numbers.items()))


def assert_nothing_lost(report: dict[str, Any]) -> None:
    assert report["labels_published"] == 3
    assert report["labels_applied"] == report["labels_published"]
    assert report["windows_scored"] > 50
    assert report["diagnoses_received"] == report["windows_scored"]
    assert report["diagnoses_duplicated"] == 0


def support_counts(tmp_path: Path) -> dict[str, int]:
    with TaskBuffer(tmp_path / "state" / "task_buffer.sqlite3", max_shots_per_class=50) as buffer:
        return buffer.counts()


def test_broker_restarts_during_replay(
    tmp_path: Path, broker: MosquittoBroker, agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.start()
    assert agent.wait_for_log(READY_LINE, 60)
    replay = ReplayThread(broker, seconds=8.0)
    replay.start()

    for outage in range(OUTAGES):
        assert agent.wait_for_log("subscribed to", 60, count=outage + 1)
        time.sleep(2.0)  # let the line play before the next outage
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.start()
    assert agent.wait_for_log("subscribed to", 60, count=OUTAGES + 1)

    report = replay.join(180)
    log_text = agent.log_text()
    # Under load mosquitto may accept a reconnect while it shuts down, so an outage
    # can take two reconnects; every one must find the session kept.
    reconnects = log_text.count("session present: True")
    print_numbers(capsys, "broker restarts", report, outages_survived=OUTAGES, outage_s=OUTAGE_S, reconnects=reconnects)
    assert reconnects >= OUTAGES
    assert "session present: False" not in log_text.split(READY_LINE, 1)[1]
    assert log_text.count("subscribed to") == reconnects + 1
    assert_nothing_lost(report)
    assert agent.terminate() == 0
    assert support_counts(tmp_path) == {"class_0": N_SHOT, "class_1": N_SHOT, "class_2": N_SHOT}


@pytest.mark.parametrize("agent", [{"env": {"EDGE_AGENT_TEST_ADAPTATION_DELAY_S": "2"}}], indirect=True)
def test_agent_killed_during_replay(
    tmp_path: Path, broker: MosquittoBroker, agent: AgentProcess, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.start()
    assert agent.wait_for_log(READY_LINE, 60)
    # One asset: while the replay waits for a label's confirmation, no other label's
    # interval is half streamed. Windows live in memory only, so a label whose
    # interval spans a crash would find only the windows received after it.
    replay = ReplayThread(broker, seconds=6.0, n_assets=1)
    replay.start()

    # First kill: during the adaptation to the first label, after its SQLite commit.
    assert agent.wait_for_log("test hook: adaptation sleeps", 60)
    agent.kill()
    agent.start()
    kills = 1
    # Two more once every label is applied, while windows are being diagnosed.
    assert agent.wait_for_log("active: 3 classes", 120)
    for _ in range(2):
        assert agent.wait_for_log(READY_LINE, 60, count=agent.starts)
        time.sleep(1.5)
        agent.kill()
        agent.start()
        kills += 1
    assert agent.wait_for_log(READY_LINE, 60, count=agent.starts)

    report = replay.join(240)
    print_numbers(capsys, "agent SIGKILLs", report, kills=kills)
    assert_nothing_lost(report)
    assert agent.terminate() == 0

    assert support_counts(tmp_path) == {"class_0": N_SHOT, "class_1": N_SHOT, "class_2": N_SHOT}
    # The model version is intact: every start loaded the checkpoint itself, no fallback.
    log_text = agent.log_text()
    assert "running on the last good copy" not in log_text
    _, metadata = load_checkpoint(checkpoint)
    model_lines = [line for line in log_text.splitlines() if "loaded on cpu" in line]
    assert len(model_lines) == agent.starts
    assert all(metadata["weights_sha256"][:12] in line for line in model_lines)


class LineClient:
    """The line without the replay: publishes chunks and labels, collects status records."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.status: dict[str, Any] | None = None
        self.transport = MqttTransport(
            BrokerSettings(host="127.0.0.1", port=broker.port, client_id="line-client"),
            subscriptions=[Subscription("edge-agent/svc/status", 1)],
            on_message=self._on_message,
        )
        self.transport.start()
        assert self.transport.wait_connected(10)

    def _on_message(self, message: InboundMessage) -> None:
        self.status = json.loads(message.payload)
        self.transport.ack(message.ack_token, message.qos)

    def stream(self, asset: str, first_seq: int, count: int, frequency_hz: float, t0: float) -> None:
        t = np.arange(WINDOW) / FS
        for seq in range(first_seq, first_seq + count):
            ts = t0 + seq * WINDOW / FS
            values = np.sin(2 * np.pi * frequency_hz * (t + ts - t0)).astype(np.float32)
            info = self.transport.publish(f"plant/l1/{asset}/vibration", encode_signal_binary(ts, FS, seq, values), qos=1)
            info.wait_for_publish(10)

    def label(self, asset: str, start: float, end: float, name: str) -> None:
        payload = json.dumps({"start": start, "end": end, "label": name}).encode()
        self.transport.publish(f"plant/l1/{asset}/label", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.transport.stop()


def test_queued_labels_applied_after_box_restart(
    tmp_path: Path, broker: MosquittoBroker, agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.start()
    assert agent.wait_for_log(READY_LINE, 60)
    line = LineClient(broker)
    try:
        assert agent.terminate() == 0  # the box shuts down; its session stays on the broker

        # While it is down, the line goes on and a technician labels two intervals.
        t0 = 1_700_000_000.0
        line.stream("a1", 0, 5, 800.0, t0)
        line.stream("a2", 0, 5, 2400.0, t0)
        end = t0 + 5 * WINDOW / FS + 0.5 / FS
        line.label("a1", t0 - 0.5 / FS, end, "loose")
        line.label("a2", t0 - 0.5 / FS, end, "worn")

        agent.start()
        assert wait_until(
            lambda: line.status is not None and line.status.get("state") == "online"
            and line.status.get("labels_applied") == 2, 60,
        )
        with capsys.disabled():
            print(f"\nbox restart: labels queued 2, labels applied {line.status['labels_applied']}")
        assert line.status["classes"] == {"loose": 5, "worn": 5}
        assert agent.terminate() == 0
    finally:
        line.close()


def test_sighup_reload_cases(tmp_path: Path, broker: MosquittoBroker, agent: AgentProcess, checkpoint: Path) -> None:
    """SIGHUP with a valid change, with an invalid file, and with a deleted file."""
    import signal as signals

    agent.start()
    assert agent.wait_for_log(READY_LINE, 60)
    assert agent.process is not None
    line = LineClient(broker)
    try:
        valid = agent_config(tmp_path, broker.port, checkpoint, status={"interval_s": 2}, adaptation={"n_shot_min": 2})
        write_yaml(agent.config_path, valid)
        agent.process.send_signal(signals.SIGHUP)
        assert agent.wait_for_log("configuration reloaded; changed: adaptation.n_shot_min, status.interval_s", 30)

        agent.config_path.write_text("mqtt: [not, a, mapping]\n", encoding="utf-8")
        agent.process.send_signal(signals.SIGHUP)
        assert agent.wait_for_log("configuration reload rejected", 30)
        assert wait_until(lambda: (line.status or {}).get("config", {}).get("rejected") == 1, 30)
        assert line.status["config"]["last_reload"]["outcome"] == "rejected"

        agent.config_path.unlink()
        agent.process.send_signal(signals.SIGHUP)
        assert agent.wait_for_log("config file not found", 30)
        assert wait_until(lambda: (line.status or {}).get("config", {}).get("rejected") == 2, 30)
        assert agent.process.poll() is None  # still running on the last valid config
        assert agent.terminate() == 0
    finally:
        line.close()


def test_sighup_broker_change_reconnects(tmp_path: Path, broker: MosquittoBroker, agent: AgentProcess, checkpoint: Path) -> None:
    import signal as signals

    agent.start()
    assert agent.wait_for_log(READY_LINE, 60)
    assert agent.process is not None
    with MosquittoBroker(tmp_path / "second-broker", persistence=True) as second:
        write_yaml(agent.config_path, agent_config(tmp_path, second.port, checkpoint))
        agent.process.send_signal(signals.SIGHUP)
        assert agent.wait_for_log(f"connected to {second.url}", 30)
        assert agent.wait_for_log("configuration reloaded; changed: mqtt.port", 30)
        line = LineClient(second)
        try:
            assert wait_until(lambda: (line.status or {}).get("state") == "online", 30)
        finally:
            line.close()
        assert agent.terminate() == 0


@pytest.mark.parametrize("agent", [{"config": {"service": {"shutdown_timeout_s": 3}}}], indirect=True)
def test_sigterm_with_broker_down(tmp_path: Path, broker: MosquittoBroker, agent: AgentProcess) -> None:
    agent.start()
    assert agent.wait_for_log(READY_LINE, 60)
    broker.stop()
    assert agent.wait_for_log("disconnected from", 30)
    started = time.monotonic()
    assert agent.terminate(timeout_s=30) == 0
    # shutdown_timeout_s plus the interpreter's exit; far below systemd's TimeoutStopSec.
    assert time.monotonic() - started < 3 + 10
    assert "broker unreachable at shutdown" in agent.log_text()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    fake = NotifySocket(tmp_path / "notify.sock")
    try:
        yield fake
    finally:
        fake.close()


def test_watchdog_fires_on_stuck_worker(
    tmp_path: Path, broker: MosquittoBroker, checkpoint: Path, notify_socket: NotifySocket
) -> None:
    """A real agent process, the test hook blocking its worker, and a fake systemd."""
    watchdog_s = 2.0
    config = write_yaml(
        tmp_path / "agent.yaml", agent_config(tmp_path, broker.port, checkpoint, service={"stall_timeout_s": 1})
    )
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": str(int(watchdog_s * 1e6)),
        "EDGE_AGENT_TEST_STALL_WORKER": "1",
    }
    agent = AgentProcess(config, tmp_path / "agent.log", env=env)
    agent.start()
    line = LineClient(broker)
    try:
        assert wait_until(lambda: notify_socket.count("READY=1") == 1, 60)
        assert wait_until(lambda: notify_socket.count("WATCHDOG=1") >= 2, 30)
        line.stream("a1", 0, 1, 800.0, 1_700_000_000.0)
        assert agent.wait_for_log("watchdog keep-alives stopped", 30)
        fed = notify_socket.count("WATCHDOG=1")
        # systemd kills a service that sends no keep-alive for WatchdogSec; watch that long.
        time.sleep(watchdog_s * 1.5)
        assert notify_socket.count("WATCHDOG=1") == fed
        assert agent.process is not None and agent.process.poll() is None
    finally:
        line.close()
        agent.close()
