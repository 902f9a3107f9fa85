from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.cli import main
from edge_agent.datasets import Recording
from edge_agent.datasets.cwru import CWRU_RECORDS
from edge_agent.errors import CheckpointError
from edge_agent.evaluation import check_no_leak, split_support_query
from edge_agent.scenarios import TargetRecording, source_side, target_side

WINDOW, HOP = 256, 128
# Tone frequency in Hz per class; each load shifts it a little, like a change in shaft speed.
TONE_HZ = {
    "normal": 300.0, "inner_race_007": 700.0, "ball_007": 1100.0, "outer_race_007": 1500.0,
    "inner_race_014": 1900.0, "ball_014": 2300.0, "outer_race_014": 2700.0,
    "inner_race_021": 3100.0, "ball_021": 3500.0, "outer_race_021": 3900.0,
}
# Only the normal record at 0 hp exists in the CWRU 12 kHz drive-end set.
PRESENT_IDS = [record_id for record_id, info in CWRU_RECORDS.items() if info.label != "normal" or info.load_hp == 0]


def fake_recordings(seconds: float = 0.2) -> list[Recording]:
    recordings = []
    for record_id in PRESENT_IDS:
        info = CWRU_RECORDS[record_id]
        length = int(12000 * seconds) * (2 if info.label == "normal" else 1)
        recordings.append(Recording(record_id, info.label, info.load_hp, 1797.0, 12000.0, np.zeros(length, np.float32)))
    return recordings


@pytest.fixture(scope="module")
def cwru_like_dir(tmp_path_factory) -> Path:
    """CWRU-named .mat files of noisy tones: 1 s per record, normal 2 s at 48 kHz."""
    folder = tmp_path_factory.mktemp("cwru_like")
    rng = np.random.default_rng(0)
    for record_id in PRESENT_IDS:
        info = CWRU_RECORDS[record_id]
        seconds = 2.0 if info.label == "normal" else 1.0
        time_s = np.arange(int(info.sample_rate_hz * seconds)) / info.sample_rate_hz
        tone = np.sin(2 * np.pi * TONE_HZ[info.label] * (1 - 0.01 * info.load_hp) * time_s)
        signal = tone + 0.5 * rng.standard_normal(time_s.shape)
        name = f"X{int(record_id):03d}"
        scipy.io.savemat(folder / f"{record_id}.mat", {f"{name}_DE_time": signal[:, None], f"{name}RPM": np.array([[1797]])})
    return folder


@settings(max_examples=30, deadline=None)
@given(st.sets(st.sampled_from([0, 1, 2, 3]), min_size=1, max_size=3))
def test_cross_load_sides_share_no_samples(source_loads):
    recordings = fake_recordings()
    source = source_side("cross-load", recordings, source_loads)
    target = target_side("cross-load", recordings, source_loads, WINDOW)
    source_lengths = {recording.record_id: len(recording.signal) for recording in source}

    assert target
    for item in target:
        assert item.recording.load_hp not in source_loads
        if item.recording.record_id in source_lengths:
            assert item.recording.label == "normal"
            assert source_lengths[item.recording.record_id] + WINDOW <= item.start


def test_novel_class_sides_are_disjoint():
    recordings = fake_recordings()
    source = source_side("novel-class", recordings)
    target = target_side("novel-class", recordings, [0, 1, 2, 3], WINDOW)

    assert {r.label for r in source} == {f"{kind}_{size}" for kind in ("inner_race", "outer_race") for size in ("007", "014", "021")}
    assert len(source) == 24
    assert sorted(item.recording.label for item in target) == ["ball_007", "ball_014", "ball_021", "normal"]
    assert {item.recording.load_hp for item in target} == {0}
    assert not {r.record_id for r in source} & {item.recording.record_id for item in target}


@settings(max_examples=50, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=5000),
    size=st.integers(min_value=4, max_value=300),
    hop=st.integers(min_value=1, max_value=300),
    fraction=st.floats(min_value=0.05, max_value=0.95),
)
def test_support_query_windows_never_overlap(length, size, hop, fraction):
    support, query = split_support_query(np.arange(length, dtype=np.float32), size, hop, fraction)

    if len(support) and len(query):
        assert support.starts.max() + size + size <= query.starts.min()
    for windows in (support, query):
        assert np.all(windows.starts + size <= length)


