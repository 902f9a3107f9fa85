"""`edge-agent demo`: broker, agent, a line and a technician on one machine.

By default the demo needs nothing but this package. It starts an MQTT broker on a
free loopback port: Mosquitto when installed, else amqtt inside this process. It runs
the agent with the checkpoint shipped in `edge_agent/data/`, which was meta-trained on
simulated bearings only. Then it plays a simulated line of four assets whose bearings
match the CWRU rig's. Once a class's first windows have streamed, it publishes one
label for them, as a technician would, and it scores every later diagnosis.

With `--data-dir` it plays the real CWRU load-3 recordings instead, and meta-trains a
checkpoint on loads 0, 1 and 2 into the work folder first, unless one is there. With
`--broker` it uses an existing broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from edge_agent.checkpoint import SHIPPED_CHECKPOINT
from edge_agent.errors import EdgeAgentError
from edge_agent.datasets.cwru import Recording

# Reaches >= 0.99 on the replay of load 3 in about 15 s on 2 cores (see docs/benchmarks.md).
DEMO_EPISODES = 150
# Length of the segments the line is cut into, in seconds.
SEGMENT_S = 3.0
# Load of the simulated line's motors, in hp (1750 rpm on the CWRU rig).
SIMULATED_LOAD_HP = 2


def _say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def _ensure_checkpoint(path: Path, data_dir: str, seed: int) -> None:
    from edge_agent.checkpoint import save_checkpoint
    from edge_agent.datasets.cwru import load_cwru
    from edge_agent.training import meta_train

    if path.exists():
        _say(f"using checkpoint {path}")
        return
    _say("meta-training a checkpoint on CWRU loads 0,1,2 (about 15 s on an idle 2-core machine)")
    recordings = load_cwru(data_dir, loads=[0, 1, 2])
    model, metadata = meta_train(recordings, episodes=DEMO_EPISODES, seed=seed, device="auto", progress=sys.stderr.isatty())
    metadata["dataset"] = "cwru"
    save_checkpoint(path, model, metadata)
    _say(f"checkpoint written to {path}")


def simulated_line_recordings(duration_s: float, seed: int) -> list[Recording]:
    """Ten classes of one machine with the CWRU rig's bearing, `duration_s` each."""
    from edge_agent.simulation import MachineParameters, simulate_machine_recordings

    return simulate_machine_recordings(
        MachineParameters(), loads=[SIMULATED_LOAD_HP], duration_s=duration_s, seed=seed, prefix="line"
    )


def _write_config(workdir: Path, host: str, port: int, protocol: str, checkpoint: Path) -> Path:
    config = {
        "agent_id": "demo",
        "mqtt": {"host": host, "port": port, "protocol": protocol},
        "model": {"checkpoint": str(checkpoint.resolve()), "device": "auto"},
        "storage": {"dir": "state"},
        # Every second, so the live view and the label confirmations follow closely.
        "status": {"interval_s": 1},
    }
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _choose_line(args: argparse.Namespace, workdir: Path) -> tuple[list[Recording], Path, str]:
    """Return the recordings to play, the checkpoint to use and a name for the line."""
    from edge_agent.datasets.cwru import load_cwru

    if args.data_dir:
        recordings = load_cwru(args.data_dir, loads=[3])
        checkpoint = Path(args.checkpoint) if args.checkpoint else workdir / "model.pt"
        if not args.checkpoint:
            _ensure_checkpoint(checkpoint, args.data_dir, args.seed)
        return recordings, checkpoint, "CWRU load 3 (nine fault classes)"
    recordings = simulated_line_recordings(args.duration_s, args.seed)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        # A copy, because the agent may write beside its checkpoint (a last-good
        # backup, say) and the package folder can be read-only.
        checkpoint = workdir / SHIPPED_CHECKPOINT.name
        shutil.copyfile(SHIPPED_CHECKPOINT, checkpoint)
    name = (
        f"simulated SKF 6205 bearings at {recordings[0].rpm:.0f} rpm "
        f"({len(recordings)} classes, {args.duration_s:g} s each)"
    )
    return recordings, checkpoint, name


