"""The on-box few-shot classifier: prototypes from labelled windows, then nearest prototype.

`FewShotClassifier` wraps a meta-trained `EmbeddingNet`. `set_support` embeds the
labelled windows of each class and stores their mean embeddings as prototypes
(Prototypical Networks, Snell, Swersky and Zemel, NeurIPS 2017). `predict` scores new
windows against those prototypes. Learning a new fault therefore needs no gradient step,
only one forward pass over its support windows.

Thread safety: `set_support` and `predict` may run on different threads. `set_support`
builds the new prototypes completely and then replaces one tuple attribute, which is an
atomic assignment in CPython, so `predict` uses either the old or the new support set and
never a mix. Concurrent `set_support` calls are serialised by a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edge_agent.errors import AdaptationError
from edge_agent.features import get_transform
from edge_agent.model import EmbeddingNet
from edge_agent.protonet import class_log_probs, prototypes


def resolve_device(name: str) -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a torch.device.

    "auto" picks CUDA when available, else CPU. Raises ValueError when CUDA is requested
    but torch has no usable CUDA device, or the name is not a known device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} requested, but torch {torch.__version__} finds no CUDA device "
                f"(CPU-only build or no GPU driver). Set the device to 'cpu' or 'auto'."
            )
        return torch.device(name)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


@dataclass(frozen=True)
class Prediction:
    """The classification of one window.

    `scores` maps every class to its probability under the prototype softmax; `label` is
    the most probable class and `confidence` its probability. `label` is None when no
    support set is active or the confidence is below the classifier's `min_confidence`.
    """

    label: str | None
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _SupportState:
    classes: tuple[str, ...]
    prototypes: torch.Tensor
    version: int


class FewShotClassifier:
    """Nearest-prototype classifier over a meta-trained embedding.

    `metadata` is the checkpoint metadata; the classifier reads `window_size`,
    `input_transform` and `weights_sha256` (optional) from it.
    """

    def __init__(
        self,
        model: EmbeddingNet,
        metadata: Mapping[str, Any],
        device: str | torch.device = "cpu",
        *,
        min_confidence: float = 0.0,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        self._device = resolve_device(device) if isinstance(device, str) else device
        self._model = model.to(self._device).eval()
        self._metadata = dict(metadata)
        self._window_size = int(metadata["window_size"])
        self._transform = get_transform(str(metadata["input_transform"]))
        self._weights_id = str(metadata.get("weights_sha256", "untracked"))[:8]
        self._min_confidence = min_confidence
        self._update_lock = threading.Lock()
        self._state = _SupportState((), torch.empty(0, model.embedding_dim, device=self._device), 0)

    @property
    def window_size(self) -> int:
        return self._window_size

    @property
    def classes(self) -> list[str]:
        """Class names of the active support set, in prototype order."""
        return list(self._state.classes)

    @property
    def support_version(self) -> int:
        """Count of support sets installed so far; 0 before the first."""
        return self._state.version

    @property
    def model_version(self) -> str:
        """Identifier of the active model: first 8 hex digits of the weights hash and the support version."""
        return f"{self._weights_id}-p{self._state.version}"

    def set_support(self, support: Mapping[str, np.ndarray]) -> int:
        """Compute one prototype per class from its support windows and make them active.

        `support` maps each class name to an array of shape (k, window_size), k >= 1.
        Returns the new support version (see `model_version`). Raises AdaptationError
        when the support set is empty or an array has the wrong shape or is not finite.
        The previous support set stays active when this raises.
        """
        classes, windows, labels = self._stack_support(support)

        with self._update_lock:
            batch = torch.as_tensor(windows, device=self._device)
            label_tensor = torch.as_tensor(labels, device=self._device)
            with torch.inference_mode():
                embeddings = self._model(self._transform(batch))
                new_prototypes = prototypes(embeddings, label_tensor, len(classes))
            state = _SupportState(tuple(classes), new_prototypes, self._state.version + 1)
            self._state = state
        return state.version

    def _stack_support(self, support: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
        if not support:
            raise AdaptationError("support set is empty; give at least one class with one window")
        classes, parts, labels = [], [], []
        for index, (label, windows) in enumerate(support.items()):
            array = np.asarray(windows, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != self._window_size:
                raise AdaptationError(
                    f"support windows of class {label!r} must have shape (k, {self._window_size}) "
                    f"with k >= 1, got {array.shape}"
                )
            if not np.isfinite(array).all():
                raise AdaptationError(f"support windows of class {label!r} contain NaN or infinite values")
            classes.append(str(label))
            parts.append(array)
            labels.append(np.full(array.shape[0], index, dtype=np.int64))
        return classes, np.concatenate(parts), np.concatenate(labels)

    def predict(self, windows: np.ndarray) -> list[Prediction]:
        """Classify a batch of windows of shape (B, window_size) against the active prototypes.

        Returns one Prediction per window. Before the first `set_support` every Prediction
        has label None, confidence 0 and no scores. Raises ValueError on a wrong shape.
        """
        array = np.asarray(windows, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self._window_size:
            raise ValueError(f"windows must have shape (B, {self._window_size}), got {array.shape}")
        state = self._state
        if not state.classes:
            return [Prediction(None, 0.0, {}) for _ in range(array.shape[0])]
        if array.shape[0] == 0:
            return []

        with torch.inference_mode():
            batch = torch.as_tensor(array, device=self._device)
            embeddings = self._model(self._transform(batch))
            probabilities = class_log_probs(embeddings, state.prototypes).exp().cpu().numpy()

        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            confidence = float(row[best])
            label = state.classes[best] if confidence >= self._min_confidence else None
            scores = {name: float(value) for name, value in zip(state.classes, row)}
            predictions.append(Prediction(label, confidence, scores))
        return predictions
