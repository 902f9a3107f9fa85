from __future__ import annotations

import numpy as np
import pytest

from edge_agent.checkpoint import load_checkpoint, save_checkpoint
from edge_agent.classifier import FewShotClassifier
from edge_agent.datasets import Recording, load_cwru
from edge_agent.splits import split_by_load, support_query_split
from edge_agent.training import evaluate_few_shot, meta_train

TINY = {"channels": [8, 16], "kernel_size": 5, "pool": 4, "embedding_dim": 16}
FAST = {
    "window_size": 256, "hop": 128, "n_way": 4, "n_shot": 3, "n_query": 5, "episodes": 40,
    "lr": 3e-3, "progress": False, "validate_every": 10, "validation_episodes": 5,
    "architecture": TINY,
}
# Tone frequencies in Hz per class; each load shifts them a little, like a change in shaft speed.
TONES_HZ = {"a": 500.0, "b": 1100.0, "c": 1900.0, "d": 2600.0, "e": 3400.0}


def tone_recording(label: str, load_hp: int, seed: int, seconds: float = 1.0) -> Recording:
    rng = np.random.default_rng(seed)
    time_s = np.arange(int(12000 * seconds)) / 12000.0
    frequency = TONES_HZ[label] * (1 - 0.01 * load_hp)
    signal = np.sin(2 * np.pi * frequency * time_s) + 0.3 * rng.standard_normal(time_s.shape)
    return Recording(f"{label}{load_hp}", label, load_hp, 1797.0 - 20 * load_hp, 12000.0, signal.astype(np.float32))


@pytest.fixture(scope="module")
def tone_recordings() -> list[Recording]:
    return [tone_recording(label, load, seed=10 * load + i) for i, label in enumerate(TONES_HZ) for load in range(3)]


@pytest.fixture(scope="module")
def trained(tone_recordings):
    train, _ = split_by_load(tone_recordings, [2])
    return meta_train(train, seed=0, **FAST)


def test_metadata_describes_training(trained):
    model, metadata = trained

    assert metadata["algorithm"] == "protonet"
    assert metadata["classes"] == ["a", "b", "c", "d", "e"]
    assert metadata["loads"] == [0, 1]
    assert metadata["record_ids"] == ["a0", "a1", "b0", "b1", "c0", "c1", "d0", "d1", "e0", "e1"]
    assert metadata["window_size"] == 256
    assert metadata["input_transform"] == "log_spectrum_v1"
    assert metadata["sample_rate_hz"] == 12000.0
    assert metadata["architecture"] == {"in_channels": 1, "pooled_length": 8, **TINY}
    assert metadata["hyperparameters"]["n_way"] == 4
    assert 1 <= metadata["training"]["best_episode"] <= metadata["training"]["episodes_run"] <= 40
    assert not model.training


def test_same_seed_same_weights(tone_recordings, trained, tmp_path):
    train, _ = split_by_load(tone_recordings, [2])
    again, _ = meta_train(train, seed=0, **FAST)
    other, _ = meta_train(train, seed=1, **FAST)

    first = save_checkpoint(tmp_path / "first.pt", trained[0], trained[1])["weights_sha256"]
    second = save_checkpoint(tmp_path / "second.pt", again, trained[1])["weights_sha256"]
    third = save_checkpoint(tmp_path / "third.pt", other, trained[1])["weights_sha256"]
    assert first == second
    assert first != third


def test_unseen_load_few_shot_accuracy(tone_recordings, trained):
    model, metadata = trained
    _, test = split_by_load(tone_recordings, [2])

    result = evaluate_few_shot(model, test, window_size=256, hop=128, n_shot=3, n_query=10, episodes=20)

    assert result.n_way == 5
    assert result.accuracy >= 0.9


def test_checkpoint_feeds_classifier(tone_recordings, trained, tmp_path):
    model, metadata = trained
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, metadata)
    loaded, loaded_metadata = load_checkpoint(path)
    classifier = FewShotClassifier(loaded, loaded_metadata, "cpu")
    _, test = split_by_load(tone_recordings, [2])

    support, queries, expected = {}, [], []
    for recording in test:
        support_windows, query_windows = support_query_split(recording.signal, 256, 128, n_support=3)
        support[recording.label] = support_windows.windows
        queries.append(query_windows.windows)
        expected += [recording.label] * len(query_windows)
    classifier.set_support(support)
    predicted = [p.label for p in classifier.predict(np.concatenate(queries))]

    accuracy = np.mean([p == e for p, e in zip(predicted, expected)])
    assert accuracy >= 0.9


def test_without_validation_runs_all_episodes(tone_recordings):
    settings = {**FAST, "episodes": 5}
    _, metadata = meta_train(tone_recordings, seed=0, validation=0.0, **settings)

    assert metadata["training"]["episodes_run"] == 5
    assert metadata["training"]["best_val_accuracy"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_shot": 0}, r"n_shot, n_query and episodes must be positive, got 0, 5, 40"),
        ({"validation": 1.0}, r"validation must be in \[0, 1\), got 1.0"),
        ({"window_size": 8}, r"window_size must be at least 16 and hop positive, got 8 and 128"),
        ({"n_shot": 200}, r"class 'a' has at most \d+ training windows per recording, but an episode needs 201"),
    ],
)
def test_rejects_invalid_settings(tone_recordings, overrides, message):
    with pytest.raises(ValueError, match=message):
        meta_train(tone_recordings, **{**FAST, **overrides})


def test_rejects_single_class(tone_recordings):
    only_a = [r for r in tone_recordings if r.label == "a"]

    with pytest.raises(ValueError, match=r"meta-training needs at least 2 classes, got \['a'\]"):
        meta_train(only_a, **FAST)


def test_evaluate_rejects_bad_n_way(tone_recordings, trained):
    with pytest.raises(ValueError, match=r"n_way must be between 2 and 5 classes, got 6"):
        evaluate_few_shot(trained[0], tone_recordings, window_size=256, hop=128, n_shot=1, n_way=6, episodes=1)


@pytest.mark.cwru
def test_cwru_cross_load_five_shot(cwru_dir):
    recordings = load_cwru(cwru_dir)
    train, test = split_by_load(recordings, [3])
    model, metadata = meta_train(train, window_size=2048, hop=1024, episodes=60, seed=0, progress=False)
    classifier = FewShotClassifier(model, metadata, "cpu")

    support, queries, expected = {}, [], []
    for recording in test:
        support_windows, query_windows = support_query_split(recording.signal, 2048, 1024, n_support=5)
        support[recording.label] = support_windows.windows
        queries.append(query_windows.windows)
        expected += [recording.label] * len(query_windows)
    classifier.set_support(support)
    predicted = [p.label for p in classifier.predict(np.concatenate(queries))]

    assert len(support) == 9
    accuracy = np.mean([p == e for p, e in zip(predicted, expected)])
    assert accuracy >= 0.95
