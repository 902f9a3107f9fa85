"""The service parts: sd_notify, journald logging, the watchdog, the outbox, reloads,
the last good checkpoint, and an agent in this process against a real Mosquitto."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.broker import MosquittoBroker
from edge_agent.config import load_config
from edge_agent.errors import CheckpointError
from edge_agent.last_good import load_last_good, previous_path
from edge_agent.logs import configure_logging
from edge_agent.outbox import Outbox
from edge_agent.payloads import encode_signal_binary
from edge_agent.pipeline import OutboundMessage
from edge_agent.sdnotify import Notifier
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport, Subscription
from edge_agent.watchdog import ProgressWatchdog
from service_harness import WINDOW, NotifySocket, agent_config, make_checkpoint, wait_until, write_yaml

# sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    fake = NotifySocket(tmp_path / "notify.sock")
    try:
        yield fake
    finally:
        fake.close()


def test_notifier_sends_state_lines(notify_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path)})
    assert notifier.ready("model abc, connected")
    assert notifier.reloading()
    assert notifier.stopping()
    assert notifier.watchdog()
    assert wait_until(lambda: len(notify_socket.received()) == 4, 5)
    ready, reloading, stopping, keepalive = notify_socket.received()
    assert ready == "READY=1\nSTATUS=model abc, connected"
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert stopping == "STOPPING=1"
    assert keepalive == "WATCHDOG=1"
    notifier.close()


def test_notifier_abstract_socket() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("hello")
        assert server.recv(100) == b"STATUS=hello"
        notifier.close()
    finally:
        server.close()


def test_notifier_without_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval_s is None


def test_notifier_watchdog_interval() -> None:
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval_s == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval_s is None


def test_notifier_missing_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert not notifier.ready()
    notifier.close()


# Logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def formatter_of_root() -> str:
    formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    return str(formatter._fmt)


def test_logs_without_timestamps_under_journald(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    configure_logging("INFO")
    assert "asctime" not in formatter_of_root()


def test_logs_with_timestamps_elsewhere(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging("INFO")
    assert "asctime" in formatter_of_root()


# Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_feeds_only_while_worker_progresses(notify_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000"})
    clock = FakeClock()
    heartbeat = {"ts": clock.now}
    watchdog = ProgressWatchdog(notifier, lambda: heartbeat["ts"], stall_timeout_s=5.0, clock=clock)

    for _ in range(4):  # healthy: one keep-alive per second (half of WatchdogSec=2)
        heartbeat["ts"] = clock.now
        watchdog.tick()
        clock.now += 1.0
    assert watchdog.keepalives_sent == 4
    assert not watchdog.stalled

    for _ in range(10):  # the worker stops turning its loop
        watchdog.tick()
        clock.now += 1.0
    assert watchdog.stalled
    # Heartbeat ages of 1 to 5 s are within stall_timeout_s, so five more keep-alives go out.
    assert watchdog.keepalives_sent == 4 + 5

    heartbeat["ts"] = clock.now
    watchdog.tick()
    assert not watchdog.stalled
    assert watchdog.keepalives_sent == 10
    notifier.close()


# Outbox


class FakeInfo:
    def __init__(self) -> None:
        self.rc = 0
        self.acked = False

    def is_published(self) -> bool:
        return self.acked


class FakeTransport:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.sent: list[tuple[str, bytes, FakeInfo]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> FakeInfo:
        info = FakeInfo()
        self.sent.append((topic, payload, info))
        return info

    def ack_all(self) -> None:
        for _, _, info in self.sent:
            info.acked = True


def test_outbox_sends_in_order_and_deletes_on_ack(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=100)
    transport = FakeTransport()
    for index in range(5):
        assert outbox.put("t", f"m{index}".encode(), 1)

    assert outbox.pump(transport) == 0
    assert transport.sent == []  # disconnected: nothing leaves

    transport.connected.set()
    outbox.pump(transport)
    assert [payload for _, payload, _ in transport.sent] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert outbox.stats().pending == 5
    assert outbox.stats().in_flight == 5

    transport.ack_all()
    assert outbox.pump(transport) == 5
    assert outbox.stats().pending == 0
    assert outbox.stats().published == 5
    outbox.close()


def test_outbox_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_messages=100)
    outbox.put("t", b"a", 1)
    outbox.put("t", b"b", 1)
    transport = FakeTransport()
    transport.connected.set()
    outbox.pump(transport)  # sent but never acknowledged: a crash follows
    outbox.close()

    reopened = Outbox(path, max_messages=100)
    assert reopened.stats().pending == 2
    again = FakeTransport()
    again.connected.set()
    reopened.pump(again)
    assert [payload for _, payload, _ in again.sent] == [b"a", b"b"]
    reopened.close()


def test_outbox_drops_oldest_when_full(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_messages=3)
    for index in range(5):
        outbox.put("t", f"m{index}".encode(), 1)
    assert outbox.stats().pending == 3
    assert outbox.stats().dropped == 2
    outbox.close()

    reopened = Outbox(path, max_messages=3)
    assert reopened.stats().dropped == 2  # the count survives a restart
    transport = FakeTransport()
    transport.connected.set()
    reopened.pump(transport)
    assert [payload for _, payload, _ in transport.sent] == [b"m2", b"m3", b"m4"]
    reopened.close()


def test_outbox_ignores_repeated_key(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_messages=10)
    assert outbox.put("t", b"first", 1, key="asset-1 1700000000.05")
    assert not outbox.put("t", b"again", 1, key="asset-1 1700000000.05")
    outbox.close()
    reopened = Outbox(path, max_messages=10)
    assert not reopened.put("t", b"after restart", 1, key="asset-1 1700000000.05")
    assert reopened.stats().pending == 1
    reopened.close()


def test_outbox_resends_after_forget(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=10)
    outbox.put("t", b"x", 1)
    first = FakeTransport()
    first.connected.set()
    outbox.pump(first)
    outbox.forget_in_flight()  # the client was replaced by a reload
    second = FakeTransport()
    second.connected.set()
    outbox.pump(second)
    assert [payload for _, payload, _ in second.sent] == [b"x"]
    outbox.close()


# Last good checkpoint


def test_corrupt_checkpoint_falls_back_to_prev(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = make_checkpoint(tmp_path / "model.pt")
    _, metadata, used = load_last_good(checkpoint, "cpu")
    assert used == checkpoint
    assert previous_path(checkpoint).is_file()

    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # truncated, as after a power loss
    with caplog.at_level(logging.ERROR, logger="edge_agent.last_good"):
        _, fallback_metadata, used = load_last_good(checkpoint, "cpu")
    assert used == previous_path(checkpoint)
    assert fallback_metadata["weights_sha256"] == metadata["weights_sha256"]
    assert "running on the last good copy" in caplog.text


def test_corrupt_checkpoint_without_prev(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_last_good(checkpoint, "cpu")


# The agent in this process


class StatusWatcher:
    """Subscribes to the agent's status topic and keeps the last record."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.last: dict[str, Any] | None = None
        self.transport = MqttTransport(
            BrokerSettings(host="127.0.0.1", port=broker.port, client_id=f"status-watch-{id(self)}"),
            subscriptions=[Subscription(topic, 1)],
            on_message=self._on_message,
        )
        self.transport.start()
        assert self.transport.wait_connected(10)

    def _on_message(self, message: InboundMessage) -> None:
        self.last = json.loads(message.payload)
        self.transport.ack(message.ack_token, message.qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.transport.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.transport.stop()


class RunningAgent:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.run, daemon=True)

    def __enter__(self) -> Agent:
        self.agent.start()
        self.thread.start()
        return self.agent

    def __exit__(self, *exc: object) -> None:
        self.agent.stop_event.set()
        self.thread.join(10)
        self.agent.stop(timeout_s=10)


