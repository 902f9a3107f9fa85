"""Prototypical Networks for few-shot classification.

Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017
(arXiv:1703.05175). Each class is represented by the mean embedding of its support
examples (its prototype), and a query is scored by the negative squared Euclidean distance
to each prototype, turned into class probabilities by a softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Average the support embeddings of each class.

    Shapes: embeddings (N, D), labels (N,) integers in [0, n_way) -> (n_way, D).
    Raises ValueError when a class in [0, n_way) has no support example.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )
    labels = labels.to(device=embeddings.device, dtype=torch.long)
    counts = torch.bincount(labels, minlength=n_way)
    if counts.shape[0] != n_way or bool((counts == 0).any()):
        raise ValueError(f"every class in 0..{n_way - 1} needs a support example, counts {counts.tolist()}")

    sums = torch.zeros(n_way, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    return sums / counts.unsqueeze(1).to(embeddings.dtype)


def class_log_probs(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Score queries against prototypes.

    Returns log_softmax over classes of the negative squared Euclidean distance.
    Shapes: query (Q, D), prototypes (C, D) -> (Q, C).
    """
    # Explicit differences rather than torch.cdist, whose matrix-product shortcut loses
    # precision when a query lies close to a prototype.
    distances = (query.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(dim=2)
    return F.log_softmax(-distances, dim=1)


def episode_loss(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    n_way: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the episodic ProtoNet loss and accuracy from embeddings.

    Shapes: support (n_way * n_shot, D), support_labels (n_way * n_shot,),
    query (Q, D), query_labels (Q,). Returns the mean negative log-likelihood of the
    query labels (scalar, differentiable) and the query accuracy (scalar, detached).
    """
    log_probs = class_log_probs(query, prototypes(support, support_labels, n_way))
    query_labels = query_labels.to(device=log_probs.device, dtype=torch.long)
    loss = F.nll_loss(log_probs, query_labels)
    accuracy = (log_probs.argmax(dim=1) == query_labels).float().mean().detach()
    return loss, accuracy
