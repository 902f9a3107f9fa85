"""Vibration of a machine with a rolling-element bearing, healthy or with a local fault.

The signal model follows Randall and Antoni, "Rolling element bearing diagnostics - A
tutorial", Mechanical Systems and Signal Processing 25 (2011) 485-520:

- A local fault (a spall) makes a short impact each time a rolling element passes it,
  at BPFO for the outer race, BPFI for the inner race and twice BSF for a ball, which
  strikes both races once per spin. The spacing of the impacts jitters randomly by
  `slip_std` (1-2 % in real bearings) because the elements slip.
- Each impact excites structural resonances, modelled as damped sinusoids
  exp(-2 pi zeta f t) sin(2 pi f sqrt(1 - zeta^2) t), so the fault shows as
  high-frequency bursts whose envelope repeats at the fault frequency.
- The outer race is fixed in the load zone, so its impacts keep one amplitude. An
  inner-race fault turns with the shaft through the load zone, so its impacts are
  amplitude-modulated at the shaft speed. A ball fault is carried around by the cage
  and is modulated at the cage speed (FTF); its impacts on the inner and the outer race
  alternate in strength.
- A spall of width w gives an entry event and an exit impact w / v apart, where v is
  the rolling speed over the faulty surface, so larger faults leave a comb in the
  spectrum as well as stronger impacts.
- Shaft harmonics (unbalance, misalignment) and broadband noise filtered by the same
  structure, plus white sensor noise, form the healthy background.

The shaft speed falls with motor load as an induction motor's slip grows; the CWRU
rig ran at 1797, 1772, 1750 and 1730 rpm at 0, 1, 2 and 3 hp.

All draws come from the `numpy.random.Generator` passed in, so a seed fixes the signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.signal

from edge_agent.simulation.bearing import SKF_6205, BearingGeometry, fault_frequencies

FaultLocation = Literal["normal", "inner_race", "ball", "outer_race"]
FAULT_LOCATIONS: tuple[FaultLocation, ...] = ("normal", "inner_race", "ball", "outer_race")

# Impulse responses are cut where the slowest mode has decayed to 1e-3 of its peak.
_DECAY_TO = 1e-3
# Fault size that gives `impact_amplitude`, in inches (the smallest CWRU fault).
_REFERENCE_SIZE_IN = 0.007


@dataclass(frozen=True)
class MachineParameters:
    """Structure, speed and sensor of one simulated machine.

    Amplitudes are in the sensor's unit (g for the CWRU accelerometers). Resonances and
    damping ratios pair up by position.

    NOTE: the bearing and speeds are the CWRU rig's, but the default resonances, damping,
    amplitudes and noise levels are plausible values, not fitted to its recordings.
    """

    geometry: BearingGeometry = SKF_6205
    rpm_no_load: float = 1797.0
    rpm_drop_per_hp: float = 22.3
    resonance_hz: tuple[float, ...] = (3300.0, 5200.0)
    damping_ratio: tuple[float, ...] = (0.05, 0.08)
    mode_gain: tuple[float, ...] = (1.0, 0.5)
    slip_std: float = 0.015
    impact_amplitude: float = 1.0
    modulation_depth: float = 0.8
    shaft_amplitude: tuple[float, ...] = (0.04, 0.02, 0.01)
    structural_noise_rms: float = 0.05
    sensor_noise_rms: float = 0.02
    load_gain_per_hp: float = 0.1

    def __post_init__(self) -> None:
        if not len(self.resonance_hz) == len(self.damping_ratio) == len(self.mode_gain) >= 1:
            raise ValueError("resonance_hz, damping_ratio and mode_gain must have the same, non-zero length")
        if any(not 0 < zeta < 1 for zeta in self.damping_ratio):
            raise ValueError(f"damping ratios must be in (0, 1), got {self.damping_ratio}")
        if self.rpm_no_load <= 0 or self.rpm_drop_per_hp < 0:
            raise ValueError(
                f"rpm_no_load must be positive and rpm_drop_per_hp non-negative, "
                f"got {self.rpm_no_load} and {self.rpm_drop_per_hp}"
            )

    def shaft_rpm(self, load_hp: float) -> float:
        """Shaft speed under `load_hp`; raises ValueError when the load stalls the shaft."""
        rpm = self.rpm_no_load - self.rpm_drop_per_hp * load_hp
        if rpm <= 0:
            raise ValueError(f"load {load_hp} hp stops a shaft of {self.rpm_no_load} rpm at no load")
        return rpm


def random_machine(rng: np.random.Generator, geometry: BearingGeometry | None = None) -> MachineParameters:
    """Draw a machine for meta-training: geometry, speed, structure and noise all vary.

    The ranges are wide on purpose (domain randomisation), so that an embedding trained
    on them does not depend on one rig's resonances or speed.
    """
    if geometry is None:
        ball = rng.uniform(0.2, 0.6)
        geometry = BearingGeometry(
            n_balls=int(rng.integers(7, 14)),
            ball_diameter=ball,
            pitch_diameter=ball / rng.uniform(0.15, 0.3),
            contact_angle_deg=float(rng.choice([0.0, rng.uniform(10.0, 25.0)])),
        )
    n_modes = int(rng.integers(1, 4))
    return MachineParameters(
        geometry=geometry,
        rpm_no_load=float(rng.uniform(1000.0, 3600.0)),
        rpm_drop_per_hp=float(rng.uniform(5.0, 30.0)),
        resonance_hz=tuple(float(f) for f in np.sort(rng.uniform(1500.0, 5500.0, n_modes))),
        damping_ratio=tuple(float(z) for z in rng.uniform(0.02, 0.12, n_modes)),
        mode_gain=tuple(float(g) for g in rng.uniform(0.3, 1.0, n_modes)),
        slip_std=float(rng.uniform(0.005, 0.02)),
        impact_amplitude=float(rng.uniform(0.3, 2.0)),
        modulation_depth=float(rng.uniform(0.4, 1.0)),
        shaft_amplitude=tuple(float(a) for a in rng.uniform(0.0, 0.15, 3)),
        structural_noise_rms=float(rng.uniform(0.02, 0.15)),
        sensor_noise_rms=float(rng.uniform(0.005, 0.05)),
        load_gain_per_hp=float(rng.uniform(0.0, 0.2)),
    )


def impulse_response(machine: MachineParameters, fs: float) -> np.ndarray:
    """Return the structure's response to a unit impact: a sum of damped sinusoids."""
    slowest = min(zeta * f for zeta, f in zip(machine.damping_ratio, machine.resonance_hz))
    n = max(8, int(math.ceil(-math.log(_DECAY_TO) / (2 * math.pi * slowest) * fs)))
    t = np.arange(n) / fs
    response = np.zeros(n)
    for f, zeta, gain in zip(machine.resonance_hz, machine.damping_ratio, machine.mode_gain):
        damped_hz = f * math.sqrt(1 - zeta**2)
        response += gain * np.exp(-2 * math.pi * zeta * f * t) * np.sin(2 * math.pi * damped_hz * t)
    return response


