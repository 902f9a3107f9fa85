from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.splits import (
    cut_windows,
    split_by_load,
    split_fraction_in_time,
    split_in_time,
    split_recordings,
    support_query_split,
)


@dataclass(frozen=True)
class FakeRecording:
    record_id: str
    load_hp: int


def test_cut_windows_offsets_and_content():
    signal = np.arange(10, dtype=np.float32)

    cut = cut_windows(signal, size=4, hop=3)

    assert cut.starts.tolist() == [0, 3, 6]
    assert cut.windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert cut.windows.dtype == np.float32


def test_cut_windows_too_short_signal():
    cut = cut_windows(np.zeros(3), size=4, hop=1)

    assert cut.windows.shape == (0, 4)
    assert len(cut) == 0


def test_cut_windows_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"size and hop must be positive, got size=0 hop=1"):
        cut_windows(np.zeros(10), size=0, hop=1)
    with pytest.raises(ValueError, match=r"signal must be 1-D, got shape \(2, 5\)"):
        cut_windows(np.zeros((2, 5)), size=2, hop=1)


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(0, 3000),
    size=st.integers(1, 300),
    hop=st.integers(1, 300),
    boundary=st.integers(0, 3000),
    extra_gap=st.integers(0, 50),
)
def test_time_split_is_disjoint_with_gap(length, size, hop, boundary, extra_gap):
    signal = np.arange(length, dtype=np.float64)

    first, second = split_in_time(signal, size, hop, boundary, gap=size + extra_gap)

    if len(first):
        assert first.starts.max() + size <= boundary
    if len(second):
        assert second.starts.min() >= boundary + size + extra_gap
    if len(first) and len(second):
        assert second.starts.min() - (first.starts.max() + size) >= size
        assert set(first.windows.ravel()).isdisjoint(second.windows.ravel())
    for part in (first, second):
        for window, start in zip(part.windows, part.starts):
            np.testing.assert_array_equal(window, signal[start : start + size])


@settings(max_examples=100, deadline=None)
@given(
    length=st.integers(0, 5000),
    size=st.integers(1, 200),
    hop=st.integers(1, 200),
    n_support=st.integers(1, 10),
)
def test_support_query_split_properties(length, size, hop, n_support):
    signal = np.arange(length, dtype=np.float64)
    try:
        support, query = support_query_split(signal, size, hop, n_support)
    except ValueError as exc:
        assert "too short" in str(exc)
        assert length < (n_support - 1) * hop + 3 * size
        return

    assert len(support) == n_support
    assert len(query) >= 1
    assert support.starts[0] == 0
    assert query.starts.min() >= support.starts.max() + 2 * size


def test_support_query_split_too_short():
    with pytest.raises(ValueError, match=r"too short for 5 support windows of 100 samples \(hop 50\).*at least 500"):
        support_query_split(np.zeros(450), size=100, hop=50, n_support=5)


def test_split_fraction_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"first_fraction must be between 0 and 1, got 1.5"):
        split_fraction_in_time(np.zeros(100), 10, 5, 1.5)


def test_split_in_time_rejects_small_gap():
    with pytest.raises(ValueError, match=r"gap must be at least one window \(10 samples\), got 9"):
        split_in_time(np.zeros(100), 10, 5, 50, gap=9)


@settings(max_examples=100, deadline=None)
@given(loads=st.lists(st.integers(0, 3), min_size=1, max_size=20), test_loads=st.sets(st.integers(0, 3)))
def test_split_by_load_keeps_recordings_whole(loads, test_loads):
    recordings = [FakeRecording(str(i), load) for i, load in enumerate(loads)]

    train, test = split_by_load(recordings, test_loads)

    train_ids = {r.record_id for r in train}
    test_ids = {r.record_id for r in test}
    assert train_ids.isdisjoint(test_ids)
    assert train_ids | test_ids == {r.record_id for r in recordings}
    assert all(r.load_hp in test_loads for r in test)
    assert all(r.load_hp not in test_loads for r in train)


def test_split_recordings_rejects_duplicate_ids():
    recordings = [FakeRecording("105", 0), FakeRecording("105", 1)]

    with pytest.raises(ValueError, match=r"record_id must be unique, found duplicates \['105'\]"):
        split_recordings(recordings, lambda recording: recording.load_hp == 1)
