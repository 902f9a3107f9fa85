"""The pipeline worker with real windowing, task buffer and classifier, and a recorded publish."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.buffer import TaskBuffer
from edge_agent.classifier import FewShotClassifier
from edge_agent.counters import Counters, Rejections
from edge_agent.features import LOG_SPECTRUM_V1
from edge_agent.inbox import Inbox, InboxItem
from edge_agent.model import EmbeddingNet
from edge_agent.payloads import encode_signal_binary, encode_signal_json
from edge_agent.pipeline import Pipeline, PipelineSettings
from edge_agent.transport import InboundMessage
from edge_agent.windowing import WindowAssembler

FS = 12_000.0
SIZE = 256
T0 = 1_700_000_000.0
TONES = {"low": 500.0, "high": 3000.0}


class Harness:
    def __init__(self, tmp_path: Path, *, n_shot_min: int = 1) -> None:
        torch.manual_seed(0)
        model = EmbeddingNet(channels=(8, 16), embedding_dim=16)
        metadata = {"window_size": SIZE, "input_transform": LOG_SPECTRUM_V1, "sample_rate_hz": FS}
        self.published: list[tuple[str, dict]] = []
        self.acked: list[InboxItem] = []
        self.counters = Counters()
        self.buffer = TaskBuffer(tmp_path / "buffer.sqlite3", max_shots_per_class=20)
        self.pipeline = Pipeline(
            PipelineSettings(
                signal_topic="plant/{line}/{asset}/vibration",
                label_topic="plant/{line}/{asset}/label",
                diagnosis_topic="plant/{line}/{asset}/diagnosis",
                qos=1, max_batch=8, n_shot_min=n_shot_min, max_payload_bytes=1 << 20,
            ),
            inbox=Inbox(100),
            assembler=WindowAssembler(SIZE, SIZE, FS, gap_tolerance_s=0.001, retain_s=600, max_resample_ratio=8),
            buffer=self.buffer,
            classifier=FewShotClassifier(model, metadata, "cpu"),
            publish=lambda messages: self.published.extend((m.topic, json.loads(m.payload)) for m in messages),
            ack=self.acked.append,
            counters=self.counters,
            rejections=Rejections(__import__("logging").getLogger("test")),
        )
        self.seq: dict[str, int] = {}
        self.ts: dict[str, float] = {}

    def signal(self, asset: str, tone: str, n_windows: int, *, binary: bool = True) -> tuple[float, float]:
        """Send n_windows windows of a tone on one asset; return their (start, end) in stream time."""
        start = self.ts.get(asset, T0)
        t = start + np.arange(n_windows * SIZE) / FS
        rng = np.random.default_rng(len(self.published))
        values = np.sin(2 * np.pi * TONES[tone] * t) + 0.05 * rng.standard_normal(len(t))
        seq = self.seq.get(asset, 0)
        encode = encode_signal_binary if binary else encode_signal_json
        payload = encode(start, FS, seq, values.astype(np.float32))
        self.seq[asset] = seq + 1
        self.ts[asset] = start + len(t) / FS
        self._process("signal", f"plant/l1/{asset}/vibration", payload)
        return start, self.ts[asset]

    def label(self, asset: str, start: float, end: float, name: str) -> None:
        payload = json.dumps({"start": start, "end": end, "label": name}).encode()
        self._process("label", f"plant/l1/{asset}/label", payload)

    def raw(self, topic: str, payload: bytes) -> None:
        self._process("signal", topic, payload)

    def _process(self, kind: str, topic: str, payload: bytes) -> None:
        message = InboundMessage(topic, payload, 1, False, (1, len(self.acked) + 1))
        self.pipeline.process([InboxItem(kind, message, time.monotonic())])

    def diagnoses(self) -> list[dict]:
        return [body for _topic, body in self.published]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    yield h
    h.buffer.close()


def test_no_label_before_two_classes(harness: Harness) -> None:
    harness.signal("a1", "low", 2)
    diagnoses = harness.diagnoses()
    assert len(diagnoses) == 2
    assert all(d["label"] is None for d in diagnoses)
    assert "need at least 2 classes" in diagnoses[0]["reason"]
    assert harness.published[0][0] == "plant/l1/a1/diagnosis"


def test_labels_teach_new_classes(harness: Harness) -> None:
    low = harness.signal("a1", "low", 3)
    high = harness.signal("a2", "high", 3)
    harness.label("a1", low[0], low[1], "low_tone")
    harness.label("a2", high[0], high[1], "high_tone")
    assert harness.buffer.counts() == {"low_tone": 3, "high_tone": 3}

    before = len(harness.published)
    harness.signal("a1", "high", 2)
    harness.signal("a2", "low", 2)
    later = harness.diagnoses()[before:]
    assert [d["label"] for d in later] == ["high_tone", "high_tone", "low_tone", "low_tone"]
    assert all(d["model_version"].endswith("-p2") for d in later)
    assert all(set(d["scores"]) == {"low_tone", "high_tone"} for d in later)


def test_json_and_binary_signals_agree(harness: Harness) -> None:
    harness.signal("a1", "low", 1, binary=False)
    harness.signal("a1", "low", 1, binary=True)
    assert harness.counters.get("windows_assembled") == 2


def test_redelivered_label_is_idempotent(harness: Harness) -> None:
    span = harness.signal("a1", "low", 3)
    harness.label("a1", span[0], span[1], "low_tone")
    harness.label("a1", span[0], span[1], "low_tone")
    assert harness.buffer.counts() == {"low_tone": 3}
    assert harness.counters.get("labels_applied") == 1
    assert harness.counters.get("labels_duplicate") == 1


def test_label_without_windows_is_counted(harness: Harness) -> None:
    harness.label("a9", T0, T0 + 1.0, "ghost")
    assert harness.counters.get("labels_without_windows") == 1
    assert harness.buffer.counts() == {}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("plant/l1/a1/vibration", b"not json", "unknown_magic"),
        ("plant/l1/a1/vibration", b"{not json", "not_json"),
        ("plant/l1/a1/vibration", b'{"ts": 1, "fs": 12000, "seq": 0, "values": [NaN]}', "non_finite"),
        ("plant/l1/a1/vibration", b'{"ts": 1, "fs": 1000, "seq": 0, "values": [1.0, 2.0]}', "sample_rate"),
        ("other/topic", b"{}", "topic"),
    ],
)
def test_bad_signal_rejected_and_counted(harness: Harness, topic: str, payload: bytes, reason: str) -> None:
    harness.raw(topic, payload)
    assert harness.counters.get("messages_rejected") == 1
    assert harness.pipeline.rejections.by_reason() == {reason: 1}
    assert harness.published == []
    harness.signal("a1", "low", 1)
    assert len(harness.published) == 1


def test_malformed_label_rejected(harness: Harness) -> None:
    harness._process("label", "plant/l1/a1/label", b'{"start": 5, "end": 1, "label": "x"}')
    assert harness.counters.get("messages_rejected") == 1
    assert harness.buffer.counts() == {}


def test_every_message_acknowledged_after_work(harness: Harness) -> None:
    span = harness.signal("a1", "low", 2)
    harness.label("a1", span[0], span[1], "low_tone")
    harness.raw("plant/l1/a1/vibration", b"garbage")
    assert len(harness.acked) == 3


def test_support_rebuilt_from_buffer_after_restart(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    low = first.signal("a1", "low", 3)
    high = first.signal("a2", "high", 3)
    first.label("a1", low[0], low[1], "low_tone")
    first.label("a2", high[0], high[1], "high_tone")
    first.buffer.close()

    second = Harness(tmp_path)
    second.pipeline.refresh_support()
    assert sorted(second.pipeline.classifier.classes) == ["high_tone", "low_tone"]
    second.signal("a3", "high", 1)
    assert second.diagnoses()[-1]["label"] == "high_tone"
    second.buffer.close()


def test_n_shot_min_holds_back_classes(tmp_path: Path) -> None:
    h = Harness(tmp_path, n_shot_min=3)
    low = h.signal("a1", "low", 3)
    high = h.signal("a2", "high", 2)
    h.label("a1", low[0], low[1], "low_tone")
    h.label("a2", high[0], high[1], "high_tone")
    h.signal("a1", "low", 1)
    last = h.diagnoses()[-1]
    assert last["label"] is None
    assert "high_tone (2)" in last["reason"]
    h.buffer.close()
