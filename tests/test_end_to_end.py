"""The whole loop on real data: meta-train, the agent as a process, a replay over Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edge_agent.broker import MosquittoBroker
from edge_agent.cli import main as cli_main

pytestmark = [pytest.mark.slow, pytest.mark.cwru]

# A short meta-training that reaches the accuracy below (see docs/benchmarks.md).
E2E_EPISODES = 150


@pytest.fixture(scope="session")
def e2e_checkpoint(cwru_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "model.pt"
    code = cli_main([
        "meta-train", "--dataset", "cwru", "--data-dir", str(cwru_dir), "--loads", "0,1,2",
        "--seed", "0", "--episodes", str(E2E_EPISODES), "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out),
    ])
    assert code == 0
    assert out.exists()
    return out


def write_config(folder: Path, broker: MosquittoBroker, checkpoint: Path, adaptation: dict | None = None) -> Path:
    config = {
        "agent_id": "e2e",
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 2},
        "model": {"checkpoint": str(checkpoint), "device": "cpu"},
        "storage": {"dir": str(folder / "state")},
        "status": {"interval_s": 2},
    }
    if adaptation is not None:
        config["adaptation"] = adaptation
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def agent_process(tmp_path: Path, broker: MosquittoBroker, e2e_checkpoint: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = write_config(tmp_path, broker, e2e_checkpoint)
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(log_path.read_text(errors="replace")[-3000:])


def test_replay_load3_after_five_labels(
    tmp_path: Path, broker: MosquittoBroker, agent_process: subprocess.Popen[bytes], cwru_dir: Path
) -> None:
    report_path = tmp_path / "report.json"
    code = cli_main([
        "replay", "--broker", broker.url, "--dataset", "cwru", "--data-dir", str(cwru_dir),
        "--loads", "3", "--n-shot", "5", "--speed", "20", "--seed", "0",
        "--agent-id", "e2e", "--report", str(report_path),
    ])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["windows_scored"] > 500
    assert report["diagnoses_received"] == report["windows_scored"]
    assert report["labels_published"] == 9
    assert report["labels_applied"] == 9
    assert report["diagnoses_duplicated"] == 0
    assert report["accuracy"] >= 0.9
    assert report["latency_ms"]["p50"] is not None

    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(20) == 0


def wait_for_line(path: Path, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def test_agent_keeps_support_across_restart(
    tmp_path: Path, broker: MosquittoBroker, e2e_checkpoint: Path, cwru_dir: Path
) -> None:
    """Labels applied before a restart rebuild the same prototypes after it."""
    config = write_config(tmp_path, broker, e2e_checkpoint)
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = cli_main([
            "replay", "--broker", broker.url, "--data-dir", str(cwru_dir), "--loads", "3",
            "--n-shot", "5", "--speed", "40", "--seed", "1", "--agent-id", "e2e",
            "--report", str(tmp_path / "first.json"),
        ])
        assert code == 0
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0

    log_path = tmp_path / "second.log"
    with open(log_path, "wb") as log_file:
        second = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        assert wait_for_line(log_path, "active: 9 classes", 60), log_path.read_text(errors="replace")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0

    from edge_agent.buffer import TaskBuffer

    with TaskBuffer(tmp_path / "state" / "task_buffer.sqlite3", max_shots_per_class=50) as buffer:
        counts = buffer.counts()
    assert len(counts) == 9
    assert all(n == 5 for n in counts.values())


def test_sigterm_during_start_exits_cleanly(tmp_path: Path, broker: MosquittoBroker, e2e_checkpoint: Path) -> None:
    config = write_config(tmp_path, broker, e2e_checkpoint)
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    assert wait_for_line(log_path, "starting with", 30)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_replay_with_reptile_then_rollback(
    tmp_path: Path, broker: MosquittoBroker, e2e_checkpoint: Path, cwru_dir: Path
) -> None:
    """The agent fine-tunes in the background during a replay, and a rollback reaches it."""
    config = write_config(tmp_path, broker, e2e_checkpoint, {"algorithm": "reptile", "debounce_s": 0.5})
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        report_path = tmp_path / "report.json"
        code = cli_main([
            "replay", "--broker", broker.url, "--dataset", "cwru", "--data-dir", str(cwru_dir),
            "--loads", "3", "--n-shot", "5", "--speed", "20", "--seed", "0",
            "--agent-id", "e2e", "--report", str(report_path),
        ])
        assert code == 0
        report = json.loads(report_path.read_text())
        assert report["labels_applied"] == 9
        assert report["diagnoses_received"] == report["windows_scored"]
        assert report["accuracy"] >= 0.9

        assert wait_for_line(log_path, "accepted: 9 classes", 60), log_path.read_text(errors="replace")[-3000:]
        index = json.loads((tmp_path / "state" / "models" / "index.json").read_text())
        assert index["active"] is not None
        assert index["versions"][-1]["classes"] == {name: 5 for name in index["versions"][-1]["classes"]}

        code = cli_main(["model", "rollback", "base", "--config", str(config), "--wait-s", "15"])
        assert code == 0
        assert wait_for_line(log_path, "model base active: rolled back", 5)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        print(log_path.read_text(errors="replace")[-3000:])
