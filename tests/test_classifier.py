from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from edge_agent.classifier import FewShotClassifier, Prediction, resolve_device
from edge_agent.errors import AdaptationError
from edge_agent.model import EmbeddingNet

WINDOW_SIZE = 256
METADATA = {"window_size": WINDOW_SIZE, "input_transform": "log_spectrum_v1", "weights_sha256": "abcdef0123456789"}


def tone_windows(frequency: float, count: int, seed: int) -> np.ndarray:
    """Windows of a tone at `frequency` (cycles per sample) with random phase and noise."""
    rng = np.random.default_rng(seed)
    sample_index = np.arange(WINDOW_SIZE)
    phases = rng.uniform(0, 2 * np.pi, size=(count, 1))
    noise = 0.05 * rng.standard_normal((count, WINDOW_SIZE))
    return (np.sin(2 * np.pi * frequency * sample_index + phases) + noise).astype(np.float32)


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    model = EmbeddingNet(channels=(4, 8), kernel_size=3, embedding_dim=8)
    return FewShotClassifier(model, METADATA, "cpu")


def test_predict_before_support(classifier):
    predictions = classifier.predict(tone_windows(0.05, 2, seed=0))

    assert predictions == [Prediction(None, 0.0, {}), Prediction(None, 0.0, {})]
    assert classifier.classes == []
    assert classifier.model_version == "abcdef01-p0"


def test_set_support_versions_and_classes(classifier):
    support = {"low": tone_windows(0.02, 5, seed=1), "high": tone_windows(0.3, 5, seed=2)}

    assert classifier.set_support(support) == 1
    assert classifier.classes == ["low", "high"]
    assert classifier.model_version == "abcdef01-p1"
    assert classifier.set_support({"only": tone_windows(0.1, 1, seed=3)}) == 2
    assert classifier.classes == ["only"]
    assert classifier.support_version == 2


def test_predict_separates_tones(classifier):
    classifier.set_support({"low": tone_windows(0.02, 5, seed=1), "high": tone_windows(0.3, 5, seed=2)})
    queries = np.concatenate([tone_windows(0.02, 4, seed=10), tone_windows(0.3, 4, seed=11)])

    predictions = classifier.predict(queries)

    assert [p.label for p in predictions] == ["low"] * 4 + ["high"] * 4
    for prediction in predictions:
        assert set(prediction.scores) == {"low", "high"}
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert prediction.confidence == max(prediction.scores.values())


def test_predict_pinned_scores(classifier):
    classifier.set_support({"low": tone_windows(0.02, 5, seed=1), "high": tone_windows(0.3, 5, seed=2)})

    (prediction,) = classifier.predict(tone_windows(0.1, 1, seed=12))

    assert prediction.label == PINNED_LABEL
    assert prediction.scores["low"] == pytest.approx(PINNED_LOW_SCORE, abs=1e-6)


def test_min_confidence_withholds_label():
    torch.manual_seed(0)
    model = EmbeddingNet(channels=(4, 8), kernel_size=3, embedding_dim=8)
    classifier = FewShotClassifier(model, METADATA, "cpu", min_confidence=0.999999)
    same = tone_windows(0.1, 5, seed=1)
    classifier.set_support({"a": same, "b": same})

    (prediction,) = classifier.predict(tone_windows(0.1, 1, seed=2))

    assert prediction.label is None
    assert prediction.confidence == pytest.approx(0.5, abs=1e-6)


def test_empty_batch(classifier):
    classifier.set_support({"low": tone_windows(0.02, 2, seed=1)})

    assert classifier.predict(np.zeros((0, WINDOW_SIZE), dtype=np.float32)) == []


@pytest.mark.parametrize(
    ("support", "message"),
    [
        ({}, r"support set is empty"),
        ({"a": np.zeros((3, 100))}, r"class 'a' must have shape \(k, 256\) with k >= 1, got \(3, 100\)"),
        ({"a": np.zeros((0, 256))}, r"class 'a' must have shape \(k, 256\) with k >= 1, got \(0, 256\)"),
        ({"a": np.zeros(256)}, r"got \(256,\)"),
        ({"a": np.full((2, 256), np.nan)}, r"class 'a' contain NaN or infinite values"),
    ],
)
def test_set_support_rejects_invalid(classifier, support, message):
    classifier.set_support({"kept": tone_windows(0.02, 2, seed=1)})

    with pytest.raises(AdaptationError, match=message):
        classifier.set_support(support)
    assert classifier.classes == ["kept"]
    assert classifier.support_version == 1


def test_predict_rejects_wrong_shape(classifier):
    with pytest.raises(ValueError, match=r"windows must have shape \(B, 256\), got \(2, 128\)"):
        classifier.predict(np.zeros((2, 128)))


def test_min_confidence_range():
    with pytest.raises(ValueError, match=r"min_confidence must be between 0 and 1, got 2"):
        FewShotClassifier(EmbeddingNet(), METADATA, "cpu", min_confidence=2)


def test_concurrent_support_and_predict(classifier):
    support_sets = [
        {"low": tone_windows(0.02, 3, seed=1), "high": tone_windows(0.3, 3, seed=2)},
        {"x": tone_windows(0.1, 3, seed=3), "y": tone_windows(0.2, 3, seed=4), "z": tone_windows(0.4, 3, seed=5)},
    ]
    allowed = [set(s) for s in support_sets]
    classifier.set_support(support_sets[0])
    failures: list[str] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        queries = tone_windows(0.15, 8, seed=6)
        while not stop.is_set():
            for prediction in classifier.predict(queries):
                if set(prediction.scores) not in allowed:
                    failures.append(f"mixed classes {sorted(prediction.scores)}")

    reader = threading.Thread(target=keep_predicting)
    reader.start()
    for round_index in range(30):
        classifier.set_support(support_sets[round_index % 2])
    stop.set()
    reader.join(timeout=10)

    assert not reader.is_alive()
    assert failures == []
    assert classifier.support_version == 31


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_without_cuda():
    with pytest.raises(ValueError, match=r"device 'cuda' requested, but torch .* finds no CUDA device.*'cpu' or 'auto'"):
        resolve_device("cuda")


PINNED_LABEL = "low"
PINNED_LOW_SCORE = 0.5088552
