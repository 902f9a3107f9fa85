"""Simulated vibration of rolling-element bearings, healthy and with local faults."""

from edge_agent.simulation.bearing import SKF_6205, BearingGeometry, FaultFrequencies, fault_frequencies
from edge_agent.simulation.recordings import (
    SIMULATED_LABELS,
    simulate_machine_recordings,
    simulate_training_recordings,
)
from edge_agent.simulation.vibration import MachineParameters, random_machine, simulate_vibration

__all__ = [
    "SKF_6205",
    "SIMULATED_LABELS",
    "BearingGeometry",
    "FaultFrequencies",
    "MachineParameters",
    "fault_frequencies",
    "random_machine",
    "simulate_machine_recordings",
    "simulate_training_recordings",
    "simulate_vibration",
]
