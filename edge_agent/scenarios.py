"""The source and test sides of the two CWRU few-shot scenarios.

- `cross-load`: meta-train on some motor loads, test on the others. The normal class
  has one recording only (record 97, 0 hp). So when 0 hp is a test load, the normal
  recording is split in time: its first `NORMAL_SOURCE_FRACTION` feeds meta-training,
  and the test side starts one window after that part ends. Every other recording is on
  one side only. At 3 hp there is no normal recording, so that test side has 9 classes.
- `novel-class`: meta-train on the six inner- and outer-race classes at every load, and
  test on the four classes never seen in training (normal and the three ball faults) at
  0 hp.

Inside a test recording, `evaluation` draws support and query windows from disjoint time
ranges with a one-window gap between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.datasets.cwru import Recording

SCENARIOS = ("cross-load", "novel-class")
ALL_LOADS = (0, 1, 2, 3)
NORMAL_LABEL = "normal"
NORMAL_SOURCE_FRACTION = 0.5
NOVEL_CLASS_SOURCE_PREFIXES = ("inner_race_", "outer_race_")
NOVEL_CLASS_TEST_LABELS = ("normal", "ball_007", "ball_014", "ball_021")
NOVEL_CLASS_TEST_LOAD = 0


@dataclass(frozen=True)
class TargetRecording:
    """A test-side recording: `recording.signal` contains samples [start, stop) of its record."""

    recording: Recording
    start: int
    stop: int


def _check_scenario(scenario: str) -> None:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")


def _normal_boundary(recording: Recording) -> int:
    return int(len(recording.signal) * NORMAL_SOURCE_FRACTION)


def source_side(
    scenario: str, recordings: Sequence[Recording], loads: Iterable[int] | None = None
) -> list[Recording]:
    """Select the meta-training side of `scenario` from `recordings`.

    `loads` (hp) are the cross-load source loads, by default 0, 1 and 2; novel-class
    ignores them. A normal recording at a load outside `loads` contributes its first
    part in time (see the module docstring).
    """
    _check_scenario(scenario)
    if scenario == "novel-class":
        return [r for r in recordings if r.label.startswith(NOVEL_CLASS_SOURCE_PREFIXES)]

    load_set = set(ALL_LOADS[:3] if loads is None else loads)
    selected = []
    for recording in recordings:
        if recording.load_hp in load_set:
            selected.append(recording)
        elif recording.label == NORMAL_LABEL and not any(
            r.label == NORMAL_LABEL and r.load_hp in load_set for r in recordings
        ):
            selected.append(dataclasses.replace(recording, signal=recording.signal[: _normal_boundary(recording)]))
    return selected


def target_side(
    scenario: str, recordings: Sequence[Recording], source_loads: Iterable[int], window_size: int
) -> list[TargetRecording]:
    """Select the test side of `scenario`; cross-load tests on the loads not in `source_loads`.

    A normal recording whose first part is on the source side (cross-load) starts one
    window after that part.
    """
    _check_scenario(scenario)
    if scenario == "novel-class":
        chosen = [
            r for r in recordings if r.label in NOVEL_CLASS_TEST_LABELS and r.load_hp == NOVEL_CLASS_TEST_LOAD
        ]
        return [TargetRecording(r, 0, len(r.signal)) for r in chosen]

    source_set = set(source_loads)
    test_loads = set(ALL_LOADS) - source_set
    if not test_loads:
        raise ValueError(
            f"cross-load has no test load: the model was trained on loads {sorted(source_set)}; "
            f"meta-train with --loads leaving out the loads to test on"
        )
    normal_in_source = any(r.label == NORMAL_LABEL and r.load_hp in source_set for r in recordings)
    selected = []
    for recording in recordings:
        if recording.load_hp not in test_loads:
            continue
        start = 0
        if recording.label == NORMAL_LABEL and not normal_in_source:
            start = _normal_boundary(recording) + window_size
        selected.append(
            TargetRecording(dataclasses.replace(recording, signal=recording.signal[start:]), start, len(recording.signal))
        )
    return selected


def cross_load_test_loads(source_loads: Iterable[int]) -> list[int]:
    """Return the loads (hp) that a cross-load model trained on `source_loads` is tested on."""
    return sorted(set(ALL_LOADS) - set(source_loads))
