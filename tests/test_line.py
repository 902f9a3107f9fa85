"""The replay's line plan: segments, labels and which windows are scored."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.datasets.cwru import Recording
from edge_agent.line import plan_line, window_starts

FS = 1000.0


def _recording(record_id: str, label: str, n_samples: int = 10_000) -> Recording:
    return Recording(record_id, label, 3, 1730.0, FS, np.zeros(n_samples, dtype=np.float32))


def _plan(seed: int = 0, n_shot: int = 3):
    recordings = [_recording(str(i), f"class_{i}") for i in range(5)]
    return plan_line(
        recordings, n_assets=3, window_size=100, hop=50, n_shot=n_shot,
        segment_s=1.0, gap_s=0.5, t0=1000.0, seed=seed,
    )


def test_window_starts_fit_inside() -> None:
    assert list(window_starts(250, 100, 50)) == [0, 50, 100, 150]
    assert list(window_starts(99, 100, 50)) == []


def test_every_segment_used_once() -> None:
    plan = _plan()
    used = [(s.record_id, s.first_sample) for segs in plan.segments.values() for s in segs]
    assert len(used) == len(set(used))
    assert len(used) == 5 * 10


def test_segments_do_not_overlap_in_time() -> None:
    plan = _plan()
    for segments in plan.segments.values():
        for before, after in zip(segments, segments[1:]):
            assert after.start_ts >= before.start_ts + before.n_samples / FS + 0.5 - 1e-9


def test_one_label_per_class_on_first_segment() -> None:
    plan = _plan()
    assert sorted(lab.label for lab in plan.labels) == [f"class_{i}" for i in range(5)]
    for label in plan.labels:
        first = min(
            (s for segs in plan.segments.values() for s in segs if s.label == label.label),
            key=lambda s: s.start_ts,
        )
        assert label.asset == first.asset
        covered = [w for w in plan.windows if w.asset == label.asset and label.start <= w.start_ts and w.end_ts <= label.end]
        assert len(covered) == 3


def test_scored_windows_exclude_labelled_and_overlapping() -> None:
    plan = _plan()
    for window in plan.scored:
        for label in plan.labels:
            if window.asset == label.asset:
                assert window.end_ts <= label.start or window.start_ts >= label.end
            if window.label == label.label:
                assert window.start_ts >= label.end


def test_scored_windows_cover_most_of_the_line() -> None:
    plan = _plan()
    assert len(plan.scored) > 0.8 * len(plan.windows)


def test_plan_is_seeded() -> None:
    first = _plan(seed=1)
    again = _plan(seed=1)
    other = _plan(seed=2)
    assert first.segments == again.segments
    assert first.segments != other.segments


def test_classes_mixed_across_assets() -> None:
    plan = _plan()
    for segments in plan.segments.values():
        assert len({s.label for s in segments}) > 1


def test_short_segments_rejected() -> None:
    recordings = [_recording("1", "a")]
    with pytest.raises(ValueError, match="segment of at least"):
        plan_line(recordings, n_assets=1, window_size=100, hop=50, n_shot=5, segment_s=0.2, gap_s=0.5, t0=0.0, seed=0)
