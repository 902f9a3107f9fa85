"""The edge-agent command line: help, check-config and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import EXIT_USER_ERROR, build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "check-config", "meta-train", "replay", "demo"):
        assert command in out


@pytest.mark.parametrize("command", ["run", "check-config", "meta-train", "replay", "demo"])
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: edge-agent" in capsys.readouterr().out


def test_check_config_default_file_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(REPO_ROOT / "config" / "agent.yaml")]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert "agent_id: edge-01" in out


def test_check_config_lists_three_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  port: 70000\n  prot: 5\nwindow:\n  hop: 4096\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "3 errors" in err
    assert "mqtt.port: must be between 1 and 65535, got 70000" in err
    assert "mqtt.prot: unknown key" in err
    assert "window.hop: must be <= window.size (2048), got 4096" in err


def test_check_config_redacts_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("mqtt:\n  username: line7\n  password: hunter2\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "line7" in out


def test_check_config_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert main(["check-config", str(path), "--set", "mqtt.port=1884"]) == 0
    assert "port: 1884" in capsys.readouterr().out


def test_meta_train_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["meta-train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "not found" in err
    assert "engineering.case.edu" in err


def test_run_with_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"model:\n  checkpoint: {tmp_path / 'none.pt'}\nstorage:\n  dir: {tmp_path / 'state'}\n", encoding="utf-8")
    assert main(["run", "--config", str(config)]) == EXIT_USER_ERROR
    assert "none.pt" in capsys.readouterr().err


def test_replay_rejects_bad_broker_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replay", "--broker", "http://127.0.0.1:1883", "--data-dir", str(tmp_path)])
    assert code == EXIT_USER_ERROR
    assert "mqtt://HOST:PORT" in capsys.readouterr().err


def test_loads_must_be_integers() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["meta-train", "--out", "x", "--loads", "a,b"])


def test_model_list_without_agent_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"storage:\n  dir: {tmp_path / 'missing'}\n", encoding="utf-8")
    assert main(["model", "list", "--config", str(config)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "no agent state in" in err
    assert "adaptation.algorithm is 'protonet'" in err
