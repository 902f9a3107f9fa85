"""Replay recordings as a live line over MQTT, label a few windows, score the diagnoses.

The replay plays the role of the line and of the technician. It streams every
asset's segments in chunks at `speed` times real time. It publishes one label per
class once that class's first `n_shot` windows have been streamed. It compares each
diagnosis that comes back with the truth (see `edge_agent.line`).

After each label the stream pauses until the agent's retained status shows the
label applied (or `label_wait_s` passes), as a technician would wait for the box
to confirm. Latency is measured from the publication of a window's last chunk to
the arrival of its diagnosis, on this machine's monotonic clock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edge_agent.errors import EdgeAgentError, TransportError
from edge_agent.line import LinePlan, PlannedLabel
from edge_agent.payloads import Diagnosis, encode_signal_binary
from edge_agent.report import latency_summary, score
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport, Subscription
from edge_agent.topics import format_topic, parse_topic, topic_filter

log = logging.getLogger(__name__)

# Long enough to ride out a broker restart, short enough not to leave queues behind.
REPLAY_SESSION_EXPIRY_S = 120


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split mqtt://HOST:PORT into host and port (1883 when absent)."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme != "mqtt":
        raise EdgeAgentError(f"broker URL {url!r} must look like mqtt://HOST:PORT (TLS is not supported yet)")
    if not parsed.hostname:
        raise EdgeAgentError(f"broker URL {url!r} has no host; use e.g. mqtt://127.0.0.1:1883")
    try:
        port = parsed.port or 1883
    except ValueError as exc:
        raise EdgeAgentError(f"broker URL {url!r} has an invalid port") from exc
    return parsed.hostname, port


@dataclass(frozen=True)
class ReplayTopics:
    signal: str = "plant/{line}/{asset}/vibration"
    label: str = "plant/{line}/{asset}/label"
    diagnosis: str = "plant/{line}/{asset}/diagnosis"
    status: str = "edge-agent/{agent_id}/status"


@dataclass(frozen=True)
class ReplayOptions:
    speed: float = 20.0
    chunk_samples: int = 1200
    line: str = "replay"
    agent_id: str = "edge-01"
    # MQTT version of the replay's own connection; "3.1.1" for brokers without MQTT 5.
    protocol: str = "5"
    signal_qos: int = 1
    qos: int = 1
    agent_wait_s: float = 30.0
    label_wait_s: float = 15.0
    drain_timeout_s: float = 60.0
    topics: ReplayTopics = ReplayTopics()


class _Collector:
    """Gathers diagnoses and status records from the network thread."""

    def __init__(self, topics: ReplayTopics) -> None:
        self._topics = topics
        self._lock = threading.Lock()
        self.diagnoses: dict[tuple[str, int], list[tuple[Diagnosis, float]]] = {}
        self.total = 0
        self.malformed = 0
        self.redelivered = 0
        self._payloads_seen: set[tuple[str, bytes]] = set()
        self.status: dict[str, Any] | None = None
        self.status_changed = threading.Condition(self._lock)
        self.fs = 12000.0
        self.t0 = 0.0

    def key(self, asset: str, start_ts: float) -> tuple[str, int]:
        return asset, int(round((start_ts - self.t0) * self.fs))

    def on_message(self, message: InboundMessage) -> None:
        fields = parse_topic(self._topics.diagnosis, message.topic)
        if fields is not None:
            try:
                diagnosis = Diagnosis.from_json(message.payload)
            except (ValueError, KeyError, TypeError, EdgeAgentError):
                with self._lock:
                    self.malformed += 1
                return
            arrived = time.monotonic()
            with self._lock:
                # The same bytes again are a redelivery by MQTT (at least once), not a
                # second diagnosis of the window, and are counted apart.
                if (message.topic, message.payload) in self._payloads_seen:
                    self.redelivered += 1
                    return
                self._payloads_seen.add((message.topic, message.payload))
                self.total += 1
                self.diagnoses.setdefault(self.key(fields["asset"], diagnosis.window_start), []).append((diagnosis, arrived))
            return
        try:
            record = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError):
            return
        with self._lock:
            self.status = record
            self.status_changed.notify_all()

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                if self.status is not None and predicate(self.status):
                    return self.status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.status_changed.wait(remaining)

    def received_count(self, keys: list[tuple[str, int]]) -> int:
        with self._lock:
            return sum(1 for k in keys if k in self.diagnoses)


def _wait_for_agent(collector: _Collector, options: ReplayOptions, broker_url: str, status_topic: str) -> dict[str, Any]:
    status = collector.wait_status(lambda s: s.get("state") == "online", options.agent_wait_s)
    if status is None:
        raise TransportError(
            f"no online edge-agent on {status_topic} at {broker_url} within {options.agent_wait_s:.0f} s; "
            "start it with 'edge-agent run --config FILE' (same broker and agent_id) and retry"
        )
    return status


def run_replay(
    broker_url: str,
    make_plan: Callable[[int, int, float], LinePlan],
    recordings_by_id: dict[str, np.ndarray],
    options: ReplayOptions = ReplayOptions(),
    *,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Stream a planned line to the agent and return the report (see `edge_agent.report`).

    `make_plan(window_size, hop, t0)` builds the plan once the agent's window
    settings are known from its status record.
    """
    host, port = parse_broker_url(broker_url)
    topics = options.topics
    collector = _Collector(topics)
    status_topic = format_topic(topics.status, agent_id=options.agent_id)
    transport = MqttTransport(
        # A kept session, so diagnoses published while the broker restarts are queued for the replay.
        BrokerSettings(
            host=host, port=port, client_id=f"edge-agent-replay-{os.getpid()}", protocol=options.protocol,
            session_expiry_s=REPLAY_SESSION_EXPIRY_S,
        ),
        subscriptions=[
            Subscription(topic_filter(topics.diagnosis), options.qos),
            Subscription(status_topic, 1),
        ],
        on_message=lambda m: (collector.on_message(m), transport.ack(m.ack_token, m.qos)),
    )
    transport.start()
    try:
        if not transport.wait_connected(10.0):
            raise TransportError(
                f"cannot connect to MQTT broker {broker_url}: {transport.last_error or 'no answer'}; "
                "check that the broker runs and listens on that address"
            )
        status = _wait_for_agent(collector, options, broker_url, status_topic)
        window = status["window"]
        t0 = float(int(time.time()))
        collector.fs = float(window["sample_rate_hz"])
        collector.t0 = t0
        plan = make_plan(int(window["size"]), int(window["hop"]), t0)
        labels_before = int(status.get("labels_applied", 0))
        return _stream_and_score(transport, collector, plan, recordings_by_id, options, labels_before, on_progress)
    finally:
        transport.stop()


