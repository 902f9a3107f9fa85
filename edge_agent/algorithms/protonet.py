"""Prototypical Networks behind the `MetaLearner` interface.

Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017
(arXiv:1703.05175). Adaptation averages the support embeddings of each class into a
prototype, and a query's class scores are its negative squared distances to the
prototypes. Meta-training minimises the query negative log-likelihood with Adam and a
cosine learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from edge_agent.algorithms.base import MetaLearner, Task
from edge_agent.model import EmbeddingNet
from edge_agent.protonet import class_log_probs, episode_loss, prototypes


class ProtoNet(MetaLearner):
    name = "protonet"

    def __init__(self, model: EmbeddingNet, *, steps: int, lr: float = 1e-3) -> None:
        super().__init__(model)
        self.lr = lr
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)

    def meta_train_step(self, tasks: Sequence[Task]) -> float:
        self.model.train()
        losses = []
        self.optimizer.zero_grad(set_to_none=True)
        for task in tasks:
            # One forward pass over support and query keeps BatchNorm statistics shared.
            embeddings = self.model(torch.cat([task.support, task.query]))
            n_support = len(task.support)
            loss, _ = episode_loss(
                embeddings[:n_support], task.support_labels, embeddings[n_support:], task.query_labels, task.n_way
            )
            (loss / len(tasks)).backward()
            losses.append(float(loss.detach()))
        self.optimizer.step()
        self.scheduler.step()
        return sum(losses) / len(losses)

    @torch.no_grad()
    def adapt(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
        return prototypes(self.model(support), support_labels, n_way)

    @torch.no_grad()
    def predict(self, adapted: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return class_log_probs(self.model(query), adapted)

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "optimizer": "adam", "lr_schedule": "cosine"}
