"""Fine-tuning on the box, the leave-out check, the adaptation worker and the model store."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_agent.adaptation import (
    AdaptationSettings,
    FineTunedClassifier,
    SupportSet,
    adapt,
    fine_tune,
    fold_masks,
    prototype_head,
)
from edge_agent.adaptation_worker import AdaptationWorker
from edge_agent.classifier import FewShotClassifier
from edge_agent.cli import main as cli_main
from edge_agent.counters import Counters
from edge_agent.errors import AdaptationError, CheckpointError
from edge_agent.features import LOG_SPECTRUM_V1, log_spectrum
from edge_agent.model import EmbeddingNet
from edge_agent.model_store import BASE_VERSION, ModelStore
from edge_agent.protonet import prototypes

FS = 12_000.0
SIZE = 256
TONES_HZ = {"a": 500.0, "b": 1500.0, "c": 3000.0, "d": 4500.0}
METADATA = {
    "window_size": SIZE,
    "input_transform": LOG_SPECTRUM_V1,
    "sample_rate_hz": FS,
    "classes": ["x", "y"],
    "algorithm": "protonet",
    "architecture": {"channels": [8, 16], "embedding_dim": 16},
    "weights_sha256": "0" * 64,
}
CPU = torch.device("cpu")


def tone_windows(frequency_hz: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(SIZE) / FS
    phases = rng.uniform(0, 2 * np.pi, size=(n, 1))
    return (np.sin(2 * np.pi * frequency_hz * t + phases) + 0.3 * rng.standard_normal((n, SIZE))).astype(np.float32)


def tone_support(n_shot: int = 5, seed: int = 0, classes: str = "abcd") -> dict[str, np.ndarray]:
    return {name: tone_windows(TONES_HZ[name], n_shot, seed + i) for i, name in enumerate(classes)}


def base_model() -> EmbeddingNet:
    torch.manual_seed(0)
    return EmbeddingNet(channels=(8, 16), embedding_dim=16).eval()


class FakeBuffer:
    def __init__(self, support: dict[str, np.ndarray]) -> None:
        self.data = support

    def support(self) -> dict[str, np.ndarray]:
        return dict(self.data)


class FakePipeline:
    """Runs between-batch actions at once, as the pipeline thread would before its next batch."""

    def __init__(self, classifier: object, buffer: FakeBuffer) -> None:
        self.classifier = classifier
        self.buffer = buffer
        self.installed: list[str] = []

    def call_between_batches(self, action) -> None:
        action()

    def refresh_support(self) -> None:
        self.classifier.set_support(self.buffer.support())
        self.installed.append(self.classifier.model_version)


def make_worker(tmp_path: Path, support: dict[str, np.ndarray], **settings: float) -> tuple[AdaptationWorker, FakePipeline]:
    buffer = FakeBuffer(support)
    worker = AdaptationWorker(
        base_model=base_model(),
        base_metadata=METADATA,
        device=CPU,
        store=ModelStore(tmp_path, keep_versions=2),
        buffer=buffer,
        settings=AdaptationSettings(**settings),
        debounce_s=0.0,
        n_shot_min=1,
        counters=Counters(),
    )
    pipeline = FakePipeline(worker.initial_classifier, buffer)
    worker._pipeline = pipeline
    return worker, pipeline


# Fine-tuning


def test_prototype_head_matches_protonet() -> None:
    model = base_model()
    support = tone_support()
    stacked = SupportSet.from_mapping(support, SIZE)
    with torch.no_grad():
        embeddings = model(log_spectrum(torch.as_tensor(stacked.windows)))
        weight, bias = prototype_head(prototypes(embeddings, torch.as_tensor(stacked.labels), 4))
    head = FineTunedClassifier(
        model, METADATA, CPU, version="v1", classes=stacked.classes,
        head_weight=weight, head_bias=bias, support_fingerprint=stacked.fingerprint,
    )
    protonet = FewShotClassifier(model, METADATA, CPU)
    protonet.set_support(support)

    queries = np.concatenate([tone_windows(f, 3, 100) for f in TONES_HZ.values()])
    for ours, theirs in zip(head.predict(queries), protonet.predict(queries)):
        assert ours.label == theirs.label
        for name in TONES_HZ:
            assert ours.scores[name] == pytest.approx(theirs.scores[name], abs=1e-4)


def test_fine_tune_lowers_support_loss() -> None:
    model = base_model()
    stacked = SupportSet.from_mapping(tone_support(), SIZE)
    inputs = log_spectrum(torch.as_tensor(stacked.windows))
    labels = torch.as_tensor(stacked.labels)
    with torch.no_grad():
        weight, bias = prototype_head(prototypes(model(inputs), labels, 4))
        before = F.cross_entropy(F.linear(model(inputs), weight, bias), labels).item()

    embedding, weight, bias = fine_tune(model, inputs, labels, 4, AdaptationSettings(steps=10, inner_lr=1e-3))
    with torch.no_grad():
        after = F.cross_entropy(F.linear(embedding(inputs), weight, bias), labels).item()
    assert after < before * 0.9


def test_fine_tune_leaves_base_unchanged() -> None:
    model = base_model()
    original = {key: value.clone() for key, value in model.state_dict().items()}
    stacked = SupportSet.from_mapping(tone_support(), SIZE)
    fine_tune(model, log_spectrum(torch.as_tensor(stacked.windows)), torch.as_tensor(stacked.labels), 4, AdaptationSettings(steps=3))
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_fine_tune_is_seeded() -> None:
    model = base_model()
    stacked = SupportSet.from_mapping(tone_support(), SIZE)
    inputs, labels = log_spectrum(torch.as_tensor(stacked.windows)), torch.as_tensor(stacked.labels)
    settings = AdaptationSettings(steps=3, seed=7)
    first = fine_tune(model, inputs, labels, 4, settings)
    second = fine_tune(model, inputs, labels, 4, settings)
    assert torch.equal(first[1], second[1])


def test_fold_masks_stratified() -> None:
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    masks = fold_masks(labels, 3)
    assert len(masks) == 3
    held_out = np.sum(masks, axis=0)
    assert held_out.tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    assert masks[2].tolist() == [False, False, True, False, False, False, False, False]


def test_support_set_rejects_bad_shape() -> None:
    with pytest.raises(AdaptationError, match=r"shape \(k, 256\)"):
        SupportSet.from_mapping({"a": np.zeros((2, 100), dtype=np.float32)}, SIZE)


def test_adapt_needs_two_classes() -> None:
    model = base_model()
    stacked = SupportSet.from_mapping(tone_support(classes="a"), SIZE)
    with pytest.raises(AdaptationError, match="at least 2 classes"):
        adapt(model, model, stacked, log_spectrum, AdaptationSettings(steps=1), CPU)


def test_leave_out_rejects_diverged_candidate() -> None:
    model = base_model()
    stacked = SupportSet.from_mapping(tone_support(), SIZE)
    good = adapt(model, model, stacked, log_spectrum, AdaptationSettings(steps=5, inner_lr=1e-3), CPU)
    bad = adapt(model, model, stacked, log_spectrum, AdaptationSettings(steps=20, inner_lr=3.0), CPU)
    assert good.check.current_accuracy == 1.0
    assert good.check.accepted
    assert bad.check.candidate_accuracy < bad.check.current_accuracy
    assert not bad.check.accepted
    assert bad.check.n_held_out == 20


def test_fine_tuned_set_support_keeps_trained_head() -> None:
    model = base_model()
    stacked = SupportSet.from_mapping(tone_support(), SIZE)
    candidate = adapt(model, model, stacked, log_spectrum, AdaptationSettings(steps=2), CPU)
    classifier = FineTunedClassifier(
        candidate.embedding, METADATA, CPU, version="v4", classes=stacked.classes,
        head_weight=candidate.head_weight, head_bias=candidate.head_bias, support_fingerprint=stacked.fingerprint,
    )
    classifier.set_support(tone_support())
    assert classifier.model_version == "v4"
    classifier.set_support(tone_support(classes="abc"))
    assert classifier.model_version == "v4-p1"
    assert classifier.classes == ["a", "b", "c"]


# Worker


def test_worker_accepts_and_stores_version(tmp_path: Path) -> None:
    worker, pipeline = make_worker(tmp_path, tone_support(), steps=5, inner_lr=1e-3)
    assert worker.adapt_once() == "accepted"
    assert pipeline.classifier.model_version == "v1"
    assert worker.store.active_version() == "v1"
    assert worker.counters.get("adaptations_accepted") == 1
    record = worker.store.record("v1")
    assert record.parent == BASE_VERSION
    assert record.classes == {"a": 5, "b": 5, "c": 5, "d": 5}
    assert record.leave_out["candidate_accuracy"] >= record.leave_out["current_accuracy"]
    # The same support set is not adapted to twice.
    assert worker.adapt_once() == "skipped"


def test_worker_rejects_worse_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker, pipeline = make_worker(tmp_path, tone_support(), steps=20, inner_lr=3.0)
    with caplog.at_level(logging.WARNING, logger="edge_agent.adaptation_worker"):
        assert worker.adapt_once() == "rejected"
    assert worker.counters.get("adaptations_rejected") == 1
    assert worker.store.versions() == []
    assert worker.store.active_version() == BASE_VERSION
    assert isinstance(pipeline.classifier, FewShotClassifier)
    assert "candidate rejected: leave-out accuracy" in caplog.text
    assert worker.status()["last"]["result"] == "rejected"


def test_worker_survives_failed_adaptation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    worker, pipeline = make_worker(tmp_path, tone_support(), steps=2)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr("edge_agent.adaptation_worker.adapt", broken)
    with caplog.at_level(logging.ERROR, logger="edge_agent.adaptation_worker"):
        assert worker.adapt_once() == "failed"
    assert worker.counters.get("adaptations_failed") == 1
    assert "out of memory" in caplog.text
    assert isinstance(pipeline.classifier, FewShotClassifier)


def test_worker_thread_adapts_after_notify(tmp_path: Path) -> None:
    worker, pipeline = make_worker(tmp_path, tone_support(), steps=2, inner_lr=1e-3)
    worker.start(pipeline)
    try:
        worker.notify_support_changed()
        for _ in range(200):
            if worker.counters.get("adaptations_accepted"):
                break
            time.sleep(0.05)
    finally:
        worker.stop()
    assert worker.counters.get("adaptations_accepted") == 1
    assert pipeline.classifier.model_version == "v1"


# Model store


def accepted_versions(tmp_path: Path, count: int) -> AdaptationWorker:
    worker, _ = make_worker(tmp_path, tone_support(), steps=1, inner_lr=1e-4)
    for index in range(count):
        worker.buffer.data = tone_support(seed=10 * index)
        assert worker.adapt_once() == "accepted"
    return worker


def test_store_keeps_last_versions(tmp_path: Path) -> None:
    worker = accepted_versions(tmp_path, 3)
    assert [r.version for r in worker.store.versions()] == ["v2", "v3"]
    assert not (worker.store.dir / "v1.pt").exists()
    assert worker.store.record("v3").parent == "v2"


def test_store_falls_back_from_corrupt_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = accepted_versions(tmp_path, 2).store
    path = store.dir / "v2.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="edge_agent.model_store"):
        loaded = store.load_active_or_previous(CPU, base_sha256=METADATA["weights_sha256"])
    assert loaded is not None
    assert loaded.record.version == "v1"
    assert store.active_version() == "v1"
    assert "v2" in caplog.text
    assert "corrupt" in caplog.text


def test_store_serves_base_when_all_corrupt(tmp_path: Path) -> None:
    store = accepted_versions(tmp_path, 1).store
    (store.dir / "v1.pt").write_bytes(b"garbage")
    assert store.load_active_or_previous(CPU) is None
    assert store.active_version() == BASE_VERSION


def test_store_skips_version_of_other_base(tmp_path: Path) -> None:
    store = accepted_versions(tmp_path, 1).store
    assert store.load_active_or_previous(CPU, base_sha256="f" * 64) is None


def test_worker_loads_active_version_at_start(tmp_path: Path) -> None:
    accepted_versions(tmp_path, 1)
    worker, pipeline = make_worker(tmp_path, tone_support(seed=0))
    assert worker.active_version == "v1"
    assert pipeline.classifier.model_version == "v1"
    assert worker.adapt_once() == "skipped"


def test_rollback_unknown_version_rejected(tmp_path: Path) -> None:
    store = accepted_versions(tmp_path, 1).store
    with pytest.raises(CheckpointError, match="'v9' not found.*known versions: base, v1"):
        store.request_rollback("v9")


# The `model` command against a running worker


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(f"storage:\n  dir: {tmp_path}\n  keep_versions: 2\n", encoding="utf-8")
    return path


def test_cli_rollback_applied_by_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    worker = accepted_versions(tmp_path, 2)
    pipeline = worker._pipeline
    worker.start(pipeline)
    try:
        code = cli_main(["model", "rollback", "v1", "--config", str(write_config(tmp_path))])
    finally:
        worker.stop()
    output = capsys.readouterr().out
    assert code == 0
    assert "model v1 active: rolled back from v2 to v1" in output
    # v1 was fine-tuned on an older support set, so the buffer's prototypes replace its head.
    assert pipeline.classifier.model_version == "v1-p1"
    assert worker.store.active_version() == "v1"
    assert worker.counters.get("rollbacks") == 1
    # The rollback is not undone by a fine-tuning run on the same support set.
    assert worker.adapt_once() == "skipped"


def test_cli_rollback_to_base(tmp_path: Path) -> None:
    worker = accepted_versions(tmp_path, 1)
    pipeline = worker._pipeline
    worker.start(pipeline)
    try:
        code = cli_main(["model", "rollback", "base", "--config", str(write_config(tmp_path))])
    finally:
        worker.stop()
    assert code == 0
    assert isinstance(pipeline.classifier, FewShotClassifier)
    assert worker.store.active_version() == BASE_VERSION


def test_cli_rollback_without_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accepted_versions(tmp_path, 2)
    code = cli_main(["model", "rollback", "v1", "--config", str(write_config(tmp_path)), "--wait-s", "0.3"])
    assert code == 3
    assert "applied when the agent starts" in capsys.readouterr().err
    cli_main(["model", "list", "--config", str(write_config(tmp_path))])
    assert "pending rollback to v1" in capsys.readouterr().out

    worker, pipeline = make_worker(tmp_path, tone_support())
    worker.poll_rollback()
    assert worker.active_version == "v1"
    assert worker.store.active_version() == "v1"


def test_cli_rollback_unknown_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accepted_versions(tmp_path, 1)
    code = cli_main(["model", "rollback", "v7", "--config", str(write_config(tmp_path))])
    assert code == 2
    assert "'v7' not found" in capsys.readouterr().err


def test_cli_rollback_of_corrupt_version_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    worker = accepted_versions(tmp_path, 2)
    (worker.store.dir / "v1.pt").write_bytes(b"garbage")
    worker.start(worker._pipeline)
    try:
        code = cli_main(["model", "rollback", "v1", "--config", str(write_config(tmp_path))])
    finally:
        worker.stop()
    assert code == 1
    assert "corrupt" in capsys.readouterr().err
    assert worker.store.active_version() == "v2"
    assert worker.counters.get("rollbacks_failed") == 1


def test_cli_list_marks_active(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accepted_versions(tmp_path, 2)
    code = cli_main(["model", "list", "--config", str(write_config(tmp_path))])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split() == ["VERSION", "CREATED", "(UTC)", "PARENT", "CLASSES", "SHOTS", "ACCURACY", "PARENT_ACCURACY"]
    assert lines[1].split() == ["base"]
    assert lines[2].split()[0] == "v1"
    assert lines[3].split()[:2] == ["*", "v2"]
    assert lines[3].split()[3:6] == ["v1", "4", "20"]
    assert lines[-1].startswith("active: v2")


def test_worker_survives_store_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker, pipeline = make_worker(tmp_path, tone_support(), steps=2, inner_lr=1e-3)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(worker.store, "save", full_disk)
    assert worker.adapt_once() == "failed"
    assert worker.counters.get("adaptations_failed") == 1
    assert isinstance(pipeline.classifier, FewShotClassifier)


def test_store_moves_corrupt_index_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = accepted_versions(tmp_path, 2).store
    store.index_path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="edge_agent.model_store"):
        assert store.load_active_or_previous(CPU) is None
    assert (store.dir / "index.json.corrupt").exists()
    assert "index.json" in caplog.text
    assert store.versions() == []

    worker, _ = make_worker(tmp_path, tone_support(seed=99), steps=1)
    assert worker.adapt_once() == "accepted"
    assert worker.active_version == "v3"


def test_worker_stop_cancels_run(tmp_path: Path) -> None:
    worker, _ = make_worker(tmp_path, tone_support(), steps=2)
    worker._stop.set()
    assert worker.adapt_once() == "cancelled"
    assert worker.counters.get("adaptations_failed") == 0
    assert worker.store.versions() == []


def test_pipeline_swaps_model_between_batches(tmp_path: Path) -> None:
    from test_pipeline import Harness

    harness = Harness(tmp_path)
    low = harness.signal("a1", "low", 4)
    high = harness.signal("a2", "high", 4)
    harness.label("a1", low[0], low[1], "low_tone")
    harness.label("a2", high[0], high[1], "high_tone")
    worker = AdaptationWorker(
        base_model=base_model(), base_metadata=METADATA, device=CPU, store=ModelStore(tmp_path),
        buffer=harness.buffer, settings=AdaptationSettings(steps=3, inner_lr=1e-3), debounce_s=0.0,
        n_shot_min=1, counters=Counters(),
    )
    worker._pipeline = harness.pipeline

    assert worker.adapt_once() == "accepted"
    # Queued for the pipeline thread: the batch in flight still uses the old model.
    assert isinstance(harness.pipeline.classifier, FewShotClassifier)

    stop = threading.Event()
    thread = threading.Thread(target=harness.pipeline.run, args=(stop,))
    thread.start()
    try:
        for _ in range(100):
            if harness.pipeline.classifier.model_version == "v1":
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
    assert harness.pipeline.classifier.model_version == "v1"

    harness.signal("a3", "high", 1)
    diagnosis = harness.diagnoses()[-1]
    assert diagnosis["model_version"] == "v1"
    assert diagnosis["label"] == "high_tone"
    harness.buffer.close()
