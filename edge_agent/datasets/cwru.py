"""Loader for the CWRU bearing records, 12 kHz drive-end channel.

The Case Western Reserve University Bearing Data Center publishes one MATLAB file per
fault condition and motor load (https://engineering.case.edu/bearingdatacenter). This
module reads the drive-end accelerometer signal of each file and returns it at 12 kHz.

Two folder layouts are accepted:

- a folder with a `MANIFEST.tsv` (columns `file`, `label`, `load_hp`, `sample_rate_hz`,
  `sha256`, ...) that lists each record, or
- any folder that contains the official files, found anywhere below it by their file number:
  `105.mat` and `12k_Drive_End_IR007_0_105.mat` both count as record 105. The label, load
  and sample rate then come from the table `CWRU_RECORDS` in this module.

Quirks handled here:

- The normal baseline records (97-100) exist at 48 kHz only. They are low-pass filtered
  and decimated by 4 (zero-phase) to 12 kHz.
- Variable names do not always match the file number in the wider dataset, so variables
  are found by their suffix (`_DE_time`, `RPM`).
- The RPM variable is a uint16 and is converted to float.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import scipy.signal

from edge_agent.errors import DatasetError

CWRU_SOURCE_URL = "https://engineering.case.edu/bearingdatacenter"
TARGET_SAMPLE_RATE_HZ = 12000.0
MANIFEST_NAME = "MANIFEST.tsv"


@dataclass(frozen=True)
class CwruRecordInfo:
    """Static facts about one official CWRU file."""

    label: str
    load_hp: int
    sample_rate_hz: float


def _build_record_table() -> dict[str, CwruRecordInfo]:
    table: dict[str, CwruRecordInfo] = {}
    # Normal baseline, recorded at 48 kHz only.
    for load_hp, number in enumerate((97, 98, 99, 100)):
        table[str(number)] = CwruRecordInfo("normal", load_hp, 48000.0)

    # 12 kHz drive-end faults: first file number of the four loads 0..3 hp.
    first_numbers = {
        "inner_race_007": 105,
        "ball_007": 118,
        "outer_race_007": 130,
        "inner_race_014": 169,
        "ball_014": 185,
        "outer_race_014": 197,
        "inner_race_021": 209,
        "ball_021": 222,
        "outer_race_021": 234,
    }
    for label, first in first_numbers.items():
        for load_hp in range(4):
            table[str(first + load_hp)] = CwruRecordInfo(label, load_hp, 12000.0)
    return table


CWRU_RECORDS: dict[str, CwruRecordInfo] = _build_record_table()
"""File number -> label, load and native sample rate of the 12 kHz drive-end set.

The outer-race records are those with the fault at 6 o'clock.
"""

CWRU_LABELS: tuple[str, ...] = tuple(dict.fromkeys(info.label for info in CWRU_RECORDS.values()))

_FILE_NUMBER = re.compile(r"(?:^|_)(\d+)\.mat$")


@dataclass(frozen=True)
class Recording:
    """One drive-end vibration record at `fs` Hz.

    `signal` is a float32 array of shape (n_samples,). `rpm` is the shaft speed stored in
    the file, which differs from the nominal speed of the load by up to 9 rpm.
    """

    record_id: str
    label: str
    load_hp: int
    rpm: float
    fs: float
    signal: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class _RecordSource:
    record_id: str
    path: Path
    label: str
    load_hp: int
    sample_rate_hz: float
    sha256: str | None


def load_cwru(
    data_dir: str | Path,
    loads: Iterable[int] | None = None,
    labels: Iterable[str] | None = None,
    *,
    verify_sha256: bool = False,
) -> list[Recording]:
    """Load the CWRU 12 kHz drive-end records in `data_dir`, sorted by file number.

    `loads` (hp, 0-3) and `labels` (for example "normal", "inner_race_007") select a
    subset; None keeps all. `verify_sha256` checks each file against the manifest, which
    costs about one extra read of each file.

    Raises DatasetError when the folder, the manifest's files or a requested subset are
    missing, when a file cannot be read, or when a hash does not match.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(
            f"CWRU data folder {root} not found. Pass the folder with --data-dir or set "
            f"EDGE_AGENT_CWRU_DIR. Expected the 12 kHz drive-end files "
            f"({_expected_files_text()}) or a {MANIFEST_NAME} listing them. "
            f"Download them from {CWRU_SOURCE_URL}."
        )

    manifest = root / MANIFEST_NAME
    sources = _read_manifest(manifest) if manifest.is_file() else _scan_folder(root)
    selected = _select(sources, loads, labels, root)

    recordings = []
    for source in selected:
        if verify_sha256:
            _verify_sha256(source)
        recordings.append(_read_recording(source))
    return recordings


def _expected_files_text() -> str:
    numbers = sorted(CWRU_RECORDS, key=int)
    return (
        f"{numbers[0]}.mat to {numbers[-1]}.mat, up to {len(numbers)} files, named like 105.mat "
        f"or 12k_Drive_End_IR007_0_105.mat"
    )


