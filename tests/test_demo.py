"""The zero-setup demo, the status and label commands, the live view and the plots."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from edge_agent.broker import free_loopback_port
from edge_agent.cli import main as cli_main
from edge_agent.demo import SHIPPED_CHECKPOINT
from edge_agent.embedded_broker import AmqttBroker
from edge_agent.live import LiveMonitor
from edge_agent.line import plan_line
from edge_agent.payloads import encode_signal_binary
from edge_agent.plots import write_replay_plots
from edge_agent.simulation import MachineParameters, simulate_machine_recordings
from edge_agent.transport import BrokerSettings, InboundMessage, MqttTransport


def test_shipped_checkpoint_is_small_and_loads() -> None:
    from edge_agent.checkpoint import load_checkpoint

    assert SHIPPED_CHECKPOINT.stat().st_size < 1_000_000
    _, metadata = load_checkpoint(SHIPPED_CHECKPOINT)
    assert metadata["dataset"] == "simulated"
    assert metadata["sample_rate_hz"] == 12000.0
    assert metadata["window_size"] == 2048


@pytest.mark.slow
def test_demo_simulated_line_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default demo, shortened: amqtt, shipped checkpoint, simulated line."""
    package_files = sorted(SHIPPED_CHECKPOINT.parent.iterdir())
    code = cli_main([
        "demo", "--embedded-broker", "amqtt", "--duration-s", "8", "--speed", "20",
        "--workdir", str(tmp_path / "demo"), "--plots", str(tmp_path / "plots"),
    ])
    output = capsys.readouterr()
    assert code == 0, output.err
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["demo"]["broker"].startswith("amqtt")
    assert report["labels_published"] == 10
    assert report["labels_applied"] == 10
    assert report["diagnoses_received"] == report["windows_scored"]
    assert report["windows_scored"] > 200
    assert report["accuracy"] >= 0.8
    assert "accuracy" in output.out
    assert "[live]" in output.err
    for name in ("confusion.png", "accuracy_over_time.png", "latency.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert sorted(SHIPPED_CHECKPOINT.parent.iterdir()) == package_files


def test_demo_missing_data_dir_names_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["demo", "--data-dir", str(tmp_path / "absent"), "--workdir", str(tmp_path / "demo")])
    error = capsys.readouterr().err
    assert code == 2
    assert "not found" in error
    assert "105.mat" in error
    assert "engineering.case.edu/bearingdatacenter" in error


def test_status_unreachable_broker_names_address(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_loopback_port()
    code = cli_main(["status", "--broker", f"mqtt://127.0.0.1:{port}", "--timeout-s", "1"])
    error = capsys.readouterr().err
    assert code == 2
    assert f"127.0.0.1:{port}" in error


@pytest.fixture
def running_agent(tmp_path: Path) -> Iterator[tuple[AmqttBroker, object]]:
    """An agent with the shipped checkpoint on an amqtt broker, agent_id "bench"."""
    from edge_agent.agent import Agent
    from edge_agent.config import load_config

    broker = AmqttBroker()
    broker.start()
    checkpoint = tmp_path / "model.pt"
    shutil.copyfile(SHIPPED_CHECKPOINT, checkpoint)
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump({
        "agent_id": "bench",
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "protocol": "3.1.1"},
        "model": {"checkpoint": str(checkpoint), "device": "cpu"},
        "storage": {"dir": str(tmp_path / "state")},
        "status": {"interval_s": 1},
    }), encoding="utf-8")
    agent = Agent(load_config(config_path))
    agent.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        yield broker, agent
    finally:
        agent.stop_event.set()
        runner.join(5)
        agent.stop()
        broker.close()


def publish_signal(port: int, seconds: float) -> float:
    """Stream `seconds` of simulated outer-race signal to asset bench/a1; return its start."""
    signal = simulate_machine_recordings(MachineParameters(), labels=["outer_race_007"], duration_s=seconds)[0].signal
    transport = MqttTransport(
        BrokerSettings(host="127.0.0.1", port=port, client_id="test-sender", protocol="3.1.1"),
        subscriptions=[], on_message=lambda message: None,
    )
    transport.start()
    assert transport.wait_connected(5)
    t0 = float(int(time.time()))
    for seq, offset in enumerate(range(0, len(signal), 1200)):
        chunk = signal[offset : offset + 1200]
        info = transport.publish("plant/bench/a1/vibration", encode_signal_binary(t0 + offset / 12000, 12000.0, seq, chunk), qos=1)
    info.wait_for_publish(5)
    transport.stop()
    return t0


