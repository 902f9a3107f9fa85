"""`edge-agent model list` and `edge-agent model rollback VERSION`.

Both read `storage.dir` from the agent's config and work on the model store there
(see `edge_agent.model_store`). A rollback writes a request file that the running
agent applies within about a second, and the command waits for the agent's result.
When no agent is running, the request stays and is applied at the next start.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import EdgeAgentError

if TYPE_CHECKING:
    from edge_agent.model_store import ModelStore

# Equal to model_store.BASE_VERSION, repeated so that this module does not import torch.
BASE_VERSION = "base"

EXIT_ROLLBACK_FAILED = 1
EXIT_NOT_APPLIED = 3


def _open_store(args: argparse.Namespace) -> ModelStore:
    # Imported here so that `edge-agent --help` does not load torch.
    from edge_agent.config import load_config
    from edge_agent.model_store import ModelStore

    config = load_config(args.config, args.overrides)
    if config.adaptation.algorithm != "reptile":
        print(
            f"note: adaptation.algorithm is {config.adaptation.algorithm!r}, so the agent makes no "
            "model versions and applies no rollback; set it to 'reptile' to fine-tune on the box",
            file=sys.stderr,
        )
    if not Path(config.storage.dir).is_dir():
        raise EdgeAgentError(
            f"no agent state in {config.storage.dir} (storage.dir); point --config, or "
            "--set storage.dir=..., at the folder of the agent you mean"
        )
    return ModelStore(config.storage.dir, keep_versions=config.storage.keep_versions)


def cmd_model_list(args: argparse.Namespace) -> int:
    store = _open_store(args)
    active = store.active_version()
    # Leave-out accuracies of the version and of its parent, measured when the version was made.
    rows = [("", "VERSION", "CREATED (UTC)", "PARENT", "CLASSES", "SHOTS", "ACCURACY", "PARENT_ACCURACY")]
    rows.append(("*" if active == BASE_VERSION else "", BASE_VERSION, "", "", "", "", "", ""))
    for record in store.versions():
        leave_out = record.leave_out
        rows.append((
            "*" if record.version == active else "",
            record.version,
            record.created_utc.replace("+00:00", ""),
            record.parent,
            str(len(record.classes)),
            str(sum(record.classes.values())),
            f"{leave_out.get('candidate_accuracy', float('nan')):.3f}",
            f"{leave_out.get('current_accuracy', float('nan')):.3f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"active: {active} ('*'); store: {store.dir}")
    pending = store.pending_rollback()
    if pending is not None:
        print(f"pending rollback to {pending.get('version')}: the agent applies it within a second of running")
    return 0


def cmd_model_rollback(args: argparse.Namespace) -> int:
    store = _open_store(args)
    request_id = store.request_rollback(args.version)
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:
        result: dict[str, Any] | None = store.last_rollback()
        if result is not None and result.get("request_id") == request_id:
            if result.get("applied"):
                print(f"model {args.version} active: {result.get('message')}")
                return 0
            print(f"edge-agent model rollback: error: the agent rejected the request: {result.get('message')}", file=sys.stderr)
            return EXIT_ROLLBACK_FAILED
        time.sleep(0.2)
    print(
        f"no running agent applied the rollback to {args.version} within {args.wait_s:g} s; "
        f"the request stays in {store.dir} and is applied when the agent starts",
        file=sys.stderr,
    )
    return EXIT_NOT_APPLIED


def add_model_parser(sub: Any, add_config_options: Any) -> None:
    """Add the `model` command with its `list` and `rollback` subcommands to `sub`."""
    model = sub.add_parser(
        "model", help="list or roll back the fine-tuned model versions",
        description="Work on the model store under storage.dir/models of the agent with this config.",
    )
    actions = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list the stored versions; '*' marks the active one")
    add_config_options(listing, required=True)
    listing.set_defaults(func=cmd_model_list)

    rollback = actions.add_parser(
        "rollback", help="make VERSION active in the running agent",
        description=(
            "Ask the running agent to serve VERSION (a name from 'model list', or 'base' for the "
            "meta-trained checkpoint with ProtoNet) and wait for the result. Exits 0 when applied, "
            "1 when the agent rejected it, 3 when no agent applied it in time."
        ),
    )
    rollback.add_argument("version", metavar="VERSION", help="version name such as v3, or 'base'")
    add_config_options(rollback, required=True)
    rollback.add_argument("--wait-s", type=float, default=10.0, help="seconds to wait for the agent (default: 10)")
    rollback.set_defaults(func=cmd_model_rollback)
