"""Technician commands from a shell: read an agent's status, publish a label.

Both connect as short-lived MQTT clients. `read_status` waits for the agent's
retained status record. `publish_label` sends one label with QoS 1, and can wait
until the agent's status counts it as applied.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from datetime import datetime
from typing import Any

from edge_agent.errors import EdgeAgentError, TransportError
from edge_agent.replay import ReplayTopics, parse_broker_url
from edge_agent.topics import format_topic
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport, Subscription

CONNECT_TIMEOUT_S = 10.0


class _StatusWatcher:
    """An MQTT client subscribed to one agent's retained status topic."""

    def __init__(self, broker_url: str, agent_id: str, protocol: str, topics: ReplayTopics) -> None:
        host, port = parse_broker_url(broker_url)
        self.broker_url = broker_url
        self.topic = format_topic(topics.status, agent_id=agent_id)
        self._condition = threading.Condition()
        self.record: dict[str, Any] | None = None
        self.transport = MqttTransport(
            BrokerSettings(host=host, port=port, client_id=f"edge-agent-cli-{os.getpid()}", protocol=protocol),
            subscriptions=[Subscription(self.topic, 1)],
            on_message=self._on_message,
        )

    def _on_message(self, message: InboundMessage) -> None:
        self.transport.ack(message.ack_token, message.qos)
        try:
            record = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(record, dict):
            with self._condition:
                self.record = record
                self._condition.notify_all()

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.transport.start()
        if not self.transport.wait_connected(timeout_s):
            reason = self.transport.last_error or f"no answer within {timeout_s:g} s"
            self.transport.stop()
            raise TransportError(
                f"cannot connect to MQTT broker {self.broker_url}: {reason}. "
                "Check the address with --broker and that the broker is running"
            )

    def wait(self, predicate: Any, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while self.record is None or not predicate(self.record):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
            return self.record

    def close(self) -> None:
        self.transport.stop()


def read_status(
    broker_url: str, agent_id: str, *, protocol: str = "5", timeout_s: float = 5.0, topics: ReplayTopics = ReplayTopics()
) -> dict[str, Any]:
    """Return the agent's retained status record.

    Raises TransportError when the broker cannot be reached, or has no status for
    `agent_id`, within `timeout_s` (each).
    """
    watcher = _StatusWatcher(broker_url, agent_id, protocol, topics)
    watcher.connect(timeout_s)
    try:
        record = watcher.wait(lambda record: True, timeout_s)
    finally:
        watcher.close()
    if record is None:
        raise TransportError(
            f"no status on {watcher.topic} at {broker_url} within {timeout_s:g} s: no agent with "
            f"agent_id {agent_id!r} has connected to this broker. Check --agent-id and --broker"
        )
    return record


def format_status(record: dict[str, Any]) -> str:
    """Render a status record as aligned lines: health, model, classes, counters."""
    lines = [f"agent             {record.get('agent_id', '?')}: {record.get('state', '?')}"]
    if record.get("state") != "online":
        lines.append("                  (the agent is not running, or lost its connection to the broker)")
        return "\n".join(lines)
    model = record.get("model", {})
    window = record.get("window", {})
    lines += [
        f"version           edge-agent {record.get('version', '?')}, up {record.get('uptime_s', 0):.0f} s",
        f"model             version {model.get('model_version', '-')}, {model.get('algorithm', '-')} on {model.get('device', '-')}",
        f"checkpoint        {model.get('checkpoint', '-')}",
        f"window            {window.get('size', '?')} samples, hop {window.get('hop', '?')}, {window.get('sample_rate_hz', '?')} Hz",
        f"labels applied    {record.get('labels_applied', 0)}",
    ]

    classes = record.get("classes", {})
    ready = set(record.get("ready_classes", []))
    if classes:
        lines.append("classes           support windows")
        for name, count in sorted(classes.items()):
            lines.append(f"  {name:<24}{count:>6}{'' if name in ready else '  (too few to diagnose)'}")
    else:
        lines.append("classes           none yet; publish labels with 'edge-agent label'")

    connection = record.get("connection", {})
    if connection:
        lines.append(f"broker link       {connection.get('connects', 0)} connects, {connection.get('disconnects', 0)} disconnects")
    outbox = record.get("outbox", {})
    if outbox:
        lines.append(f"outbox            {outbox.get('pending', 0)} diagnoses pending, {outbox.get('dropped', 0)} dropped")

    counters = dict(record.get("counters", {}))
    if counters:
        lines.append("counters")
        for name, value in sorted(counters.items()):
            lines.append(f"  {name:<24}{value:>10}")
    rejected = record.get("rejected", {})
    if rejected:
        lines.append("rejected by reason")
        for name, value in sorted(rejected.items()):
            lines.append(f"  {name:<24}{value:>10}")
    return "\n".join(lines)


def parse_time(text: str) -> float:
    """Parse epoch seconds ("1700000000.5") or an ISO 8601 time into epoch seconds.

    An ISO time without a UTC offset is taken as this machine's local time.
    """
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise EdgeAgentError(
                f"invalid time {text!r}: use epoch seconds (1700000000.5) or ISO 8601 "
                "(2026-12-04T21:15:00+00:00)"
            ) from exc
        return moment.astimezone().timestamp()
    if not math.isfinite(value):
        raise EdgeAgentError(f"invalid time {text!r}: must be a finite number of epoch seconds")
    return value


class LabelNotApplied(EdgeAgentError):
    """The label reached the broker, but the agent did not learn from it."""


def _labels_without_windows(record: dict[str, Any]) -> int:
    return int(record.get("counters", {}).get("labels_without_windows", 0))


def publish_label(
    broker_url: str,
    *,
    line: str,
    asset: str,
    start: float,
    end: float,
    label: str,
    agent_id: str | None,
    protocol: str = "5",
    wait_s: float = 10.0,
    topics: ReplayTopics = ReplayTopics(),
) -> str:
    """Publish one label with QoS 1 and return what happened, as a sentence.

    With `agent_id`, waits up to `wait_s` for the agent's status to count one more
    applied label. Raises EdgeAgentError when `end` is not after `start`, and
    TransportError when the broker cannot be reached or does not acknowledge.
    """
    if end <= start:
        raise EdgeAgentError(f"the label's end ({end}) must be after its start ({start})")
    if not label.strip():
        raise EdgeAgentError("the class name must not be empty")
    watcher = _StatusWatcher(broker_url, agent_id or "-", protocol, topics)
    watcher.connect()
    try:
        before = watcher.wait(lambda record: True, 2.0) if agent_id else None
        applied_before = int(before.get("labels_applied", 0)) if before else 0
        empty_before = _labels_without_windows(before) if before else 0
        topic = format_topic(topics.label, line=line, asset=asset)
        payload = json.dumps({"start": start, "end": end, "label": label}).encode()
        info = watcher.transport.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout=CONNECT_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"broker {broker_url} did not acknowledge the label on {topic}: {exc}") from exc
        if not info.is_published():
            raise TransportError(f"broker {broker_url} did not acknowledge the label on {topic} within {CONNECT_TIMEOUT_S:.0f} s")
        if not agent_id:
            return f"label {label!r} published on {topic}"
        if before is None or before.get("state") != "online":
            return f"label {label!r} published on {topic}; agent {agent_id!r} is not online, so it applies the label when it next connects (if its session keeps it)"
        outcome = watcher.wait(
            lambda record: int(record.get("labels_applied", 0)) > applied_before
            or _labels_without_windows(record) > empty_before,
            wait_s,
        )
        if outcome is None:
            raise LabelNotApplied(
                f"label {label!r} published on {topic}; agent {agent_id!r} has not applied it within {wait_s:g} s. "
                "Run 'edge-agent status' for rejected messages, and check the agent's log"
            )
        if int(outcome.get("labels_applied", 0)) <= applied_before:
            raise LabelNotApplied(
                f"label {label!r} published on {topic}, but agent {agent_id!r} has no window of "
                f"{line}/{asset} between the start and the end, so it learned nothing. Check the asset "
                "name and the times (the agent keeps the last window.retain_s seconds of each stream)"
            )
        return f"label {label!r} published on {topic} and applied by agent {agent_id!r}"
    finally:
        watcher.close()