def run_demo(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.embedded_broker import start_demo_broker
    from edge_agent.line import LinePlan, plan_line
    from edge_agent.live import LiveMonitor
    from edge_agent.logs import configure_logging
    from edge_agent.replay import ReplayOptions, parse_broker_url, run_replay

    if args.data_dir is None and args.duration_s < 2 * SEGMENT_S:
        raise EdgeAgentError(
            f"--duration-s must be at least {2 * SEGMENT_S:g} s: each class needs one {SEGMENT_S:g}-second "
            f"segment for its labels and at least one more to score; got {args.duration_s:g}"
        )
    configure_logging(args.log_level or "WARNING")
    # amqtt logs every client that connects and leaves at INFO and WARNING.
    logging.getLogger("amqtt").setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.ERROR)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recordings, checkpoint, line_name = _choose_line(args, workdir)

    broker = None
    if args.broker:
        host, port = parse_broker_url(args.broker)
        broker_url, protocol, broker_name = args.broker, args.mqtt_protocol, f"existing broker at {args.broker}"
    else:
        broker = start_demo_broker(workdir, prefer=args.embedded_broker)
        host, port, broker_url, protocol = "127.0.0.1", broker.port, broker.url, broker.protocol
        broker_name = f"{broker.name}, MQTT {protocol}"
        _say(f"started {broker.name} on {broker_url}")

    # A fresh task buffer each run, so the labels of the last run do not count.
    shutil.rmtree(workdir / "state", ignore_errors=True)
    agent = None
    runner = None
    monitor = None
    try:
        config = load_config(_write_config(workdir, host, port, protocol, checkpoint))
        agent = Agent(config)
        agent.start()
        runner = threading.Thread(target=agent.run, name="agent-main", daemon=True)
        runner.start()
        _say(f"agent running (checkpoint {checkpoint}, device {agent.device})")
        if not args.no_live:
            monitor = LiveMonitor(broker_url, agent_id="demo", protocol=protocol, title=f"edge-agent demo: {line_name}")
            monitor.start()

        def make_plan(window_size: int, hop: int, t0: float) -> LinePlan:
            plan = plan_line(
                recordings, n_assets=4, window_size=window_size, hop=hop, n_shot=args.n_shot,
                segment_s=SEGMENT_S, gap_s=0.5, t0=t0, seed=args.seed,
            )
            if monitor is not None:
                monitor.set_plan(plan)
            return plan

        _say(f"playing {line_name} as 4 assets at {args.speed:g}x real time, {args.n_shot} labels per class")
        started = time.monotonic()
        report = run_replay(
            broker_url, make_plan, {r.record_id: r.signal for r in recordings},
            ReplayOptions(speed=args.speed, agent_id="demo", protocol=protocol),
            on_progress=monitor.note if monitor is not None else None,
        )
        elapsed_s = time.monotonic() - started
    finally:
        if monitor is not None:
            monitor.stop()
        if agent is not None:
            agent.stop_event.set()
            if runner is not None:
                runner.join(5)
            agent.stop()
        if broker is not None:
            broker.close()

    _say(f"line finished in {elapsed_s:.1f} s")
    report["demo"] = {"line": line_name, "broker": broker_name, "checkpoint": str(checkpoint)}
    _write_outputs(report, workdir, args.plots)
    return 0


def _write_outputs(report: dict[str, Any], workdir: Path, plots_dir: str | None) -> None:
    from edge_agent.report import format_summary

    report_path = workdir / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"line              {report['demo']['line']}")
    print(f"broker            {report['demo']['broker']}")
    print(format_summary(report))
    print(f"report written to {report_path}")
    if plots_dir:
        from edge_agent.plots import write_replay_plots

        for path in write_replay_plots(report, plots_dir):
            print(f"plot written to {path}")
