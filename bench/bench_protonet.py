"""Time the on-box few-shot classifier on CPU: prototype update and batch prediction.

Run: python bench/bench_protonet.py [--checkpoint FILE] [--threads N]
Prints one JSON line with the median and 90th percentile of `set_support` (10-way,
5-shot) and of `predict` on a batch of 64 windows, in milliseconds. Without a
checkpoint it times a freshly initialised EmbeddingNet of the default architecture,
which costs the same as a trained one.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from edge_agent.checkpoint import load_checkpoint
from edge_agent.classifier import FewShotClassifier
from edge_agent.features import LOG_SPECTRUM_V1
from edge_agent.model import EmbeddingNet, count_parameters


def time_calls(function, repeats: int) -> list[float]:
    """Call `function` `repeats` times after two warm-up calls; return durations in ms."""
    function()
    function()
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        durations.append((time.perf_counter() - started) * 1000.0)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint to time (default: untrained default model)")
    parser.add_argument("--window", type=int, default=2048, help="window size in samples without a checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, metadata = load_checkpoint(args.checkpoint, "cpu")
    else:
        torch.manual_seed(0)
        model = EmbeddingNet()
        metadata = {"window_size": args.window, "input_transform": LOG_SPECTRUM_V1}
    window_size = int(metadata["window_size"])
    classifier = FewShotClassifier(model, metadata, "cpu")

    rng = np.random.default_rng(0)
    support = {f"class_{i}": rng.standard_normal((5, window_size)).astype(np.float32) for i in range(10)}
    batch = rng.standard_normal((64, window_size)).astype(np.float32)
    classifier.set_support(support)
    set_support_ms = time_calls(lambda: classifier.set_support(support), args.repeats)
    predict_ms = time_calls(lambda: classifier.predict(batch), args.repeats)

    print(json.dumps({
        "benchmark": "protonet_cpu",
        "window_size": window_size,
        "parameters": count_parameters(model),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "set_support_10way_5shot_ms": {
            "median": round(float(np.median(set_support_ms)), 3),
            "p90": round(float(np.percentile(set_support_ms, 90)), 3),
        },
        "predict_batch64_ms": {
            "median": round(float(np.median(predict_ms)), 3),
            "p90": round(float(np.percentile(predict_ms, 90)), 3),
        },
        "repeats": args.repeats,
    }))


if __name__ == "__main__":
    main()
