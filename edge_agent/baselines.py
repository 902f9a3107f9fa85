"""Ordinary-training baselines that few-shot meta-learning must beat.

Both classify with an `EmbeddingNet` (the architecture of the meta-learned model) and a
linear head, trained with Adam on the support set of each episode only:

- `ScratchClassifier`: every weight starts from a fresh random initialisation.
- `FineTuneClassifier`: the embedding starts from supervised pre-training on the source
  classes (`pretrain_supervised`), the head from zero, and every weight is fine-tuned.
  BatchNorm keeps the running statistics of pre-training, because a support set of a
  few windows gives poor batch statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.algorithms import Task
from edge_agent.model import EmbeddingNet


def _fit_and_score(model: EmbeddingNet, head: nn.Linear, task: Task, steps: int, lr: float, batchnorm_train: bool) -> tuple[float, float, torch.Tensor]:
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=lr)
    labels = task.support_labels.long()
    model.train(batchnorm_train)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(model(task.support)), labels).backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        log_probs = F.log_softmax(head(model(task.query)), dim=1)
        query_labels = task.query_labels.long()
        predicted = log_probs.argmax(dim=1)
        loss = F.nll_loss(log_probs, query_labels)
    return float(loss), float((predicted == query_labels).float().mean()), predicted


class ScratchClassifier:
    """Train a randomly initialised embedding and head on each support set."""

    name = "scratch"

    def __init__(self, architecture: dict[str, Any], *, steps: int = 100, lr: float = 1e-3, seed: int = 0) -> None:
        self.architecture = architecture
        self.steps = steps
        self.lr = lr
        self.seed = seed
        self._episode = 0

    def evaluate_task(self, task: Task) -> tuple[float, float, torch.Tensor]:
        # Each episode gets its own initialisation, reproducible from the seed.
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed * 100_003 + self._episode)
        self._episode += 1
        model = EmbeddingNet(**self.architecture).to(task.support.device)
        head = nn.Linear(model.embedding_dim, task.n_way).to(task.support.device)
        torch.random.set_rng_state(generator_state)
        return _fit_and_score(model, head, task, self.steps, self.lr, batchnorm_train=True)


class FineTuneClassifier:
    """Fine-tune a copy of a pre-trained embedding and a zero-initialised head on each support set."""

    name = "fine-tune"

    def __init__(self, pretrained: EmbeddingNet, *, steps: int = 100, lr: float = 1e-3) -> None:
        self.pretrained = pretrained
        self.steps = steps
        self.lr = lr

    def evaluate_task(self, task: Task) -> tuple[float, float, torch.Tensor]:
        model = copy.deepcopy(self.pretrained)
        head = nn.Linear(model.embedding_dim, task.n_way).to(task.support.device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return _fit_and_score(model, head, task, self.steps, self.lr, batchnorm_train=False)


def pretrain_supervised(
    features: Sequence[torch.Tensor],
    architecture: dict[str, Any],
    *,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> EmbeddingNet:
    """Train an embedding with a linear head over all source classes by cross-entropy.

    `features[k]` contains the transformed windows of source class k, shape (n_k, 1, n_bins).
    Returns the embedding (head discarded) in eval mode.
    """
    inputs = torch.cat(list(features))
    labels = torch.cat([torch.full((len(f),), k, dtype=torch.long) for k, f in enumerate(features)]).to(inputs.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EmbeddingNet(**architecture).to(inputs.device)
        head = nn.Linear(model.embedding_dim, len(features)).to(inputs.device)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=lr)
    rng = np.random.default_rng(seed)

    model.train()
    for _ in range(steps):
        batch = torch.as_tensor(rng.choice(len(inputs), size=min(batch_size, len(inputs)), replace=False), device=inputs.device)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(model(inputs[batch])), labels[batch]).backward()
        optimizer.step()
    model.eval()
    return model
