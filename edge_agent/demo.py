"""`edge-agent demo`: broker, checkpoint, agent and replay on one machine.

The demo starts a private Mosquitto on a free loopback port, unless --broker is
given. It meta-trains a checkpoint on CWRU loads 0, 1 and 2 when the work folder
has none, and runs the agent in this process. Then it replays load 3 as a line of
four assets with a few labels per class, and prints the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import yaml

from edge_agent.broker import MosquittoBroker
from edge_agent.errors import TransportError

# Reaches >= 0.99 on the replay of load 3 in about 15 s on 2 cores (see docs/benchmarks.md).
DEMO_EPISODES = 150


def _say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def _ensure_checkpoint(path: Path, data_dir: str, seed: int) -> None:
    from edge_agent.checkpoint import save_checkpoint
    from edge_agent.datasets.cwru import load_cwru
    from edge_agent.training import meta_train

    if path.exists():
        _say(f"using checkpoint {path}")
        return
    _say("meta-training a checkpoint on CWRU loads 0,1,2 (about 15 s on 2 cores)")
    recordings = load_cwru(data_dir, loads=[0, 1, 2])
    model, metadata = meta_train(recordings, episodes=DEMO_EPISODES, seed=seed, device="auto", progress=sys.stderr.isatty())
    metadata["dataset"] = "cwru"
    save_checkpoint(path, model, metadata)
    _say(f"checkpoint written to {path}")


def _write_config(workdir: Path, host: str, port: int) -> Path:
    config = {
        "agent_id": "demo",
        "mqtt": {"host": host, "port": port},
        "model": {"checkpoint": "model.pt", "device": "auto"},
        "storage": {"dir": "state"},
        "status": {"interval_s": 5},
    }
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_demo(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.datasets.cwru import load_cwru
    from edge_agent.line import plan_line
    from edge_agent.logs import configure_logging
    from edge_agent.replay import ReplayOptions, parse_broker_url, run_replay
    from edge_agent.report import format_summary

    configure_logging(args.log_level or "WARNING")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    replay_recordings = load_cwru(args.data_dir, loads=[3])
    _ensure_checkpoint(workdir / "model.pt", args.data_dir, args.seed)

    broker = None
    if args.broker:
        host, port = parse_broker_url(args.broker)
        broker_url = args.broker
    else:
        try:
            broker = MosquittoBroker(workdir / "broker")
        except TransportError as exc:
            raise TransportError(f"{exc}; the demo needs a broker") from exc
        broker.start()
        host, port, broker_url = "127.0.0.1", broker.port, broker.url
        _say(f"started mosquitto on {broker_url}")

    # A fresh task buffer each run, so the labels of the last run do not count.
    shutil.rmtree(workdir / "state", ignore_errors=True)
    config = load_config(_write_config(workdir, host, port))
    agent = Agent(config)
    agent.start()
    runner = threading.Thread(target=agent.run, name="agent-main", daemon=True)
    runner.start()
    _say(f"agent running (model {config.model.checkpoint}, device {agent.device})")
    try:
        def make_plan(window_size: int, hop: int, t0: float):
            return plan_line(
                replay_recordings, n_assets=4, window_size=window_size, hop=hop, n_shot=args.n_shot,
                segment_s=3.0, gap_s=0.5, t0=t0, seed=args.seed,
            )

        _say(f"replaying CWRU load 3 as 4 assets at {args.speed:g}x real time, {args.n_shot} labels per class")
        started = time.monotonic()
        report = run_replay(
            broker_url, make_plan, {r.record_id: r.signal for r in replay_recordings},
            ReplayOptions(speed=args.speed, agent_id="demo"),
        )
        _say(f"replay finished in {time.monotonic() - started:.1f} s")
    finally:
        agent.stop_event.set()
        runner.join(5)
        agent.stop()
        if broker is not None:
            broker.close()
    report_path = workdir / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_summary(report))
    print(f"report written to {report_path}")
    return 0
