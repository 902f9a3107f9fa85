"""Time and score one Reptile adaptation on the box: 10-way 5-shot on CWRU.

Run: python bench/bench_reptile.py --checkpoint FILE [--data-dir DIR] [--threads N]
Prints one JSON line. The ten classes are the nine load-3 fault recordings and a
normal recording. When the folder lacks the load-3 normal recording, the first normal
recording found is used. Each episode takes 5 support windows per class from the first 30% of each
recording and up to 50 query windows from after a one-window gap, then
runs `adaptation.adapt` (leave-out check and final fine-tune, as the agent's
adaptation worker does) and scores ProtoNet over the meta-trained embedding and the
fine-tuned candidate on the queries. `fine_tune_s` times one `fine_tune` on the whole
support set (input transform included), `adapt_s` the whole `adapt` call, which runs
`leave_out_folds + 1` fine-tunes. Durations are wall-clock seconds, except
`adapt_thread_cpu_s`, the CPU time of the calling thread during `adapt`: with
`--threads 1` all work runs on that thread, so it estimates the wall-clock time on an
idle core when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from edge_agent.adaptation import AdaptationSettings, SupportSet, adapt, fine_tune
from edge_agent.checkpoint import load_checkpoint
from edge_agent.classifier import FewShotClassifier
from edge_agent.datasets.cwru import load_cwru
from edge_agent.features import get_transform
from edge_agent.splits import split_in_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/demo/model.pt", help="meta-trained checkpoint (default: %(default)s)")
    parser.add_argument("--data-dir", default="../shared/data/cwru", help="folder of the CWRU .mat files")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes, each with its own support set")
    parser.add_argument("--steps", type=int, default=AdaptationSettings.steps, help="adaptation.steps")
    parser.add_argument("--inner-lr", type=float, default=AdaptationSettings.inner_lr, help="adaptation.inner_lr")
    parser.add_argument("--folds", type=int, default=AdaptationSettings.leave_out_folds, help="adaptation.leave_out_folds")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model, metadata = load_checkpoint(args.checkpoint, "cpu")
    window_size = int(metadata["window_size"])
    hop = window_size // 2
    transform = get_transform(str(metadata["input_transform"]))
    recordings = load_cwru(args.data_dir, loads=[3])
    if all(recording.label != "normal" for recording in recordings):
        recordings += load_cwru(args.data_dir, labels=["normal"])[:1]
    pools = {}
    for recording in recordings:
        first, second = split_in_time(recording.signal, window_size, hop, int(0.3 * len(recording.signal)))
        pools[recording.label] = (first.windows, second.windows)

    rng = np.random.default_rng(0)
    durations, cpu_durations, fine_tune_durations = [], [], []
    protonet_accuracy, candidate_accuracy, accepted = [], [], 0
    for episode in range(args.episodes):
        support = {name: first[rng.choice(len(first), 5, replace=False)] for name, (first, _) in pools.items()}
        queries = {
            name: second[rng.choice(len(second), min(50, len(second)), replace=False)] for name, (_, second) in pools.items()
        }
        settings = AdaptationSettings(args.steps, args.inner_lr, args.folds, seed=episode)

        stacked = SupportSet.from_mapping(support, window_size)
        started = time.perf_counter()
        with torch.no_grad():
            inputs = transform(torch.as_tensor(stacked.windows))
        fine_tune(model, inputs, torch.as_tensor(stacked.labels), len(stacked.classes), settings)
        fine_tune_durations.append(time.perf_counter() - started)

        started, started_cpu = time.perf_counter(), time.thread_time()
        candidate = adapt(model, model, stacked, transform, settings, torch.device("cpu"))
        durations.append(time.perf_counter() - started)
        cpu_durations.append(time.thread_time() - started_cpu)
        accepted += candidate.check.accepted

        protonet = FewShotClassifier(model, metadata, "cpu")
        protonet.set_support(support)
        query_windows = np.concatenate(list(queries.values()))
        truth = np.concatenate([[name] * len(windows) for name, windows in queries.items()])
        with torch.inference_mode():
            logits = torch.nn.functional.linear(
                candidate.embedding(transform(torch.as_tensor(query_windows))),
                candidate.head_weight, candidate.head_bias,
            )
        candidate_labels = np.array(stacked.classes)[logits.argmax(dim=1).numpy()]
        protonet_labels = np.array([p.label for p in protonet.predict(query_windows)])
        candidate_accuracy.append(float((candidate_labels == truth).mean()))
        protonet_accuracy.append(float((protonet_labels == truth).mean()))

    print(json.dumps({
        "benchmark": "reptile_adaptation_cpu",
        "n_way": len(pools),
        "classes": sorted(pools),
        "n_shot": 5,
        "steps": args.steps,
        "inner_lr": args.inner_lr,
        "leave_out_folds": args.folds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "fine_tune_s": {
            "median": round(float(np.median(fine_tune_durations)), 3),
            "max": round(float(np.max(fine_tune_durations)), 3),
        },
        "adapt_s": {"median": round(float(np.median(durations)), 3), "max": round(float(np.max(durations)), 3)},
        "adapt_thread_cpu_s": round(float(np.median(cpu_durations)), 3),
        "accepted": accepted,
        "episodes": args.episodes,
        "query_accuracy": {
            "protonet": round(float(np.mean(protonet_accuracy)), 4),
            "fine_tuned": round(float(np.mean(candidate_accuracy)), 4),
        },
    }))


if __name__ == "__main__":
    main()
