"""A live view of a running line: what the agent diagnoses, learns and rejects.

`LiveMonitor` is its own MQTT client. It subscribes to the diagnosis topics and the
agent's retained status, so it watches any agent without hooks into it. Given the
line's plan (`set_plan`), it also scores each diagnosis against the truth. On a terminal it
draws a table with rich that refreshes a few times a second; otherwise it logs one
plain line every `log_interval_s`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edge_agent.errors import EdgeAgentError
from edge_agent.line import LinePlan
from edge_agent.payloads import Diagnosis
from edge_agent.replay import ReplayTopics, parse_broker_url
from edge_agent.topics import format_topic, parse_topic, topic_filter
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport, Subscription

log = logging.getLogger(__name__)

# Rolling accuracy and stream rates look back this far.
ROLLING_WINDOWS = 200
RATE_WINDOW_S = 5.0


class LiveMonitor:
    """Collect diagnoses and status from the broker and show them as they arrive."""

    def __init__(
        self,
        broker_url: str,
        *,
        agent_id: str,
        protocol: str = "5",
        topics: ReplayTopics = ReplayTopics(),
        stream: TextIO | None = None,
        log_interval_s: float = 5.0,
        title: str = "edge-agent",
    ) -> None:
        host, port = parse_broker_url(broker_url)
        self.title = title
        self._topics = topics
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty()
        self._log_interval_s = log_interval_s
        self._lock = threading.Lock()
        self._truth: dict[tuple[str, int], str] = {}
        self._fs = 12000.0
        self._recent_correct: deque[bool] = deque(maxlen=ROLLING_WINDOWS)
        self._arrivals: dict[str, deque[float]] = {}
        self._latest: deque[tuple[str, Diagnosis, str | None]] = deque(maxlen=6)
        self.diagnoses = 0
        self.scored = 0
        self.correct = 0
        self.status: dict[str, Any] = {}
        self.notes: deque[str] = deque(maxlen=4)
        self._status_topic = format_topic(topics.status, agent_id=agent_id)
        self._transport = MqttTransport(
            BrokerSettings(host=host, port=port, client_id=f"edge-agent-live-{os.getpid()}", protocol=protocol),
            subscriptions=[Subscription(topic_filter(topics.diagnosis), 0), Subscription(self._status_topic, 1)],
            on_message=self._on_message,
        )
        self._live: Live | None = None
        self._stop = threading.Event()
        self._printer: threading.Thread | None = None

    # Input

    def set_plan(self, plan: LinePlan) -> None:
        """Score later diagnoses against `plan`'s scored windows."""
        truth = {(w.asset, int(round(w.start_ts * plan.fs))): w.label for w in plan.scored}
        with self._lock:
            self._truth = truth
            self._fs = plan.fs

    def note(self, text: str) -> None:
        """Show one event (a label published, say) under the table, or log it."""
        with self._lock:
            self.notes.append(text)
        if not self._interactive:
            print(f"[live] {text}", file=self._stream, flush=True)

    def _on_message(self, message: InboundMessage) -> None:
        self._transport.ack(message.ack_token, message.qos)
        if message.topic == self._status_topic:
            try:
                record = json.loads(message.payload)
            except (ValueError, UnicodeDecodeError):
                return
            if isinstance(record, dict):
                with self._lock:
                    self.status = record
            return
        fields = parse_topic(self._topics.diagnosis, message.topic)
        if fields is None:
            return
        try:
            diagnosis = Diagnosis.from_json(message.payload)
        except (ValueError, KeyError, TypeError, EdgeAgentError):
            return
        asset = fields.get("asset", "?")
        now = time.monotonic()
        with self._lock:
            self.diagnoses += 1
            self._arrivals.setdefault(asset, deque()).append(now)
            truth = self._truth.get((asset, int(round(diagnosis.window_start * self._fs))))
            if truth is not None:
                self.scored += 1
                self.correct += diagnosis.label == truth
                self._recent_correct.append(diagnosis.label == truth)
            self._latest.appendleft((asset, diagnosis, truth))

    # Output

    def rolling_accuracy(self) -> float | None:
        with self._lock:
            if not self._recent_correct:
                return None
            return sum(self._recent_correct) / len(self._recent_correct)

    def _rates(self) -> dict[str, float]:
        cutoff = time.monotonic() - RATE_WINDOW_S
        rates = {}
        for asset, arrivals in self._arrivals.items():
            while arrivals and arrivals[0] < cutoff:
                arrivals.popleft()
            rates[asset] = len(arrivals) / RATE_WINDOW_S
        return rates

    def render(self) -> Group:
        """Build the live view: line, model, support, latest diagnoses, rejections."""
        with self._lock:
            status = dict(self.status)
            rates = self._rates()
            latest = list(self._latest)
            notes = list(self.notes)
            recent = list(self._recent_correct)
        model = status.get("model", {})
        counters = status.get("counters", {})
        accuracy = f"{sum(recent) / len(recent):.3f} over the last {len(recent)}" if recent else "-"

        summary = Table.grid(padding=(0, 2))
        summary.add_row("agent", f"{status.get('agent_id', '?')} ({status.get('state', 'waiting')})")
        summary.add_row("model", f"version {model.get('model_version', '-')}, {model.get('algorithm', '-')} on {model.get('device', '-')}")
        summary.add_row("rolling accuracy", accuracy)
        summary.add_row("diagnoses", f"{self.diagnoses} received, {self.scored} scored")
        rejected = status.get("rejected", {})
        summary.add_row(
            "rejected messages",
            f"{counters.get('messages_rejected', 0)}" + (f" ({', '.join(f'{k}: {v}' for k, v in rejected.items())})" if rejected else ""),
        )

        streams = Table(box=None)
        streams.add_column("asset")
        streams.add_column("windows/s", justify="right")
        for asset in sorted(rates):
            streams.add_row(asset, f"{rates[asset]:.1f}")

        support = Table(box=None)
        support.add_column("class")
        support.add_column("support windows", justify="right")
        ready = set(status.get("ready_classes", []))
        for name, count in sorted(status.get("classes", {}).items()):
            support.add_row(name, f"{count}" + ("" if name in ready else " (not ready)"))

        diagnoses = Table(title="latest diagnoses", title_justify="left", box=None)
        for column in ("asset", "label", "confidence", "truth"):
            diagnoses.add_column(column)
        for asset, diagnosis, truth in latest:
            style = ""
            if truth is not None:
                style = "green" if diagnosis.label == truth else "red"
            confidence = "-" if diagnosis.confidence is None else f"{diagnosis.confidence:.2f}"
            diagnoses.add_row(asset, diagnosis.label or "(none)", confidence, truth or "-", style=style)

        row = Table.grid(padding=(0, 4))
        row.add_row(streams, support)
        parts: list[Any] = [Text(self.title, style="bold"), summary, row, diagnoses]
        parts += [Text(note, style="dim") for note in notes]
        return Group(*parts)

    def _summary_line(self) -> str:
        with self._lock:
            status = dict(self.status)
            rates = self._rates()
        accuracy = self.rolling_accuracy()
        classes = status.get("classes", {})
        return (
            f"[live] diagnoses {self.diagnoses}, rolling accuracy "
            f"{'-' if accuracy is None else f'{accuracy:.3f}'}, "
            f"{sum(rates.values()):.0f} windows/s over {len(rates)} assets, "
            f"model version {status.get('model', {}).get('model_version', '-')}, "
            f"{len(classes)} classes with {sum(classes.values())} support windows, "
            f"{status.get('counters', {}).get('messages_rejected', 0)} messages rejected"
        )

    # Lifecycle

    def start(self) -> None:
        self._transport.start()
        if self._interactive:
            self._live = Live(self.render(), console=Console(file=self._stream), refresh_per_second=4, transient=False)
            self._live.start()
            self._printer = threading.Thread(target=self._refresh_live, name="live-view", daemon=True)
        else:
            self._printer = threading.Thread(target=self._print_lines, name="live-log", daemon=True)
        self._printer.start()

    def _refresh_live(self) -> None:
        while not self._stop.wait(0.25):
            if self._live is not None:
                self._live.update(self.render())

    def _print_lines(self) -> None:
        while not self._stop.wait(self._log_interval_s):
            print(self._summary_line(), file=self._stream, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._printer is not None:
            self._printer.join(2.0)
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None
        self._transport.stop()

    def __enter__(self) -> "LiveMonitor":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
