from __future__ import annotations

import math

import pytest
import torch

from edge_agent.protonet import class_log_probs, episode_loss, prototypes


def test_prototypes_are_class_means():
    embeddings = torch.tensor([[0.0, 0.0], [2.0, 2.0], [10.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 0])

    result = prototypes(embeddings, labels, n_way=2)

    torch.testing.assert_close(result, torch.tensor([[1.0, 1.0], [10.0, 0.0]]))


def test_prototypes_reject_empty_class():
    with pytest.raises(ValueError, match=r"every class in 0..2 needs a support example, counts \[1, 0, 1\]"):
        prototypes(torch.zeros(2, 3), torch.tensor([0, 2]), n_way=3)


def test_prototypes_reject_label_out_of_range():
    with pytest.raises(ValueError, match=r"every class in 0..1 needs a support example"):
        prototypes(torch.zeros(2, 3), torch.tensor([0, 2]), n_way=2)


def test_prototypes_reject_shape_mismatch():
    with pytest.raises(ValueError, match=r"expected embeddings \(N, D\) and labels \(N,\), got \(3, 2\) and \(2,\)"):
        prototypes(torch.zeros(3, 2), torch.tensor([0, 1]), n_way=2)


def test_class_log_probs_pinned():
    query = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0]])

    log_probs = class_log_probs(query, centres)

    # Squared distances: query 0 -> (0, 1), query 1 -> (2, 1).
    first = [-math.log(1 + math.exp(-1)), -1 - math.log(1 + math.exp(-1))]
    second = [-1 - math.log(1 + math.exp(-1)), -math.log(1 + math.exp(-1))]
    torch.testing.assert_close(log_probs, torch.tensor([first, second]), atol=1e-6, rtol=0)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(2))


def test_episode_loss_pinned():
    support = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0], [3.0, 2.0]])
    support_labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[0.5, 1.0], [2.0, 1.0]])
    query_labels = torch.tensor([0, 0])

    loss, accuracy = episode_loss(support, support_labels, query, query_labels, n_way=2)

    # Prototypes (0, 1) and (3, 1); squared distances (0.25, 6.25) and (4, 1).
    expected = (math.log(1 + math.exp(-6)) + 3 + math.log(1 + math.exp(-3))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert accuracy.item() == pytest.approx(0.5)


def test_episode_loss_falls_with_training():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 2
    labels = torch.arange(4).repeat_interleave(6)
    inputs = centres[labels] + torch.randn(24, 16, generator=generator)
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    is_support = (torch.arange(24) % 6) < 3

    def loss_now() -> torch.Tensor:
        embeddings = encoder(inputs)
        loss, _ = episode_loss(
            embeddings[is_support], labels[is_support], embeddings[~is_support], labels[~is_support], 4
        )
        return loss

    initial = loss_now().item()
    for _ in range(50):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()

    assert loss_now().item() < 0.5 * initial
