"""Shared fixtures: the CWRU data folder and a private Mosquitto broker on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.broker import MosquittoBroker, mosquitto_path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cwru_data_dir() -> Path:
    """The CWRU folder: $EDGE_AGENT_CWRU_DIR, or ../shared/data/cwru beside the repository."""
    configured = os.environ.get("EDGE_AGENT_CWRU_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "cwru"


@pytest.fixture(scope="session")
def cwru_dir() -> Path:
    path = cwru_data_dir()
    if not (path / "MANIFEST.tsv").exists() and not any(path.rglob("*.mat")):
        pytest.skip(
            f"CWRU recordings not found at {path}; set EDGE_AGENT_CWRU_DIR to a folder "
            "of the 12 kHz drive-end .mat files to run this test"
        )
    return path


def _require_mosquitto() -> None:
    if mosquitto_path() is not None:
        return
    message = "mosquitto is not installed (apt-get install mosquitto)"
    if os.environ.get("EDGE_AGENT_REQUIRE_BROKER") == "1":
        pytest.fail(message + "; EDGE_AGENT_REQUIRE_BROKER=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free 127.0.0.1 port, with persistence on."""
    _require_mosquitto()
    server = MosquittoBroker(tmp_path / "broker", persistence=True)
    server.start()
    try:
        yield server
    finally:
        server.close()
