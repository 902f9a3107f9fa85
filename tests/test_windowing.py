"""Window assembly: continuity rules, chunk splits, resampling, retention and counters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import PayloadError
from edge_agent.payloads import SignalChunk
from edge_agent.windowing import Window, WindowAssembler

FS = 12000.0
T0 = 1_700_000_000.0


def make_assembler(size: int = 16, hop: int = 8, **options: float) -> WindowAssembler:
    settings_ = {"gap_tolerance_s": 0.5 / FS, "retain_s": 60.0, "max_resample_ratio": 8.0}
    settings_.update(options)
    return WindowAssembler(size, hop, FS, **settings_)  # type: ignore[arg-type]


def chunk(values: np.ndarray, seq: int, ts: float, fs: float = FS) -> SignalChunk:
    return SignalChunk(ts=ts, fs=fs, seq=seq, values=np.asarray(values, dtype=np.float32))


def feed(
    assembler: WindowAssembler,
    signal: np.ndarray,
    lengths: list[int],
    *,
    stream: str = "line1/pump",
    fs: float = FS,
    first_seq: int = 0,
    ts: float = T0,
) -> list[Window]:
    """Push `signal` split into chunks of the given lengths, continuous in seq and ts."""
    windows = []
    offset = 0
    for index, length in enumerate(lengths):
        piece = signal[offset : offset + length]
        windows += assembler.push(
            stream, chunk(piece, first_seq + index, ts + offset / fs, fs), received=float(index)
        )
        offset += length
    return windows


def ramp(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


# Cutting windows


def test_windows_every_hop() -> None:
    assembler = make_assembler(size=16, hop=8)
    windows = feed(assembler, ramp(64), [64])
    assert [w.samples[0] for w in windows] == [0, 8, 16, 24, 32, 40, 48]
    for window in windows:
        np.testing.assert_array_equal(window.samples, ramp(64)[int(window.samples[0]) :][:16])
        assert window.samples.dtype == np.float32
        assert window.samples.shape == (16,)


def test_window_times() -> None:
    windows = feed(make_assembler(size=16, hop=8), ramp(40), [40])
    # float64 epoch seconds near 1.7e9 resolve about 0.24 us.
    assert windows[1].start_ts == pytest.approx(T0 + 8 / FS, abs=1e-6)
    assert windows[1].end_ts == pytest.approx(T0 + 24 / FS, abs=1e-6)


def test_window_samples_read_only() -> None:
    window = feed(make_assembler(), ramp(16), [16])[0]
    with pytest.raises(ValueError):
        window.samples[0] = 1.0


def test_seq_last_and_received_from_completing_chunk() -> None:
    windows = feed(make_assembler(size=16, hop=16), ramp(32), [10, 10, 12], first_seq=5)
    assert [w.seq_last for w in windows] == [6, 7]
    assert [w.received for w in windows] == [1.0, 2.0]


def test_hop_larger_than_size() -> None:
    windows = feed(make_assembler(size=4, hop=10), ramp(30), [7, 7, 7, 9])
    assert [w.samples.tolist() for w in windows] == [[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=199), unique=True, max_size=30))
def test_any_split_gives_same_windows(cuts: list[int]) -> None:
    signal = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    whole = feed(make_assembler(size=24, hop=10), signal, [200])

    bounds = [0, *sorted(cuts), 200]
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    split = feed(make_assembler(size=24, hop=10), signal, lengths)

    assert len(split) == len(whole)
    for a, b in zip(whole, split):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.start_ts == b.start_ts
        assert a.end_ts == b.end_ts


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2399), unique=True, max_size=12))
def test_any_split_same_resampled_windows(cuts: list[int]) -> None:
    signal = np.random.default_rng(1).standard_normal(2400).astype(np.float32)
    options = {"gap_tolerance_s": 0.001}
    whole = feed(make_assembler(size=64, hop=32, **options), signal, [2400], fs=48000.0)

    bounds = [0, *sorted(cuts), 2400]
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    split = feed(make_assembler(size=64, hop=32, **options), signal, lengths, fs=48000.0)

    assert len(whole) > 5
    assert len(split) == len(whole)
    for a, b in zip(whole, split):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.start_ts == b.start_ts


# Continuity


def test_seq_gap_starts_new_run() -> None:
    assembler = make_assembler(size=16, hop=16)
    windows = feed(assembler, ramp(10), [10])
    # seq 1 is lost; seq 2 arrives at the right time but must not join seq 0.
    windows += assembler.push("line1/pump", chunk(ramp(16) + 100, 2, T0 + 20 / FS), received=0.0)
    assert len(windows) == 1
    assert windows[0].samples[0] == 100
    assert windows[0].start_ts == pytest.approx(T0 + 20 / FS)
    assert assembler.counters.gaps == 1
    assert assembler.counters.dropped_samples == 10


def test_ts_gap_starts_new_run() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(10), [10])
    late = T0 + 10 / FS + 0.2
    windows = assembler.push("line1/pump", chunk(ramp(16) + 100, 1, late), received=0.0)
    assert len(windows) == 1
    assert windows[0].start_ts == pytest.approx(late)
    assert windows[0].samples[0] == 100
    assert assembler.counters.gaps == 1


def test_ts_early_is_gap() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(10), [10])
    assembler.push("line1/pump", chunk(ramp(6), 1, T0), received=0.0)
    assert assembler.counters.gaps == 1


def test_ts_jitter_within_tolerance() -> None:
    assembler = make_assembler(size=16, hop=16, gap_tolerance_s=0.001)
    feed(assembler, ramp(10), [10])
    windows = assembler.push("line1/pump", chunk(ramp(6) + 10, 1, T0 + 10 / FS + 0.0005), received=0.0)
    assert len(windows) == 1
    np.testing.assert_array_equal(windows[0].samples, ramp(16))
    assert windows[0].start_ts == T0
    assert assembler.counters.gaps == 0


def test_duplicate_dropped() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(10), [10])
    assert assembler.push("line1/pump", chunk(ramp(10), 0, T0), received=0.0) == []
    windows = assembler.push("line1/pump", chunk(ramp(6) + 10, 1, T0 + 10 / FS), received=0.0)
    np.testing.assert_array_equal(windows[0].samples, ramp(16))
    assert assembler.counters.duplicates == 1
    assert assembler.counters.gaps == 0


def test_out_of_order_dropped() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(12), [4, 4, 4])
    assert assembler.push("line1/pump", chunk(ramp(4), 1, T0 + 4 / FS), received=0.0) == []
    windows = assembler.push("line1/pump", chunk(ramp(4) + 12, 3, T0 + 12 / FS), received=0.0)
    np.testing.assert_array_equal(windows[0].samples, ramp(16))
    assert assembler.counters.out_of_order == 1
    assert assembler.counters.gaps == 0


def test_sender_restart_starts_new_run() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(40), [10, 10, 10, 10])
    restart_ts = T0 + 3600.0
    windows = assembler.push("line1/pump", chunk(ramp(16) + 500, 0, restart_ts), received=0.0)
    assert len(windows) == 1
    assert windows[0].start_ts == pytest.approx(restart_ts)
    assert assembler.counters.restarts == 1
    assert assembler.counters.duplicates == 0
    assert assembler.counters.out_of_order == 0
    assert assembler.counters.dropped_samples == 8


def test_streams_independent() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(10), [10], stream="a")
    feed(assembler, ramp(10) + 100, [10], stream="b")
    windows = assembler.push("a", chunk(ramp(6) + 10, 1, T0 + 10 / FS), received=0.0)
    np.testing.assert_array_equal(windows[0].samples, ramp(16))
    assert windows[0].stream == "a"


# Sample rate


def sine(frequency: float, fs: float, n: int) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(n) / fs).astype(np.float32)


@pytest.mark.parametrize("source_fs", [48000.0, 25600.0, 44100.0])
def test_resampled_sine_keeps_frequency(source_fs: float) -> None:
    size = 2048
    assembler = make_assembler(size=size, hop=1024, gap_tolerance_s=0.001)
    signal = sine(1000.0, source_fs, int(source_fs))
    windows = feed(assembler, signal, [4800] * (len(signal) // 4800), fs=source_fs)

    assert len(windows) >= 5
    assert assembler.counters.resampled == len(windows)
    for window in windows:
        assert window.samples.shape == (size,)
        assert window.end_ts == pytest.approx(window.start_ts + size / FS)
        # The window must be the 1 kHz sine sampled at 12 kHz from its start_ts.
        t = window.start_ts - T0 + np.arange(size) / FS
        np.testing.assert_allclose(window.samples, np.sin(2 * np.pi * 1000.0 * t), atol=2e-3)


def test_resampling_removes_aliases() -> None:
    # 9 kHz is above the 6 kHz Nyquist frequency of 12 kHz and would alias to 3 kHz.
    assembler = make_assembler(size=2048, hop=2048, gap_tolerance_s=0.001)
    windows = feed(assembler, sine(9000.0, 48000.0, 48000), [48000], fs=48000.0)
    assert max(float(np.max(np.abs(w.samples))) for w in windows) < 0.01


def test_rate_below_model_rejected() -> None:
    assembler = make_assembler()
    with pytest.raises(PayloadError, match="sample rate 8000 Hz cannot be used: the model runs at 12000 Hz") as info:
        assembler.push("line1/pump", chunk(ramp(16), 0, T0, fs=8000.0), received=0.0)
    assert info.value.reason == "sample_rate"
    assert assembler.counters.windows == 0


def test_rate_above_ratio_rejected() -> None:
    assembler = make_assembler(max_resample_ratio=4.0)
    with pytest.raises(PayloadError, match=r"only rates from 12000 to 48000 Hz \(max_resample_ratio 4\)") as info:
        assembler.push("line1/pump", chunk(ramp(16), 0, T0, fs=96000.0), received=0.0)
    assert info.value.reason == "sample_rate"


def test_rejected_chunk_leaves_stream_unchanged() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(10), [10])
    with pytest.raises(PayloadError):
        assembler.push("line1/pump", chunk(ramp(6), 1, T0 + 10 / FS, fs=1000.0), received=0.0)
    windows = assembler.push("line1/pump", chunk(ramp(6) + 10, 1, T0 + 10 / FS), received=0.0)
    np.testing.assert_array_equal(windows[0].samples, ramp(16))


def test_rate_change_starts_new_run() -> None:
    assembler = make_assembler(size=16, hop=16, gap_tolerance_s=0.001)
    feed(assembler, ramp(10), [10])
    assembler.push("line1/pump", chunk(ramp(40), 1, T0 + 10 / FS, fs=24000.0), received=0.0)
    assert assembler.counters.rate_changes == 1
    assert assembler.counters.dropped_samples == 10


# Retention


def test_retention_by_stream_time() -> None:
    assembler = make_assembler(size=12, hop=12, retain_s=10 * 12 / FS)
    feed(assembler, ramp(12 * 50), [12 * 50])
    newest_end = T0 + 50 * 12 / FS
    retained = assembler.windows_in_range("line1/pump", 0.0, float("inf"))
    assert len(retained) == 11
    assert all(w.end_ts >= newest_end - 10 * 12 / FS - 1e-9 for w in retained)
    assert retained[-1].end_ts == pytest.approx(newest_end)


def test_retention_count_capped() -> None:
    assembler = make_assembler(size=12, hop=12, retain_s=12 / FS, gap_tolerance_s=1.0)
    assert assembler.max_retained == 3
    feed(assembler, ramp(12 * 20), [12 * 20])
    assert assembler.retained_count("line1/pump") <= assembler.max_retained


def test_clock_jump_back_drops_future_windows() -> None:
    assembler = make_assembler(size=12, hop=12)
    feed(assembler, ramp(48), [48])
    feed(assembler, ramp(12), [12], first_seq=10, ts=T0 - 100.0)
    retained = assembler.windows_in_range("line1/pump", 0.0, float("inf"))
    assert [w.start_ts for w in retained] == [T0 - 100.0]


def test_windows_in_range_wholly_inside() -> None:
    assembler = make_assembler(size=12, hop=6)
    windows = feed(assembler, ramp(120), [120])
    start, end = windows[2].start_ts, windows[6].end_ts
    found = assembler.windows_in_range("line1/pump", start, end)
    assert [w.start_ts for w in found] == [w.start_ts for w in windows[2:7]]
    # A range shorter than one window (12 samples, 1 ms) contains none.
    assert assembler.windows_in_range("line1/pump", start, start + 0.0009) == []


def test_windows_in_range_unknown_stream() -> None:
    assert make_assembler().windows_in_range("nowhere", 0.0, 1e12) == []


def test_counters_as_dict() -> None:
    assembler = make_assembler(size=16, hop=16)
    feed(assembler, ramp(32), [32])
    assert assembler.counters.as_dict() == {
        "windows": 2,
        "gaps": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "restarts": 0,
        "rate_changes": 0,
        "dropped_samples": 0,
        "resampled": 0,
    }


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 8), "size and hop must be at least 1"),
        ((16, 0), "size and hop must be at least 1"),
    ],
)
def test_invalid_arguments(args: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WindowAssembler(*args, FS, gap_tolerance_s=0.0, retain_s=1.0, max_resample_ratio=4.0)


def test_invalid_resample_ratio() -> None:
    with pytest.raises(ValueError, match="max_resample_ratio must be >= 1, got 0.5"):
        WindowAssembler(16, 8, FS, gap_tolerance_s=0.0, retain_s=1.0, max_resample_ratio=0.5)
