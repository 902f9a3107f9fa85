"""Logging set-up for the CLI: journald-friendly under systemd, timestamped elsewhere."""

from __future__ import annotations

import logging
import os
import sys


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr; without timestamps when journald already adds them.

    systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    """
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG; keep it quiet unless asked for.
    logging.getLogger("paho").setLevel(logging.WARNING)
