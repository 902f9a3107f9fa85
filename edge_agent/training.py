"""Episodic meta-training and evaluation of the embedding.

Each episode draws `n_way` classes, `n_shot` support and `n_query` query windows per
class, and a learner from `edge_agent.algorithms` (ProtoNet by default, Snell, Swersky
and Zemel, NeurIPS 2017) updates the embedding on a meta-batch of episodes. For each class the support and
query windows may come from recordings at different loads, which pushes the embedding towards load-invariant features.

Validation is leak-free in time: the last `validation` fraction of every source recording,
after a one-window gap, is held out and only ever used as query windows. The state with
the best validation accuracy is kept (the latest one on ties), and training stops early
after `patience` validations below the best.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from edge_agent.algorithms import MetaLearner, Task, make_learner
from edge_agent.classifier import resolve_device
from edge_agent.datasets.cwru import Recording
from edge_agent.features import LOG_SPECTRUM_V1, get_transform
from edge_agent.model import EmbeddingNet
from edge_agent.splits import Windows, cut_windows, split_fraction_in_time

_FEATURE_BATCH = 512


@dataclass(frozen=True)
class _ClassPool:
    """Transformed windows of one class: features (n, 1, n_bins), recording index (n,)."""

    features: torch.Tensor
    recording: np.ndarray


@dataclass(frozen=True)
class EvaluationResult:
    """Mean query accuracy over few-shot episodes, with its standard error."""

    accuracy: float
    standard_error: float
    episodes: int
    n_way: int
    n_shot: int


def meta_train(
    recordings: Sequence[Recording],
    *,
    window_size: int = 2048,
    hop: int = 1024,
    n_way: int = 10,
    n_shot: int = 5,
    n_query: int = 10,
    episodes: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    validation: float = 0.2,
    validate_every: int = 25,
    validation_episodes: int = 20,
    patience: int = 8,
    architecture: dict[str, Any] | None = None,
    input_transform: str = LOG_SPECTRUM_V1,
    algorithm: str = "protonet",
    algorithm_options: dict[str, Any] | None = None,
) -> tuple[EmbeddingNet, dict[str, Any]]:
    """Meta-train an `EmbeddingNet` with `algorithm` on episodes from `recordings`.

    `algorithm` is a name in `edge_agent.algorithms.ALGORITHMS` and `algorithm_options`
    its keyword hyper-parameters (for example `inner_steps`); `lr` is the outer learning
    rate. `episodes` counts outer steps, each of which takes the learner's meta-batch of
    episodes.

    `validation` is the fraction of each recording held out in time for validation (0
    disables validation, early stopping and best-state selection). `n_way` is capped at
    the number of classes. Returns the model in eval mode and metadata for
    `save_checkpoint`. Results are reproducible for a fixed seed, device and torch
    thread count.

    Raises ValueError on invalid settings or when a class has too few windows.

    NOTE: the model is small, so torch's intra-op threads gain little. On a 2-core box
    shared with other busy processes, 2 threads ran about 10x slower than
    `torch.set_num_threads(1)` (torch 2.13 CPU build), so callers on busy boxes should
    set 1 thread.
    """
    _check_settings(window_size, hop, n_shot, n_query, episodes, validation)
    torch_device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    transform = get_transform(input_transform)
    classes = sorted({recording.label for recording in recordings})
    if len(classes) < 2:
        raise ValueError(f"meta-training needs at least 2 classes, got {classes}")
    n_way = min(n_way, len(classes))

    # Cut and transform windows once; the transform has no trainable parameters.
    train_windows, val_windows = _cut_train_validation(recordings, window_size, hop, validation)
    train_pools = _build_pools(recordings, train_windows, classes, transform, torch_device)
    val_pools = _build_pools(recordings, val_windows, classes, transform, torch_device) if validation else None
    _check_pool_sizes(train_pools, n_shot + 1, "training")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EmbeddingNet(**(architecture or {})).to(torch_device)
    learner = make_learner(algorithm, model, steps=episodes, lr=lr, **(algorithm_options or {}))
    rng = np.random.default_rng(seed)

    history = _train_loop(
        learner, rng, train_pools, val_pools,
        n_way=n_way, n_shot=n_shot, n_query=n_query, episodes=episodes,
        validate_every=validate_every, validation_episodes=validation_episodes,
        patience=patience, seed=seed, progress=progress,
    )
    model.eval()

    metadata: dict[str, Any] = {
        "algorithm": algorithm,
        "hyperparameters": {
            **learner.hyperparameters(),
            "n_way": n_way, "n_shot": n_shot, "n_query": n_query, "episodes": episodes, "hop": hop,
            "validation": validation, "validate_every": validate_every,
            "validation_episodes": validation_episodes, "patience": patience,
        },
        "window_size": window_size,
        "hop": hop,
        "input_transform": input_transform,
        "sample_rate_hz": float(recordings[0].fs),
        "classes": classes,
        "loads": sorted({int(recording.load_hp) for recording in recordings}),
        "record_ids": [recording.record_id for recording in recordings],
        "record_ranges": {recording.record_id: [0, int(len(recording.signal))] for recording in recordings},
        "seed": seed,
        "architecture": copy.deepcopy(model.config),
        "training": history,
    }
    return model, metadata


def _check_settings(
    window_size: int, hop: int, n_shot: int, n_query: int, episodes: int, validation: float
) -> None:
    if window_size < 16 or hop <= 0:
        raise ValueError(f"window_size must be at least 16 and hop positive, got {window_size} and {hop}")
    if n_shot < 1 or n_query < 1 or episodes < 1:
        raise ValueError(
            f"n_shot, n_query and episodes must be positive, got {n_shot}, {n_query}, {episodes}"
        )
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must be in [0, 1), got {validation}")


def _cut_train_validation(
    recordings: Sequence[Recording], window_size: int, hop: int, validation: float
) -> tuple[list[Windows], list[Windows]]:
    train, val = [], []
    for recording in recordings:
        if validation:
            first, second = split_fraction_in_time(recording.signal, window_size, hop, 1.0 - validation)
        else:
            first = cut_windows(recording.signal, window_size, hop)
            second = cut_windows(recording.signal[:0], window_size, hop)
        train.append(first)
        val.append(second)
    return train, val


def transform_windows(
    windows: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Apply `transform` in batches: (n, size) -> (n, 1, n_bins) on `device`."""
    parts = []
    for begin in range(0, len(windows), _FEATURE_BATCH):
        batch = torch.as_tensor(windows[begin : begin + _FEATURE_BATCH], dtype=torch.float32, device=device)
        parts.append(transform(batch))
    return torch.cat(parts) if parts else torch.empty(0, device=device)