def _impact_times(rate_hz: float, duration_s: float, slip_std: float, rng: np.random.Generator) -> np.ndarray:
    """Times of impacts at `rate_hz`, each spacing jittered by `slip_std` (relative)."""
    count = int(math.ceil(duration_s * rate_hz * 1.1)) + 2
    spacing = (1.0 + slip_std * rng.standard_normal(count)) / rate_hz
    times = rng.uniform(0.0, 1.0 / rate_hz) + np.concatenate([[0.0], np.cumsum(spacing[:-1])])
    return times[times < duration_s]


def _place_impulses(n_samples: int, fs: float, times: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Spread each impulse over its two neighbouring samples (linear interpolation)."""
    train = np.zeros(n_samples + 1)
    position = times * fs
    index = np.floor(position).astype(np.int64)
    fraction = position - index
    np.add.at(train, index, amplitudes * (1.0 - fraction))
    np.add.at(train, index + 1, amplitudes * fraction)
    return train[:n_samples]


def _fault_impacts(
    machine: MachineParameters,
    location: FaultLocation,
    size_in: float,
    load_hp: float,
    duration_s: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Return times (s) and amplitudes of every entry and exit event of the fault."""
    geometry = machine.geometry
    freqs = fault_frequencies(geometry, machine.shaft_rpm(load_hp) / 60.0)
    ratio = geometry.diameter_ratio
    if location == "outer_race":
        rate_hz = freqs.bpfo_hz
        rolling_speed = math.pi * geometry.pitch_diameter * (1 + ratio) * freqs.ftf_hz
    elif location == "inner_race":
        rate_hz = freqs.bpfi_hz
        rolling_speed = math.pi * geometry.pitch_diameter * (1 - ratio) * (freqs.shaft_hz - freqs.ftf_hz)
    elif location == "ball":
        rate_hz = 2 * freqs.bsf_hz
        rolling_speed = math.pi * geometry.ball_diameter * freqs.bsf_hz
    else:
        raise ValueError(f"no impacts for fault location {location!r}")

    times = _impact_times(rate_hz, duration_s, machine.slip_std, rng)
    level = machine.impact_amplitude * (size_in / _REFERENCE_SIZE_IN) ** 0.7
    level *= 1.0 + machine.load_gain_per_hp * load_hp
    amplitudes = level * (1.0 + 0.1 * rng.standard_normal(len(times)))

    # Inner-race faults turn through the load zone with the shaft, ball faults with the cage.
    depth = machine.modulation_depth
    if location == "inner_race":
        phase = rng.uniform(0, 2 * math.pi)
        amplitudes *= 1 - depth * (1 - np.cos(2 * math.pi * freqs.shaft_hz * times + phase)) / 2
    elif location == "ball":
        phase = rng.uniform(0, 2 * math.pi)
        amplitudes *= 1 - depth * (1 - np.cos(2 * math.pi * freqs.ftf_hz * times + phase)) / 2
        amplitudes[1::2] *= 0.5

    # Entry into the spall is a weaker event than the impact at its far edge.
    exit_delay_s = size_in / rolling_speed
    times = np.concatenate([times, times + exit_delay_s])
    amplitudes = np.concatenate([-0.4 * amplitudes, amplitudes])
    keep = times < duration_s
    return times[keep], amplitudes[keep]


def simulate_vibration(
    machine: MachineParameters,
    location: FaultLocation,
    size_in: float,
    load_hp: float,
    duration_s: float,
    fs: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Simulate `duration_s` of vibration at `fs` Hz; returns float32 of shape (n,).

    `location` "normal" ignores `size_in`. Raises ValueError on a non-positive duration,
    sample rate or fault size.
    """
    if duration_s <= 0 or fs <= 0:
        raise ValueError(f"duration_s and fs must be positive, got {duration_s} and {fs}")
    if location not in FAULT_LOCATIONS:
        raise ValueError(f"location must be one of {', '.join(FAULT_LOCATIONS)}, got {location!r}")
    if location != "normal" and size_in <= 0:
        raise ValueError(f"size_in must be positive for a {location} fault, got {size_in}")
    n = int(round(duration_s * fs))
    t = np.arange(n) / fs
    response = impulse_response(machine, fs)

    # Broadband excitation (friction, flow, other machines) through the same structure.
    signal = scipy.signal.fftconvolve(rng.standard_normal(n), response, mode="full")[:n]
    signal *= machine.structural_noise_rms / max(float(np.std(signal)), 1e-12)

    if location != "normal":
        times, amplitudes = _fault_impacts(machine, location, size_in, load_hp, duration_s, rng)
        train = _place_impulses(n, fs, times, amplitudes)
        signal += scipy.signal.fftconvolve(train, response, mode="full")[:n]

    shaft_hz = machine.shaft_rpm(load_hp) / 60.0
    for harmonic, amplitude in enumerate(machine.shaft_amplitude, start=1):
        signal += amplitude * np.sin(2 * math.pi * harmonic * shaft_hz * t + rng.uniform(0, 2 * math.pi))
    signal += machine.sensor_noise_rms * rng.standard_normal(n)
    return signal.astype(np.float32)

