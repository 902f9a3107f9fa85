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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import edge_agent
from edge_agent.adaptation_worker import make_adaptation_worker
from edge_agent.buffer import TaskBuffer
from edge_agent.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
from edge_agent.classifier import FewShotClassifier, resolve_device
from edge_agent.config import AgentConfig
from edge_agent.counters import Counters, Rejections
from edge_agent.errors import CheckpointError
from edge_agent.inbox import Inbox, InboxItem
from edge_agent.last_good import load_last_good
from edge_agent.outbox import Outbox
from edge_agent.pipeline import OutboundMessage, Pipeline, PipelineSettings
from edge_agent.reload import FileWatch, Reloader, live_config, needs_reconnect, needs_resubscribe
from edge_agent.sdnotify import Notifier
from edge_agent.testhooks import apply_test_hooks
from edge_agent.topics import format_topic, parse_topic, topic_filter
from edge_agent.transport import (
    BrokerSettings,
    InboundMessage,
    MqttTransport,
    Subscription,
    Will,
    read_password_file,
)
from edge_agent.watchdog import ProgressWatchdog
from edge_agent.windowing import WindowAssembler

log = logging.getLogger(__name__)

BUFFER_FILE = "task_buffer.sqlite3"
OUTBOX_FILE = "outbox.sqlite3"
# How often the main loop sends a STATUS= line to systemd.
SYSTEMD_STATUS_INTERVAL_S = 10.0


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

    def __init__(
        self,
        config: AgentConfig,
        *,
        stop_event: threading.Event | None = None,
        config_path: Path | None = None,
        overrides: Sequence[str] = (),
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.counters = Counters()
        self.rejections = Rejections(logging.getLogger("edge_agent.rejections"))
        self.stop_event = stop_event or threading.Event()
        self.started_at = time.time()

        self.device = resolve_device(config.model.device)
        if config.model.checkpoint is None:
            # The shipped file is replaced only by reinstalling, so it needs no .prev copy
            # (which could not be written into a read-only install anyway).
            checkpoint = loaded_from = SHIPPED_CHECKPOINT
            model, self.metadata = load_checkpoint(checkpoint, self.device)
        else:
            checkpoint = Path(config.model.checkpoint)
            model, self.metadata, loaded_from = load_last_good(checkpoint, self.device)
        check_window_fits_model(config, self.metadata, checkpoint)
        self.checkpoint_path = loaded_from
        self.classifier = FewShotClassifier(model, self.metadata, self.device)
        log.info(
            "model %s loaded on %s (sha256 %s, window %d samples at %g Hz)",
            loaded_from, self.device, str(self.metadata.get("weights_sha256", ""))[:12],
            config.window.size, float(self.metadata["sample_rate_hz"]),
        )

        storage_dir = Path(config.storage.dir)
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.buffer = TaskBuffer(storage_dir / BUFFER_FILE, max_shots_per_class=config.adaptation.max_shots_per_class)
        self.adaptation = make_adaptation_worker(config, model, self.metadata, self.device, self.buffer, self.counters)
        if self.adaptation is not None:
            self.classifier = self.adaptation.initial_classifier
        self.outbox = Outbox(storage_dir / OUTBOX_FILE, max_messages=config.limits.max_outbox)
        self.assembler = self._make_assembler(config)
        self.inbox = Inbox(max_signals=config.limits.max_queue)
        self.status_topic = format_topic(config.topics.status, agent_id=config.agent_id)
        self.transport = self._make_transport(config)
        self.pipeline = Pipeline(
            pipeline_settings(config),
            inbox=self.inbox,
            assembler=self.assembler,
            buffer=self.buffer,
            classifier=self.classifier,
            publish=self._enqueue,
            ack=self._ack,
            counters=self.counters,
            rejections=self.rejections,
            on_support_changed=self._on_support_changed,
        )
        self._status_due = threading.Event()
        self._worker: threading.Thread | None = None
        self._outbox_thread: threading.Thread | None = None
        self._outbox_stop = threading.Event()

        self.notifier = notifier or Notifier()
        self.watchdog = ProgressWatchdog(
            self.notifier, lambda: self.pipeline.heartbeat, stall_timeout_s=config.service.stall_timeout_s
        )
        self.reload_event = threading.Event()
        self.reloader = Reloader(self, config_path, overrides)
        self.restart_required: list[str] = []
        self._file_watch = FileWatch(config_path) if config_path is not None else None
        self._ready_sent = False
        self._next_watch = 0.0
        self._rate_base: tuple[float, dict[str, int]] = (time.monotonic(), {})
        apply_test_hooks(self.pipeline)

    def _make_assembler(self, config: AgentConfig) -> WindowAssembler:
        return WindowAssembler(
            config.window.size,
            config.window.hop,
            float(self.metadata["sample_rate_hz"]),
            gap_tolerance_s=config.window.gap_tolerance_s,
            retain_s=config.window.retain_s,
            max_resample_ratio=config.window.max_resample_ratio,
        )

    def _make_transport(self, config: AgentConfig) -> MqttTransport:
        return MqttTransport(
            broker_settings(config),
            subscriptions=self._subscriptions(config),
            on_message=self._on_message,
            will=Will(self.status_topic, self._offline_record(), qos=1, retain=True),
            on_connected=self._on_connected,
        )

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

    def _enqueue(self, messages: list[OutboundMessage]) -> None:
        """Hand a batch of diagnoses to the on-disk outbox, whose thread publishes them.

        The key (topic and window start) keeps a window diagnosed again after a crash,
        from a redelivered signal chunk, from being published twice.
        """
        added = self.outbox.put_many([(m.topic, m.payload, m.qos, False, m.key) for m in messages])
        if added < len(messages):
            self.counters.add("diagnoses_duplicate_suppressed", len(messages) - added)

    def _ack(self, item: InboxItem) -> None:
        self.transport.ack(item.message.ack_token, item.message.qos)

    def _on_connected(self, session_present: bool) -> None:
        # The transport subscribes on every connect, so a session the broker lost is
        # rebuilt here; what it had queued for the agent is gone, though.
        if not session_present and self.transport.connects > 1:
            self.counters.add("sessions_lost")
            log.warning(
                "broker %s kept no session for %s; subscriptions were renewed, but messages "
                "queued during the disconnect are lost (is broker persistence on?)",
                self.transport.address, self.transport.settings.client_id,
            )
        self._request_status()

    def _request_status(self) -> None:
        self._status_due.set()

    def _on_support_changed(self) -> None:
        self._request_status()
        if self.adaptation is not None:
            self.adaptation.notify_support_changed()

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
                # The adaptation worker swaps the pipeline's classifier, so read it there.
                "model_version": self.pipeline.classifier.model_version,
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
            "adaptation": self.adaptation.status() if self.adaptation is not None else None,
            "recent_rejections": self.rejections.recent()[-5:],
            "outbox": self._outbox_record(),
            "connection": {
                "broker": self.transport.address,
                "connects": self.transport.connects,
                "disconnects": self.transport.disconnects,
            },
            "config": {
                "reloads": self.reloader.reloads,
                "rejected": self.reloader.rejections,
                "last_reload": self.reloader.last.as_dict() if self.reloader.last else None,
                "restart_required": self.restart_required,
            },
        }

    def _outbox_record(self) -> dict[str, int]:
        stats = self.outbox.stats()
        return {
            "pending": stats.pending,
            "dropped": stats.dropped,
            "published": stats.published,
            "max": self.config.limits.max_outbox,
        }

    def _offline_record(self) -> bytes:
        return json.dumps({"state": "offline", "agent_id": self.config.agent_id, "version": edge_agent.__version__}).encode()

    def publish_status(self, state: str = "online") -> None:
        record = self.status_record(state)
        self._publish(self.status_topic, json.dumps(record).encode(), 1, True)

    # Lifecycle

    def start(self) -> None:
        """Rebuild the prototypes from the buffer, start the workers and connect."""
        if self.buffer.counts():
            self.pipeline.refresh_support()
        self._worker = threading.Thread(target=self.pipeline.run, args=(self.stop_event,), name="pipeline", daemon=True)
        self._worker.start()
        if self.adaptation is not None:
            self.adaptation.start(self.pipeline)
        self._outbox_thread = threading.Thread(
            target=self.outbox.run, args=(lambda: self.transport, self._outbox_stop), name="outbox", daemon=True
        )
        self._outbox_thread.start()
        self.transport.start()

    def run(self) -> None:
        """Block until `stop_event` is set, publishing status and reloading when due."""
        next_status = time.monotonic()
        next_systemd_status = time.monotonic()
        while not self.stop_event.is_set():
            due = self._status_due.wait(timeout=0.5)
            now = time.monotonic()
            connected = self.transport.connected.is_set()
            if connected and not self._ready_sent:
                # The model is loaded (in __init__) and the broker connected: ready.
                self._ready_sent = True
                self.notifier.ready(self.systemd_status())
                log.info("ready")
            self.watchdog.tick()
            if self._reload_due(now):
                self.reload()
            if (due or now >= next_status) and connected:
                self._status_due.clear()
                self.publish_status()
                next_status = now + self.config.status.interval_s
            if now >= next_systemd_status:
                self.notifier.status(self.systemd_status())
                next_systemd_status = now + SYSTEMD_STATUS_INTERVAL_S

    def _reload_due(self, now: float) -> bool:
        if self.reload_event.is_set():
            self.reload_event.clear()
            if self._file_watch is not None:
                self._file_watch.changed()  # the reload reads this version
            return True
        if self.config.config.watch and self._file_watch is not None and now >= self._next_watch:
            self._next_watch = now + self.config.config.watch_interval_s
            return self._file_watch.changed()
        return False

    def systemd_status(self) -> str:
        """Return the one-line STATUS= text that `systemctl status` shows."""
        counters = self.counters.snapshot()
        now = time.monotonic()
        # Rates over the time since the previous STATUS= line (since the start for the first).
        since, previous = self._rate_base
        elapsed_s = max(now - since, 1e-9)
        received_rate = (counters.get("messages_received", 0) - previous.get("messages_received", 0)) / elapsed_s
        diagnosis_rate = (counters.get("diagnoses_published", 0) - previous.get("diagnoses_published", 0)) / elapsed_s
        self._rate_base = (now, counters)
        link = "connected" if self.transport.connected.is_set() else "disconnected"
        return (
            f"model {self.pipeline.classifier.model_version}, {link}, {received_rate:.1f} msg/s in, "
            f"{diagnosis_rate:.1f} diagnoses/s out, outbox {self.outbox.stats().pending}"
        )

    # Live reconfiguration

    def reload(self) -> None:
        """Re-read the config file and apply it (see `edge_agent.reload`)."""
        self.notifier.reloading("reloading configuration")
        result = self.reloader.reload()
        self.notifier.ready(self.systemd_status())
        if result.outcome == "rejected":
            self.counters.add("config_rejected")
        self._request_status()

    def check_config_fits_model(self, config: AgentConfig) -> None:
        check_window_fits_model(config, self.metadata, self.checkpoint_path)

    def apply_config(self, new: AgentConfig, changed: list[str], restart: list[str]) -> None:
        """Apply a validated config; called by the reloader on the main thread."""
        self.restart_required = sorted(set(self.restart_required) | set(restart))
        config = live_config(self.config, new, restart)
        old = self.config
        self.config = config

        logging.getLogger().setLevel(config.log.level)
        self.inbox.max_signals = config.limits.max_queue
        self.outbox.max_messages = config.limits.max_outbox
        self.watchdog.stall_timeout_s = config.service.stall_timeout_s
        self._apply_on_worker(config, old, changed)

        if needs_reconnect(changed):
            self._reconnect(config)
        elif needs_resubscribe(changed):
            self.transport.set_subscriptions(self._subscriptions(config))

    def _apply_on_worker(self, config: AgentConfig, old: AgentConfig, changed: list[str]) -> None:
        window_changed = any(key.startswith("window.") for key in changed)
        shots_changed = config.adaptation.max_shots_per_class != old.adaptation.max_shots_per_class

        def swap() -> None:
            self.pipeline.settings = pipeline_settings(config)
            if window_changed:
                # Windows in assembly and those kept for late labels are dropped.
                self.assembler = self._make_assembler(config)
                self.pipeline.assembler = self.assembler
                log.info("window settings changed: windowing restarts for every stream")
            if shots_changed:
                self.buffer.max_shots_per_class = config.adaptation.max_shots_per_class
            self.pipeline.refresh_support()

        self.pipeline.call_between_batches(swap)

    def _reconnect(self, config: AgentConfig) -> None:
        old = self.transport
        log.info("broker settings changed: reconnecting from %s", old.address)
        old.stop()
        self.transport = self._make_transport(config)
        # The old client took its unacknowledged publications with it.
        self.outbox.forget_in_flight()
        self.transport.start()

    # Shutdown

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop intake, finish the batch in flight, flush the outbox, publish "offline", close the stores.

        Each step waits at most until `timeout_s` (default `service.shutdown_timeout_s`)
        after the call, so the process exits in time for systemd.
        """
        budget_s = self.config.service.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s
        self.notifier.stopping("stopping: finishing the batch in flight and flushing the outbox")
        self.stop_event.set()
        self.inbox.close()
        if self._worker is not None:
            # Leave a quarter of the time for the outbox and the goodbye.
            self._worker.join(max(0.0, (deadline - time.monotonic()) * 0.75))
            if self._worker.is_alive():
                log.error("pipeline worker did not finish its batch within the shutdown time; stopping anyway")
        if self.adaptation is not None:
            self.adaptation.stop(max(0.0, min(5.0, deadline - time.monotonic())))
        self._outbox_stop.set()
        if self._outbox_thread is not None:
            self._outbox_thread.join(2.0)
        if self.transport.connected.is_set():
            flushed = self.outbox.flush(self.transport, max(0.0, deadline - time.monotonic() - 1.0))
            if not flushed:
                log.warning(
                    "%d diagnoses still in the outbox at shutdown; they are sent after the next start",
                    self.outbox.stats().pending,
                )
            info = self.transport.publish(self.status_topic, self._offline_record(), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            except (RuntimeError, ValueError):
                log.warning("offline status not confirmed by the broker before shutdown")
        else:
            log.warning(
                "broker unreachable at shutdown; %d diagnoses stay in the outbox for the next start",
                self.outbox.stats().pending,
            )
        self.transport.stop()
        self.outbox.close()
        self.buffer.close()
        self.notifier.close()
        log.info("stopped")
