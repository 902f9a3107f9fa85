"""Fine-tuning on the box: a copy of the embedding and a linear head, trained on the support set.

With `adaptation.algorithm: reptile` the agent runs the inner loop of Reptile (Nichol,
Achiam and Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999) on
the labelled windows: `steps` gradient steps of Adam at `inner_lr`, starting from the
meta-trained weights, on the cross-entropy of the whole support set.

The linear head starts out equal to ProtoNet. For prototypes p_c, the squared Euclidean
distance gives -||x - p_c||^2 = 2 p_c.x - ||p_c||^2 - ||x||^2, and the last term is the
same for every class, so W_c = 2 p_c and b_c = -||p_c||^2 give the same softmax as the
nearest-prototype classifier. Fine-tuning therefore starts at the ProtoNet solution.

BatchNorm layers stay in eval mode while fine-tuning: a support batch of 10-way 5-shot
contains 50 windows, and its batch statistics differ from the running statistics learnt in
meta-training. Training on batch statistics would make the model see other inputs in
training than at inference, and updating the running statistics from one small batch
would shift the inputs of every class. The BatchNorm scale and shift are still trained.

A candidate is accepted only when a k-fold leave-out check over the support set finds it
no worse than the current model: in each fold, the candidate procedure (fine-tuning on
the other folds) and the current model (nearest prototype over the other folds) classify
the held-out examples, and the accuracies are summed over the folds.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_agent.classifier import Prediction
from edge_agent.errors import AdaptationError
from edge_agent.features import get_transform
from edge_agent.model import EmbeddingNet
from edge_agent.protonet import prototypes


class AdaptationCancelled(AdaptationError):
    """A fine-tuning run stopped early because its `cancel` event was set."""


@dataclass(frozen=True)
class AdaptationSettings:
    """Hyper-parameters of one fine-tuning run and of its leave-out check."""

    steps: int = 20
    inner_lr: float = 1e-4
    leave_out_folds: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.leave_out_folds < 2:
            raise ValueError(f"leave_out_folds must be >= 2, got {self.leave_out_folds}")


@dataclass(frozen=True)
class SupportSet:
    """A support set in training order.

    `windows` has shape (N, window_size) float32, `labels` shape (N,) with indices into
    `classes`. `fingerprint` is a SHA-256 of the class names and windows, so two equal
    support sets have the same fingerprint.
    """

    classes: tuple[str, ...]
    windows: np.ndarray
    labels: np.ndarray
    fingerprint: str

    @classmethod
    def from_mapping(cls, support: Mapping[str, np.ndarray], window_size: int) -> SupportSet:
        """Stack a mapping of class name to windows (k, window_size), k >= 1.

        Raises AdaptationError when the mapping is empty or an array has the wrong
        shape or non-finite values.
        """
        if not support:
            raise AdaptationError("support set is empty; give at least one class with one window")
        classes: list[str] = []
        parts: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        digest = hashlib.sha256()
        for index, (name, windows) in enumerate(support.items()):
            array = np.ascontiguousarray(windows, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != window_size:
                raise AdaptationError(
                    f"support windows of class {name!r} must have shape (k, {window_size}) "
                    f"with k >= 1, got {array.shape}"
                )
            if not np.isfinite(array).all():
                raise AdaptationError(f"support windows of class {name!r} contain NaN or infinite values")
            classes.append(str(name))
            parts.append(array)
            labels.append(np.full(array.shape[0], index, dtype=np.int64))
            digest.update(str(name).encode("utf-8") + b"\0")
            digest.update(repr(array.shape).encode("ascii"))
            digest.update(array.tobytes())
        return cls(tuple(classes), np.concatenate(parts), np.concatenate(labels), digest.hexdigest())

    @property
    def counts(self) -> dict[str, int]:
        """Number of support examples per class."""
        return {name: int((self.labels == index).sum()) for index, name in enumerate(self.classes)}


@dataclass(frozen=True)
class LeaveOutResult:
    """Outcome of the leave-out check: accuracies on the held-out support examples."""

    candidate_accuracy: float
    current_accuracy: float
    n_held_out: int
    folds: int

    @property
    def accepted(self) -> bool:
        return self.candidate_accuracy >= self.current_accuracy

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate_accuracy": self.candidate_accuracy,
            "current_accuracy": self.current_accuracy,
            "n_held_out": self.n_held_out,
            "folds": self.folds,
        }


@dataclass
class Candidate:
    """A fine-tuned model and how it was made; not yet accepted."""

    embedding: EmbeddingNet
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    support: SupportSet
    check: LeaveOutResult
    duration_s: float
    settings: dict[str, Any]


def prototype_head(class_prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the linear head equal to nearest-prototype scoring.

    Shapes: prototypes (C, D) -> weight (C, D), bias (C,), with W_c = 2 p_c and
    b_c = -||p_c||^2 (see the module docstring).
    """
    return 2.0 * class_prototypes, -(class_prototypes.pow(2).sum(dim=1))


