"""Simulated recordings with the CWRU classes, for the demo line, meta-training and tests.

Each `Recording` is one machine, one class and one motor load, like one CWRU file, so
`edge_agent.line` and `edge_agent.training` take them unchanged. The ten labels are the
CWRU ones: normal, and inner race, ball and outer race faults of 0.007, 0.014 and
0.021 inch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from edge_agent.datasets.cwru import Recording
from edge_agent.simulation.vibration import FaultLocation, MachineParameters, random_machine, simulate_vibration

SAMPLE_RATE_HZ = 12000.0

SIMULATED_CLASSES: dict[str, tuple[FaultLocation, float]] = {
    "normal": ("normal", 0.0),
    **{
        f"{location}_{size:03d}": (location, size / 1000.0)
        for size in (7, 14, 21)
        for location in ("inner_race", "ball", "outer_race")
    },
}
SIMULATED_LABELS: tuple[str, ...] = tuple(sorted(SIMULATED_CLASSES))


def _check_labels(labels: Iterable[str] | None) -> list[str]:
    chosen = list(SIMULATED_LABELS if labels is None else labels)
    unknown = sorted(set(chosen) - set(SIMULATED_CLASSES))
    if unknown:
        raise ValueError(f"unknown simulated labels {unknown}; known: {', '.join(SIMULATED_LABELS)}")
    if not chosen:
        raise ValueError("labels must name at least one class")
    return chosen


def simulate_machine_recordings(
    machine: MachineParameters,
    *,
    labels: Iterable[str] | None = None,
    loads: Sequence[int] = (0,),
    duration_s: float = 10.0,
    fs: float = SAMPLE_RATE_HZ,
    seed: int = 0,
    prefix: str = "sim",
) -> list[Recording]:
    """Simulate one recording per label and load of `machine`.

    Record ids are "{prefix}-{label}-{load}hp". The same seed gives the same signals.
    """
    rng = np.random.default_rng(seed)
    recordings = []
    for label in _check_labels(labels):
        location, size_in = SIMULATED_CLASSES[label]
        for load_hp in loads:
            signal = simulate_vibration(machine, location, size_in, load_hp, duration_s, fs, rng)
            recordings.append(
                Recording(
                    record_id=f"{prefix}-{label}-{load_hp}hp",
                    label=label,
                    load_hp=int(load_hp),
                    rpm=machine.shaft_rpm(load_hp),
                    fs=fs,
                    signal=signal,
                )
            )
    return recordings


def simulate_training_recordings(
    *,
    machines: int = 8,
    labels: Iterable[str] | None = None,
    loads: Sequence[int] = (0, 1, 2, 3),
    duration_s: float = 4.0,
    seed: int = 0,
    per_machine_classes: bool = False,
) -> list[Recording]:
    """Simulate recordings of `machines` randomly drawn machines for meta-training.

    Each machine gets its own bearing geometry, speed, resonances and noise (see
    `random_machine`), so the classes of one label differ across recordings the way
    different rigs differ. With `per_machine_classes` every machine's fault is a class
    of its own ("sim3/ball_007"), whose recordings differ only in load. Meta-training
    then learns what separates faults on one machine and what stays the same across
    loads, which a few-shot task on a new machine requires. With shared labels it
    would have to map one fault on very different machines to one prototype.
    """
    if machines < 1:
        raise ValueError(f"machines must be at least 1, got {machines}")
    rng = np.random.default_rng(seed)
    recordings = []
    for index in range(machines):
        machine = random_machine(rng)
        simulated = simulate_machine_recordings(
            machine, labels=labels, loads=loads, duration_s=duration_s,
            seed=int(rng.integers(2**31)), prefix=f"sim{index}",
        )
        if per_machine_classes:
            simulated = [replace(r, label=f"sim{index}/{r.label}") for r in simulated]
        recordings += simulated
    return recordings
