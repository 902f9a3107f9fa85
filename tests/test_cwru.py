from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from edge_agent.datasets import load_cwru
from edge_agent.datasets.cwru import CWRU_LABELS, CWRU_RECORDS
from edge_agent.errors import DatasetError

MANIFEST_HEADER = "file\tlabel\tfault_diameter_in\tload_hp\trpm\tsample_rate_hz\tde_samples\tsha256\n"


def write_record(path: Path, number: str, signal: np.ndarray, rpm: int = 1797) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path,
        {f"X{number}_DE_time": signal.reshape(-1, 1), f"X{number}RPM": np.array([[rpm]], dtype=np.uint16)},
    )


@pytest.mark.cwru
def test_load_all_records(cwru_dir):
    recordings = load_cwru(cwru_dir)

    assert len(recordings) == 37
    assert {r.label for r in recordings} == set(CWRU_LABELS)
    assert all(r.fs == 12000.0 for r in recordings)
    assert all(r.signal.dtype == np.float32 and r.signal.ndim == 1 for r in recordings)
    assert all(isinstance(r.rpm, float) for r in recordings)
    assert all(np.isfinite(r.signal).all() for r in recordings)


@pytest.mark.cwru
def test_normal_record_decimated_to_12khz(cwru_dir):
    (normal,) = load_cwru(cwru_dir, labels=["normal"])

    assert normal.record_id == "97"
    assert normal.load_hp == 0
    assert normal.rpm == 1796.0
    assert normal.signal.shape == (60985,)  # ceil(243938 / 4)


@pytest.mark.cwru
def test_filter_by_load_and_label(cwru_dir):
    recordings = load_cwru(cwru_dir, loads=[3], labels=["inner_race_007", "ball_021"])

    assert [(r.record_id, r.label, r.load_hp) for r in recordings] == [
        ("108", "inner_race_007", 3),
        ("225", "ball_021", 3),
    ]
    assert recordings[0].rpm == 1721.0


@pytest.mark.cwru
def test_sha256_verification_passes(cwru_dir):
    recordings = load_cwru(cwru_dir, loads=[1], labels=["ball_007"], verify_sha256=True)

    assert [r.record_id for r in recordings] == ["119"]


@pytest.mark.cwru
def test_plain_folder_without_manifest(cwru_dir, tmp_path):
    source = cwru_dir / "12k_drive_end"
    shutil.copy(source / "105.mat", tmp_path / "12k_Drive_End_IR007_0_105.mat")
    (tmp_path / "nested").mkdir()
    shutil.copy(source / "97.mat", tmp_path / "nested" / "97.mat")
    (tmp_path / "notes.mat").write_bytes(b"not a record")

    recordings = load_cwru(tmp_path)

    assert [(r.record_id, r.label, r.load_hp) for r in recordings] == [
        ("97", "normal", 0),
        ("105", "inner_race_007", 0),
    ]
    assert recordings[0].signal.shape == (60985,)


def test_variables_found_by_suffix(tmp_path):
    signal = np.linspace(-1.0, 1.0, 5000)
    write_record(tmp_path / "108.mat", "056", signal, rpm=1721)

    (recording,) = load_cwru(tmp_path)

    assert recording.label == "inner_race_007"
    assert recording.load_hp == 3
    assert recording.rpm == 1721.0
    np.testing.assert_allclose(recording.signal, signal.astype(np.float32))


def test_48khz_record_is_low_pass_filtered(tmp_path):
    time_s = np.arange(48000) / 48000.0
    # 20 kHz lies above the 6 kHz Nyquist limit of 12 kHz and would alias to 4 kHz.
    signal = np.sin(2 * np.pi * 1000 * time_s) + np.sin(2 * np.pi * 20000 * time_s)
    write_record(tmp_path / "97.mat", "097", signal)

    (recording,) = load_cwru(tmp_path)
    spectrum = np.abs(np.fft.rfft(recording.signal[1000:-1000]))
    frequencies = np.fft.rfftfreq(len(recording.signal) - 2000, d=1 / 12000)

    assert recording.signal.shape == (12000,)
    assert frequencies[spectrum.argmax()] == pytest.approx(1000, abs=2)
    alias = spectrum[np.abs(frequencies - 4000) < 5].max()
    assert alias < 1e-3 * spectrum.max()


def test_missing_folder_names_source(tmp_path):
    with pytest.raises(DatasetError, match=r"not found.*105\.mat.*engineering\.case\.edu/bearingdatacenter"):
        load_cwru(tmp_path / "absent")


def test_empty_folder_names_expected_files(tmp_path):
    with pytest.raises(DatasetError, match=r"no CWRU records .*12k_Drive_End_IR007_0_105\.mat.*bearingdatacenter"):
        load_cwru(tmp_path)


def test_manifest_with_missing_file(tmp_path):
    (tmp_path / "MANIFEST.tsv").write_text(
        MANIFEST_HEADER + "12k_drive_end/105.mat\tinner_race_007\t0.007\t0\t1797\t12000\t5000\t-\n"
    )

    with pytest.raises(DatasetError, match=r"1 files listed in .* are missing: 12k_drive_end/105\.mat"):
        load_cwru(tmp_path)


def test_sha256_mismatch(tmp_path):
    write_record(tmp_path / "12k_drive_end" / "105.mat", "105", np.zeros(5000))
    (tmp_path / "MANIFEST.tsv").write_text(
        MANIFEST_HEADER + "12k_drive_end/105.mat\tinner_race_007\t0.007\t0\t1797\t12000\t5000\t" + "0" * 64 + "\n"
    )

    assert len(load_cwru(tmp_path)) == 1
    with pytest.raises(DatasetError, match=r"105\.mat has sha256 [0-9a-f]{64}, but the manifest lists 0{64}"):
        load_cwru(tmp_path, verify_sha256=True)


def test_record_without_drive_end_variable(tmp_path):
    scipy.io.savemat(tmp_path / "105.mat", {"X105_FE_time": np.zeros((10, 1)), "X105RPM": np.array([[1797]])})

    with pytest.raises(DatasetError, match=r"exactly one variable ending in '_DE_time', found none"):
        load_cwru(tmp_path)


def test_unreadable_record(tmp_path):
    (tmp_path / "105.mat").write_bytes(b"MATLAB 5.0 MAT-file truncated")

    with pytest.raises(DatasetError, match=r"failed to read .*105\.mat as a MATLAB file"):
        load_cwru(tmp_path)


def test_unknown_label_and_load(tmp_path):
    write_record(tmp_path / "105.mat", "105", np.zeros(100))

    with pytest.raises(DatasetError, match=r"unknown CWRU labels \['inner_race'\]. Known labels: normal"):
        load_cwru(tmp_path, labels=["inner_race"])
    with pytest.raises(DatasetError, match=r"loads are 0, 1, 2 or 3 hp, got \[4\]"):
        load_cwru(tmp_path, loads=[4])


def test_record_table_covers_forty_files():
    assert len(CWRU_RECORDS) == 40
    assert CWRU_RECORDS["237"].label == "outer_race_021"
    assert CWRU_RECORDS["237"].load_hp == 3
    assert CWRU_RECORDS["100"].sample_rate_hz == 48000.0