def test_leak_check_names_overlap():
    metadata = {"record_ids": ["97", "118"], "record_ranges": {"97": [0, 30000], "118": [0, 12000]}}
    target = [
        TargetRecording(Recording("97", "normal", 0, 1797.0, 12000.0, np.zeros(10, np.float32)), 30100, 60000),
        TargetRecording(Recording("118", "ball_007", 0, 1797.0, 12000.0, np.zeros(10, np.float32)), 0, 12000),
    ]

    with pytest.raises(CheckpointError, match=r"record 97 \(normal, 0 hp\): trained on samples 0-30000, tested on samples 30100-60000; record 118"):
        check_no_leak("model.pt", metadata, target, WINDOW)
    check_no_leak("model.pt", {**metadata, "record_ranges": {"97": [0, 29800]}}, target[:1], WINDOW)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def novel_class_checkpoint(cwru_like_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "novel.pt"
    code = main([
        "meta-train", "--data-dir", str(cwru_like_dir), "--scenario", "novel-class", "--algorithm", "fomaml",
        "--window", str(WINDOW), "--hop", str(HOP), "--episodes", "6", "--n-way", "3", "--n-shot", "2",
        "--n-query", "3", "--validate-every", "3", "--meta-batch", "1", "--inner-steps", "1",
        "--threads", "1", "--no-progress", "--out", str(path),
    ])
    assert code == 0
    return path


def test_evaluate_json_report(cwru_like_dir, novel_class_checkpoint, tmp_path, capsys):
    code, out, _ = run_cli([
        "evaluate", "--checkpoint", str(novel_class_checkpoint), "--data-dir", str(cwru_like_dir),
        "--scenario", "novel-class", "--n-shot", "1,2", "--episodes", "4", "--baselines",
        "--baseline-steps", "2", "--pretrain-steps", "2", "--plots", str(tmp_path / "plots"), "--json",
        "--test-inner-lr", "0.002",
    ], capsys)
    report = json.loads(out)

    assert code == 0
    assert report["scenario"] == "novel-class"
    assert [(r["algorithm"], r["method"], r["n_shot"]) for r in report["results"]] == [
        ("fomaml", "meta", 1), ("fomaml", "meta", 2), ("baseline", "scratch", 1), ("baseline", "scratch", 2),
        ("baseline", "fine-tune", 1), ("baseline", "fine-tune", 2),
    ]
    for result in report["results"]:
        assert set(result) == {"algorithm", "method", "n_way", "n_shot", "episodes", "accuracy", "ci95"}
        assert result["n_way"] == 4
        assert result["episodes"] == 4
        assert 0.0 <= result["accuracy"] <= 1.0
        assert result["ci95"] >= 0.0
    assert "test-time inner loop of reptile, maml and fomaml overridden: {'test_inner_lr': 0.002}" in report["notes"]
    assert (tmp_path / "plots" / "accuracy_vs_shots.png").stat().st_size > 0
    assert (tmp_path / "plots" / "confusion_hardest.png").stat().st_size > 0


@pytest.fixture(scope="module")
def cross_load_checkpoint(cwru_like_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "cross.pt"
    code = main([
        "meta-train", "--data-dir", str(cwru_like_dir), "--loads", "1,2,3", "--window", str(WINDOW), "--hop", str(HOP),
        "--episodes", "3", "--n-shot", "2", "--n-query", "3", "--threads", "1", "--no-progress", "--out", str(path),
    ])
    assert code == 0
    return path


def test_evaluate_table_notes_time_split(cwru_like_dir, cross_load_checkpoint, capsys):
    code, out, _ = run_cli([
        "evaluate", "--checkpoint", str(cross_load_checkpoint), "--data-dir", str(cwru_like_dir),
        "--scenario", "cross-load", "--n-shot", "1", "--episodes", "3",
    ], capsys)

    assert code == 0
    assert "protonet   meta          10      1        3" in out
    assert "normal (record 97) exists at 0 hp only, so it is split in time" in out


def test_evaluate_rejects_leaking_checkpoint(cwru_like_dir, cross_load_checkpoint, capsys):
    code, _, err = run_cli([
        "evaluate", "--checkpoint", str(cross_load_checkpoint), "--data-dir", str(cwru_like_dir),
        "--scenario", "novel-class", "--episodes", "2",
    ], capsys)

    assert code == 2
    assert (
        "was trained on test-side data of this scenario: record 97 (normal, 0 hp): "
        "trained on samples 0-12000, tested on samples 0-24000" in err
    )


def test_evaluate_rejects_too_many_ways(cwru_like_dir, novel_class_checkpoint, capsys):
    code, _, err = run_cli([
        "evaluate", "--checkpoint", str(novel_class_checkpoint), "--data-dir", str(cwru_like_dir),
        "--scenario", "novel-class", "--n-way", "5", "--episodes", "2",
    ], capsys)

    assert code == 2
    assert "n_way must be between 2 and 4 (the test classes), got 5" in err


def test_evaluate_rejects_zero_shot(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "x.pt", "--scenario", "novel-class", "--n-shot", "0,1"])
    assert "every n_shot must be at least 1, got '0,1'" in capsys.readouterr().err