def _read_manifest(manifest: Path) -> list[_RecordSource]:
    root = manifest.parent
    required = {"file", "label", "load_hp", "sample_rate_hz"}
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing_columns = required - set(reader.fieldnames or [])
        if missing_columns:
            raise DatasetError(
                f"{manifest} lacks the columns {sorted(missing_columns)}. "
                f"Restore the manifest or delete it to load the folder by file numbers."
            )
        rows = list(reader)

    sources = []
    missing_files = []
    for line_number, row in enumerate(rows, start=2):
        path = root / row["file"]
        if not path.is_file():
            missing_files.append(row["file"])
            continue
        try:
            load_hp = int(row["load_hp"])
            sample_rate_hz = float(row["sample_rate_hz"])
        except ValueError as exc:
            raise DatasetError(f"{manifest} line {line_number}: invalid number: {exc}") from exc
        sha256 = row.get("sha256") or None
        sources.append(
            _RecordSource(_record_id(path), path, row["label"], load_hp, sample_rate_hz, sha256)
        )

    if missing_files:
        raise DatasetError(
            f"{len(missing_files)} files listed in {manifest} are missing: "
            f"{', '.join(missing_files[:10])}{' ...' if len(missing_files) > 10 else ''}. "
            f"Download them from {CWRU_SOURCE_URL}."
        )
    return sources


def _record_id(path: Path) -> str:
    match = _FILE_NUMBER.search(path.name)
    return str(int(match.group(1))) if match else path.stem


def _scan_folder(root: Path) -> list[_RecordSource]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.mat")):
        match = _FILE_NUMBER.search(path.name)
        if match is None:
            continue
        record_id = str(int(match.group(1)))
        if record_id in CWRU_RECORDS and record_id not in found:
            found[record_id] = path

    sources = []
    for record_id, path in found.items():
        info = CWRU_RECORDS[record_id]
        sources.append(
            _RecordSource(record_id, path, info.label, info.load_hp, info.sample_rate_hz, None)
        )
    return sources


def _select(
    sources: list[_RecordSource],
    loads: Iterable[int] | None,
    labels: Iterable[str] | None,
    root: Path,
) -> list[_RecordSource]:
    load_set = None if loads is None else {int(load) for load in loads}
    label_set = None if labels is None else set(labels)

    if load_set is not None and not load_set <= {0, 1, 2, 3}:
        raise DatasetError(f"CWRU loads are 0, 1, 2 or 3 hp, got {sorted(load_set)}")
    if label_set is not None and not label_set <= set(CWRU_LABELS):
        unknown = sorted(label_set - set(CWRU_LABELS))
        raise DatasetError(f"unknown CWRU labels {unknown}. Known labels: {', '.join(CWRU_LABELS)}")

    selected = [
        source
        for source in sources
        if (load_set is None or source.load_hp in load_set)
        and (label_set is None or source.label in label_set)
    ]
    if not selected:
        raise DatasetError(
            f"no CWRU records in {root} match loads={_describe(load_set)} "
            f"labels={_describe(label_set)}. Expected the 12 kHz drive-end files "
            f"({_expected_files_text()}). Download them from {CWRU_SOURCE_URL}."
        )
    return sorted(selected, key=lambda source: (_sort_key(source.record_id), source.record_id))


def _describe(values: set[int] | set[str] | None) -> str:
    return "all" if values is None else str(sorted(values))


def _sort_key(record_id: str) -> int:
    return int(record_id) if record_id.isdigit() else -1


def _verify_sha256(source: _RecordSource) -> None:
    if source.sha256 is None:
        return
    digest = hashlib.sha256(source.path.read_bytes()).hexdigest()
    if digest != source.sha256.lower():
        raise DatasetError(
            f"{source.path} has sha256 {digest}, but the manifest lists {source.sha256}. "
            f"The file is corrupt or a different version: download it again from "
            f"{CWRU_SOURCE_URL}."
        )


def _read_recording(source: _RecordSource) -> Recording:
    # scipy raises IndexError, not ValueError, on some truncated headers.
    try:
        variables = scipy.io.loadmat(source.path)
    except (OSError, ValueError, TypeError, IndexError, NotImplementedError) as exc:
        raise DatasetError(f"failed to read {source.path} as a MATLAB file: {exc}") from exc

    drive_end = _find_variable(variables, "_DE_time", source.path)
    rpm = _find_variable(variables, "RPM", source.path)

    signal = np.asarray(drive_end, dtype=np.float64).reshape(-1)
    signal = _resample_to_target(signal, source)
    return Recording(
        record_id=source.record_id,
        label=source.label,
        load_hp=source.load_hp,
        rpm=float(np.asarray(rpm).reshape(-1)[0]),
        fs=TARGET_SAMPLE_RATE_HZ,
        signal=signal.astype(np.float32),
    )


def _find_variable(variables: dict[str, object], suffix: str, path: Path) -> np.ndarray:
    names = [name for name in variables if not name.startswith("__") and name.endswith(suffix)]
    if len(names) != 1:
        present = sorted(name for name in variables if not name.startswith("__"))
        raise DatasetError(
            f"{path} should hold exactly one variable ending in {suffix!r}, "
            f"found {names or 'none'} among {present}"
        )
    return np.asarray(variables[names[0]])


def _resample_to_target(signal: np.ndarray, source: _RecordSource) -> np.ndarray:
    if source.sample_rate_hz == TARGET_SAMPLE_RATE_HZ:
        return signal
    factor = source.sample_rate_hz / TARGET_SAMPLE_RATE_HZ
    if factor < 1 or factor != int(factor):
        raise DatasetError(
            f"{source.path} is sampled at {source.sample_rate_hz:g} Hz, which is not an "
            f"integer multiple of {TARGET_SAMPLE_RATE_HZ:g} Hz"
        )
    # Chebyshev type I anti-aliasing filter run forwards and backwards (zero phase).
    return np.asarray(scipy.signal.decimate(signal, int(factor), zero_phase=True))