def _build_pools(
    recordings: Sequence[Recording],
    windows: Sequence[Windows],
    classes: Sequence[str],
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> dict[str, _ClassPool]:
    pools = {}
    for label in classes:
        members = [i for i, recording in enumerate(recordings) if recording.label == label and len(windows[i])]
        if not members:
            continue
        stacked = np.concatenate([windows[i].windows for i in members])
        owner = np.concatenate([np.full(len(windows[i]), i) for i in members])
        pools[label] = _ClassPool(transform_windows(stacked, transform, device), owner)
    return pools


def _check_pool_sizes(pools: dict[str, _ClassPool], needed: int, pool_name: str) -> None:
    for label, pool in pools.items():
        counts = np.bincount(pool.recording)
        if counts.max(initial=0) < needed:
            raise ValueError(
                f"class {label!r} has at most {counts.max(initial=0)} {pool_name} windows per "
                f"recording, but an episode needs {needed}: lower n_shot or hop, or use "
                f"longer recordings"
            )


def _sample_episode(
    support_pools: dict[str, _ClassPool],
    query_pools: dict[str, _ClassPool],
    labels: Sequence[str],
    n_shot: int,
    n_query: int,
    rng: np.random.Generator,
    same_recording: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one episode: support (n_way * n_shot, 1, n_bins), labels, query, labels.

    When the support and query pools are the same object, the query windows exclude the
    support windows. Classes whose query pool is small contribute fewer query windows.
    """
    support_parts, support_labels, query_parts, query_labels = [], [], [], []
    for way, label in enumerate(labels):
        support_pool, query_pool = support_pools[label], query_pools[label]

        support_recordings = np.unique(support_pool.recording)
        support_recording = rng.choice(support_recordings)
        candidates = np.flatnonzero(support_pool.recording == support_recording)
        support_index = rng.choice(candidates, size=n_shot, replace=False)

        if same_recording:
            query_recording = support_recording
        else:
            query_recording = rng.choice(np.unique(query_pool.recording))
        query_candidates = np.flatnonzero(query_pool.recording == query_recording)
        if query_pool is support_pool:
            query_candidates = np.setdiff1d(query_candidates, support_index)
        query_index = rng.choice(query_candidates, size=min(n_query, len(query_candidates)), replace=False)

        support_parts.append(support_pool.features[torch.as_tensor(support_index)])
        query_parts.append(query_pool.features[torch.as_tensor(query_index)])
        support_labels += [way] * len(support_index)
        query_labels += [way] * len(query_index)

    device = support_parts[0].device
    return (
        torch.cat(support_parts),
        torch.tensor(support_labels, device=device),
        torch.cat(query_parts),
        torch.tensor(query_labels, device=device),
    )


def _train_loop(
    learner: MetaLearner,
    rng: np.random.Generator,
    train_pools: dict[str, _ClassPool],
    val_pools: dict[str, _ClassPool] | None,
    *,
    n_way: int,
    n_shot: int,
    n_query: int,
    episodes: int,
    validate_every: int,
    validation_episodes: int,
    patience: int,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    model = learner.model
    classes = sorted(train_pools)
    best_accuracy, best_episode = -1.0, 0
    best_state: dict[str, torch.Tensor] | None = None
    stale, last_accuracy, episode = 0, float("nan"), 0
    started = time.perf_counter()

    bar = _progress_bar(progress)
    with bar if bar is not None else nullcontext():
        task = bar.add_task("meta-train", total=episodes, loss=float("nan"), val=float("nan")) if bar else None
        for episode in range(1, episodes + 1):
            tasks = []
            for _ in range(learner.tasks_per_step):
                labels = [classes[i] for i in rng.choice(len(classes), size=n_way, replace=False)]
                tasks.append(Task(*_sample_episode(
                    train_pools, train_pools, labels, n_shot, n_query, rng, same_recording=False
                ), n_way=n_way))
            loss = learner.meta_train_step(tasks)

            if val_pools and (episode % validate_every == 0 or episode == episodes):
                last_accuracy, _ = _validate(
                    learner, train_pools, val_pools, n_way, n_shot, n_query, validation_episodes, seed
                )
                # Ties go to the later state: held-out windows of the training loads are
                # often all classified correctly early on, long before other loads are.
                if last_accuracy >= best_accuracy:
                    best_accuracy, best_episode = last_accuracy, episode
                    best_state = copy.deepcopy(model.state_dict())
                    stale = 0
                else:
                    stale += 1
            if bar is not None and task is not None:
                bar.update(task, advance=1, loss=loss, val=last_accuracy)
            if val_pools and stale >= patience:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "episodes_run": episode,
        "best_episode": best_episode if best_state is not None else episode,
        "best_val_accuracy": best_accuracy if best_state is not None else None,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "device": str(next(model.parameters()).device),
    }


def _progress_bar(enabled: bool) -> Progress | None:
    if not enabled or not sys.stderr.isatty():
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}  val acc {task.fields[val]:.3f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _validate(
    learner: MetaLearner,
    support_pools: dict[str, _ClassPool],
    query_pools: dict[str, _ClassPool],
    n_way: int,
    n_shot: int,
    n_query: int,
    episodes: int,
    seed: int,
) -> tuple[float, float]:
    """Return mean accuracy and loss over a fixed set of validation episodes."""
    rng = np.random.default_rng(seed + 1)
    classes = sorted(query_pools)
    n_way = min(n_way, len(classes))
    accuracies, losses = [], []
    for _ in range(episodes):
        labels = [classes[i] for i in rng.choice(len(classes), size=n_way, replace=False)]
        episode = Task(*_sample_episode(
            support_pools, query_pools, labels, n_shot, n_query, rng, same_recording=True
        ), n_way=n_way)
        loss, accuracy, _ = learner.evaluate_task(episode)
        accuracies.append(accuracy)
        losses.append(loss)
    return float(np.mean(accuracies)), float(np.mean(losses))


@torch.no_grad()
def evaluate_few_shot(
    model: EmbeddingNet,
    recordings: Sequence[Recording],
    *,
    window_size: int,
    hop: int,
    n_shot: int,
    n_query: int = 15,
    n_way: int | None = None,
    episodes: int = 100,
    support_fraction: float = 0.3,
    seed: int = 0,
    input_transform: str = LOG_SPECTRUM_V1,
    device: str | torch.device = "cpu",
) -> EvaluationResult:
    """Measure few-shot accuracy on `recordings`, which should be unseen in training.

    Each recording is split in time: support windows come from its first
    `support_fraction`, query windows from after a one-window gap. Each episode draws
    `n_way` classes (default: all), `n_shot` support and up to `n_query` query windows per
    class from one recording of that class.
    """
    torch_device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    classes = sorted({recording.label for recording in recordings})
    n_way = len(classes) if n_way is None else n_way
    if not 2 <= n_way <= len(classes):
        raise ValueError(f"n_way must be between 2 and {len(classes)} classes, got {n_way}")

    # Imported here because evaluation builds on this module.
    from edge_agent.algorithms import ProtoNet
    from edge_agent.evaluation import build_pools_for_test, run_episodes

    pools = build_pools_for_test(
        recordings, window_size=window_size, hop=hop, input_transform=input_transform,
        support_fraction=support_fraction, device=torch_device,
    )
    result = run_episodes(
        ProtoNet(model, steps=1), pools, n_way=n_way, n_shot=n_shot, n_query=n_query, episodes=episodes, seed=seed
    )
    return EvaluationResult(
        accuracy=result.accuracy,
        standard_error=result.ci95 / 1.96,
        episodes=episodes,
        n_way=n_way,
        n_shot=n_shot,
    )