def fine_tune(
    base: EmbeddingNet,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    settings: AdaptationSettings,
    cancel: threading.Event | None = None,
) -> tuple[EmbeddingNet, torch.Tensor, torch.Tensor]:
    """Fine-tune a copy of `base` and a prototype-initialised linear head on one support set.

    `inputs` are transformed windows (N, 1, n_bins), `labels` (N,) integers in
    [0, n_way). `base` is not changed. Returns the fine-tuned embedding in eval mode and
    the head's weight (n_way, D) and bias (n_way,), all detached. Raises
    AdaptationCancelled at the next step once `cancel` is set.
    """
    torch.manual_seed(settings.seed)
    embedding = copy.deepcopy(base)
    # Eval mode keeps BatchNorm on its running statistics; see the module docstring.
    embedding.eval()
    for parameter in embedding.parameters():
        parameter.requires_grad_(True)

    with torch.no_grad():
        weight, bias = prototype_head(prototypes(embedding(inputs), labels, n_way))
    weight.requires_grad_(True)
    bias.requires_grad_(True)

    optimizer = torch.optim.Adam([*embedding.parameters(), weight, bias], lr=settings.inner_lr)
    for _ in range(settings.steps):
        if cancel is not None and cancel.is_set():
            raise AdaptationCancelled("fine-tuning cancelled because the agent is stopping")
        optimizer.zero_grad(set_to_none=True)
        logits = F.linear(embedding(inputs), weight, bias)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()

    for parameter in embedding.parameters():
        parameter.requires_grad_(False)
    return embedding, weight.detach(), bias.detach()


def fold_masks(labels: np.ndarray, folds: int) -> list[np.ndarray]:
    """Split the support examples into `folds` held-out masks, stratified by class.

    The i-th example of each class goes to fold i % folds. A class with a single
    example is never held out, because the training part would then lack the class.
    Folds that hold out nothing are dropped.
    """
    masks = [np.zeros(labels.shape[0], dtype=bool) for _ in range(folds)]
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        if positions.shape[0] < 2:
            continue
        for rank, position in enumerate(positions):
            masks[rank % min(folds, positions.shape[0])][position] = True
    return [mask for mask in masks if mask.any()]


def leave_out_check(
    base: EmbeddingNet,
    current: EmbeddingNet,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    settings: AdaptationSettings,
    cancel: threading.Event | None = None,
) -> LeaveOutResult:
    """Compare fine-tuning from `base` with nearest prototype over `current` on held-out examples.

    NOTE: when `current` was itself fine-tuned on these examples, it has seen the
    held-out part, so the check favours the current model and errs on the side of
    keeping it.
    """
    label_array = labels.cpu().numpy()
    masks = fold_masks(label_array, settings.leave_out_folds)
    if not masks:
        raise AdaptationError(
            "the leave-out check needs a class with at least 2 support examples; "
            "label more windows before adapting"
        )

    candidate_correct = current_correct = held_out = 0
    for mask_array in masks:
        mask = torch.as_tensor(mask_array, device=inputs.device)
        train_inputs, train_labels = inputs[~mask], labels[~mask]
        test_inputs, test_labels = inputs[mask], labels[mask]

        embedding, weight, bias = fine_tune(base, train_inputs, train_labels, n_way, settings, cancel)
        with torch.inference_mode():
            candidate_predictions = F.linear(embedding(test_inputs), weight, bias).argmax(dim=1)
            current_prototypes = prototypes(current(train_inputs), train_labels, n_way)
            current_weight, current_bias = prototype_head(current_prototypes)
            current_predictions = F.linear(current(test_inputs), current_weight, current_bias).argmax(dim=1)
        candidate_correct += int((candidate_predictions == test_labels).sum())
        current_correct += int((current_predictions == test_labels).sum())
        held_out += int(mask_array.sum())

    return LeaveOutResult(candidate_correct / held_out, current_correct / held_out, held_out, len(masks))


