"""Assembly of fixed-length model windows from the signal chunks of each stream.

A stream (one asset's vibration topic) delivers chunks of any length. The assembler
joins consecutive chunks into a run and cuts a window of `size` samples every `hop`
samples. A run ends at a gap in `seq` or `ts`, at a sender restart and at a change of
sample rate, so no window spans missing data. The samples of an unfinished window are
then dropped and counted.

Sample rate: windows are always at the model's rate `model_fs`. A stream at a higher
rate is resampled window by window with `scipy.signal.resample_poly`, whose polyphase
FIR filter (Kaiser window, beta 5) removes content above the new Nyquist frequency
before decimating. The ratio model_fs/fs is approximated by a fraction up/down with
down <= `MAX_RESAMPLE_DENOMINATOR`, so the effective output rate is fs*up/down; for
the usual rates (48 kHz, 25.6 kHz, 44.1 kHz to 12 kHz) the fraction is exact. Each
window is resampled together with `margin` source samples of real signal on both
sides, which are cut off afterwards, so the filter's edge transient never reaches the
window. Resampled runs therefore start their first window `margin` samples in.

Window times come from the run's first `ts` plus the sample count divided by `fs`,
so any split of the same signal into chunks gives the same windows. A chunk whose
`ts` differs from that expectation by more than `gap_tolerance_s` starts a new run,
which bounds the error of window times against the sender's clock.

Limitations: the assembler keeps state for every stream it has seen and never
removes one, which is fine for the fixed set of assets in a configuration.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np
from scipy.signal import resample_poly

from edge_agent.errors import PayloadError
from edge_agent.payloads import SignalChunk

MAX_RESAMPLE_DENOMINATOR: Final = 1000
# Half-length of resample_poly's default filter, in taps of the upsampled signal, is
# 10 * max(up, down), as read in the scipy 1.17 source of scipy.signal.resample_poly.
_FILTER_HALF_LENGTH_FACTOR: Final = 10


@dataclass(frozen=True, eq=False)
class Window:
    """One model input: `size` float32 samples at the model's rate, read-only.

    `start_ts` is the sender-clock time of the first sample and `end_ts` is
    start_ts + size/model_fs. `seq_last` is the seq of the chunk that completed the
    window, and `received` the monotonic time passed with that chunk, so the daemon
    can measure latency from completion to publish.
    """

    stream: str
    start_ts: float
    end_ts: float
    samples: np.ndarray
    seq_last: int
    received: float


@dataclass
class WindowCounters:
    """Totals over all streams since the assembler was created."""

    windows: int = 0
    gaps: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    restarts: int = 0
    rate_changes: int = 0
    # Samples of ended runs that never became part of a window.
    dropped_samples: int = 0
    # Windows that were resampled from a higher rate.
    resampled: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict, for the status message."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _RateConversion:
    """Parameters for cutting windows from a run at source rate `fs` and converting them to `model_fs`."""

    up: int
    down: int
    # Source samples taken on each side of a window as filter context. It is a multiple
    # of down, so the output after cutting starts exactly at the window's first sample.
    margin: int
    # Source samples from a window's first sample to one past its last one.
    span: int

    @property
    def resamples(self) -> bool:
        return self.up != self.down

    def start_of(self, index: int, hop: int) -> int:
        """Source position of window `index` of a run, rounded to the nearest sample."""
        # round(index * hop * down / up) in integers, so no float error accumulates.
        return self.margin + (2 * index * hop * self.down + self.up) // (2 * self.up)


@dataclass
class _Run:
    """Samples of one stream since its last discontinuity."""

    first_ts: float
    fs: float
    conversion: _RateConversion
    last_seq: int
    # Total source samples received in this run.
    n_received: int = 0
    # Index of the next window to cut.
    next_window: int = 0
    # Source position one past the last sample of the last window cut.
    covered_end: int = 0
    # Samples kept for the next window. pending[0] is at source position pending_start.
    pending: np.ndarray = dataclasses.field(
        default_factory=lambda: np.empty(0, dtype=np.float32)
    )
    pending_start: int = 0

    def expected_ts(self) -> float:
        return self.first_ts + self.n_received / self.fs


class WindowAssembler:
    """Cut fixed-length windows from the chunks of many streams and retain recent ones.

    Not thread-safe: the daemon calls it from one worker thread only, so it uses
    no locks.

    Args:
        size: window length in samples at `model_fs`.
        hop: samples at `model_fs` between the starts of consecutive windows.
        model_fs: the model's sample rate in Hz (12000 for CWRU).
        gap_tolerance_s: a chunk whose ts differs from the expected ts by more than
            this starts a new run.
        retain_s: keep windows whose end_ts is at most this much older (stream time)
            than the newest window of the stream, for `windows_in_range`.
        max_resample_ratio: the highest fs/model_fs that is resampled; higher rates
            are rejected.
    """

    def __init__(
        self,
        size: int,
        hop: int,
        model_fs: float,
        *,
        gap_tolerance_s: float,
        retain_s: float,
        max_resample_ratio: float,
    ) -> None:
        if size < 1 or hop < 1:
            raise ValueError(f"size and hop must be at least 1, got size={size}, hop={hop}")
        if not (math.isfinite(model_fs) and model_fs > 0):
            raise ValueError(f"model_fs must be a positive sample rate in Hz, got {model_fs}")
        if gap_tolerance_s < 0 or retain_s < 0:
            raise ValueError(
                f"gap_tolerance_s and retain_s must be >= 0, got {gap_tolerance_s} and {retain_s}"
            )
        if max_resample_ratio < 1:
            raise ValueError(f"max_resample_ratio must be >= 1, got {max_resample_ratio}")

        self.size = size
        self.hop = hop
        self.model_fs = float(model_fs)
        self.gap_tolerance_s = float(gap_tolerance_s)
        self.retain_s = float(retain_s)
        self.max_resample_ratio = float(max_resample_ratio)
        # Count cap on retained windows, so a wrong ts cannot grow memory without bound:
        # the windows that fit in retain_s, plus the ones overlapping its edges.
        self.max_retained = math.ceil((self.retain_s * self.model_fs + size) / hop) + 1
        self.counters = WindowCounters()

        self._runs: dict[str, _Run] = {}
        self._retained: dict[str, collections.deque[Window]] = {}
        self._conversions: dict[float, _RateConversion] = {}

    def push(self, stream: str, chunk: SignalChunk, *, received: float) -> list[Window]:
        """Add a chunk to its stream and return the windows that it completed.

        Duplicate and out-of-order chunks are dropped and counted. Raises PayloadError
        with reason ``sample_rate`` if the chunk's rate cannot be brought to model_fs;
        the stream's state is then unchanged.
        """
        conversion = self._conversion_for(chunk.fs)
        run = self._runs.get(stream)

        if run is None:
            run = self._start_run(stream, chunk, conversion)
        else:
            expected_seq = run.last_seq + 1
            ts_error = chunk.ts - run.expected_ts()
            if chunk.seq < expected_seq and ts_error > self.gap_tolerance_s:
                # seq went back while time went on: the sender restarted its counter.
                self.counters.restarts += 1
                run = self._start_run(stream, chunk, conversion)
            elif chunk.seq == run.last_seq:
                self.counters.duplicates += 1
                return []
            elif chunk.seq < run.last_seq:
                self.counters.out_of_order += 1
                return []
            elif chunk.fs != run.fs:
                self.counters.rate_changes += 1
                run = self._start_run(stream, chunk, conversion)
            elif chunk.seq > expected_seq or abs(ts_error) > self.gap_tolerance_s:
                self.counters.gaps += 1
                run = self._start_run(stream, chunk, conversion)

        return self._append(stream, run, chunk, received)

    def windows_in_range(self, stream: str, start: float, end: float) -> list[Window]:
        """Return the retained windows of `stream` that lie wholly inside [start, end].

        Boundaries are compared with a tolerance of half a sample period at model_fs,
        so a window that ends exactly at `end` is not lost to float rounding.
        """
        tolerance = 0.5 / self.model_fs
        return [
            window
            for window in self._retained.get(stream, ())
            if window.start_ts >= start - tolerance and window.end_ts <= end + tolerance
        ]

    def retained_count(self, stream: str) -> int:
        """Return how many windows of `stream` are retained."""
        return len(self._retained.get(stream, ()))

    def _conversion_for(self, fs: float) -> _RateConversion:
        conversion = self._conversions.get(fs)
        if conversion is not None:
            return conversion

        ratio = fs / self.model_fs
        if fs < self.model_fs or ratio > self.max_resample_ratio:
            raise PayloadError(
                "sample_rate",
                f"signal sample rate {fs:g} Hz cannot be used: the model runs at "
                f"{self.model_fs:g} Hz and this agent resamples only rates from "
                f"{self.model_fs:g} to {self.model_fs * self.max_resample_ratio:g} Hz "
                f"(max_resample_ratio {self.max_resample_ratio:g}); record at a rate in "
                "that range, or use a model trained at this rate",
            )

        fraction = Fraction(self.model_fs / fs).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
        up, down = fraction.numerator, fraction.denominator
        if up == down:
            conversion = _RateConversion(up=1, down=1, margin=0, span=self.size)
        else:
            half_length = math.ceil(_FILTER_HALF_LENGTH_FACTOR * max(up, down) / up)
            margin = down * math.ceil(half_length / down)
            # Output sample j sits at source position j * down / up.
            last_sample = math.ceil((self.size - 1) * down / up)
            conversion = _RateConversion(up=up, down=down, margin=margin, span=last_sample + 1)
        self._conversions[fs] = conversion
        return conversion

    def _start_run(self, stream: str, chunk: SignalChunk, conversion: _RateConversion) -> _Run:
        old = self._runs.get(stream)
        if old is not None:
            self.counters.dropped_samples += max(0, old.n_received - old.covered_end)
        run = _Run(first_ts=chunk.ts, fs=chunk.fs, conversion=conversion, last_seq=chunk.seq)
        self._runs[stream] = run
        return run

    def _append(self, stream: str, run: _Run, chunk: SignalChunk, received: float) -> list[Window]:
        run.pending = np.concatenate((run.pending, chunk.values))
        run.n_received += len(chunk.values)
        run.last_seq = chunk.seq

        conversion = run.conversion
        windows = []
        while True:
            start = conversion.start_of(run.next_window, self.hop)
            stop = start + conversion.span
            if run.pending_start + len(run.pending) < stop + conversion.margin:
                break
            first = start - conversion.margin - run.pending_start
            segment = run.pending[first : stop + conversion.margin - run.pending_start]
            windows.append(self._make_window(stream, run, chunk, received, start, segment))
            run.covered_end = stop
            run.next_window += 1

        # Keep only what the next window needs, its left margin included.
        keep_from = conversion.start_of(run.next_window, self.hop) - conversion.margin
        drop = min(max(0, keep_from - run.pending_start), len(run.pending))
        if drop:
            run.pending = run.pending[drop:]
            run.pending_start += drop
        return windows

    def _make_window(
        self,
        stream: str,
        run: _Run,
        chunk: SignalChunk,
        received: float,
        start: int,
        segment: np.ndarray,
    ) -> Window:
        conversion = run.conversion
        if conversion.resamples:
            converted = resample_poly(segment.astype(np.float64), conversion.up, conversion.down)
            offset = conversion.margin * conversion.up // conversion.down
            samples = converted[offset : offset + self.size].astype(np.float32)
            self.counters.resampled += 1
        else:
            samples = segment.copy()
        samples.setflags(write=False)

        start_ts = run.first_ts + start / run.fs
        window = Window(
            stream=stream,
            start_ts=start_ts,
            end_ts=start_ts + self.size / self.model_fs,
            samples=samples,
            seq_last=chunk.seq,
            received=received,
        )
        self._retain(window)
        self.counters.windows += 1
        return window

    # NOTE: retained windows are full copies, so overlapping windows store their shared
    # samples twice (2x at hop = size / 2). A ring buffer of raw samples per stream would
    # halve the memory; see window.retain_s for the cost.
    def _retain(self, window: Window) -> None:
        retained = self._retained.setdefault(window.stream, collections.deque())
        # A new run may start before the retained windows when the sender's clock jumps
        # back; windows from the abandoned future would then match labels wrongly.
        while retained and retained[-1].end_ts > window.end_ts:
            retained.pop()
        retained.append(window)

        oldest_end = window.end_ts - self.retain_s
        while retained and (retained[0].end_ts < oldest_end or len(retained) > self.max_retained):
            retained.popleft()
