"""The interface every meta-learning algorithm of edge-agent implements.

A `MetaLearner` wraps one `EmbeddingNet` and does three things: it meta-trains the
network on batches of episodes (`meta_train_step`), adapts to the support set of a new
task (`adapt`), and scores the query windows of that task (`predict`). Only the
embedding network is stored in a checkpoint, so every algorithm here keeps its
task-specific state (prototypes, a classifier head, adapted weights) out of the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from edge_agent.model import EmbeddingNet
from edge_agent.protonet import prototypes

HEAD_WEIGHT = "classifier.weight"
HEAD_BIAS = "classifier.bias"
HEAD_INITS = ("prototype", "zero")


@dataclass(frozen=True)
class Task:
    """One few-shot episode.

    Shapes: support (n_way * n_shot, 1, n_bins), support_labels (n_way * n_shot,) in
    [0, n_way), query (Q, 1, n_bins), query_labels (Q,).
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    n_way: int


class MetaLearner(ABC):
    """Meta-train an embedding on episodes, adapt to a support set, predict for queries.

    `tasks_per_step` is the number of episodes that one call of `meta_train_step`
    expects (the meta-batch size).
    """

    name: ClassVar[str]
    tasks_per_step: int = 1

    def __init__(self, model: EmbeddingNet) -> None:
        self.model = model

    @abstractmethod
    def meta_train_step(self, tasks: Sequence[Task]) -> float:
        """Update the model on one meta-batch of tasks and return the mean query loss."""

    @abstractmethod
    def adapt(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> Any:
        """Fit the task-specific state to a support set, leaving the model unchanged."""

    @abstractmethod
    def predict(self, adapted: Any, query: torch.Tensor) -> torch.Tensor:
        """Score queries with the state from `adapt`: (Q, 1, n_bins) -> log-probs (Q, n_way)."""

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """Return the settings that reproduce this learner, for the checkpoint metadata."""

    def evaluate_task(self, task: Task) -> tuple[float, float, torch.Tensor]:
        """Adapt to the task's support set and return query loss, accuracy and predictions."""
        self.model.eval()
        adapted = self.adapt(task.support, task.support_labels, task.n_way)
        with torch.no_grad():
            log_probs = self.predict(adapted, task.query)
            labels = task.query_labels.to(device=log_probs.device, dtype=torch.long)
            loss = F.nll_loss(log_probs, labels)
            predicted = log_probs.argmax(dim=1)
        return float(loss), float((predicted == labels).float().mean()), predicted


def body_parameters(model: EmbeddingNet) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def head_logits(model: EmbeddingNet, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run the embedding with `weights` and a linear head: (B, 1, n_bins) -> (B, n_way).

    `weights` contains every parameter of `model` by name plus `HEAD_WEIGHT` (n_way, D) and
    `HEAD_BIAS` (n_way,). Buffers (BatchNorm running statistics) come from `model`.
    """
    body = {name: value for name, value in weights.items() if name not in (HEAD_WEIGHT, HEAD_BIAS)}
    embeddings = functional_call(model, (body, dict(model.named_buffers())), (x,))
    return embeddings @ weights[HEAD_WEIGHT].T + weights[HEAD_BIAS]


def initial_head(
    model: EmbeddingNet,
    weights: dict[str, torch.Tensor],
    support: torch.Tensor,
    support_labels: torch.Tensor,
    n_way: int,
    head_init: str,
) -> dict[str, torch.Tensor]:
    """Build the N-way head that an inner loop starts from.

    "prototype" sets row k to 2 c_k and bias k to -|c_k|^2 for the prototype c_k of class
    k, so the head's softmax equals the ProtoNet softmax over squared distances
    (Triantafillou et al., "Meta-Dataset", ICLR 2020). The head stays a differentiable
    function of the embedding weights. "zero" starts from all-zero logits.
    """
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {head_init!r}")
    dim = int(model.embedding_dim)
    reference = weights[next(iter(weights))]
    if head_init == "zero":
        return {
            HEAD_WEIGHT: torch.zeros(n_way, dim, dtype=reference.dtype, device=reference.device, requires_grad=True),
            HEAD_BIAS: torch.zeros(n_way, dtype=reference.dtype, device=reference.device, requires_grad=True),
        }
    embeddings = functional_call(model, (weights, dict(model.named_buffers())), (support,))
    centres = prototypes(embeddings, support_labels, n_way)
    return {HEAD_WEIGHT: 2.0 * centres, HEAD_BIAS: -centres.pow(2).sum(dim=1)}


@torch.no_grad()
def predict_with_head(model: EmbeddingNet, weights: dict[str, torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """Score queries with adapted `weights` in eval mode: (Q, 1, n_bins) -> log-probs (Q, n_way)."""
    model.eval()
    return F.log_softmax(head_logits(model, weights, query), dim=1)
