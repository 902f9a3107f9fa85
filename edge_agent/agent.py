"""The daemon: wires the transport, the pipeline worker, the task buffer and the model.

The agent owns no logic of its own beyond start-up, the status record and shutdown:
each part lives in its own module and is tested there.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import edge_agent
from edge_agent.buffer import TaskBuffer
from edge_agent.checkpoint import load_checkpoint
from edge_agent.classifier import FewShotClassifier, resolve_device
from edge_agent.config import AgentConfig
from edge_agent.counters import Counters, Rejections
from edge_agent.errors import CheckpointError
from edge_agent.inbox import Inbox, InboxItem
from edge_agent.pipeline import Pipeline, PipelineSettings
from edge_agent.topics import format_topic, parse_topic, topic_filter
from edge_agent.transport import (
    BrokerSettings,
    InboundMessage,
    MqttTransport,
    Subscription,
    Will,
    read_password_file,
)
from edge_agent.windowing import WindowAssembler

log = logging.getLogger(__name__)

BUFFER_FILE = "task_buffer.sqlite3"


def broker_settings(config: AgentConfig) -> BrokerSettings:
    mqtt = config.mqtt
    password = read_password_file(mqtt.password_file)
    if password is None:
        password = getattr(mqtt, "password", None)
    return BrokerSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=mqtt.client_id or f"edge-agent-{config.agent_id}",
        protocol=mqtt.protocol,
        keepalive_s=mqtt.keepalive_s,
        username=mqtt.username,
        password=password,
        reconnect_min_s=mqtt.reconnect_min_s,
        reconnect_max_s=mqtt.reconnect_max_s,
        session_expiry_s=mqtt.session_expiry_s,
    )


def pipeline_settings(config: AgentConfig) -> PipelineSettings:
    return PipelineSettings(
        signal_topic=config.topics.signal,
        label_topic=config.topics.label,
        diagnosis_topic=config.topics.diagnosis,
        qos=config.mqtt.qos,
        max_batch=config.model.max_batch,
        n_shot_min=config.adaptation.n_shot_min,
        max_payload_bytes=config.limits.max_payload_bytes,
    )


def check_window_fits_model(config: AgentConfig, metadata: dict[str, Any], checkpoint: Path) -> None:
    trained = int(metadata["window_size"])
    if config.window.size != trained:
        raise CheckpointError(
            f"window.size is {config.window.size} but the checkpoint {checkpoint} was trained on "
            f"windows of {trained} samples; set window.size: {trained} or meta-train a model "
            f"for {config.window.size}-sample windows"
        )


def install_stop_handlers(stop_event: threading.Event) -> None:
    """Make SIGTERM and SIGINT set `stop_event`; installed before the model loads,
    so a stop requested during start-up still ends in a clean shutdown."""

    def request_stop(signum: int, frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


class Agent:
    """One running edge-agent: call `start()`, then `run()` until a signal stops it."""

    def __init__(self, config: AgentConfig, *, stop_event: threading.Event | None = None) -> None:
        self.config = config
        self.counters = Counters()
        self.rejections = Rejections(logging.getLogger("edge_agent.rejections"))
        self.stop_event = stop_event or threading.Event()
        self.started_at = time.time()

        checkpoint = Path(config.model.checkpoint)
        self.device = resolve_device(config.model.device)
        model, self.metadata = load_checkpoint(checkpoint, self.device)
        check_window_fits_model(config, self.metadata, checkpoint)
        self.checkpoint_path = checkpoint
        self.classifier = FewShotClassifier(model, self.metadata, self.device)
        log.info(
            "model %s loaded on %s (sha256 %s, window %d samples at %g Hz)",
            checkpoint, self.device, str(self.metadata.get("weights_sha256", ""))[:12],
            config.window.size, float(self.metadata["sample_rate_hz"]),
        )

        storage_dir = Path(config.storage.dir)
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.buffer = TaskBuffer(storage_dir / BUFFER_FILE, max_shots_per_class=config.adaptation.max_shots_per_class)
        self.assembler = WindowAssembler(
            config.window.size,
            config.window.hop,
            float(self.metadata["sample_rate_hz"]),
            gap_tolerance_s=config.window.gap_tolerance_s,
            retain_s=config.window.retain_s,
            max_resample_ratio=config.window.max_resample_ratio,
        )
        self.inbox = Inbox(max_signals=config.limits.max_queue)
        self.status_topic = format_topic(config.topics.status, agent_id=config.agent_id)
        self.transport = MqttTransport(
            broker_settings(config),
            subscriptions=self._subscriptions(config),
            on_message=self._on_message,
            will=Will(self.status_topic, self._offline_record(), qos=1, retain=True),
            on_connected=self._on_connected,
        )
        self.pipeline = Pipeline(
            pipeline_settings(config),
            inbox=self.inbox,
            assembler=self.assembler,
            buffer=self.buffer,
            classifier=self.classifier,
            publish=self._publish,
            ack=self._ack,
            counters=self.counters,
            rejections=self.rejections,
            on_support_changed=self._request_status,
        )
        self._status_due = threading.Event()
        self._worker: threading.Thread | None = None

    # Wiring

    @staticmethod
    def _subscriptions(config: AgentConfig) -> list[Subscription]:
        return [
            Subscription(topic_filter(config.topics.signal), config.mqtt.signal_qos),
            Subscription(topic_filter(config.topics.label), config.mqtt.qos),
        ]

    def _on_message(self, message: InboundMessage) -> None:
        """Runs on paho's network thread: classify by topic and enqueue, nothing more."""
        if self.stop_event.is_set():
            # Shutting down: not acknowledged, so a kept session redelivers it later.
            return
        if parse_topic(self.config.topics.label, message.topic) is not None:
            kind = "label"
        else:
            kind = "signal"
        self.counters.add("messages_received")
        if not self.inbox.put(InboxItem(kind, message, time.monotonic())):
            self.counters.add("signals_dropped_inbox_full")
            self.rejections.record(
                message.topic, "inbox_full",
                f"inbox holds limits.max_queue={self.config.limits.max_queue} chunks; "
                "the box cannot keep up with the signal rate",
            )

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.transport.publish(topic, payload, qos=qos, retain=retain)

    def _ack(self, item: InboxItem) -> None:
        self.transport.ack(item.message.ack_token, item.message.qos)

    def _on_connected(self, session_present: bool) -> None:
        self._request_status()

    def _request_status(self) -> None:
        self._status_due.set()

    # Status

    def status_record(self, state: str = "online") -> dict[str, Any]:
        counts = self.buffer.counts()
        n_min = self.config.adaptation.n_shot_min
        counters = self.counters.snapshot()
        counters["messages_rejected"] = self.rejections.total()
        return {
            "state": state,
            "agent_id": self.config.agent_id,
            "version": edge_agent.__version__,
            "ts": time.time(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "model": {
                "checkpoint": str(self.checkpoint_path),
                "sha256": self.metadata.get("weights_sha256"),
                "model_version": self.classifier.model_version,
                "device": str(self.device),
                "algorithm": self.config.adaptation.algorithm,
            },
            "window": {
                "size": self.config.window.size,
                "hop": self.config.window.hop,
                "sample_rate_hz": float(self.metadata["sample_rate_hz"]),
            },
            "classes": counts,
            "ready_classes": sorted(name for name, n in counts.items() if n >= n_min),
            "labels_applied": self.buffer.labels_applied(),
            "counters": counters,
            "rejected": self.rejections.by_reason(),
            "recent_rejections": self.rejections.recent()[-5:],
        }

    def _offline_record(self) -> bytes:
        return json.dumps({"state": "offline", "agent_id": self.config.agent_id, "version": edge_agent.__version__}).encode()

    def publish_status(self, state: str = "online") -> None:
        record = self.status_record(state)
        self._publish(self.status_topic, json.dumps(record).encode(), 1, True)

    # Lifecycle

    def start(self) -> None:
        """Rebuild the prototypes from the buffer, start the worker and connect."""
        if self.buffer.counts():
            self.pipeline.refresh_support()
        self._worker = threading.Thread(target=self.pipeline.run, args=(self.stop_event,), name="pipeline", daemon=True)
        self._worker.start()
        self.transport.start()

    def run(self) -> None:
        """Block until `stop_event` is set, publishing status when due."""
        interval_s = self.config.status.interval_s
        next_status = time.monotonic() + interval_s
        while not self.stop_event.is_set():
            due = self._status_due.wait(timeout=0.5)
            now = time.monotonic()
            if (due or now >= next_status) and self.transport.connected.is_set():
                self._status_due.clear()
                self.publish_status()
                next_status = now + interval_s

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop intake, finish the work in flight, publish "offline" and close the store."""
        self.stop_event.set()
        self.inbox.close()
        if self._worker is not None:
            self._worker.join(timeout_s)
            if self._worker.is_alive():
                log.error("pipeline worker did not finish within %.1f s", timeout_s)
        if self.transport.connected.is_set():
            info = self.transport.publish(self.status_topic, self._offline_record(), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                log.warning("offline status not confirmed by the broker before shutdown")
        self.transport.stop()
        self.buffer.close()
        log.info("stopped")
