"""Few-shot evaluation of checkpoints on a leak-free scenario, with baselines and plots.

`evaluate` draws `episodes` test episodes per (n_way, n_shot) setting from the test side
of a scenario (see `edge_agent.scenarios`). Support windows come from the first
`support_fraction` of each test recording and query windows from after a one-window gap,
so the two never share a sample. The episodes depend on the seed only, so every
checkpoint and baseline is scored on the same episodes. Accuracy is the mean query accuracy over
episodes, with a 95% confidence interval of 1.96 standard errors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edge_agent.algorithms import ALGORITHMS, Task, make_learner
from edge_agent.baselines import FineTuneClassifier, ScratchClassifier, pretrain_supervised
from edge_agent.checkpoint import load_checkpoint
from edge_agent.datasets.cwru import Recording
from edge_agent.errors import CheckpointError
from edge_agent.features import get_transform
from edge_agent.scenarios import NORMAL_LABEL, TargetRecording, cross_load_test_loads, source_side, target_side
from edge_agent.splits import Windows, cut_windows, split_in_time
from edge_agent.training import _build_pools, _check_pool_sizes, _ClassPool, _sample_episode

SUPPORT_FRACTION = 0.3


class FewShotMethod(Protocol):
    def evaluate_task(self, task: Task) -> tuple[float, float, torch.Tensor]: ...


@dataclass(frozen=True)
class TestPools:
    """Support and query windows per class of the test side, with the class names."""

    support: dict[str, _ClassPool]
    query: dict[str, _ClassPool]
    classes: list[str]


@dataclass
class SettingResult:
    """Accuracy of one method in one (n_way, n_shot) setting over `episodes` episodes."""

    algorithm: str
    method: str
    n_way: int
    n_shot: int
    episodes: int
    accuracy: float
    ci95: float
    classes: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm, "method": self.method, "n_way": self.n_way, "n_shot": self.n_shot,
            "episodes": self.episodes, "accuracy": round(self.accuracy, 6), "ci95": round(self.ci95, 6),
        }


def split_support_query(signal: np.ndarray, window_size: int, hop: int, support_fraction: float) -> tuple[Windows, Windows]:
    """Cut support windows from the first `support_fraction` of `signal` and query windows after a one-window gap."""
    return split_in_time(signal, window_size, hop, int(len(signal) * support_fraction))


def build_pools_for_test(
    recordings: Sequence[Recording],
    *,
    window_size: int,
    hop: int,
    input_transform: str,
    support_fraction: float = SUPPORT_FRACTION,
    device: torch.device | str = "cpu",
) -> TestPools:
    """Split every test recording in time into support and query windows and transform them."""
    classes = sorted({recording.label for recording in recordings})
    support_windows, query_windows = [], []
    for recording in recordings:
        first, second = split_support_query(recording.signal, window_size, hop, support_fraction)
        support_windows.append(first)
        query_windows.append(second)
    transform = get_transform(input_transform)
    torch_device = torch.device(device)
    support = _build_pools(recordings, support_windows, classes, transform, torch_device)
    query = _build_pools(recordings, query_windows, classes, transform, torch_device)
    return TestPools(support, query, classes)


def run_episodes(
    method: FewShotMethod,
    pools: TestPools,
    *,
    n_way: int,
    n_shot: int,
    n_query: int,
    episodes: int,
    seed: int,
    algorithm: str = "",
    method_name: str = "meta",
    on_episode: Callable[[], None] | None = None,
) -> SettingResult:
    """Score `method` on `episodes` episodes drawn with `seed` from `pools`; `on_episode` runs after each."""
    classes = pools.classes
    if not 2 <= n_way <= len(classes):
        raise ValueError(f"n_way must be between 2 and {len(classes)} (the test classes), got {n_way}")
    _check_pool_sizes(pools.support, n_shot, "support")
    index = {label: i for i, label in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(episodes):
        labels = [classes[i] for i in rng.choice(len(classes), size=n_way, replace=False)]
        task = Task(*_sample_episode(pools.support, pools.query, labels, n_shot, n_query, rng, same_recording=True), n_way=n_way)
        _, accuracy, predicted = method.evaluate_task(task)
        accuracies.append(accuracy)
        for truth, guess in zip(task.query_labels.tolist(), predicted.tolist()):
            confusion[index[labels[truth]], index[labels[guess]]] += 1
        if on_episode is not None:
            on_episode()

    values = np.asarray(accuracies)
    standard_error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return SettingResult(
        algorithm, method_name, n_way, n_shot, episodes, float(values.mean()), 1.96 * standard_error,
        list(classes), confusion,
    )


def learner_options(algorithm: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Pick from checkpoint `hyperparameters` the keyword arguments of the learner class."""
    accepted = set(inspect.signature(ALGORITHMS[algorithm].__init__).parameters) - {"self", "model", "steps"}
    return {key: value for key, value in hyperparameters.items() if key in accepted}


def source_loads_of(metadata: dict[str, Any]) -> list[int]:
    """Return the cross-load source loads of a checkpoint."""
    scenario = metadata.get("scenario")
    if isinstance(scenario, dict) and "source_loads" in scenario:
        return [int(load) for load in scenario["source_loads"]]
    return [int(load) for load in metadata.get("loads", [])]


