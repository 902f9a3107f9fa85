"""The model store: fine-tuned model versions under `storage.dir/models/`.

Layout of the folder:

- `v1.pt`, `v2.pt`, ...: one checkpoint per version, written atomically by
  `checkpoint.save_checkpoint`. The embedding is the checkpoint's state_dict. The linear
  head, its classes and the fingerprint of its support set are in the metadata under
  `adaptation`.
- `index.json`: the versions (name, creation time, parent, support classes and
  counts, leave-out accuracies, base checkpoint hash, SHA-256 of the file) and the
  active version; `null` means the base checkpoint with ProtoNet. Replaced atomically.
- `rollback-request.json`: written by `edge-agent model rollback` and consumed by
  the running agent, which polls for it about once a second.

Only the agent writes the versions and the index, and only the CLI writes the request,
so each file has one writer. Version names count up and are never reused. The store
keeps the newest `keep_versions` versions and also the active one when it is older.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from edge_agent.adaptation import Candidate
from edge_agent.atomic import write_atomically
from edge_agent.checkpoint import load_checkpoint, save_checkpoint
from edge_agent.errors import CheckpointError, StorageError
from edge_agent.model import EmbeddingNet

log = logging.getLogger(__name__)

MODELS_DIR = "models"
INDEX_FILE = "index.json"
ROLLBACK_REQUEST_FILE = "rollback-request.json"
BASE_VERSION = "base"
INDEX_FORMAT_VERSION = 1


@dataclass(frozen=True)
class VersionRecord:
    """One stored version as listed in the index."""

    version: str
    created_utc: str
    parent: str
    classes: dict[str, int]
    leave_out: dict[str, Any]
    sha256: str
    file: str
    base_sha256: str
    adapt_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionRecord:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class LoadedVersion:
    """A version read back from the store, ready for `FineTunedClassifier`."""

    record: VersionRecord
    embedding: EmbeddingNet
    metadata: dict[str, Any]
    classes: tuple[str, ...]
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    support_fingerprint: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as JSON to a temporary file, fsync it and rename it over `path`."""
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