def make_agent(tmp_path: Path, broker: MosquittoBroker, notify_env: dict[str, str], **sections: dict[str, Any]) -> tuple[Agent, Path]:
    checkpoint = make_checkpoint(tmp_path / "model.pt")
    data = agent_config(tmp_path, broker.port, checkpoint, **sections)
    path = write_yaml(tmp_path / "agent.yaml", data)
    agent = Agent(load_config(path), config_path=path, notifier=Notifier(notify_env))
    return agent, path


def signal_chunk(seq: int) -> bytes:
    import numpy as np

    values = np.sin(np.arange(WINDOW) / 7.0).astype("float32")
    return encode_signal_binary(1_700_000_000.0 + seq * WINDOW / 12000.0, 12000.0, seq, values)


def test_agent_notifies_ready_and_status(tmp_path: Path, broker: MosquittoBroker, notify_socket: NotifySocket) -> None:
    agent, _ = make_agent(tmp_path, broker, {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    with RunningAgent(agent):
        assert wait_until(lambda: notify_socket.count("READY=1") == 1, 20)
        assert wait_until(lambda: notify_socket.count("WATCHDOG=1") >= 2, 20)
        statuses = [m for m in notify_socket.received() if m.startswith("STATUS=") or "\nSTATUS=" in m]
        assert any("model " in m and "msg/s" in m for m in statuses)
    assert notify_socket.count("STOPPING=1") == 1


def test_watchdog_stops_when_worker_stuck(tmp_path: Path, broker: MosquittoBroker, notify_socket: NotifySocket) -> None:
    agent, _ = make_agent(
        tmp_path, broker, {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"},
        service={"stall_timeout_s": 1},
    )
    release = threading.Event()
    process = agent.pipeline.process

    def stuck(items: list[Any]) -> None:  # the test hook: a hung inference
        release.wait(60)
        process(items)

    agent.pipeline.process = stuck  # type: ignore[method-assign]
    watcher = StatusWatcher(broker, agent.status_topic)
    try:
        with RunningAgent(agent):
            assert wait_until(lambda: notify_socket.count("WATCHDOG=1") >= 3, 20)
            watcher.publish("plant/l1/a1/vibration", signal_chunk(0))
            assert wait_until(lambda: agent.watchdog.stalled, 20)
            fed = notify_socket.count("WATCHDOG=1")
            time.sleep(2.0)  # an observation window, not a synchronisation: no keep-alive may arrive
            assert notify_socket.count("WATCHDOG=1") == fed
            release.set()
            assert wait_until(lambda: notify_socket.count("WATCHDOG=1") > fed, 20)
    finally:
        release.set()
        watcher.close()


def test_reload_valid_change_resubscribes(tmp_path: Path, broker: MosquittoBroker) -> None:
    agent, path = make_agent(tmp_path, broker, {})
    watcher = StatusWatcher(broker, agent.status_topic)
    try:
        with RunningAgent(agent):
            assert agent.transport.wait_connected(20)
            data = agent_config(tmp_path, broker.port, Path(agent.config.model.checkpoint))
            data["topics"] = {
                "signal": "site/{line}/{asset}/vib",
                "label": "site/{line}/{asset}/label",
                "diagnosis": "site/{line}/{asset}/diagnosis",
            }
            data["adaptation"] = {"n_shot_min": 2}
            write_yaml(path, data)
            agent.reload_event.set()
            assert wait_until(lambda: agent.config.topics.signal == "site/{line}/{asset}/vib", 20)
            assert wait_until(lambda: agent.pipeline.settings.n_shot_min == 2, 20)

            watcher.publish("plant/l1/a1/vibration", signal_chunk(0))  # the old filter: ignored
            watcher.publish("site/l1/a1/vib", signal_chunk(1))
            assert wait_until(lambda: agent.counters.get("chunks_received") == 1, 20)
            time.sleep(0.5)  # an observation window for a late delivery on the old filter
            assert agent.counters.get("chunks_received") == 1
            assert wait_until(
                lambda: watcher.last is not None and watcher.last["config"]["last_reload"] is not None
                and watcher.last["config"]["last_reload"]["outcome"] == "applied", 20,
            )
            assert "topics.signal" in watcher.last["config"]["last_reload"]["changed"]
    finally:
        watcher.close()


def test_reload_invalid_file_keeps_config(tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    agent, path = make_agent(tmp_path, broker, {})
    watcher = StatusWatcher(broker, agent.status_topic)
    try:
        with RunningAgent(agent):
            before = agent.config
            path.write_text("mqtt:\n  port: 70000\nwindow:\n  hop: -1\nbogus: 1\n", encoding="utf-8")
            with caplog.at_level(logging.ERROR, logger="edge_agent.reload"):
                agent.reload_event.set()
                assert wait_until(lambda: agent.reloader.rejections == 1, 20)
            assert agent.config is before
            assert "mqtt.port" in caplog.text
            assert "window.hop" in caplog.text
            assert "bogus" in caplog.text
            assert wait_until(
                lambda: watcher.last is not None and watcher.last["config"]["rejected"] == 1, 20
            )
            last_reload = watcher.last["config"]["last_reload"]
            assert last_reload["outcome"] == "rejected"
            assert len(last_reload["errors"]) == 3
    finally:
        watcher.close()


def test_reload_deleted_file_keeps_config(tmp_path: Path, broker: MosquittoBroker) -> None:
    agent, path = make_agent(tmp_path, broker, {}, config={"watch": True, "watch_interval_s": 0.2})
    with RunningAgent(agent):
        before = agent.config
        path.unlink()  # noticed by the file watch, without a SIGHUP
        assert wait_until(lambda: agent.reloader.rejections == 1, 20)
        assert agent.config is before
        assert agent.reloader.last is not None
        assert "not found" in agent.reloader.last.errors[0]


def test_reload_restart_only_key(tmp_path: Path, broker: MosquittoBroker) -> None:
    agent, path = make_agent(tmp_path, broker, {})
    with RunningAgent(agent):
        data = agent_config(tmp_path, broker.port, Path(agent.config.model.checkpoint))
        data["storage"] = {"dir": str(tmp_path / "elsewhere")}
        data["status"] = {"interval_s": 5}
        write_yaml(path, data)
        agent.reload_event.set()
        assert wait_until(lambda: agent.reloader.reloads == 1, 20)
        assert agent.restart_required == ["storage.dir"]
        assert agent.config.storage.dir == tmp_path / "state"
        assert agent.config.status.interval_s == 5


def test_diagnoses_wait_in_outbox_while_broker_down(tmp_path: Path, broker: MosquittoBroker) -> None:
    agent, _ = make_agent(tmp_path, broker, {})
    received: list[bytes] = []
    consumer = MqttTransport(
        BrokerSettings(host="127.0.0.1", port=broker.port, client_id="diagnosis-consumer", session_expiry_s=600),
        subscriptions=[Subscription("plant/+/+/diagnosis", 1)],
        on_message=lambda m: (received.append(m.payload), consumer.ack(m.ack_token, m.qos)),
    )
    consumer.start()
    try:
        assert consumer.wait_connected(10)
        with RunningAgent(agent):
            assert agent.transport.wait_connected(20)
            broker.stop()
            assert wait_until(lambda: not agent.transport.connected.is_set(), 20)
            topic = "plant/l1/a1/diagnosis"
            for seq in range(5):  # the signal arrives on the box while the broker is down
                payload = json.dumps({"window_start": seq}).encode()
                agent._enqueue([OutboundMessage(topic, payload, 1, f"{topic} {seq}")])
            assert agent.outbox.stats().pending == 5
            broker.start()
            assert wait_until(lambda: len(received) == 5, 30)
            assert [json.loads(p)["window_start"] for p in received] == [0, 1, 2, 3, 4]
            assert wait_until(lambda: agent.outbox.stats().pending == 0, 10)
    finally:
        consumer.stop()


def test_outbox_put_many_skips_known_keys(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=10)
    try:
        first = [("t", b"a", 1, False, "k1"), ("t", b"b", 1, False, "k2")]
        assert outbox.put_many(first) == 2
        assert outbox.put_many([("t", b"b", 1, False, "k2"), ("t", b"c", 1, False, "k3")]) == 1
        assert outbox.stats().pending == 3
        assert outbox.duplicates == 1
    finally:
        outbox.close()