def check_no_leak(path: str | Path, metadata: dict[str, Any], target: Sequence[TargetRecording], window_size: int) -> None:
    """Raise CheckpointError when the checkpoint was trained on any test-side samples.

    A record is a leak unless the checkpoint's `record_ranges` show that training used
    only samples that end at least one window before the test side of that record starts.
    """
    trained = set(str(record_id) for record_id in metadata.get("record_ids", []))
    ranges = metadata.get("record_ranges") or {}
    overlaps = []
    for item in target:
        record_id = item.recording.record_id
        if record_id not in trained:
            continue
        span = ranges.get(record_id)
        if span is not None and int(span[1]) + window_size <= item.start:
            continue
        trained_text = f"samples {span[0]}-{span[1]}" if span is not None else "the whole recording"
        overlaps.append(
            f"record {record_id} ({item.recording.label}, {item.recording.load_hp} hp): trained on "
            f"{trained_text}, tested on samples {item.start}-{item.stop}"
        )
    if overlaps:
        raise CheckpointError(
            f"checkpoint {path} was trained on test-side data of this scenario: {'; '.join(overlaps)}. "
            f"Meta-train a checkpoint with the matching --scenario (and --loads) and evaluate that."
        )


@dataclass
class EvaluationSettings:
    scenario: str
    n_way: int | None
    shots: list[int]
    episodes: int
    n_query: int = 15
    seed: int = 0
    baselines: bool = False
    baseline_steps: int = 100
    pretrain_steps: int = 500
    device: str = "cpu"
    # Overrides of the checkpoints' test-time inner loop (test_inner_lr, test_inner_steps); protonet has none.
    test_overrides: dict[str, Any] = field(default_factory=dict)


