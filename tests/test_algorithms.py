from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_agent.algorithms import ALGORITHMS, Reptile, Task, make_learner
from edge_agent.algorithms.maml import inner_loop
from edge_agent.datasets import Recording
from edge_agent.model import EmbeddingNet
from edge_agent.splits import split_by_load
from edge_agent.training import meta_train

TINY = {"channels": [8, 16], "kernel_size": 5, "pool": 4, "embedding_dim": 16}
TONES_HZ = {"a": 500.0, "b": 1100.0, "c": 1900.0, "d": 2600.0, "e": 3400.0}


def tone_recording(label: str, load_hp: int, seed: int) -> Recording:
    rng = np.random.default_rng(seed)
    time_s = np.arange(12000) / 12000.0
    frequency = TONES_HZ[label] * (1 - 0.01 * load_hp)
    signal = np.sin(2 * np.pi * frequency * time_s) + 0.5 * rng.standard_normal(time_s.shape)
    return Recording(f"{label}{load_hp}", label, load_hp, 1797.0, 12000.0, signal.astype(np.float32))


def tiny_task(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[dict[str, torch.Tensor], Task]:
    generator = torch.Generator().manual_seed(seed)
    weights = {
        "w1": torch.randn(4, 3, generator=generator, dtype=dtype),
        "b1": torch.randn(4, generator=generator, dtype=dtype),
        "w2": torch.randn(2, 4, generator=generator, dtype=dtype),
    }
    support = torch.randn(6, 3, generator=generator, dtype=dtype)
    query = torch.randn(8, 3, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    return weights, Task(support, labels, query, torch.tensor([0, 1] * 4), n_way=2)


def mlp_logits(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ weights["w1"].T + weights["b1"]) @ weights["w2"].T


def meta_loss(weights: dict[str, torch.Tensor], task: Task, *, first_order: bool) -> torch.Tensor:
    weights = {name: value if value.requires_grad else value.clone().requires_grad_(True) for name, value in weights.items()}

    def support_loss(fast: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(mlp_logits(fast, task.support), task.support_labels)

    fast = inner_loop(support_loss, weights, steps=2, lr=0.5, first_order=first_order)
    return F.cross_entropy(mlp_logits(fast, task.query), task.query_labels)


def test_maml_gradient_matches_finite_differences():
    weights, task = tiny_task()
    leaves = {name: value.clone().requires_grad_(True) for name, value in weights.items()}
    analytic = torch.autograd.grad(meta_loss(leaves, task, first_order=False), list(leaves.values()))

    step = 1e-6
    for (name, value), gradient in zip(weights.items(), analytic):
        numeric = torch.zeros_like(value)
        for index in np.ndindex(*value.shape):
            plus = {**weights, name: value.clone()}
            minus = {**weights, name: value.clone()}
            plus[name][index] += step
            minus[name][index] -= step
            difference = meta_loss(plus, task, first_order=False) - meta_loss(minus, task, first_order=False)
            numeric[index] = difference.detach() / (2 * step)
        torch.testing.assert_close(gradient, numeric, rtol=1e-5, atol=1e-7)


def test_first_order_drops_second_order_terms():
    weights, task = tiny_task()
    leaves = {name: value.clone().requires_grad_(True) for name, value in weights.items()}
    first_order = torch.autograd.grad(meta_loss(leaves, task, first_order=True), list(leaves.values()))
    second_order = torch.autograd.grad(meta_loss(leaves, task, first_order=False), list(leaves.values()))

    # With the inner gradients held constant, the outer gradient is the query gradient
    # at the adapted weights.
    def support_loss(fast: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(mlp_logits(fast, task.support), task.support_labels)

    adapted = inner_loop(support_loss, leaves, steps=2, lr=0.5, first_order=False)
    adapted = {name: value.detach().requires_grad_(True) for name, value in adapted.items()}
    query_gradient = torch.autograd.grad(
        F.cross_entropy(mlp_logits(adapted, task.query), task.query_labels), list(adapted.values())
    )
    for first, expected in zip(first_order, query_gradient):
        torch.testing.assert_close(first, expected)
    assert any(not torch.allclose(first, second) for first, second in zip(first_order, second_order))


def test_reptile_step_moves_towards_task_solution():
    torch.manual_seed(0)
    model = EmbeddingNet(**TINY)
    learner = Reptile(model, steps=10, outer_lr=0.5, inner_steps=5, inner_lr=0.05, meta_batch=1)
    task = Task(
        torch.randn(6, 1, 65), torch.tensor([0, 1, 2] * 2), torch.randn(6, 1, 65), torch.tensor([0, 1, 2] * 2), n_way=3
    )
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    model.train()
    torch.manual_seed(1)
    solution = learner.task_weights(
        torch.cat([task.support, task.query]), torch.cat([task.support_labels, task.query_labels]),
        task.support, task.support_labels, 3, 5, 0.05,
    )
    torch.manual_seed(1)
    learner.meta_train_step([task])
    after = dict(model.named_parameters())

    for name, start in before.items():
        # theta' = theta + 0.5 (phi - theta): halfway along the line to the task solution.
        torch.testing.assert_close(after[name].detach(), start + 0.5 * (solution[name] - start), rtol=1e-4, atol=1e-6)
    distance_before = sum(float((solution[n] - before[n]).pow(2).sum()) for n in before)
    distance_after = sum(float((solution[n] - after[n].detach()).pow(2).sum()) for n in before)
    assert distance_after == pytest.approx(0.25 * distance_before, rel=1e-3)
    assert distance_before > 0


@pytest.fixture(scope="module")
def tones() -> tuple[list[Recording], list[Recording]]:
    recordings = [tone_recording(label, load, seed=10 * load + i) for i, label in enumerate(TONES_HZ) for load in range(3)]
    return split_by_load(recordings, [2])


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_beats_chance(tones, algorithm):
    train, test = tones
    torch.manual_seed(0)
    model, metadata = meta_train(
        train, window_size=256, hop=128, n_way=3, n_shot=2, n_query=4, episodes=15, lr=3e-3,
        seed=0, progress=False, validate_every=5, validation_episodes=3, architecture=TINY,
        algorithm=algorithm, algorithm_options={} if algorithm == "protonet" else {"meta_batch": 2},
    )
    learner = make_learner(algorithm, model, steps=1, **({} if algorithm == "protonet" else {"meta_batch": 2}))

    from edge_agent.evaluation import build_pools_for_test, run_episodes  # noqa: PLC0415

    pools = build_pools_for_test(test, window_size=256, hop=128, input_transform=metadata["input_transform"])
    result = run_episodes(learner, pools, n_way=5, n_shot=2, n_query=10, episodes=20, seed=0)

    assert metadata["algorithm"] == algorithm
    assert result.accuracy >= 0.6  # chance is 0.2


def test_make_learner_rejects_unknown():
    with pytest.raises(ValueError, match=r"unknown algorithm 'relation'; choose one of protonet, reptile, maml, fomaml"):
        make_learner("relation", EmbeddingNet(**TINY), steps=1)
    with pytest.raises(ValueError, match=r"invalid options for algorithm 'protonet': \['inner_steps'\]"):
        make_learner("protonet", EmbeddingNet(**TINY), steps=1, inner_steps=3)


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_same_seed_same_weights(tones, algorithm):
    train, _ = tones
    settings = {
        "window_size": 256, "hop": 128, "n_way": 3, "n_shot": 2, "n_query": 2, "episodes": 3, "seed": 0,
        "progress": False, "validation": 0.0, "architecture": TINY, "algorithm": algorithm,
        "algorithm_options": {"meta_batch": 2, "inner_steps": 2},
    }
    first, _ = meta_train(train, **settings)
    second, _ = meta_train(train, **settings)
    third, _ = meta_train(train, **{**settings, "seed": 1})

    for name, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[name], value, rtol=0, atol=0)
    assert any(not torch.equal(third.state_dict()[name], value) for name, value in first.state_dict().items())
