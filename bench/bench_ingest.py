"""Measure ingest throughput: decoding signal chunks and assembling windows from them.

Usage: python bench/bench_ingest.py [--seconds S] [--runs N]

Encodes S seconds of noise at 12 kHz into chunks of 1200 samples (JSON and binary),
then times decode_signal plus WindowAssembler.push (window 2048, hop 1024) over all
chunks, N times per form. A third case sends binary chunks at 48 kHz, so every window
is resampled to 12 kHz. Prints one JSON line with the median samples per second of
each case and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import scipy

from edge_agent.payloads import decode_signal, encode_signal_binary, encode_signal_json
from edge_agent.windowing import WindowAssembler

MODEL_FS = 12000.0
CHUNK = 1200
SIZE = 2048
HOP = 1024


def make_payloads(encode, fs: float, seconds: float) -> list[bytes]:
    """Encode `seconds` of Gaussian noise at `fs` into chunks of CHUNK samples."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(int(fs * seconds)).astype(np.float32)
    payloads = []
    for seq, offset in enumerate(range(0, len(signal) - CHUNK + 1, CHUNK)):
        payloads.append(encode(1.7e9 + offset / fs, fs, seq, signal[offset : offset + CHUNK]))
    return payloads


def time_ingest(payloads: list[bytes]) -> tuple[float, int]:
    """Decode and window all payloads once, returning the elapsed seconds and the window count."""
    assembler = WindowAssembler(
        SIZE, HOP, MODEL_FS, gap_tolerance_s=0.01, retain_s=60.0, max_resample_ratio=8.0
    )
    n_windows = 0
    start = time.perf_counter()
    for payload in payloads:
        chunk = decode_signal(payload, max_samples=CHUNK)
        n_windows += len(assembler.push("bench", chunk, received=time.monotonic()))
    return time.perf_counter() - start, n_windows


def measure(payloads: list[bytes], runs: int) -> dict[str, float]:
    """Time `runs` passes over the payloads and return the median, min and max rates."""
    n_samples = CHUNK * len(payloads)
    rates = []
    windows_per_s = []
    for _ in range(runs):
        elapsed, n_windows = time_ingest(payloads)
        rates.append(n_samples / elapsed)
        windows_per_s.append(n_windows / elapsed)
    return {
        "samples_per_s": round(statistics.median(rates)),
        "windows_per_s": round(statistics.median(windows_per_s)),
        "min_samples_per_s": round(min(rates)),
        "max_samples_per_s": round(max(rates)),
    }


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the architecture elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="signal length per run, in seconds")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case; the median is reported")
    args = parser.parse_args()

    cases = {
        "json_12k": make_payloads(encode_signal_json, MODEL_FS, args.seconds),
        "binary_12k": make_payloads(encode_signal_binary, MODEL_FS, args.seconds),
        "binary_48k_resampled": make_payloads(encode_signal_binary, 48000.0, args.seconds),
    }
    result: dict[str, object] = {
        "chunk_samples": CHUNK,
        "window": SIZE,
        "hop": HOP,
        "seconds_per_run": args.seconds,
        "runs": args.runs,
    }
    for name, payloads in cases.items():
        result[name] = measure(payloads, args.runs)
    result["machine"] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
