"""Live reconfiguration: re-read the config file on SIGHUP or when it changes.

A reload reads and validates the whole file first. An invalid or missing file is
rejected with every error logged, the running configuration stays, and the status
topic shows the rejection. A valid file is compared key by key with the running
configuration (`diff_paths`), and each changed key is applied in one of three ways:

- live, between two batches of the pipeline worker: topics (old filters are
  unsubscribed), QoS, window hop and retention, adaptation thresholds, batch size,
  limits, status interval, log level, service and watch settings;
- by reconnecting: the broker address and the other `mqtt` connection keys;
- not at all until a restart: `agent_id`, `mqtt.client_id` (the broker keeps the
  session by client id), `topics.status`, `storage.dir`, the
  `model` checkpoint and device, and the fine-tuning keys (`adaptation.algorithm`,
  `steps`, `inner_lr`, `leave_out_folds`, `debounce_s`, `storage.keep_versions`).
  These are logged as needing a restart, reported on the status topic, and the rest
  of the change still applies.

A change of `window.size` that does not fit the loaded checkpoint is rejected like an
invalid file, because the model cannot take other window sizes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import AgentConfig, diff_paths, load_config
from edge_agent.errors import ConfigError, EdgeAgentError

if TYPE_CHECKING:
    from edge_agent.agent import Agent

log = logging.getLogger(__name__)

# Keys read once at start: a change is reported and waits for a restart.
RESTART_KEYS = (
    "agent_id", "mqtt.client_id", "topics.status", "storage.dir", "model.checkpoint", "model.device",
    # The adaptation worker and its model store are built once, at start.
    "adaptation.algorithm", "adaptation.steps", "adaptation.inner_lr", "adaptation.leave_out_folds",
    "adaptation.debounce_s", "storage.keep_versions",
)
# Keys of the broker connection: a change replaces the MQTT client.
RECONNECT_PREFIX = "mqtt."
RESUBSCRIBE_KEYS = ("mqtt.qos", "mqtt.signal_qos", "topics.signal", "topics.label")


@dataclass
class ReloadResult:
    """Outcome of one reload, as shown on the status topic under `config`."""

    outcome: str  # "applied", "unchanged" or "rejected"
    ts: float = field(default_factory=time.time)
    changed: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "ts": self.ts,
            "changed": self.changed,
            "restart_required": self.restart_required,
            "errors": self.errors,
        }


def install_reload_handler(reload_event: threading.Event) -> None:
    """Make SIGHUP set `reload_event`; the agent's main loop does the reload."""

    def request_reload(signum: int, frame: object) -> None:
        reload_event.set()

    signal.signal(signal.SIGHUP, request_reload)


class FileWatch:
    """Detects changes of a file by its inode, size and modification time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def changed(self) -> bool:
        """Return True once for each change (including deletion) since the last call."""
        current = self._signature()
        if current == self._last:
            return False
        self._last = current
        return True


class Reloader:
    """Re-read `path` with the same `--set` overrides and apply it to `agent`."""

    def __init__(self, agent: Agent, path: Path | None, overrides: Sequence[str] = ()) -> None:
        self.agent = agent
        self.path = path
        self.overrides = list(overrides)
        self.last: ReloadResult | None = None
        self.reloads = 0
        self.rejections = 0

    def reload(self) -> ReloadResult:
        """Validate the file and apply what changed; a bad or missing file is rejected, not raised."""
        result = self._reload()
        self.last = result
        if result.outcome == "rejected":
            self.rejections += 1
        else:
            self.reloads += 1
        return result

    def _reload(self) -> ReloadResult:
        if self.path is None:
            return ReloadResult("rejected", errors=["the agent was started without --config; nothing to re-read"])
        log.info("reloading configuration from %s", self.path)
        try:
            new = load_config(self.path, self.overrides)
            self.agent.check_config_fits_model(new)
        except ConfigError as exc:
            errors = exc.errors or [str(exc)]
            return self._rejected(str(exc), errors)
        except EdgeAgentError as exc:
            return self._rejected(str(exc), [str(exc)])

        old = self.agent.config
        changed = diff_paths(old, new)
        if not changed:
            log.info("configuration in %s unchanged", self.path)
            return ReloadResult("unchanged")

        restart = [key for key in changed if key in RESTART_KEYS]
        for key in restart:
            log.warning("config key %s changed, which takes effect only after a restart of the agent", key)
        self.agent.apply_config(new, changed, restart)
        log.info("configuration reloaded; changed: %s", ", ".join(changed))
        return ReloadResult("applied", changed=changed, restart_required=restart)

    def _rejected(self, summary: str, errors: list[str]) -> ReloadResult:
        log.error("configuration reload rejected: %s; the running configuration stays", summary)
        for error in errors:
            log.error("  %s", error)
        return ReloadResult("rejected", errors=errors)


def needs_reconnect(changed: Sequence[str]) -> bool:
    return any(key.startswith(RECONNECT_PREFIX) and key not in RESUBSCRIBE_KEYS for key in changed)


def needs_resubscribe(changed: Sequence[str]) -> bool:
    return any(key in RESUBSCRIBE_KEYS for key in changed)


def live_config(old: AgentConfig, new: AgentConfig, restart: Sequence[str]) -> AgentConfig:
    """Return `new` with the restart-only keys kept at their running values."""
    update: dict[str, Any] = {}
    for key in restart:
        section, _, name = key.partition(".")
        if not name:
            update[section] = getattr(old, section)
            continue
        base = update.get(section, getattr(new, section))
        update[section] = base.model_copy(update={name: getattr(getattr(old, section), name)})
    return new.model_copy(update=update)
