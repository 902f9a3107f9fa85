"""The `edge-agent` command line: one subcommand per job.

Errors a user can fix (`EdgeAgentError`) print one clear message and exit with
status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import edge_agent
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.evaluation_cli import add_algorithm_options, add_evaluate_parser
from edge_agent.model_cli import add_model_parser

log = logging.getLogger("edge_agent.cli")

EXIT_USER_ERROR = 2
DEFAULT_DATA_DIR = "../shared/data/cwru"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from exc


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _default_data_dir() -> str:
    return os.environ.get("EDGE_AGENT_CWRU_DIR") or os.environ.get("DATA_DIR") or DEFAULT_DATA_DIR


def _add_protocol_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt-protocol", choices=["5", "3.1.1"], default="5",
        help="MQTT version of this command's connection to --broker (default: 5)",
    )


# run / check-config


def _add_config_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--config", "-c", required=required, metavar="FILE", help="YAML configuration file (see config/agent.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set mqtt.port=1884 (repeatable)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    from edge_agent.agent import Agent, install_stop_handlers
    from edge_agent.config import load_config
    from edge_agent.logs import configure_logging
    from edge_agent.reload import install_reload_handler

    stop_event = threading.Event()
    reload_event = threading.Event()
    install_stop_handlers(stop_event)
    install_reload_handler(reload_event)
    config = load_config(args.config, args.overrides)
    configure_logging(args.log_level or config.log.level)
    log.info("edge-agent %s starting with %s", edge_agent.__version__, args.config)
    agent = Agent(config, stop_event=stop_event, config_path=Path(args.config), overrides=args.overrides)
    agent.reload_event = reload_event
    agent.start()
    try:
        agent.run()
    finally:
        agent.stop()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge_agent.config import load_config, redacted_dict
    import yaml

    try:
        config = load_config(args.file, args.overrides)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"# {args.file}: valid; effective configuration (secrets redacted)")
    print(yaml.safe_dump(redacted_dict(config), sort_keys=False), end="")
    return 0


# meta-train


def cmd_meta_train(args: argparse.Namespace) -> int:
    import torch

    from edge_agent.checkpoint import save_checkpoint
    from edge_agent.datasets.cwru import load_cwru
    from edge_agent.evaluation_cli import algorithm_options, scenario_recordings
    from edge_agent.logs import configure_logging
    from edge_agent.training import meta_train

    configure_logging(args.log_level or "INFO")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = algorithm_options(args)
    scenario = None
    if args.dataset == "simulated":
        from edge_agent.simulation import simulate_training_recordings

        recordings = simulate_training_recordings(
            machines=args.machines, loads=args.loads, seed=args.seed, per_machine_classes=True
        )
    else:
        # The scenario may take the first part of a recording outside --loads (normal at 0 hp).
        recordings, scenario = scenario_recordings(args, load_cwru(args.data_dir))
    model, metadata = meta_train(
        recordings,
        window_size=args.window,
        hop=args.hop,
        n_way=args.n_way,
        n_shot=args.n_shot,
        n_query=args.n_query,
        episodes=args.episodes,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        patience=args.patience,
        validate_every=args.validate_every,
        algorithm=args.algorithm,
        algorithm_options=options,
    )
    if scenario is not None:
        metadata["scenario"] = scenario
    metadata["dataset"] = args.dataset
    if args.dataset == "simulated":
        metadata["simulated_machines"] = args.machines
    saved = save_checkpoint(args.out, model, metadata)
    print(f"checkpoint written to {args.out} (sha256 {saved.get('weights_sha256', '')[:16]})")
    return 0


# replay


def cmd_replay(args: argparse.Namespace) -> int:
    from edge_agent.datasets.cwru import load_cwru
    from edge_agent.line import plan_line
    from edge_agent.logs import configure_logging
    from edge_agent.replay import ReplayOptions, parse_broker_url, run_replay
    from edge_agent.report import format_summary

    configure_logging(args.log_level or "WARNING")
    parse_broker_url(args.broker)  # a typo in the URL is reported before the data loads
    recordings = load_cwru(args.data_dir, loads=args.loads)

    def make_plan(window_size: int, hop: int, t0: float):
        return plan_line(
            recordings, n_assets=args.assets, window_size=window_size, hop=hop, n_shot=args.n_shot,
            segment_s=args.segment_s, gap_s=0.5, t0=t0, seed=args.seed,
        )

    options = ReplayOptions(
        speed=args.speed, line=args.line, agent_id=args.agent_id, chunk_samples=args.chunk_samples,
        protocol=args.mqtt_protocol,
    )
    monitor = None
    if not args.no_live:
        from edge_agent.live import LiveMonitor

        monitor = LiveMonitor(args.broker, agent_id=args.agent_id, protocol=args.mqtt_protocol, title="edge-agent replay")

    def make_monitored_plan(window_size: int, hop: int, t0: float):
        plan = make_plan(window_size, hop, t0)
        if monitor is not None:
            monitor.set_plan(plan)
        return plan

    if monitor is not None:
        monitor.start()
    try:
        report = run_replay(
            args.broker, make_monitored_plan, {r.record_id: r.signal for r in recordings}, options,
            on_progress=monitor.note if monitor is not None else (lambda text: print(text, file=sys.stderr)) if args.verbose else None,
        )
    finally:
        if monitor is not None:
            monitor.stop()
    report["settings"] = {
        "dataset": args.dataset, "loads": args.loads, "n_shot": args.n_shot, "speed": args.speed,
        "seed": args.seed, "assets": args.assets, "segment_s": args.segment_s,
    }
    print(format_summary(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.report}")
    if args.plots:
        from edge_agent.plots import write_replay_plots

        for path in write_replay_plots(report, args.plots):
            print(f"plot written to {path}")
    return 0


# status / label


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.operator_commands import format_status, read_status

    record = read_status(args.broker, args.agent_id, protocol=args.mqtt_protocol, timeout_s=args.timeout_s)
    print(json.dumps(record, indent=2) if args.json else format_status(record))
    return 0 if record.get("state") == "online" else 1


def cmd_label(args: argparse.Namespace) -> int:
    from edge_agent.operator_commands import LabelNotApplied, parse_time, publish_label

    try:
        result = publish_label(
            args.broker, line=args.line, asset=args.asset, start=parse_time(args.start), end=parse_time(args.end),
            label=args.label_class, agent_id=args.agent_id or None, protocol=args.mqtt_protocol, wait_s=args.wait_s,
        )
    except LabelNotApplied as exc:
        print(f"edge-agent label: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.demo import run_demo

    return run_demo(args)


# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description=(
            "Few-shot machine-fault diagnosis on an edge box. The agent reads vibration "
            "over MQTT, learns fault classes from a few labelled windows, and publishes "
            "a diagnosis for every window."
        ),
        epilog="Run 'edge-agent COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {edge_agent.__version__}")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default: config's log.level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the agent (the daemon)", description="Connect to the broker and diagnose every window until SIGTERM or Ctrl-C.")
    _add_config_options(run, required=True)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config", help="validate a config file",
        description="Validate FILE. Prints every error and exits 2, or prints the effective configuration with secrets redacted.",
    )
    check.add_argument("file", metavar="FILE", help="YAML configuration file")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key (repeatable)")
    check.set_defaults(func=cmd_check_config)

    train = sub.add_parser(
        "meta-train", help="meta-train the embedding on source recordings",
        description="Meta-train the few-shot embedding with ProtoNet, Reptile, MAML or first-order MAML and write a checkpoint atomically.",
    )
    train.add_argument(
        "--dataset", choices=["cwru", "simulated"], default="cwru",
        help="source dataset: CWRU recordings from --data-dir, or bearings simulated from their geometry (default: cwru)",
    )
    train.add_argument("--machines", type=int, default=24, help="with --dataset simulated: random machines to simulate (default: 24)")
    train.add_argument("--data-dir", default=_default_data_dir(), help="folder of the CWRU .mat files (default: $EDGE_AGENT_CWRU_DIR or %(default)s)")
    train.add_argument("--loads", type=_int_list, default=[0, 1, 2], help="motor loads in hp to train on, e.g. 0,1,2 (default)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--out", required=True, metavar="FILE", help="checkpoint file to write")
    train.add_argument("--episodes", type=int, default=300, help="training episodes (default: 300)")
    train.add_argument("--n-way", type=int, default=10, help="classes per episode (default: 10)")
    train.add_argument("--n-shot", type=int, default=5, help="support windows per class (default: 5)")
    train.add_argument("--n-query", type=int, default=10, help="query windows per class (default: 10)")
    train.add_argument("--window", type=int, default=2048, help="window size in samples at 12 kHz (default: 2048)")
    train.add_argument("--hop", type=int, default=1024, help="hop between windows in samples (default: 1024)")
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 0.001)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    train.add_argument(
        "--threads", type=int, default=0,
        help="CPU threads for training; 0 keeps PyTorch's default. Use 1 when other jobs share a small box.",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_algorithm_options(train)
    train.set_defaults(func=cmd_meta_train)

    replay = sub.add_parser(
        "replay", help="play recordings as a live line and score the diagnoses",
        description=(
            "Stream recordings to a running agent as several assets, publish one label per class "
            "covering its first N windows, and score every later diagnosis against the truth."
        ),
    )
    replay.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT", help="broker the agent is connected to")
    replay.add_argument("--dataset", choices=["cwru"], default="cwru", help="recordings to play (default: cwru)")
    replay.add_argument("--data-dir", default=_default_data_dir(), help="folder of the CWRU .mat files (default: $EDGE_AGENT_CWRU_DIR or %(default)s)")
    replay.add_argument("--loads", type=_int_list, default=[3], help="motor loads to play (default: 3)")
    replay.add_argument("--n-shot", type=int, default=5, help="windows labelled per class (default: 5)")
    replay.add_argument("--speed", type=_positive_float, default=20.0, help="times real time (default: 20)")
    replay.add_argument("--seed", type=int, default=0, help="seed of the segment order (default: 0)")
    replay.add_argument("--assets", type=int, default=4, help="number of assets on the line (default: 4)")
    replay.add_argument("--segment-s", type=_positive_float, default=3.0, help="segment length in seconds (default: 3)")
    replay.add_argument("--chunk-samples", type=int, default=1200, help="samples per published chunk (default: 1200)")
    replay.add_argument("--line", default="replay", help="line name in the topics (default: replay)")
    replay.add_argument("--agent-id", default="edge-01", help="agent_id of the agent under test (default: edge-01)")
    replay.add_argument("--plots", metavar="DIR", help="write confusion, accuracy-over-time and latency PNGs into DIR")
    replay.add_argument("--no-live", action="store_true", help="no live view (on a terminal) or periodic progress lines (otherwise)")
    _add_protocol_option(replay)
    replay.add_argument("--report", metavar="FILE", help="write the JSON report here")
    replay.add_argument("--verbose", "-v", action="store_true", help="print each label as it is published")
    replay.set_defaults(func=cmd_replay)

    demo = sub.add_parser(
        "demo", help="run the whole loop on this machine and print the report",
        description=(
            "Start a broker on a free loopback port (Mosquitto when installed, else amqtt in this process), "
            "start the agent with the shipped checkpoint, play a simulated line of four assets, label the "
            "first 5 windows of each class, and print the report. With --data-dir, play CWRU load 3 instead."
        ),
    )
    demo.add_argument(
        "--data-dir", metavar="DIR",
        help="play the CWRU load-3 recordings from DIR instead of the simulated line (meta-trains on loads 0-2 first)",
    )
    demo.add_argument("--broker", metavar="mqtt://HOST:PORT", help="use this broker instead of starting one")
    demo.add_argument(
        "--embedded-broker", choices=["auto", "mosquitto", "amqtt"], default="auto",
        help="broker to start without --broker: auto takes Mosquitto when installed, else amqtt (default: auto)",
    )
    _add_protocol_option(demo)
    demo.add_argument("--checkpoint", metavar="FILE", help="checkpoint to use (default: the one shipped in the package; with --data-dir, WORKDIR/model.pt)")
    demo.add_argument("--workdir", default="runs/demo", help="where the config, buffer, report and CWRU checkpoint go (default: %(default)s)")
    demo.add_argument("--speed", type=_positive_float, default=5.0, help="replay speed, times real time (default: 5)")
    demo.add_argument("--duration-s", type=_positive_float, default=24.0, help="seconds of simulated signal per class (default: 24)")
    demo.add_argument("--n-shot", type=int, default=5, help="windows labelled per class (default: 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    demo.add_argument("--plots", metavar="DIR", help="write confusion, accuracy-over-time and latency PNGs into DIR")
    demo.add_argument("--no-live", action="store_true", help="no live view (on a terminal) or periodic progress lines (otherwise)")
    demo.set_defaults(func=cmd_demo)
    add_evaluate_parser(sub, _default_data_dir())

    status = sub.add_parser(
        "status", help="print an agent's health, model, classes and counters",
        description="Read the agent's retained status record from the broker and print it.",
    )
    status.add_argument("--broker", default="mqtt://127.0.0.1:1883", metavar="mqtt://HOST:PORT", help="broker the agent uses (default: %(default)s)")
    status.add_argument("--agent-id", default="edge-01", help="the agent's agent_id (default: %(default)s)")
    status.add_argument("--timeout-s", type=_positive_float, default=5.0, help="how long to wait for the status record (default: 5)")
    status.add_argument("--json", action="store_true", help="print the raw status record as JSON")
    _add_protocol_option(status)
    status.set_defaults(func=cmd_status)

    label = sub.add_parser(
        "label", help="publish a label: this asset had this class between two times",
        description=(
            "Publish one label, as a technician or the MES would, and wait until the agent applies it. "
            "Times are epoch seconds or ISO 8601 (without an offset: this machine's local time). "
            "Exit status: 0 applied (or published, without --agent-id), 1 the agent did not learn "
            "from it (no windows in the range, or no answer), 2 invalid input or broker unreachable."
        ),
    )
    label.add_argument("--broker", default="mqtt://127.0.0.1:1883", metavar="mqtt://HOST:PORT", help="broker the agent uses (default: %(default)s)")
    label.add_argument("--line", required=True, help="line name in the topic, e.g. replay")
    label.add_argument("--asset", required=True, help="asset name in the topic, e.g. asset-1")
    label.add_argument("--start", required=True, help="start of the labelled range")
    label.add_argument("--end", required=True, help="end of the labelled range")
    label.add_argument("--class", dest="label_class", required=True, metavar="CLASS", help="class name, e.g. inner_race_007")
    label.add_argument(
        "--agent-id", default="edge-01",
        help="wait for this agent to apply the label; an empty string publishes without waiting (default: %(default)s)",
    )
    label.add_argument("--wait-s", type=_positive_float, default=10.0, help="how long to wait for the agent (default: 10)")
    _add_protocol_option(label)
    label.set_defaults(func=cmd_label)

    add_model_parser(sub, _add_config_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeAgentError as exc:
        print(f"edge-agent {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
