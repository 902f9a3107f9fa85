"""Start-up with the last good base checkpoint: `<checkpoint>.prev`.

Each start that loads the configured checkpoint (its weights match the sha256 in its
metadata) copies it to `<checkpoint>.prev`, by temporary file, fsync and rename, when
the copy differs. When a later start finds the checkpoint truncated or corrupt, for
example after a power loss during an upgrade that wrote it in place, the agent logs an
ERROR and runs on the `.prev` copy instead of failing.

Fine-tuned model versions have their own fallback in `edge_agent.model_store`; this
module covers the base checkpoint they all start from.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from edge_agent.atomic import write_atomically
from edge_agent.checkpoint import load_checkpoint
from edge_agent.errors import CheckpointError
from edge_agent.model import EmbeddingNet

log = logging.getLogger(__name__)


def previous_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".prev")


def load_last_good(checkpoint: Path, device: str | torch.device) -> tuple[EmbeddingNet, dict[str, Any], Path]:
    """Load `checkpoint`, or its `.prev` copy when it is corrupt; return the model, metadata and path used.

    Raises the checkpoint's CheckpointError when no copy loads either.
    """
    prev = previous_path(checkpoint)
    try:
        model, metadata = load_checkpoint(checkpoint, device)
    except CheckpointError as exc:
        if not prev.is_file():
            raise
        try:
            model, metadata = load_checkpoint(prev, device)
        except CheckpointError as prev_exc:
            log.error("the last good copy %s cannot be loaded either: %s", prev, prev_exc)
            raise exc from prev_exc
        log.error(
            "%s; running on the last good copy %s (sha256 %s) instead. Restore the checkpoint "
            "and restart the agent to leave this fallback.",
            exc, prev, str(metadata["weights_sha256"])[:12],
        )
        return model, metadata, prev

    _keep_copy(checkpoint, prev, str(metadata["weights_sha256"]), device)
    return model, metadata, checkpoint


def _keep_copy(checkpoint: Path, prev: Path, sha256: str, device: str | torch.device) -> None:
    if prev.is_file():
        try:
            _, prev_metadata = load_checkpoint(prev, device)
            if prev_metadata["weights_sha256"] == sha256:
                return
        except CheckpointError:
            pass  # replaced below by the good checkpoint
    try:
        with open(checkpoint, "rb") as source:
            write_atomically(prev, lambda target: shutil.copyfileobj(source, target))
    except OSError as exc:
        log.warning(
            "cannot keep a last good copy of the checkpoint at %s (%s); a corrupt checkpoint "
            "will then stop the agent. Make the checkpoint's folder writable by the agent.",
            prev, exc,
        )
        return
    log.info("kept %s as the last good checkpoint", prev)
