"""The bearing simulator: fault frequencies, signal model, seeds and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from edge_agent.simulation import (
    SIMULATED_LABELS,
    SKF_6205,
    BearingGeometry,
    MachineParameters,
    fault_frequencies,
    simulate_machine_recordings,
    simulate_training_recordings,
    simulate_vibration,
)

FS = 12000.0


def envelope_spectrum(signal: np.ndarray, band_hz: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Squared-envelope spectrum of `signal` band-passed around the resonance."""
    sos = scipy.signal.butter(4, band_hz, btype="bandpass", fs=FS, output="sos")
    envelope = np.abs(scipy.signal.hilbert(scipy.signal.sosfiltfilt(sos, signal))) ** 2
    envelope -= envelope.mean()
    spectrum = np.abs(np.fft.rfft(envelope))
    return np.fft.rfftfreq(len(envelope), 1 / FS), spectrum


def peak_near(freqs: np.ndarray, spectrum: np.ndarray, target_hz: float, search_hz: float = 40.0) -> float:
    """Frequency of the largest envelope line within `search_hz` of `target_hz`."""
    band = (freqs > target_hz - search_hz) & (freqs < target_hz + search_hz)
    return float(freqs[band][np.argmax(spectrum[band])])


def test_skf_6205_frequencies_match_cwru_multiples() -> None:
    # Multiples of the shaft speed that the Bearing Data Center lists for this bearing;
    # its rolling-element figure is twice BSF.
    freqs = fault_frequencies(SKF_6205, shaft_hz=1.0)
    assert freqs.bpfi_hz == pytest.approx(5.4152, abs=1e-3)
    assert freqs.bpfo_hz == pytest.approx(3.5848, abs=1e-3)
    assert freqs.ftf_hz == pytest.approx(0.39828, abs=1e-4)
    assert 2 * freqs.bsf_hz == pytest.approx(4.7135, abs=1e-3)


def test_frequencies_scale_with_shaft_speed() -> None:
    slow = fault_frequencies(SKF_6205, 10.0)
    fast = fault_frequencies(SKF_6205, 30.0)
    assert fast.bpfo_hz == pytest.approx(3 * slow.bpfo_hz)
    assert fast.bpfi_hz + fast.bpfo_hz == pytest.approx(SKF_6205.n_balls * 30.0)


def test_contact_angle_lowers_inner_race_rate() -> None:
    angled = BearingGeometry(9, 0.3126, 1.537, contact_angle_deg=40.0)
    assert fault_frequencies(angled, 30.0).bpfi_hz < fault_frequencies(SKF_6205, 30.0).bpfi_hz


@pytest.mark.parametrize(
    ("location", "rate"),
    [("outer_race", "bpfo_hz"), ("inner_race", "bpfi_hz")],
)
def test_envelope_shows_fault_frequency(location: str, rate: str) -> None:
    machine = MachineParameters()
    signal = simulate_vibration(machine, location, 0.014, 0, 4.0, FS, np.random.default_rng(1))
    freqs, spectrum = envelope_spectrum(signal.astype(np.float64), (2500.0, 4500.0))
    expected = getattr(fault_frequencies(machine.geometry, machine.shaft_rpm(0) / 60), rate)
    assert peak_near(freqs, spectrum, expected) == pytest.approx(expected, abs=2.0)


def test_inner_race_has_shaft_sidebands() -> None:
    machine = MachineParameters()
    signal = simulate_vibration(machine, "inner_race", 0.014, 0, 4.0, FS, np.random.default_rng(2))
    freqs, spectrum = envelope_spectrum(signal.astype(np.float64), (2500.0, 4500.0))
    shaft_hz = machine.shaft_rpm(0) / 60
    bpfi = fault_frequencies(machine.geometry, shaft_hz).bpfi_hz
    floor = float(np.median(spectrum[(freqs > 20) & (freqs < 600)]))
    sideband = spectrum[np.argmin(np.abs(freqs - (bpfi + shaft_hz)))]
    assert sideband > 5 * floor


def test_faults_are_stronger_than_normal() -> None:
    machine = MachineParameters()
    rng = np.random.default_rng(3)
    normal = simulate_vibration(machine, "normal", 0.0, 0, 2.0, FS, rng)
    for size in (0.007, 0.021):
        faulty = simulate_vibration(machine, "ball", size, 0, 2.0, FS, rng)
        assert np.std(faulty) > 1.5 * np.std(normal)


def test_speed_falls_with_load() -> None:
    machine = MachineParameters()
    assert machine.shaft_rpm(0) == pytest.approx(1797.0)
    assert machine.shaft_rpm(3) == pytest.approx(1730.1, abs=1.0)


def test_same_seed_same_signal() -> None:
    first = simulate_machine_recordings(MachineParameters(), labels=["ball_014"], duration_s=0.5, seed=7)
    second = simulate_machine_recordings(MachineParameters(), labels=["ball_014"], duration_s=0.5, seed=7)
    third = simulate_machine_recordings(MachineParameters(), labels=["ball_014"], duration_s=0.5, seed=8)
    assert np.array_equal(first[0].signal, second[0].signal)
    assert not np.array_equal(first[0].signal, third[0].signal)


def test_recordings_look_like_cwru() -> None:
    recordings = simulate_machine_recordings(MachineParameters(), loads=[0, 3], duration_s=0.5)
    assert len(recordings) == 2 * len(SIMULATED_LABELS)
    assert {r.label for r in recordings} == set(SIMULATED_LABELS)
    first = recordings[0]
    assert first.fs == FS
    assert first.signal.dtype == np.float32
    assert first.signal.shape == (6000,)
    assert np.all(np.isfinite(first.signal))


def test_training_classes_per_machine() -> None:
    recordings = simulate_training_recordings(
        machines=2, labels=["normal", "ball_007"], loads=[0, 1], duration_s=0.3, per_machine_classes=True
    )
    assert sorted({r.label for r in recordings}) == ["sim0/ball_007", "sim0/normal", "sim1/ball_007", "sim1/normal"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: BearingGeometry(2, 0.3, 1.5), "n_balls"),
        (lambda: BearingGeometry(9, 2.0, 1.5), "ball_diameter"),
        (lambda: fault_frequencies(SKF_6205, 0.0), "shaft_hz"),
        (lambda: MachineParameters(damping_ratio=(1.5, 0.1)), "damping"),
        (lambda: MachineParameters().shaft_rpm(200), "stops"),
        (lambda: simulate_vibration(MachineParameters(), "cage", 0.01, 0, 1.0, FS, np.random.default_rng()), "location"),
        (lambda: simulate_vibration(MachineParameters(), "ball", 0.0, 0, 1.0, FS, np.random.default_rng()), "size_in"),
        (lambda: simulate_machine_recordings(MachineParameters(), labels=["cracked"]), "unknown simulated labels"),
        (lambda: simulate_training_recordings(machines=0), "machines"),
    ],
)
def test_bad_inputs_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
