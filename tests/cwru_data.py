"""Location of the CWRU test data: `../shared/data/cwru` next to the repository.

Set EDGE_AGENT_CWRU_DIR to use another folder. Tests that need the data call
`cwru_dir()`, which skips them with the reason when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent


def cwru_dir() -> Path:
    """Return the CWRU data folder, or skip the calling test when it is absent."""
    configured = os.environ.get("EDGE_AGENT_CWRU_DIR")
    folder = Path(configured) if configured else REPOSITORY.parent / "shared" / "data" / "cwru"
    if not folder.is_dir():
        pytest.skip(f"CWRU data folder {folder} not found; set EDGE_AGENT_CWRU_DIR to its location")
    return folder
