"""Sim-to-real: few-shot accuracy on CWRU load 3 of embeddings trained on sim or real data.

Compares, on the same episodes (5-shot, all classes of load 3, support from the first
30 % of each recording, queries after it):

- the checkpoint shipped in the package, meta-trained on simulated bearings only,
- an embedding meta-trained on CWRU loads 0, 1 and 2 (150 episodes, seed 0),
- an untrained embedding with the same architecture (seed 0), as the floor.

It also scores each on the simulated demo line. Prints one JSON line per model.

    OMP_NUM_THREADS=1 python bench/bench_sim_to_real.py [CWRU_DIR]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from edge_agent.checkpoint import load_checkpoint
from edge_agent.datasets.cwru import load_cwru
from edge_agent.demo import SHIPPED_CHECKPOINT, simulated_line_recordings
from edge_agent.model import EmbeddingNet
from edge_agent.training import evaluate_few_shot, meta_train

EPISODES = 100


def main() -> None:
    torch.set_num_threads(1)
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cwru"
    target = load_cwru(data_dir, loads=[3])
    line = simulated_line_recordings(24.0, seed=0)

    started = time.perf_counter()
    real_model, _ = meta_train(load_cwru(data_dir, loads=[0, 1, 2]), episodes=150, seed=0, progress=False)
    real_train_s = time.perf_counter() - started
    shipped_model, shipped_metadata = load_checkpoint(SHIPPED_CHECKPOINT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = EmbeddingNet().eval()

    models = {
        "sim-to-real (shipped checkpoint)": shipped_model,
        "real-to-real (CWRU loads 0-2)": real_model,
        "untrained embedding": untrained,
    }
    for name, model in models.items():
        cwru = evaluate_few_shot(model, target, window_size=2048, hop=1024, n_shot=5, episodes=EPISODES, seed=0)
        simulated = evaluate_few_shot(
            model, line, window_size=2048, hop=1024, n_shot=5, episodes=60, support_fraction=0.1, seed=0
        )
        print(json.dumps({
            "model": name,
            "cwru_load3_accuracy": round(cwru.accuracy, 4),
            "cwru_load3_standard_error": round(cwru.standard_error, 4),
            "simulated_line_accuracy": round(simulated.accuracy, 4),
            "n_way": cwru.n_way,
            "n_shot": cwru.n_shot,
            "episodes": EPISODES,
        }), flush=True)
    print(json.dumps({
        "real_meta_train_s": round(real_train_s, 1),
        "shipped_training": shipped_metadata.get("training"),
        "shipped_machines": shipped_metadata.get("simulated_machines"),
    }))


if __name__ == "__main__":
    main()