class ModelStore:
    """Versions of fine-tuned models in `storage_dir/models`; see the module docstring."""

    def __init__(self, storage_dir: str | Path, *, keep_versions: int = 5) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        self.dir = Path(storage_dir) / MODELS_DIR
        self.keep_versions = keep_versions
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"failed to create the model store {self.dir}: {exc}; check that storage.dir is writable") from exc

    # Index

    @property
    def index_path(self) -> Path:
        return self.dir / INDEX_FILE

    def _read_index(self) -> dict[str, Any]:
        if not self.index_path.exists():
            # Numbers of version files left by a lost index are not reused.
            numbers = [int(path.stem[1:]) for path in self.dir.glob("v*.pt") if path.stem[1:].isdigit()]
            next_number = max(numbers, default=0) + 1
            return {"format_version": INDEX_FORMAT_VERSION, "active": None, "next_number": next_number, "versions": []}
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"model store index {self.index_path} cannot be read ({exc}); move it aside "
                "to start with an empty store, which serves the base checkpoint"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("versions"), list):
            raise StorageError(f"model store index {self.index_path} has no list of versions; move it aside")
        return data

    def _write_index(self, index: Mapping[str, Any]) -> None:
        write_json_atomically(self.index_path, index)

    def versions(self) -> list[VersionRecord]:
        """Return the stored versions, oldest first."""
        return [VersionRecord.from_dict(entry) for entry in self._read_index()["versions"]]

    def active_version(self) -> str:
        """Return the name of the active version, or "base" for the base checkpoint."""
        return self._read_index().get("active") or BASE_VERSION

    def record(self, version: str) -> VersionRecord:
        """Return the index entry of `version`; raise CheckpointError naming the known versions."""
        for record in self.versions():
            if record.version == version:
                return record
        known = ", ".join([BASE_VERSION, *(r.version for r in self.versions())])
        raise CheckpointError(f"model version {version!r} not found in {self.dir}; known versions: {known}")

    def last_rollback(self) -> dict[str, Any] | None:
        """Return the outcome of the last rollback request the agent handled, or None."""
        result = self._read_index().get("last_rollback")
        return result if isinstance(result, dict) else None

    # Writing versions

    def save(self, candidate: Candidate, base_metadata: Mapping[str, Any], *, parent: str) -> VersionRecord:
        """Store an accepted candidate as the next version, make it active and prune old versions."""
        index = self._read_index()
        number = int(index.get("next_number", 1))
        version = f"v{number}"
        path = self.dir / f"{version}.pt"
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")

        metadata = {key: value for key, value in base_metadata.items() if key != "weights_sha256"}
        metadata["created_utc"] = created
        metadata["adaptation"] = {
            "version": version,
            "parent": parent,
            "classes": list(candidate.support.classes),
            "head_weight": candidate.head_weight.cpu().tolist(),
            "head_bias": candidate.head_bias.cpu().tolist(),
            "support_fingerprint": candidate.support.fingerprint,
        }
        save_checkpoint(path, candidate.embedding, metadata)

        record = VersionRecord(
            version=version,
            created_utc=created,
            parent=parent,
            classes=candidate.support.counts,
            leave_out=candidate.check.as_dict(),
            sha256=file_sha256(path),
            file=path.name,
            base_sha256=str(base_metadata.get("weights_sha256", "")),
            adapt_s=round(candidate.duration_s, 3),
            settings=dict(candidate.settings),
        )
        index["versions"].append(asdict(record))
        index["next_number"] = number + 1
        index["active"] = version
        self._write_index(index)
        self._prune()
        return record

    def _prune(self) -> None:
        index = self._read_index()
        versions = index["versions"]
        keep = {entry["version"] for entry in versions[-self.keep_versions :]}
        if index.get("active"):
            keep.add(index["active"])
        removed = [entry for entry in versions if entry["version"] not in keep]
        if not removed:
            return
        index["versions"] = [entry for entry in versions if entry["version"] in keep]
        self._write_index(index)
        # The index is updated first, so a crash here leaves an unlisted file, never
        # a listed version without its file.
        for entry in removed:
            (self.dir / entry["file"]).unlink(missing_ok=True)
            log.info("model version %s deleted (storage.keep_versions=%d)", entry["version"], self.keep_versions)

    def set_active(self, version: str) -> None:
        """Make `version` (or "base") the one the agent loads at start."""
        if version != BASE_VERSION:
            self.record(version)
        index = self._read_index()
        index["active"] = None if version == BASE_VERSION else version
        self._write_index(index)

    # Reading versions

    def load(self, version: str, device: torch.device) -> LoadedVersion:
        """Read `version`, checking the file's SHA-256 against the index and the weights hash.

        Raises CheckpointError when the version is unknown, missing, corrupt or lacks its head.
        """
        record = self.record(version)
        path = self.dir / record.file
        if not path.is_file():
            raise CheckpointError(f"model version {version} file {path} not found")
        actual = file_sha256(path)
        if actual != record.sha256:
            raise CheckpointError(
                f"model version {version} file {path} is corrupt: its SHA-256 is {actual[:12]}..., "
                f"the index records {record.sha256[:12]}..."
            )
        embedding, metadata = load_checkpoint(path, device)
        head = metadata.get("adaptation")
        try:
            classes = tuple(str(name) for name in head["classes"])
            weight = torch.tensor(head["head_weight"], dtype=torch.float32, device=device)
            bias = torch.tensor(head["head_bias"], dtype=torch.float32, device=device)
            fingerprint = str(head["support_fingerprint"])
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"model version {version} file {path} has no valid linear head ({exc})") from exc
        return LoadedVersion(record, embedding, metadata, classes, weight, bias, fingerprint)

    def load_active_or_previous(self, device: torch.device, *, base_sha256: str | None = None) -> LoadedVersion | None:
        """Load the active version, or the newest older one that loads, or None for the base checkpoint.

        A version whose file is missing or corrupt is logged at ERROR and skipped, and an
        unreadable index is moved to `index.json.corrupt` and logged at ERROR. With
        `base_sha256`, a version fine-tuned from another base checkpoint is skipped with
        a WARNING, because it no longer matches `model.checkpoint`. When another version
        than the recorded active one is loaded, the index is updated to it.
        """
        try:
            index = self._read_index()
        except StorageError as exc:
            aside = self.index_path.with_name(f"{INDEX_FILE}.corrupt")
            os.replace(self.index_path, aside)
            log.error("%s. Moved it to %s; serving the base checkpoint with a new index", exc, aside)
            return None
        active = index.get("active")
        if not active:
            return None
        names = [entry["version"] for entry in index["versions"]]
        if active not in names:
            log.error("active model version %s is not in the index %s; serving the base checkpoint", active, self.index_path)
            self.set_active(BASE_VERSION)
            return None

        for name in reversed(names[: names.index(active) + 1]):
            try:
                loaded = self.load(name, device)
            except CheckpointError as exc:
                log.error("model version %s cannot be used: %s", name, exc)
                continue
            if base_sha256 is not None and loaded.record.base_sha256 != base_sha256:
                log.warning(
                    "model version %s was fine-tuned from another base checkpoint (sha256 %s...); skipped",
                    name, loaded.record.base_sha256[:12],
                )
                continue
            if name != active:
                log.warning("model version %s is unusable; falling back to %s", active, name)
                self.set_active(name)
            return loaded

        log.error("no usable model version in %s; serving the base checkpoint", self.dir)
        self.set_active(BASE_VERSION)
        return None

    # Rollback requests

    def request_rollback(self, version: str) -> str:
        """Ask the running agent to activate `version` (or "base"); return the request id.

        Raises CheckpointError when the version is not in the store.
        """
        if version != BASE_VERSION:
            self.record(version)
        request_id = uuid.uuid4().hex
        request = {"request_id": request_id, "version": version, "requested_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomically(self.dir / ROLLBACK_REQUEST_FILE, request)
        return request_id

    def pending_rollback(self) -> dict[str, Any] | None:
        """Return the rollback request that no agent has taken yet, or None."""
        try:
            request = json.loads((self.dir / ROLLBACK_REQUEST_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return request if isinstance(request, dict) else None

    def take_rollback_request(self) -> dict[str, Any] | None:
        """Read and delete a pending rollback request; None when there is none."""
        path = self.dir / ROLLBACK_REQUEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        try:
            request = json.loads(text)
        except ValueError:
            log.error("rollback request %s is not valid JSON; ignored", path)
            return None
        if not isinstance(request, dict) or not isinstance(request.get("version"), str):
            log.error("rollback request %s names no version; ignored", path)
            return None
        return request

    def record_rollback(self, request: Mapping[str, Any], *, applied: bool, message: str) -> None:
        """Store the outcome of a rollback request, which `edge-agent model rollback` waits for."""
        index = self._read_index()
        index["last_rollback"] = {
            "request_id": request.get("request_id"),
            "version": request.get("version"),
            "applied": applied,
            "message": message,
            "ts_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self._write_index(index)
