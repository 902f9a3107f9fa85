"""The systemd unit, its GPU drop-in and the install script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
INSTALLED_BINARY = "/opt/edge-agent/current/bin/edge-agent"


def unit_text() -> str:
    return (DEPLOY / "edge-agent.service").read_text(encoding="utf-8")


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_service_settings() -> None:
    settings = unit_settings(unit_text())
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["StateDirectory"] == ["edge-agent"]
    assert settings["ConfigurationDirectory"] == ["edge-agent"]
    assert settings["User"] == ["edge-agent"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert int(settings["WatchdogSec"][0]) > 0


def test_stop_timeout_exceeds_agent_shutdown() -> None:
    from edge_agent.config import ServiceConfig

    settings = unit_settings(unit_text())
    default_shutdown_s = ServiceConfig().shutdown_timeout_s
    assert int(settings["TimeoutStopSec"][0]) > default_shutdown_s


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("with_gpu", [False, True], ids=["unit", "unit+gpu"])
def test_systemd_analyze_verify(tmp_path: Path, with_gpu: bool) -> None:
    # verify checks that ExecStart= exists, so point it at this venv's edge-agent.
    binary = Path(sys.executable).with_name("edge-agent")
    text = unit_text().replace(INSTALLED_BINARY, str(binary))
    if with_gpu:
        # A drop-in's [Service] section merges like a repeated section of the unit.
        text += "\n" + (DEPLOY / "gpu.conf").read_text(encoding="utf-8")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text, encoding="utf-8")
    result = verify(unit)
    print(f"systemd-analyze verify ({'with' if with_gpu else 'without'} gpu.conf): rc {result.returncode}, "
          f"output {result.stdout + result.stderr!r}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_install_script_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(DEPLOY / "install.sh")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_install_script_help() -> None:
    result = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "--rollback" in result.stdout
    assert "/opt/edge-agent/releases" in result.stdout
