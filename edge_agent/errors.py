"""Exception family of edge-agent.

Every error that a user can cause or fix derives from `EdgeAgentError`, so the CLI
and the daemon's loop boundaries can report it as one clear line without a traceback.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base class of all errors that edge-agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """An invalid configuration file or override; `errors` lists every problem found."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors or [])

    def __str__(self) -> str:
        if not self.errors:
            return super().__str__()
        lines = [super().__str__()] + [f"  - {error}" for error in self.errors]
        return "\n".join(lines)


class PayloadError(EdgeAgentError):
    """A malformed or unusable MQTT payload.

    `reason` is a short stable code (for counters and rejection records), and the
    message describes the problem in words.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(EdgeAgentError):
    """The MQTT broker could not be reached or rejected the client."""


class StorageError(EdgeAgentError):
    """The SQLite task buffer or outbox failed."""


class CheckpointError(EdgeAgentError):
    """A model checkpoint is missing, corrupt or does not fit the configuration."""


class DatasetError(EdgeAgentError):
    """A dataset folder is missing, incomplete or unreadable."""


class AdaptationError(EdgeAgentError):
    """Few-shot adaptation could not run on the current support set."""
