"""Saving and loading model checkpoints with their training metadata.

A checkpoint is one `torch.save` file holding a dict with the keys `format`,
`format_version`, `state_dict` (CPU tensors of an `EmbeddingNet`) and `metadata` (plain
Python types only, so `torch.load(weights_only=True)` can read it without unpickling
code). The metadata records what the weights need at inference time (window size, input
transform, sample rate, architecture) and where they came from (classes, loads and
records trained on, seed, algorithm and hyper-parameters, package version, creation time).
`weights_sha256` is a hash of the state_dict, checked on every load.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import edge_agent
from edge_agent.atomic import write_atomically
from edge_agent.errors import CheckpointError
from edge_agent.features import INPUT_TRANSFORMS
from edge_agent.model import EmbeddingNet

CHECKPOINT_FORMAT = "edge-agent-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
SUPPORTED_ALGORITHMS = ("protonet", "reptile", "maml", "fomaml")
REQUIRED_METADATA = (
    "window_size",
    "input_transform",
    "sample_rate_hz",
    "classes",
    "algorithm",
    "architecture",
)
_FIX_HINT = "Re-run `edge-agent meta-train` or restore the file from a backup."


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash a state_dict: key, dtype, shape and raw bytes of each tensor, in key order.

    The hash is the same for equal weights on CPU and CUDA and across save and load.
    """
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        cpu_tensor = tensor.detach().to("cpu").contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(str(cpu_tensor.dtype).encode("ascii"))
        digest.update(repr(tuple(cpu_tensor.shape)).encode("ascii"))
        digest.update(cpu_tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Meta-trained on simulated bearings only; used when model.checkpoint is null.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "data" / "sim_protonet.pt"


def save_checkpoint(path: str | Path, model: EmbeddingNet, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Write `model` and `metadata` to `path` atomically and return the stored metadata.

    The file is written to a temporary file in the same directory, flushed and fsynced,
    then renamed over `path`, and the directory is fsynced, so a crash leaves either the
    old or the new checkpoint. The stored metadata adds `weights_sha256`, `embedding_dim`,
    `package_version`, `format_version` and (when absent) `created_utc` to `metadata`.

    Raises ValueError when `metadata` lacks a required key or contains a value that is not a
    plain type (str, int, float, bool, None, list, tuple or dict with str keys).
    """
    path = Path(path)
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks the keys {missing}")
    _check_plain(metadata, "metadata")

    state_dict = {key: tensor.detach().to("cpu").clone() for key, tensor in model.state_dict().items()}
    stored = dict(metadata)
    stored.setdefault("created_utc", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    stored["package_version"] = edge_agent.__version__
    stored["format_version"] = CHECKPOINT_FORMAT_VERSION
    stored["embedding_dim"] = model.embedding_dim
    stored["weights_sha256"] = weights_sha256(state_dict)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "metadata": stored,
        "state_dict": state_dict,
    }

    _write_atomically(path, payload)
    return stored


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} must be a plain type, got {type(value).__name__}")


def _write_atomically(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[EmbeddingNet, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint` onto `device`.

    Returns the model in eval mode and its metadata. Raises CheckpointError when the file
    is missing, truncated or corrupt, is not an edge-agent checkpoint, was written by an
    incompatible version, names an unknown input transform or algorithm, or its weights do
    not match `weights_sha256`.
    """
    path = Path(path)
    payload = _read_payload(path, device)
    metadata = _check_metadata(path, payload)
    state_dict = payload["state_dict"]

    actual_sha = weights_sha256(state_dict)
    if actual_sha != metadata["weights_sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its weights hash to {actual_sha[:12]}..., "
            f"but the metadata records {str(metadata['weights_sha256'])[:12]}... {_FIX_HINT}"
        )

    try:
        model = EmbeddingNet(**metadata["architecture"])
        model.load_state_dict(state_dict)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this version's EmbeddingNet "
            f"(architecture {metadata['architecture']}): {exc}. {_FIX_HINT}"
        ) from exc
    model.to(device)
    model.eval()
    return model, metadata


def _read_payload(path: Path, device: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found. {_FIX_HINT}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt and cannot be read ({exc}). {_FIX_HINT}"
        ) from exc

    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an edge-agent checkpoint. {_FIX_HINT}")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('format_version')!r}, but "
            f"edge-agent {edge_agent.__version__} reads version {CHECKPOINT_FORMAT_VERSION}. "
            f"{_FIX_HINT}"
        )
    if not isinstance(payload.get("metadata"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} lacks its metadata or state_dict. {_FIX_HINT}")
    return payload


def _check_metadata(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = payload["metadata"]
    missing = [key for key in (*REQUIRED_METADATA, "weights_sha256") if key not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the metadata keys {missing}. {_FIX_HINT}")

    transform = metadata["input_transform"]
    if transform not in INPUT_TRANSFORMS:
        raise CheckpointError(
            f"checkpoint {path} needs input transform {transform!r}, which edge-agent "
            f"{edge_agent.__version__} does not have (known: {', '.join(sorted(INPUT_TRANSFORMS))}). "
            f"Upgrade edge-agent to the version that wrote it ({metadata.get('package_version')}) "
            f"or re-run `edge-agent meta-train`."
        )
    if metadata["algorithm"] not in SUPPORTED_ALGORITHMS:
        raise CheckpointError(
            f"checkpoint {path} was trained with algorithm {metadata['algorithm']!r}, but "
            f"this version supports {', '.join(SUPPORTED_ALGORITHMS)}. {_FIX_HINT}"
        )
    if not isinstance(metadata["architecture"], dict):
        raise CheckpointError(f"checkpoint {path} has an invalid architecture entry. {_FIX_HINT}")
    return metadata
