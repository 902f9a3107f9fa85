"""Leak-free windowing and splitting of vibration recordings.

Neighbouring windows of one recording overlap and share its machine, sensor mount and
operating point, so a split that puts windows of one recording on both sides measures
memorisation, not generalisation. The helpers here enforce two rules:

- Between recordings: a train/test split assigns each recording, as a whole, to one side.
- Inside one recording: the two parts of a time split (support and query, or train and
  validation) come from disjoint sample ranges with a gap of at least one window between
  them. No sample appears in both parts, and the nearest windows are a window apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np


class HasRecordId(Protocol):
    @property
    def record_id(self) -> str: ...

    @property
    def load_hp(self) -> int: ...


RecordingT = TypeVar("RecordingT", bound=HasRecordId)


@dataclass(frozen=True)
class Windows:
    """Windows cut from one signal.

    `windows` has shape (n, size) and `starts` shape (n,): the sample offset of each
    window in the signal it was cut from.
    """

    windows: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return int(self.starts.shape[0])


def cut_windows(
    signal: np.ndarray, size: int, hop: int, *, start: int = 0, stop: int | None = None
) -> Windows:
    """Cut windows of `size` samples every `hop` samples from `signal[start:stop]`.

    Only whole windows are returned, so the last samples are dropped when they do not fill
    one. The windows are copies of the signal, of its dtype, with offsets relative to
    the whole signal.
    """
    if size <= 0 or hop <= 0:
        raise ValueError(f"size and hop must be positive, got size={size} hop={hop}")
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"signal must be 1-D, got shape {signal.shape}")

    stop = signal.shape[0] if stop is None else min(stop, signal.shape[0])
    start = max(start, 0)
    if stop - start < size:
        return Windows(np.empty((0, size), dtype=signal.dtype), np.empty(0, dtype=np.int64))

    starts = np.arange(start, stop - size + 1, hop, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(signal, size)[starts].copy()
    return Windows(windows, starts)


def split_in_time(
    signal: np.ndarray, size: int, hop: int, boundary: int, *, gap: int | None = None
) -> tuple[Windows, Windows]:
    """Split one signal in time at sample `boundary` into two disjoint sets of windows.

    The first set contains the windows that end at or before `boundary`, the second those that
    start at or after `boundary + gap`. `gap` defaults to `size` and may not be smaller, so
    the two sets are at least one window apart.
    """
    gap = size if gap is None else gap
    if gap < size:
        raise ValueError(f"gap must be at least one window ({size} samples), got {gap}")
    first = cut_windows(signal, size, hop, start=0, stop=boundary)
    second = cut_windows(signal, size, hop, start=boundary + gap)
    return first, second


def split_fraction_in_time(
    signal: np.ndarray, size: int, hop: int, first_fraction: float
) -> tuple[Windows, Windows]:
    """Split one signal so that about `first_fraction` of its samples feed the first set.

    The second set starts one window after the first ends (see `split_in_time`).
    """
    if not 0.0 < first_fraction < 1.0:
        raise ValueError(f"first_fraction must be between 0 and 1, got {first_fraction}")
    boundary = int(round(len(signal) * first_fraction))
    return split_in_time(signal, size, hop, boundary)


def support_query_split(
    signal: np.ndarray, size: int, hop: int, n_support: int
) -> tuple[Windows, Windows]:
    """Take the first `n_support` windows as support and all windows after a gap as query.

    Raises ValueError when the signal is too short for `n_support` windows, a one-window
    gap and at least one query window.
    """
    if n_support <= 0:
        raise ValueError(f"n_support must be positive, got {n_support}")
    boundary = (n_support - 1) * hop + size
    support, query = split_in_time(signal, size, hop, boundary)
    if len(support) < n_support or len(query) == 0:
        raise ValueError(
            f"signal of {len(signal)} samples is too short for {n_support} support windows "
            f"of {size} samples (hop {hop}), a one-window gap and a query window; it needs "
            f"at least {boundary + 2 * size} samples"
        )
    return support, query


def split_recordings(
    recordings: Sequence[RecordingT], is_test: Callable[[RecordingT], bool]
) -> tuple[list[RecordingT], list[RecordingT]]:
    """Assign each whole recording to the train or the test side.

    Raises ValueError when two recordings share a record_id, because their windows could
    then end up on both sides.
    """
    _check_unique_ids(recordings)
    train = [recording for recording in recordings if not is_test(recording)]
    test = [recording for recording in recordings if is_test(recording)]
    return train, test


def split_by_load(
    recordings: Sequence[RecordingT], test_loads: Iterable[int]
) -> tuple[list[RecordingT], list[RecordingT]]:
    """Put the recordings at `test_loads` (hp) on the test side and the rest on the train side."""
    test_set = set(test_loads)
    return split_recordings(recordings, lambda recording: recording.load_hp in test_set)


def _check_unique_ids(recordings: Sequence[HasRecordId]) -> None:
    seen: set[str] = set()
    duplicates: set[str] = set()
    for recording in recordings:
        if recording.record_id in seen:
            duplicates.add(recording.record_id)
        seen.add(recording.record_id)
    if duplicates:
        raise ValueError(f"record_id must be unique, found duplicates {sorted(duplicates)}")