def _chunk_events(plan: LinePlan, recordings: dict[str, np.ndarray], chunk_samples: int) -> list[tuple[float, str, int, float, np.ndarray, int]]:
    """Return (stream time of the chunk's end, asset, seq, ts, values, stream index of its last sample)."""
    events = []
    for asset, segments in plan.segments.items():
        seq = 0
        stream_sample = 0
        for seg in segments:
            signal = recordings[seg.record_id][seg.first_sample : seg.first_sample + seg.n_samples]
            for offset in range(0, seg.n_samples, chunk_samples):
                values = signal[offset : offset + chunk_samples]
                ts = seg.start_ts + offset / plan.fs
                end_time = ts + len(values) / plan.fs
                events.append((end_time, asset, seq, ts, values, stream_sample + offset + len(values) - 1))
                seq += 1
            stream_sample += seg.n_samples
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def _stream_and_score(
    transport: MqttTransport,
    collector: _Collector,
    plan: LinePlan,
    recordings: dict[str, np.ndarray],
    options: ReplayOptions,
    labels_before: int,
    on_progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    topics = options.topics
    events = _chunk_events(plan, recordings, options.chunk_samples)
    pending_labels = list(plan.labels)
    chunk_published: dict[tuple[str, int], float] = {}  # (asset, last stream sample) -> monotonic
    chunk_ends: dict[str, list[int]] = {asset: [] for asset in plan.assets}
    labels_published = 0
    started = time.monotonic()
    pause_s = 0.0
    t_first = events[0][0] if events else 0.0

    for end_time, asset, seq, ts, values, last_sample in events:
        due = started + pause_s + (end_time - t_first) / options.speed
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        payload = encode_signal_binary(ts, plan.fs, seq, values)
        transport.publish(format_topic(topics.signal, line=options.line, asset=asset), payload, qos=options.signal_qos)
        chunk_published[(asset, last_sample)] = time.monotonic()
        chunk_ends[asset].append(last_sample)

        # A label goes out once its asset has streamed the whole labelled range
        # (its end carries half a sample of margin past the last window's end).
        ready = [lab for lab in pending_labels if lab.asset == asset and lab.end - 1.0 / plan.fs <= end_time]
        for label in ready:
            pending_labels.remove(label)
            labels_published += 1
            pause_s += _publish_label(transport, collector, label, labels_published + labels_before, options, on_progress)

    keys = [collector.key(w.asset, w.start_ts) for w in plan.scored]
    deadline = time.monotonic() + options.drain_timeout_s
    while collector.received_count(keys) < len(keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    duration_s = time.monotonic() - started
    status = collector.wait_status(lambda s: True, 0.0) or {}
    return _build_report(plan, collector, keys, chunk_published, chunk_ends, labels_published, labels_before, status, duration_s)


def _publish_label(
    transport: MqttTransport,
    collector: _Collector,
    label: PlannedLabel,
    applied_target: int,
    options: ReplayOptions,
    on_progress: Callable[[str], None] | None,
) -> float:
    """Publish one label and wait until the agent reports it applied; return the seconds waited."""
    payload = json.dumps({"start": label.start, "end": label.end, "label": label.label}).encode()
    topic = format_topic(options.topics.label, line=options.line, asset=label.asset)
    transport.publish(topic, payload, qos=options.qos)
    if on_progress:
        on_progress(f"label {label.label} published for {label.asset}")
    started = time.monotonic()
    applied = collector.wait_status(lambda s: int(s.get("labels_applied", 0)) >= applied_target, options.label_wait_s)
    if applied is None:
        log.warning("agent did not confirm label %s within %.0f s; going on", label.label, options.label_wait_s)
    return time.monotonic() - started


def _completing_chunk(chunk_ends: list[int], last_sample: int) -> int:
    """Return the last stream sample of the chunk that contains `last_sample`."""
    index = int(np.searchsorted(chunk_ends, last_sample))
    return chunk_ends[min(index, len(chunk_ends) - 1)]


def _build_report(
    plan: LinePlan,
    collector: _Collector,
    keys: list[tuple[str, int]],
    chunk_published: dict[tuple[str, int], float],
    chunk_ends: dict[str, list[int]],
    labels_published: int,
    labels_before: int,
    status: dict[str, Any],
    duration_s: float,
) -> dict[str, Any]:
    classes = sorted({w.label for w in plan.windows})
    truth: list[str] = []
    predicted: list[str | None] = []
    latencies: list[float] = []
    received = 0
    duplicated = 0
    without_label = 0
    # One row per scored window, in stream seconds from the line's start, for plots.
    t_start = min((seg.start_ts for segments in plan.segments.values() for seg in segments[:1]), default=0.0)
    timeline: list[dict[str, Any]] = []
    with collector._lock:
        diagnoses = {k: list(v) for k, v in collector.diagnoses.items()}
        total = collector.total
        redelivered = collector.redelivered
    for window, key in zip(plan.scored, keys):
        got = diagnoses.get(key)
        truth.append(window.label)
        if not got:
            predicted.append(None)
            continue
        received += 1
        duplicated += len(got) - 1
        diagnosis, arrived = got[0]
        predicted.append(diagnosis.label)
        without_label += diagnosis.label is None
        published = chunk_published.get((window.asset, _completing_chunk(chunk_ends[window.asset], window.last_sample)))
        latency_ms = None if published is None else (arrived - published) * 1000.0
        if latency_ms is not None:
            latencies.append(latency_ms)
        timeline.append({
            "t_s": round(window.start_ts - t_start, 4),
            "correct": diagnosis.label == window.label,
            "latency_ms": None if latency_ms is None else round(latency_ms, 2),
        })
    result = score(truth, predicted, classes)
    return {
        "accuracy": result["accuracy"],
        "windows_correct": sum(1 for t, p in zip(truth, predicted) if t == p),
        "windows_scored": len(plan.scored),
        "windows_streamed": len(plan.windows),
        "diagnoses_received": received,
        "diagnoses_total": total,
        "diagnoses_duplicated": duplicated,
        "diagnoses_redelivered": redelivered,
        "diagnoses_without_label": without_label,
        "labels_published": labels_published,
        "labels_applied": int(status.get("labels_applied", 0)) - labels_before,
        "per_class": result["per_class"],
        "confusion": result["confusion"],
        "latency_ms": latency_summary(latencies),
        "duration_s": round(duration_s, 2),
        "assets": plan.assets,
        "classes": classes,
        "label_times_s": [round(label.end - t_start, 4) for label in plan.labels],
        "timeline": timeline,
    }
