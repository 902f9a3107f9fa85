"""A production line made of recordings: which asset plays which segment when.

Every recording is cut into consecutive, non-overlapping segments. The segments of
all recordings are shuffled with a seed and dealt to the assets, so the class
cannot be read from the asset id or from the time. Each asset plays its segments
back to back in stream time with a gap of `gap_s` between them. The agent starts a
new window after every gap, so no window spans two segments.

The plan also fixes the few-shot protocol: for each class, the first `n_shot`
windows of its earliest segment are labelled, and every window of that class that
starts after the label's range, on any asset, is scored. Windows inside a labelled
range, or overlapping one, are never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.datasets.cwru import Recording


@dataclass(frozen=True)
class Segment:
    asset: str
    record_id: str
    label: str
    first_sample: int  # offset into the recording
    n_samples: int
    start_ts: float  # stream time of the segment's first sample


@dataclass(frozen=True)
class PlannedWindow:
    asset: str
    start_ts: float
    end_ts: float
    label: str
    segment_index: int  # index into the asset's segment list
    last_sample: int  # index of the window's last sample in the asset's stream


@dataclass(frozen=True)
class PlannedLabel:
    asset: str
    label: str
    start: float
    end: float


@dataclass(frozen=True)
class LinePlan:
    fs: float
    window_size: int
    hop: int
    segments: dict[str, list[Segment]]
    labels: list[PlannedLabel]
    windows: list[PlannedWindow]
    scored: list[PlannedWindow]

    @property
    def assets(self) -> list[str]:
        return list(self.segments)


def cut_segments(recording: Recording, segment_samples: int) -> list[tuple[int, int]]:
    """Return (first_sample, n_samples) of each whole segment of a recording."""
    count = len(recording.signal) // segment_samples
    return [(i * segment_samples, segment_samples) for i in range(count)]


def deal_segments(
    recordings: Sequence[Recording], n_assets: int, segment_samples: int, rng: np.random.Generator
) -> list[list[tuple[Recording, int, int]]]:
    """Shuffle all segments and deal them round-robin to the assets."""
    pieces = [(rec, first, n) for rec in recordings for first, n in cut_segments(rec, segment_samples)]
    order = rng.permutation(len(pieces))
    dealt: list[list[tuple[Recording, int, int]]] = [[] for _ in range(n_assets)]
    for position, index in enumerate(order):
        dealt[position % n_assets].append(pieces[index])
    return dealt


def window_starts(n_samples: int, size: int, hop: int) -> range:
    """Sample offsets of the windows that fit wholly inside `n_samples`."""
    if n_samples < size:
        return range(0)
    return range(0, n_samples - size + 1, hop)


def plan_line(
    recordings: Sequence[Recording],
    *,
    n_assets: int,
    window_size: int,
    hop: int,
    n_shot: int,
    segment_s: float,
    gap_s: float,
    t0: float,
    seed: int,
) -> LinePlan:
    """Lay out segments, labels and scored windows for a replay."""
    if not recordings:
        raise ValueError("no recordings to play")
    fs = float(recordings[0].fs)
    if any(float(r.fs) != fs for r in recordings):
        raise ValueError("all recordings of a line must share one sample rate")
    segment_samples = int(round(segment_s * fs))
    min_samples = (n_shot + 1) * hop + window_size
    if segment_samples < min_samples:
        raise ValueError(
            f"segments of {segment_s} s hold fewer than {n_shot + 2} windows; "
            f"use a segment of at least {min_samples / fs:.2f} s"
        )
    rng = np.random.default_rng(seed)
    dealt = deal_segments(recordings, n_assets, segment_samples, rng)

    segments: dict[str, list[Segment]] = {}
    windows: list[PlannedWindow] = []
    for asset_index, pieces in enumerate(dealt):
        asset = f"asset-{asset_index + 1}"
        ts = t0
        stream_sample = 0
        segments[asset] = []
        for seg_index, (rec, first, n) in enumerate(pieces):
            segments[asset].append(Segment(asset, rec.record_id, rec.label, first, n, ts))
            for offset in window_starts(n, window_size, hop):
                start = ts + offset / fs
                windows.append(
                    PlannedWindow(
                        asset, start, start + window_size / fs, rec.label, seg_index,
                        stream_sample + offset + window_size - 1,
                    )
                )
            ts += n / fs + gap_s
            stream_sample += n

    labels = _plan_labels(segments, fs, window_size, hop, n_shot)
    scored = _scored_windows(windows, labels)
    return LinePlan(fs, window_size, hop, segments, labels, windows, scored)


def _plan_labels(segments: dict[str, list[Segment]], fs: float, size: int, hop: int, n_shot: int) -> list[PlannedLabel]:
    first: dict[str, Segment] = {}
    for asset_segments in segments.values():
        for seg in asset_segments:
            known = first.get(seg.label)
            if known is None or seg.start_ts < known.start_ts:
                first[seg.label] = seg
    labels = []
    for name in sorted(first):
        seg = first[name]
        span_s = ((n_shot - 1) * hop + size) / fs
        # Half a sample of margin on each side, so float rounding never drops the
        # first or the last labelled window.
        labels.append(PlannedLabel(seg.asset, name, seg.start_ts - 0.5 / fs, seg.start_ts + span_s + 0.5 / fs))
    return labels


def _scored_windows(windows: list[PlannedWindow], labels: list[PlannedLabel]) -> list[PlannedWindow]:
    label_end = {lab.label: lab.end for lab in labels}
    ranges: dict[str, list[tuple[float, float]]] = {}
    for lab in labels:
        ranges.setdefault(lab.asset, []).append((lab.start, lab.end))
    scored = []
    for w in windows:
        if w.start_ts < label_end[w.label]:
            continue
        overlaps = any(w.start_ts < end and w.end_ts > start for start, end in ranges.get(w.asset, []))
        if not overlaps:
            scored.append(w)
    return scored
