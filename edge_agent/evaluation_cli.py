"""The `edge-agent evaluate` subcommand and the meta-train options for the algorithms."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_agent.errors import EdgeAgentError

SHOT_LIST_EXAMPLE = "1,5"


def _shot_list(text: str) -> list[int]:
    try:
        shots = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as {SHOT_LIST_EXAMPLE}, got {text!r}") from exc
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"every n_shot must be at least 1, got {text!r}")
    return shots


def add_algorithm_options(parser: argparse.ArgumentParser) -> None:
    """Add --algorithm, --scenario and the inner-loop options to the meta-train parser."""
    from edge_agent.algorithms import ALGORITHMS
    from edge_agent.scenarios import SCENARIOS

    parser.add_argument("--algorithm", choices=list(ALGORITHMS), default="protonet", help="meta-learning algorithm (default: protonet)")
    parser.add_argument(
        "--scenario", choices=SCENARIOS, default="cross-load",
        help="source side to train on: cross-load uses --loads, novel-class the inner- and outer-race classes at all loads (default: cross-load)",
    )
    parser.add_argument("--inner-steps", type=int, help="SGD steps per task in the inner loop (reptile, maml, fomaml)")
    parser.add_argument("--inner-lr", type=float, help="inner-loop SGD learning rate (reptile, maml, fomaml)")
    parser.add_argument("--test-inner-steps", type=int, help="inner steps when adapting to a test task (default: --inner-steps)")
    parser.add_argument("--meta-batch", type=int, help="tasks per outer step (reptile, maml, fomaml)")
    parser.add_argument("--head-init", choices=["prototype", "zero"], help="start of the N-way head in the inner loop (default: prototype)")
    parser.add_argument("--outer-lr", type=float, help="Reptile's interpolation step, annealed linearly to 0 (default: 1.0)")
    parser.add_argument("--patience", type=int, default=8, help="validations without improvement before early stopping (default: 8)")
    parser.add_argument("--validate-every", type=int, default=25, help="outer steps between validations (default: 25)")


def algorithm_options(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the inner-loop options given on the command line; unset ones keep the learner's defaults."""
    names = ("inner_steps", "inner_lr", "test_inner_steps", "meta_batch", "head_init", "outer_lr")
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.algorithm == "protonet" and options:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(options))
        raise EdgeAgentError(f"--algorithm protonet has no inner loop, so {flags} cannot be used with it")
    return options


def scenario_recordings(args: argparse.Namespace, recordings: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Select the meta-training side of --scenario and describe it for the checkpoint metadata."""
    from edge_agent.scenarios import ALL_LOADS, cross_load_test_loads, source_side

    source = source_side(args.scenario, recordings, args.loads)
    if args.scenario == "cross-load":
        description = {"name": "cross-load", "source_loads": sorted(args.loads), "test_loads": cross_load_test_loads(args.loads)}
    else:
        description = {"name": "novel-class", "source_loads": list(ALL_LOADS), "test_loads": [0]}
    return source, description


def _episode_bar(enabled: bool) -> Any:
    """Return a rich progress bar over all episodes on a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from edge_agent.datasets.cwru import load_cwru
    from edge_agent.evaluation import EvaluationSettings, evaluate, format_table, report_json

    if args.threads:
        torch.set_num_threads(args.threads)
    recordings = load_cwru(args.data_dir)
    settings = EvaluationSettings(
        scenario=args.scenario, n_way=args.n_way, shots=args.n_shot, episodes=args.episodes, n_query=args.n_query,
        seed=args.seed, baselines=args.baselines, baseline_steps=args.baseline_steps,
        pretrain_steps=args.pretrain_steps, device=args.device,
        test_overrides={
            name: getattr(args, name) for name in ("test_inner_lr", "test_inner_steps") if getattr(args, name) is not None
        },
    )

    bar = _episode_bar(enabled=not args.json)

    def show_result(result: Any) -> None:
        if not args.json:
            line = (f"  {result.algorithm} {result.method} {result.n_way}-way {result.n_shot}-shot: "
                    f"{100 * result.accuracy:.2f}% +- {100 * result.ci95:.2f}")
            if bar is not None:
                bar.console.print(line)
            else:
                print(line, file=sys.stderr)

    def show_progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(bar.task_ids[0], completed=done, total=total)

    try:
        if bar is not None:
            bar.add_task("episodes", total=None)
            bar.start()
        report = evaluate(args.checkpoint, recordings, settings, on_result=show_result, on_progress=show_progress)
    except ValueError as exc:
        raise EdgeAgentError(f"invalid evaluation settings: {exc}") from exc
    finally:
        if bar is not None:
            bar.stop()
    if args.plots:
        from edge_agent.evaluation_plots import write_plots

        written = write_plots(report, args.plots)
        if not args.json:
            print("plots written: " + ", ".join(str(path) for path in written), file=sys.stderr)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(format_table(report))
    return 0


def add_evaluate_parser(sub: Any, default_data_dir: str) -> None:
    """Register `edge-agent evaluate` on the subcommand parsers `sub`."""
    from edge_agent.scenarios import SCENARIOS

    evaluate = sub.add_parser(
        "evaluate", help="measure few-shot accuracy of checkpoints on a leak-free scenario",
        description=(
            "Draw few-shot episodes from the test side of a scenario and report the mean query "
            "accuracy with a 95% confidence interval for each checkpoint and n_shot. Rejects a "
            "checkpoint that was trained on test-side data."
        ),
    )
    evaluate.add_argument("--checkpoint", action="append", required=True, metavar="FILE", help="checkpoint to evaluate (repeatable)")
    evaluate.add_argument("--dataset", choices=["cwru"], default="cwru", help="test dataset (default: cwru)")
    evaluate.add_argument("--data-dir", default=default_data_dir, help="folder of the CWRU .mat files")
    evaluate.add_argument("--scenario", choices=SCENARIOS, required=True, help="cross-load (test loads are those the checkpoint did not train on) or novel-class")
    evaluate.add_argument("--n-way", type=int, help="classes per episode (default: all test classes)")
    evaluate.add_argument("--n-shot", type=_shot_list, default=[1, 5], help=f"support windows per class, comma-separated (default: {SHOT_LIST_EXAMPLE})")
    evaluate.add_argument("--n-query", type=int, default=15, help="query windows per class (default: 15)")
    evaluate.add_argument("--episodes", type=int, default=600, help="episodes per setting (default: 600)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the episodes and baselines (default: 0)")
    evaluate.add_argument("--baselines", action="store_true", help="also train from scratch and fine-tune a supervised pre-trained CNN on each support set")
    evaluate.add_argument("--baseline-steps", type=int, default=100, help="Adam steps per support set for the baselines (default: 100)")
    evaluate.add_argument("--pretrain-steps", type=int, default=500, help="Adam steps of supervised pre-training on the source side (default: 500)")
    evaluate.add_argument("--test-inner-lr", type=float, help="inner-loop SGD rate when adapting to a test task (default: the checkpoint's)")
    evaluate.add_argument("--test-inner-steps", type=int, help="inner-loop steps when adapting to a test task (default: the checkpoint's)")
    evaluate.add_argument("--plots", metavar="DIR", help="write accuracy_vs_shots.png and confusion_hardest.png here")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON, accuracy as a fraction")
    evaluate.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    evaluate.add_argument("--threads", type=int, default=0, help="CPU threads; 0 keeps PyTorch's default")
    evaluate.set_defaults(func=cmd_evaluate)