def adapt(
    base: EmbeddingNet,
    current: EmbeddingNet,
    support: SupportSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    settings: AdaptationSettings,
    device: torch.device,
    cancel: threading.Event | None = None,
) -> Candidate:
    """Run the leave-out check and fine-tune a candidate on the whole support set.

    Every class needs at least one example; the check needs a class with two.
    Raises AdaptationError when the support set has fewer than 2 classes.
    """
    if len(support.classes) < 2:
        raise AdaptationError(f"fine-tuning needs at least 2 classes, got {list(support.classes)}")
    started = time.perf_counter()
    with torch.no_grad():
        inputs = transform(torch.as_tensor(support.windows, device=device))
    labels = torch.as_tensor(support.labels, device=device)
    n_way = len(support.classes)

    check = leave_out_check(base, current, inputs, labels, n_way, settings, cancel)
    embedding, weight, bias = fine_tune(base, inputs, labels, n_way, settings, cancel)
    duration_s = time.perf_counter() - started
    return Candidate(embedding, weight, bias, support, check, duration_s, asdict(settings))


@dataclass(frozen=True)
class _HeadState:
    classes: tuple[str, ...]
    weight: torch.Tensor
    bias: torch.Tensor
    support_updates: int


class FineTunedClassifier:
    """A fine-tuned embedding with a linear head, served like `FewShotClassifier`.

    `model_version` is the store's version name (such as "v3") while the head is the
    fine-tuned one. `set_support` with a support set other than the one the version was
    trained on re-initialises the head from the prototypes of the new support set in the
    fine-tuned embedding, and the version becomes "v3-p1", "v3-p2" and so on, until the
    adaptation worker accepts a new version.

    Thread safety is that of `FewShotClassifier`: the head is replaced as one attribute.
    """

    def __init__(
        self,
        embedding: EmbeddingNet,
        metadata: Mapping[str, Any],
        device: torch.device,
        *,
        version: str,
        classes: tuple[str, ...],
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
        support_fingerprint: str,
    ) -> None:
        if head_weight.shape != (len(classes), embedding.embedding_dim) or head_bias.shape != (len(classes),):
            raise AdaptationError(
                f"head of version {version} has weight {tuple(head_weight.shape)} and bias "
                f"{tuple(head_bias.shape)}, expected ({len(classes)}, {embedding.embedding_dim}) "
                f"and ({len(classes)},) for {len(classes)} classes"
            )
        self._device = device
        self._embedding = embedding.to(device).eval()
        self._window_size = int(metadata["window_size"])
        self._transform = get_transform(str(metadata["input_transform"]))
        self.version = version
        self.trained_fingerprint = support_fingerprint
        self._update_lock = threading.Lock()
        self._state = _HeadState(tuple(classes), head_weight.to(device), head_bias.to(device), 0)

    @property
    def embedding(self) -> EmbeddingNet:
        return self._embedding

    @property
    def window_size(self) -> int:
        return self._window_size

    @property
    def classes(self) -> list[str]:
        """Class names of the head, in output order."""
        return list(self._state.classes)

    @property
    def support_version(self) -> int:
        """Count of support sets installed on top of the stored version; 0 for none."""
        return self._state.support_updates

    @property
    def model_version(self) -> str:
        updates = self._state.support_updates
        return self.version if updates == 0 else f"{self.version}-p{updates}"

    def set_support(self, support: Mapping[str, np.ndarray]) -> int:
        """Re-initialise the head from the prototypes of `support`, unless the version was trained on it.

        Returns the number of support sets installed on top of the stored version.
        Raises AdaptationError as `FewShotClassifier.set_support` does.
        """
        stacked = SupportSet.from_mapping(support, self._window_size)
        if stacked.fingerprint == self.trained_fingerprint and stacked.classes == self._state.classes:
            return self._state.support_updates
        with self._update_lock:
            with torch.inference_mode():
                batch = self._transform(torch.as_tensor(stacked.windows, device=self._device))
                labels = torch.as_tensor(stacked.labels, device=self._device)
                weight, bias = prototype_head(prototypes(self._embedding(batch), labels, len(stacked.classes)))
            state = _HeadState(stacked.classes, weight, bias, self._state.support_updates + 1)
            self._state = state
        return state.support_updates

    def predict(self, windows: np.ndarray) -> list[Prediction]:
        """Classify windows (B, window_size) with the linear head; see `FewShotClassifier.predict`."""
        array = np.asarray(windows, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self._window_size:
            raise ValueError(f"windows must have shape (B, {self._window_size}), got {array.shape}")
        state = self._state
        if array.shape[0] == 0:
            return []

        with torch.inference_mode():
            batch = self._transform(torch.as_tensor(array, device=self._device))
            logits = F.linear(self._embedding(batch), state.weight, state.bias)
            probabilities = logits.softmax(dim=1).cpu().numpy()

        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            scores = {name: float(value) for name, value in zip(state.classes, row)}
            predictions.append(Prediction(state.classes[best], float(row[best]), scores))
        return predictions
