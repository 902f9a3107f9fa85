"""Reptile, a first-order meta-learning algorithm.

Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018
(arXiv:1803.02999). For each task of a meta-batch, `inner_steps` SGD steps on the task's
windows (support and query together, as in the paper's training) move a copy of the
weights to phi_i. The outer step then interpolates the meta-weights towards the
mean of the adapted weights: theta <- theta + epsilon * mean_i(phi_i - theta), with
epsilon annealed linearly from `outer_lr` to 0 over meta-training.

The N-way head of each task starts from the support prototypes (see `initial_head`) and
is discarded after the task, so only the embedding is meta-learned. Meta-training runs
BatchNorm on batch statistics, while `adapt` and `predict` use the running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from edge_agent.algorithms.base import MetaLearner, Task, body_parameters, head_logits, initial_head, predict_with_head
from edge_agent.algorithms.maml import Weights, inner_loop
from edge_agent.model import EmbeddingNet


class Reptile(MetaLearner):
    name = "reptile"

    def __init__(
        self,
        model: EmbeddingNet,
        *,
        steps: int,
        outer_lr: float = 1.0,
        inner_steps: int = 4,
        inner_lr: float = 0.005,
        test_inner_steps: int | None = None,
        test_inner_lr: float | None = None,
        meta_batch: int = 2,
        head_init: str = "prototype",
        lr: float | None = None,
    ) -> None:
        super().__init__(model)
        if inner_steps < 1 or inner_lr <= 0 or meta_batch < 1 or not 0 < outer_lr <= 1:
            raise ValueError(
                f"inner_steps and meta_batch must be >= 1, inner_lr > 0 and outer_lr in (0, 1], "
                f"got {inner_steps}, {meta_batch}, {inner_lr} and {outer_lr}"
            )
        # `lr` is accepted so that meta_train can pass its Adam rate to every learner.
        del lr
        self.outer_lr = outer_lr
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.test_inner_lr = inner_lr if test_inner_lr is None else test_inner_lr
        self.tasks_per_step = meta_batch
        self.head_init = head_init
        self.total_steps = steps
        self.steps_done = 0

    def task_weights(self, x: torch.Tensor, labels: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor, n_way: int, steps: int, lr: float) -> Weights:
        """Run the inner SGD loop on (x, labels) from the current weights; the head starts from `support`."""
        start = {name: value.detach().clone().requires_grad_(True) for name, value in body_parameters(self.model).items()}
        with torch.enable_grad():
            head = initial_head(self.model, start, support, support_labels, n_way, self.head_init)
            start.update({name: value.detach().requires_grad_(True) for name, value in head.items()})

            def loss_fn(fast: Weights) -> torch.Tensor:
                return F.cross_entropy(head_logits(self.model, fast, x), labels)

            fast = inner_loop(loss_fn, start, steps=steps, lr=lr, first_order=True)
        return {name: value.detach() for name, value in fast.items()}

    def meta_train_step(self, tasks: Sequence[Task]) -> float:
        self.model.train()
        epsilon = self.outer_lr * (1.0 - self.steps_done / max(self.total_steps, 1))
        base = {name: value.detach().clone() for name, value in body_parameters(self.model).items()}
        mean_delta = {name: torch.zeros_like(value) for name, value in base.items()}
        losses = []
        for task in tasks:
            x = torch.cat([task.support, task.query])
            labels = torch.cat([task.support_labels, task.query_labels]).long()
            support_labels = task.support_labels.long()
            with torch.no_grad():
                start_head = initial_head(self.model, base, task.support, support_labels, task.n_way, self.head_init)
                losses.append(float(F.cross_entropy(head_logits(self.model, {**base, **start_head}, task.query), task.query_labels.long())))
            fast = self.task_weights(x, labels, task.support, support_labels, task.n_way, self.inner_steps, self.inner_lr)
            for name in mean_delta:
                mean_delta[name] += (fast[name] - base[name]) / len(tasks)

        with torch.no_grad():
            for name, parameter in body_parameters(self.model).items():
                parameter.add_(mean_delta[name], alpha=epsilon)
        self.steps_done += 1
        return sum(losses) / len(losses)

    def adapt(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> Weights:
        self.model.eval()
        labels = support_labels.long()
        return self.task_weights(support, labels, support, labels, n_way, self.test_inner_steps, self.test_inner_lr)

    def predict(self, adapted: Weights, query: torch.Tensor) -> torch.Tensor:
        return predict_with_head(self.model, adapted, query)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "outer_lr": self.outer_lr, "outer_lr_schedule": "linear to 0",
            "inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "inner_optimizer": "sgd",
            "test_inner_steps": self.test_inner_steps, "test_inner_lr": self.test_inner_lr,
            "meta_batch": self.tasks_per_step,
            "head_init": self.head_init,
        }

