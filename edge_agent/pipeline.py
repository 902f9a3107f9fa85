"""The pipeline worker: signal chunks to windows to diagnoses, labels to support examples.

One worker thread takes inbox items in arrival order. Signal chunks become windows
per stream. Windows wait in a batch until the inbox is drained or `model.max_batch`
is reached, and then are diagnosed in one forward pass. A label first flushes the
pending batch, so windows that arrived before the label are diagnosed with the
model that was current when they arrived, and then commits the labelled windows to
the task buffer and recomputes the prototypes.

Each QoS 1 message is acknowledged only after its work is done: a label after its
SQLite commit, a signal chunk after the diagnoses of the windows it completed are
handed to the transport.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.buffer import TaskBuffer
from edge_agent.classifier import FewShotClassifier
from edge_agent.counters import Counters, Rejections
from edge_agent.errors import PayloadError, StorageError
from edge_agent.inbox import Inbox, InboxItem
from edge_agent.payloads import Diagnosis, decode_label, decode_signal
from edge_agent.topics import format_topic, parse_topic
from edge_agent.windowing import Window, WindowAssembler

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{(\w+)\}")

@dataclass(frozen=True)
class OutboundMessage:
    """A diagnosis ready to publish; `key` names its stream and window, for de-duplication."""

    topic: str
    payload: bytes
    qos: int
    key: str


# Receives all diagnoses of one inference batch, so the outbox commits them together.
Publish = Callable[[list[OutboundMessage]], None]
Ack = Callable[[InboxItem], None]


@dataclass(frozen=True)
class PipelineSettings:
    """The parts of the config the worker reads; swapped whole on a live reload."""

    signal_topic: str
    label_topic: str
    diagnosis_topic: str
    qos: int
    max_batch: int
    n_shot_min: int
    max_payload_bytes: int


class Pipeline:
    """Runs on one worker thread; see the module docstring for the order of work."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        inbox: Inbox,
        assembler: WindowAssembler,
        buffer: TaskBuffer,
        classifier: FewShotClassifier,
        publish: Publish,
        ack: Ack,
        counters: Counters,
        rejections: Rejections,
        on_support_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        self.assembler = assembler
        self.buffer = buffer
        self.classifier = classifier
        self._publish = publish
        self._ack = ack
        self.counters = counters
        self.rejections = rejections
        self._on_support_changed = on_support_changed
        self._stream_fields: dict[str, dict[str, str]] = {}
        # time.monotonic() of the last loop turn; the watchdog reads it.
        self.heartbeat = time.monotonic()
        self._between: list[Callable[[], None]] = []
        self._between_lock = threading.Lock()

    # Loop

    def run(self, stop: threading.Event) -> None:
        """Process inbox items until `stop` is set, finishing the batch in flight.

        Items still in the inbox at the stop are not acknowledged, so the broker
        redelivers the QoS 1 ones to the next run of a kept session.
        """
        while not stop.is_set():
            self._run_between_batches()
            items = self.inbox.get_batch(max_items=512, timeout_s=0.2)
            self.heartbeat = time.monotonic()
            if not items:
                continue
            try:
                self.process(items)
            except Exception:  # noqa: BLE001 - the worker must survive any one batch
                log.exception("pipeline batch of %d messages failed; continuing", len(items))
                self.counters.add("pipeline_errors")
            self.heartbeat = time.monotonic()

    def call_between_batches(self, action: Callable[[], None]) -> None:
        """Run `action` on the worker thread before its next batch (a live reload uses it)."""
        with self._between_lock:
            self._between.append(action)

    def _run_between_batches(self) -> None:
        with self._between_lock:
            actions, self._between = self._between, []
        for action in actions:
            try:
                action()
            except Exception:  # noqa: BLE001 - a failed reload step must not end the worker
                log.exception("applying a configuration change on the pipeline worker failed")
                self.counters.add("pipeline_errors")

    def process(self, items: list[InboxItem]) -> None:
        """Handle one batch of inbox items in order."""
        pending: list[Window] = []
        to_ack: list[InboxItem] = []
        for item in items:
            if item.kind == "label":
                self._diagnose_and_ack(pending, to_ack)
                pending, to_ack = [], []
                self._handle_label(item)
                self._ack(item)
                continue
            pending.extend(self._handle_signal(item))
            to_ack.append(item)
            if len(pending) >= self.settings.max_batch:
                self._diagnose_and_ack(pending, to_ack)
                pending, to_ack = [], []
        self._diagnose_and_ack(pending, to_ack)

    # Signals

    def stream_key(self, fields: dict[str, str]) -> str:
        """Name a stream by its topic fields in signal-template order, e.g. "line1/pump-3"."""
        order = PLACEHOLDER.findall(self.settings.signal_topic)
        key = "/".join(fields[name] for name in order if name in fields)
        self._stream_fields.setdefault(key, fields)
        return key

    def _reject(self, topic: str, reason: str, message: str) -> None:
        self.counters.add("messages_rejected")
        self.rejections.record(topic, reason, message)

    def _handle_signal(self, item: InboxItem) -> list[Window]:
        message = item.message
        fields = parse_topic(self.settings.signal_topic, message.topic)
        if fields is None:
            self._reject(message.topic, "topic", f"topic {message.topic} does not match {self.settings.signal_topic}")
            return []
        if len(message.payload) > self.settings.max_payload_bytes:
            self._reject(
                message.topic, "too_large",
                f"payload of {len(message.payload)} bytes exceeds limits.max_payload_bytes "
                f"({self.settings.max_payload_bytes}); send smaller chunks",
            )
            return []
        try:
            chunk = decode_signal(message.payload, max_samples=self.settings.max_payload_bytes // 4)
            windows = self.assembler.push(self.stream_key(fields), chunk, received=item.received)
        except PayloadError as exc:
            self._reject(message.topic, exc.reason, str(exc))
            return []
        self.counters.add("chunks_received")
        self.counters.add("windows_assembled", len(windows))
        return windows

    # Labels

    def _handle_label(self, item: InboxItem) -> None:
        message = item.message
        fields = parse_topic(self.settings.label_topic, message.topic)
        if fields is None:
            self._reject(message.topic, "topic", f"topic {message.topic} does not match {self.settings.label_topic}")
            return
        try:
            event = decode_label(message.payload)
        except PayloadError as exc:
            self._reject(message.topic, exc.reason, str(exc))
            return

        stream = self.stream_key(fields)
        windows = self.assembler.windows_in_range(stream, event.start, event.end)
        try:
            result = self.buffer.add_label(stream, event, windows)
        except StorageError:
            # Not acknowledged by a crash-free path either: re-raise so the batch
            # handler logs it, and the broker redelivers the label after a restart.
            self.counters.add("storage_errors")
            raise

        if result.already_applied:
            self.counters.add("labels_duplicate")
            log.info("label %r for %s [%.3f, %.3f] was already applied; ignored", event.label, stream, event.start, event.end)
            return
        if not windows:
            # Not stored either, so the same label sent again once the data is there applies.
            self.counters.add("labels_without_windows")
            log.warning(
                "label %r for %s [%.3f, %.3f] covers no retained window, so nothing was learned; "
                "send labels within window.retain_s of the data and at least one window long",
                event.label, stream, event.start, event.end,
            )
            self._on_support_changed()
            return
        self.counters.add("labels_applied")
        self.counters.add("support_examples_added", result.added)
        log.info(
            "label %r for %s applied: %d windows added, %d evicted",
            event.label, stream, result.added, result.evicted,
        )
        self.refresh_support()

    def refresh_support(self) -> None:
        """Rebuild the prototypes from the buffer's classes that have enough examples."""
        support = {
            name: examples
            for name, examples in self.buffer.support().items()
            if len(examples) >= self.settings.n_shot_min
        }
        if not support:
            log.info("no class has %d support examples yet; waiting for labels", self.settings.n_shot_min)
            self._on_support_changed()
            return
        started = time.perf_counter()
        self.classifier.set_support(support)
        version = self.classifier.model_version
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        log.info("model %s active: %d classes, prototypes in %.1f ms", version, len(support), elapsed_ms)
        self._on_support_changed()

    # Diagnoses

    def _not_ready_reason(self) -> str | None:
        counts = self.buffer.counts()
        ready = [name for name, n in counts.items() if n >= self.settings.n_shot_min]
        if len(ready) >= 2 and len(self.classifier.classes) >= 2:
            return None
        have = ", ".join(f"{name} ({n})" for name, n in sorted(counts.items())) or "none"
        return (
            f"need at least 2 classes with >= {self.settings.n_shot_min} support examples; "
            f"have: {have}; publish labels on {self.settings.label_topic}"
        )

    def _diagnose_and_ack(self, windows: list[Window], items: list[InboxItem]) -> None:
        if windows:
            self._diagnose(windows)
        # NOTE: a chunk is acknowledged once the windows it completed are handed over,
        # but samples of an unfinished window and the windows kept for late labels live
        # only in memory. A crash loses them unless chunks line up with windows.
        for item in items:
            self._ack(item)

    def _diagnose(self, windows: list[Window]) -> None:
        reason = self._not_ready_reason()
        model_version = self.classifier.model_version
        if reason is None:
            batch = np.stack([w.samples for w in windows])
            predictions = self.classifier.predict(batch)
        else:
            predictions = [None] * len(windows)
        outbound = []
        for window, prediction in zip(windows, predictions):
            now = time.monotonic()
            diagnosis = Diagnosis(
                ts=time.time(),
                window_start=window.start_ts,
                window_end=window.end_ts,
                label=prediction.label if prediction else None,
                confidence=prediction.confidence if prediction else None,
                scores=prediction.scores if prediction else {},
                model_version=model_version,
                latency_ms=(now - window.received) * 1000.0,
                seq=window.seq_last,
                reason=reason,
            )
            fields = self._stream_fields[window.stream]
            topic = format_topic(self.settings.diagnosis_topic, **fields)
            outbound.append(OutboundMessage(topic, diagnosis.to_json(), self.settings.qos, f"{topic} {window.start_ts!r}"))
        self._publish(outbound)
        self.counters.add("diagnoses_published", len(windows))
        self.counters.add("inference_batches")
