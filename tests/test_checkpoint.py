from __future__ import annotations

import os

import pytest
import torch

import edge_agent
from edge_agent.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from edge_agent.errors import CheckpointError
from edge_agent.model import EmbeddingNet

ARCHITECTURE = {"channels": [4, 8], "kernel_size": 3, "embedding_dim": 6}


def make_metadata(**overrides):
    metadata = {
        "window_size": 256,
        "input_transform": "log_spectrum_v1",
        "sample_rate_hz": 12000.0,
        "classes": ["ball_007", "normal"],
        "loads": [0, 1],
        "record_ids": ["97", "118", "119"],
        "seed": 3,
        "algorithm": "protonet",
        "hyperparameters": {"n_way": 2, "n_shot": 5, "lr": 0.001},
        "architecture": dict(ARCHITECTURE),
    }
    metadata.update(overrides)
    return metadata


@pytest.fixture
def model():
    torch.manual_seed(0)
    return EmbeddingNet(**ARCHITECTURE).eval()


@pytest.fixture
def saved(tmp_path, model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, make_metadata())
    return path


def rewrite_payload(path, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_round_trip_keeps_weights_and_metadata(saved, model):
    loaded, metadata = load_checkpoint(saved)

    inputs = torch.randn(3, 1, 129)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), model(inputs))
    assert not loaded.training
    assert metadata["classes"] == ["ball_007", "normal"]
    assert metadata["architecture"] == ARCHITECTURE
    assert metadata["package_version"] == edge_agent.__version__
    assert metadata["embedding_dim"] == 6
    assert metadata["weights_sha256"] == weights_sha256(model.state_dict())
    assert "created_utc" in metadata


def test_save_leaves_no_temporary_files(saved):
    assert sorted(os.listdir(saved.parent)) == ["model.pt"]


def test_save_replaces_existing_file(saved, model):
    with torch.no_grad():
        model.head.bias.add_(1.0)

    save_checkpoint(saved, model, make_metadata(seed=4))

    _, metadata = load_checkpoint(saved)
    assert metadata["seed"] == 4
    assert metadata["weights_sha256"] == weights_sha256(model.state_dict())


def test_weights_hash_is_stable_and_sensitive(model):
    first = weights_sha256(model.state_dict())
    same = weights_sha256({key: value.clone() for key, value in model.state_dict().items()})
    with torch.no_grad():
        model.head.weight[0, 0] += 1e-6
    changed = weights_sha256(model.state_dict())

    assert first == same
    assert first != changed
    assert len(first) == 64


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.pt not found\. Re-run `edge-agent meta-train` or restore"):
        load_checkpoint(tmp_path / "absent.pt")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match=r"model\.pt is truncated or corrupt .*Re-run `edge-agent meta-train`"):
        load_checkpoint(saved)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00not a checkpoint" * 10)

    with pytest.raises(CheckpointError, match=r"garbage\.pt is truncated or corrupt"):
        load_checkpoint(path)


def test_wrong_weights_hash(saved):
    def perturb(payload):
        payload["state_dict"]["head.bias"] += 1.0

    rewrite_payload(saved, perturb)

    with pytest.raises(CheckpointError, match=r"model\.pt is corrupt: its weights hash to [0-9a-f]{12}\.\.\., but the metadata"):
        load_checkpoint(saved)


def test_unknown_input_transform(tmp_path, model):
    path = tmp_path / "future.pt"
    save_checkpoint(path, model, make_metadata(input_transform="log_spectrum_v9"))

    with pytest.raises(CheckpointError, match=r"needs input transform 'log_spectrum_v9'.*known: log_spectrum_v1"):
        load_checkpoint(path)


def test_unknown_algorithm(tmp_path, model):
    path = tmp_path / "relation.pt"
    save_checkpoint(path, model, make_metadata(algorithm="relation"))

    with pytest.raises(
        CheckpointError, match=r"trained with algorithm 'relation', but this version supports protonet, reptile, maml, fomaml"
    ):
        load_checkpoint(path)


def test_newer_format_version(saved):
    rewrite_payload(saved, lambda payload: payload.update(format_version=99))

    with pytest.raises(CheckpointError, match=r"has format version 99, but edge-agent .* reads version 1"):
        load_checkpoint(saved)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)

    with pytest.raises(CheckpointError, match=r"weights\.pt is not an edge-agent checkpoint"):
        load_checkpoint(path)


def test_missing_metadata_key(saved):
    rewrite_payload(saved, lambda payload: payload["metadata"].pop("window_size"))

    with pytest.raises(CheckpointError, match=r"lacks the metadata keys \['window_size'\]"):
        load_checkpoint(saved)


def test_architecture_mismatch(saved):
    def widen(payload):
        payload["metadata"]["architecture"]["embedding_dim"] = 7

    rewrite_payload(saved, widen)

    with pytest.raises(CheckpointError, match=r"does not fit this version's EmbeddingNet"):
        load_checkpoint(saved)


def test_save_rejects_incomplete_metadata(tmp_path, model):
    metadata = make_metadata()
    del metadata["classes"]

    with pytest.raises(ValueError, match=r"checkpoint metadata lacks the keys \['classes'\]"):
        save_checkpoint(tmp_path / "model.pt", model, metadata)


def test_save_rejects_non_plain_metadata(tmp_path, model):
    metadata = make_metadata(hyperparameters={"lr": torch.tensor(0.1)})

    with pytest.raises(ValueError, match=r"metadata\['hyperparameters'\]\['lr'\] must be a plain type, got Tensor"):
        save_checkpoint(tmp_path / "model.pt", model, metadata)
    assert not (tmp_path / "model.pt").exists()
