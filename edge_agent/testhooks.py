"""Fault-injection hooks for the service tests, switched on by environment variables.

They exist so that tests can stop a real agent process at a chosen point. Nothing
here runs unless a variable is set, and a production unit never sets them.

- `EDGE_AGENT_TEST_ADAPTATION_DELAY_S`: sleep that long inside every prototype
  refresh after a label, so a test can kill the agent during adaptation.
- `EDGE_AGENT_TEST_STALL_WORKER`: set to 1 to block the pipeline worker in its
  first batch, so a test can see the systemd watchdog fire.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.pipeline import Pipeline

log = logging.getLogger(__name__)


def apply_test_hooks(pipeline: Pipeline) -> None:
    delay = os.environ.get("EDGE_AGENT_TEST_ADAPTATION_DELAY_S")
    if delay:
        delay_s = float(delay)
        refresh = pipeline.refresh_support

        def slow_refresh() -> None:
            log.warning("test hook: adaptation sleeps %.1f s", delay_s)
            time.sleep(delay_s)
            refresh()

        pipeline.refresh_support = slow_refresh  # type: ignore[method-assign]

    if os.environ.get("EDGE_AGENT_TEST_STALL_WORKER") == "1":
        process = pipeline.process

        def stalled_process(items: list[Any]) -> None:
            log.warning("test hook: pipeline worker blocks")
            threading.Event().wait()
            process(items)

        pipeline.process = stalled_process  # type: ignore[method-assign]