@pytest.mark.slow
def test_label_and_status_commands(running_agent, capsys: pytest.CaptureFixture[str]) -> None:
    broker, _ = running_agent
    t0 = publish_signal(broker.port, 1.0)
    time.sleep(0.5)
    code = cli_main([
        "label", "--broker", broker.url, "--mqtt-protocol", "3.1.1", "--agent-id", "bench",
        "--line", "bench", "--asset", "a1", "--start", str(t0), "--end", str(t0 + 0.8), "--class", "outer_race_007",
    ])
    output = capsys.readouterr().out
    assert code == 0
    assert "applied by agent 'bench'" in output

    code = cli_main(["status", "--broker", broker.url, "--mqtt-protocol", "3.1.1", "--agent-id", "bench"])
    output = capsys.readouterr().out
    assert code == 0
    assert "bench: online" in output
    assert "outer_race_007" in output
    assert "labels applied    1" in output


@pytest.mark.slow
def test_label_without_windows_exits_1(running_agent, capsys: pytest.CaptureFixture[str]) -> None:
    broker, agent = running_agent
    code = cli_main([
        "label", "--broker", broker.url, "--mqtt-protocol", "3.1.1", "--agent-id", "bench",
        "--line", "bench", "--asset", "no-such-asset", "--start", "1000", "--end", "1002", "--class", "ghost",
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert "has no window of bench/no-such-asset" in err
    assert agent.counters.get("labels_applied") == 0
    assert agent.counters.get("labels_without_windows") == 1


def test_demo_rejects_too_short_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", "--duration-s", "1"]) == 2
    assert "--duration-s must be at least 6 s" in capsys.readouterr().err


def test_label_rejects_reversed_range(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main([
        "label", "--broker", "mqtt://127.0.0.1:1", "--line", "l", "--asset", "a",
        "--start", "2026-12-04T10:00:05", "--end", "2026-12-04T10:00:00", "--class", "ball_007",
    ])
    assert code == 2
    assert "must be after its start" in capsys.readouterr().err


def test_label_rejects_bad_time(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main([
        "label", "--line", "l", "--asset", "a", "--start", "yesterday", "--end", "1", "--class", "ball_007",
    ])
    assert code == 2
    assert "invalid time 'yesterday'" in capsys.readouterr().err


def small_plan():
    recordings = simulate_machine_recordings(MachineParameters(), labels=["normal", "ball_007"], duration_s=2.0)
    return plan_line(recordings, n_assets=1, window_size=2048, hop=1024, n_shot=2, segment_s=1.0, gap_s=0.5, t0=1000.0, seed=0)


def test_live_view_scores_diagnoses() -> None:
    plan = small_plan()
    stream = io.StringIO()
    monitor = LiveMonitor("mqtt://127.0.0.1:1", agent_id="demo", stream=stream)
    monitor.set_plan(plan)
    status = {"state": "online", "agent_id": "demo", "model": {"model_version": "abc-p2"}, "classes": {"normal": 5},
              "ready_classes": ["normal"], "counters": {"messages_rejected": 3}, "rejected": {"sample_rate": 3}}
    monitor._on_message(InboundMessage("edge-agent/demo/status", json.dumps(status).encode(), 1, False, None))
    for window, label in zip(plan.scored[:2], ["wrong", plan.scored[1].label]):
        diagnosis = {"ts": 1.0, "window_start": window.start_ts, "window_end": window.end_ts, "label": label,
                     "confidence": 0.9, "scores": {}, "model_version": "abc-p2", "latency_ms": 1.0}
        monitor._on_message(InboundMessage(f"plant/replay/{window.asset}/diagnosis", json.dumps(diagnosis).encode(), 0, False, None))

    assert monitor.diagnoses == 2
    assert monitor.scored == 2
    assert monitor.rolling_accuracy() == pytest.approx(0.5)
    console = Console(file=io.StringIO(), width=160)
    console.print(monitor.render())
    text = console.file.getvalue()
    assert "abc-p2" in text
    assert "sample_rate: 3" in text
    assert "normal" in text
    assert "rolling accuracy 0.500" in monitor._summary_line()


def test_plots_from_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    report = {
        "accuracy": 0.75,
        "confusion": {"labels": ["a", "b"], "columns": ["a", "b", "(none)"], "matrix": [[3, 1, 0], [0, 3, 1]]},
        "label_times_s": [0.5, 1.0],
        "timeline": [{"t_s": i * 0.1, "correct": bool(i % 4), "latency_ms": float(rng.uniform(5, 50))} for i in range(120)],
    }
    paths = write_replay_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["confusion.png", "accuracy_over_time.png", "latency.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