def evaluate(
    paths: Sequence[str | Path],
    recordings: Sequence[Recording],
    settings: EvaluationSettings,
    *,
    on_result: Any = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every checkpoint in `paths` (and the baselines) on one scenario.

    `on_result(result)` runs after each setting, `on_progress(done, total)` after each
    episode, counted over all checkpoints, shots and baselines.

    Returns the report: `scenario`, `test_loads`, `classes`, `notes` and `results` (each a
    `SettingResult`). Raises CheckpointError on a leak or when the checkpoints were
    trained for different test sides, and ValueError on an invalid setting.
    """
    loaded = [(str(path), *load_checkpoint(path, settings.device)) for path in paths]
    first_metadata = loaded[0][2]
    window_size = int(first_metadata["window_size"])
    hop = int(first_metadata.get("hop", window_size // 2))
    transform = str(first_metadata["input_transform"])
    source_loads = source_loads_of(first_metadata)
    for path, _, metadata in loaded[1:]:
        if settings.scenario == "cross-load" and source_loads_of(metadata) != source_loads:
            raise CheckpointError(
                f"checkpoints {loaded[0][0]} and {path} were trained on different loads "
                f"({source_loads} and {source_loads_of(metadata)}); evaluate them in separate runs"
            )
        if (int(metadata["window_size"]), str(metadata["input_transform"])) != (window_size, transform):
            raise CheckpointError(f"checkpoints {loaded[0][0]} and {path} use different windows or input transforms")

    target = target_side(settings.scenario, recordings, source_loads, window_size)
    for path, _, metadata in loaded:
        check_no_leak(path, metadata, target, window_size)
    pools = build_pools_for_test(
        [item.recording for item in target], window_size=window_size, hop=hop, input_transform=transform,
        device=settings.device,
    )
    n_way = len(pools.classes) if settings.n_way is None else settings.n_way
    notes = _scenario_notes(settings.scenario, target, source_loads, pools.classes, window_size)
    simulated = [path for path, _, metadata in loaded if metadata.get("dataset") == "simulated"]
    if simulated:
        # The scenario's source side describes CWRU training; such a checkpoint saw none of it.
        notes.append(
            f"{', '.join(simulated)}: meta-trained on simulated bearings only (no CWRU recording, "
            "but simulated faults of every location, ball faults included)"
        )
    if settings.test_overrides:
        notes.append(f"test-time inner loop of reptile, maml and fomaml overridden: {settings.test_overrides}")

    results: list[SettingResult] = []
    methods_count = len(loaded) + (2 if settings.baselines else 0)
    total_episodes = methods_count * len(settings.shots) * settings.episodes
    done_episodes = 0

    def episode_done() -> None:
        nonlocal done_episodes
        done_episodes += 1
        if on_progress is not None:
            on_progress(done_episodes, total_episodes)

    def record(result: SettingResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    for path, model, metadata in loaded:
        algorithm = str(metadata["algorithm"])
        options = learner_options(algorithm, metadata.get("hyperparameters", {}))
        if algorithm != "protonet":
            options.update(settings.test_overrides)
        learner = make_learner(algorithm, model, steps=1, **options)
        for n_shot in settings.shots:
            record(run_episodes(learner, pools, n_way=n_way, n_shot=n_shot, n_query=settings.n_query,
                                episodes=settings.episodes, seed=settings.seed, algorithm=algorithm,
                                on_episode=episode_done))

    if settings.baselines:
        architecture = dict(first_metadata["architecture"])
        pretrained = _pretrain_on_source(settings, recordings, first_metadata, window_size, hop, transform, architecture)
        methods: list[tuple[str, FewShotMethod]] = [
            ("scratch", ScratchClassifier(architecture, steps=settings.baseline_steps, seed=settings.seed)),
            ("fine-tune", FineTuneClassifier(pretrained, steps=settings.baseline_steps)),
        ]
        for name, method in methods:
            for n_shot in settings.shots:
                record(run_episodes(method, pools, n_way=n_way, n_shot=n_shot, n_query=settings.n_query,
                                    episodes=settings.episodes, seed=settings.seed, algorithm="baseline", method_name=name,
                                    on_episode=episode_done))

    return {
        "scenario": settings.scenario,
        "test_loads": sorted({item.recording.load_hp for item in target}),
        "classes": pools.classes,
        "notes": notes,
        "results": results,
    }


def _pretrain_on_source(
    settings: EvaluationSettings, recordings: Sequence[Recording], metadata: dict[str, Any],
    window_size: int, hop: int, transform: str, architecture: dict[str, Any],
) -> torch.nn.Module:
    # The same source recordings (and time ranges) as the first checkpoint, less its validation tail.
    source = source_side(settings.scenario, recordings, source_loads_of(metadata))
    trained_ids = set(metadata.get("record_ids", []))
    source = [recording for recording in source if recording.record_id in trained_ids] or source
    validation = float(metadata.get("hyperparameters", {}).get("validation", 0.0))
    classes = sorted({recording.label for recording in source})
    transform_fn = get_transform(transform)
    features = []
    for label in classes:
        parts = []
        for recording in source:
            if recording.label != label:
                continue
            stop = int(len(recording.signal) * (1.0 - validation))
            parts.append(cut_windows(recording.signal, window_size, hop, stop=stop).windows)
        windows = torch.as_tensor(np.concatenate(parts), dtype=torch.float32, device=settings.device)
        features.append(transform_fn(windows))
    return pretrain_supervised(features, architecture, steps=settings.pretrain_steps, seed=settings.seed)


def _scenario_notes(
    scenario: str, target: Sequence[TargetRecording], source_loads: Sequence[int], classes: Sequence[str], window_size: int
) -> list[str]:
    notes = []
    if scenario == "cross-load":
        test_loads = cross_load_test_loads(source_loads)
        notes.append(f"cross-load: meta-trained on loads {list(source_loads)} hp, tested on {test_loads} hp, {len(classes)} classes")
        if NORMAL_LABEL not in classes:
            notes.append("the normal class has no recording at the test load, so the test side has one class fewer")
        for item in target:
            if item.recording.label == NORMAL_LABEL and item.start > 0:
                notes.append(
                    f"normal (record {item.recording.record_id}) exists at 0 hp only, so it is split in time: "
                    f"the source side may use samples before {item.start - window_size}, the test side starts "
                    f"at sample {item.start}, one window later"
                )
    else:
        notes.append("novel-class: meta-trained on the inner- and outer-race classes at all loads, tested on unseen classes at 0 hp")
    notes.append(f"support from the first {SUPPORT_FRACTION:.0%} of each test recording, queries after a one-window gap")
    return notes


def format_table(report: dict[str, Any]) -> str:
    """Render the report as a plain-text table, with the lead of meta-learning over each baseline."""
    results: list[SettingResult] = report["results"]
    best_meta: dict[tuple[int, int], float] = {}
    for result in results:
        if result.method == "meta":
            key = (result.n_way, result.n_shot)
            best_meta[key] = max(best_meta.get(key, 0.0), result.accuracy)

    lines = [f"scenario {report['scenario']}, test loads {report['test_loads']} hp, classes {', '.join(report['classes'])}"]
    header = f"{'algorithm':<10} {'method':<10} {'n_way':>5} {'n_shot':>6} {'episodes':>8} {'accuracy':>9} {'ci95':>7} {'best meta ahead by':>19}"
    lines += [header, "-" * len(header)]
    for result in results:
        lead = ""
        if result.method != "meta" and (result.n_way, result.n_shot) in best_meta:
            lead = f"{100 * (best_meta[(result.n_way, result.n_shot)] - result.accuracy):+.1f} points"
        lines.append(
            f"{result.algorithm:<10} {result.method:<10} {result.n_way:>5} {result.n_shot:>6} {result.episodes:>8} "
            f"{100 * result.accuracy:>8.2f}% {100 * result.ci95:>6.2f} {lead:>19}"
        )
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def report_json(report: dict[str, Any]) -> dict[str, Any]:
    """Return the report as plain JSON types, accuracy and ci95 as fractions."""
    return {
        "scenario": report["scenario"],
        "test_loads": report["test_loads"],
        "classes": report["classes"],
        "notes": report["notes"],
        "results": [result.as_json() for result in report["results"]],
    }
