"""Configuration loading: defaults, errors, overrides, paths, redaction and docs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.config import (
    AgentConfig,
    all_keys,
    diff_paths,
    load_config,
    redacted_dict,
    render_reference,
)
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

REQUIRED_KEYS = [
    "agent_id",
    "mqtt.host",
    "mqtt.port",
    "mqtt.qos",
    "mqtt.username",
    "mqtt.password_file",
    "topics.signal",
    "topics.label",
    "topics.diagnosis",
    "topics.status",
    "window.size",
    "window.hop",
    "model.checkpoint",
    "model.device",
    "adaptation.n_shot_min",
    "storage.dir",
]


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path | None, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.errors


# Defaults and the shipped file


def test_fixed_keys_exist() -> None:
    keys = all_keys()
    for key in REQUIRED_KEYS:
        assert key in keys


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.agent_id == "edge-01"
    assert config.mqtt.port == 1883
    assert config.mqtt.protocol == "5"
    assert config.mqtt.client_id == "edge-agent-edge-01"
    assert config.window.hop == 1024
    assert config.model.device == "auto"
    assert config.model.checkpoint is None
    assert config.storage.dir == Path("/var/lib/edge-agent")
    assert config.status_topic == "edge-agent/edge-01/status"


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# only a comment\n")
    assert load_config(path).window.size == 2048


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  # port: 1884\nwindow:\n")
    config = load_config(path)
    assert config.mqtt.port == 1883
    assert config.window.size == 2048


def test_shipped_file_matches_defaults() -> None:
    shipped = load_config(REPO / "config" / "agent.yaml")
    defaults = load_config(None)
    assert diff_paths(shipped, defaults) == []


def test_shipped_file_mentions_every_key() -> None:
    text = (REPO / "config" / "agent.yaml").read_text(encoding="utf-8")
    for key in all_keys():
        assert f"{key.rsplit('.', 1)[-1]}:" in text, key


def test_client_id_follows_agent_id(tmp_path: Path) -> None:
    path = write(tmp_path, "agent_id: press_7\n")
    assert load_config(path).mqtt.client_id == "edge-agent-press_7"
    path = write(tmp_path, "agent_id: press_7\nmqtt:\n  client_id: fixed\n")
    assert load_config(path).mqtt.client_id == "fixed"


def test_protocol_number_accepted(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "mqtt:\n  protocol: 5\n")).mqtt.protocol == "5"
    assert load_config(write(tmp_path, "mqtt:\n  protocol: 3.1.1\n")).mqtt.protocol == "3.1.1"


def test_log_level_case_insensitive(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "log:\n  level: debug\n")).log.level == "DEBUG"


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(ValueError, match="frozen"):
        config.mqtt.port = 1  # type: ignore[misc]


# Error paths, one rule each


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("window:\n  hop: 4096\n  size: 1024\n", r"window\.hop: must be <= window\.size \(1024\), got 4096"),
        ("mqtt:\n  port: 70000\n", r"mqtt\.port: must be between 1 and 65535, got 70000"),
        ("mqtt:\n  prot: 5\n", r"mqtt\.prot: unknown key \(did you mean 'protocol'"),
        ("qos: 1\n", r"qos: unknown key here \(did you mean 'mqtt\.qos'\?\)"),
        ("mqtt:\n  port: \"1883\"\n", r"mqtt\.port: must be an integer, got '1883' \(a quoted string; remove the quotes\)"),
        ("mqtt:\n  qos: true\n", r"mqtt\.qos: must be an integer, got true"),
        ("mqtt:\n  host: 12\n", r"mqtt\.host: must be a string, got 12 \(put it in quotes\)"),
        ("mqtt:\n  protocol: \"4\"\n", r"mqtt\.protocol: must be '5' or '3\.1\.1', got '4'"),
        ("mqtt:\n  username: \"\"\n", r"mqtt\.username: must be at least 1 character long, got ''"),
        ("mqtt:\n  reconnect_min_s: 0\n", r"mqtt\.reconnect_min_s: must be greater than 0 and at most 3600, got 0"),
        ("mqtt:\n  reconnect_min_s: 10\n  reconnect_max_s: 5\n", r"mqtt\.reconnect_max_s: must be >= mqtt\.reconnect_min_s \(10\.0\), got 5\.0"),
        ("mqtt:\n  password: x\n  protocol: \"3.1.1\"\n", r"mqtt\.username: is required when a password is set with MQTT 3\.1\.1"),
        ("agent_id: edge 01\n", r"agent_id: may contain only letters, digits, '_' and '-', got 'edge 01'"),
        ("agent_id: \"" + "a" * 65 + "\"\n", r"agent_id: must be 1 to 64 characters long"),
        ("agent_id: 7\n", r"agent_id: must be a string, got 7"),
        ("window:\n  retain_s: ten\n", r"window\.retain_s: must be a number, got 'ten'"),
        ("window:\n  size: 32\n", r"window\.size: must be between 64 and 65536, got 32"),
        ("model:\n  device: gpu\n", r"model\.device: must be 'auto', 'cpu' or 'cuda', got 'gpu'"),
        ("model:\n  max_batch: 2.5\n", r"model\.max_batch: must be a whole number, got 2\.5"),
        ("model:\n  checkpoint: 3\n", r"model\.checkpoint: must be a path \(a string\), got 3"),
        ("adaptation:\n  algorithm: maml\n", r"adaptation\.algorithm: must be 'protonet' or 'reptile', got 'maml'"),
        ("adaptation:\n  n_shot_min: 10\n  max_shots_per_class: 5\n", r"adaptation\.max_shots_per_class: must be >= adaptation\.n_shot_min \(10\), got 5"),
        ("storage: [1]\n", r"storage: must be a section of keys \(a YAML mapping\), got a list"),
        ("log:\n  level: verbose\n", r"log\.level: must be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL', got 'VERBOSE'"),
        ("topics:\n  signal: \"plant/+/{asset}\"\n", r"topics\.signal: must not contain the MQTT wildcard '\+'"),
        ("topics:\n  label: \"plant/#\"\n", r"topics\.label: must not contain the MQTT wildcard '#'"),
        ("topics:\n  signal: \"plant/{line}/vibration\"\n", r"topics\.signal: must contain the placeholder \{asset\}"),
        ("topics:\n  diagnosis: \"plant/{asset}/diagnosis\"\n", r"topics\.diagnosis: must use the same placeholders as topics\.signal \(\{asset\}, \{line\}\), got \{asset\}"),
        ("topics:\n  status: \"x/{asset}/status\"\n", r"topics\.status: may use only the placeholder \{agent_id\}, got \{asset\}"),
        ("topics:\n  label: \"plant/{line}/{asset}/vibration\"\n", r"topics\.label: overlaps topics\.signal"),
        ("topics:\n  signal: \"plant/x{asset}\"\n", r"topics\.signal: placeholder must fill a whole topic level"),
        ("mqtt:\n  port: 1\n  port: 2\n", r"line 3: duplicate key 'port'; remove one of them"),
    ],
)
def test_invalid_value_message(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, yaml_text))


def test_three_mistakes_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 0\n  prot: 5\nwindow:\n  size: 1\n")
    errors = errors_of(path)
    assert len(errors) == 3
    assert "mqtt.port: must be between 1 and 65535, got 0" in errors
    assert "mqtt.prot: unknown key (did you mean 'protocol' or 'port'?)" in errors
    assert "window.size: must be between 64 and 65536, got 1" in errors


def test_error_summary_counts(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 0\n  qos: 3\n")
    with pytest.raises(ConfigError, match=r"invalid configuration in .*agent\.yaml \(2 errors\)"):
        load_config(path)


def test_messages_hide_library_wording(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: x\n  qos: 9\n  nope: 1\nstorage: 5\nmodel:\n  device: 1\n")
    errors = errors_of(path)
    assert len(errors) == 5
    for error in errors:
        assert "errors.pydantic.dev" not in error
        assert "Input should" not in error
        assert "Extra inputs" not in error


def test_yaml_syntax_error_position(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  host: a\n port: 3\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*agent\.yaml\n  - line 3, column 2: "):
        load_config(path)


def test_top_level_not_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- mqtt\n- window\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping .*, got a list"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nothere\.yaml"):
        load_config(tmp_path / "nothere.yaml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config path is a folder, not a file"):
        load_config(tmp_path)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"agent_id: \xff\n")
    with pytest.raises(ConfigError, match="config file is not UTF-8 text"):
        load_config(path)


# Passwords


def test_password_file_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  password_file: secret.txt\n")
    expected = rf"mqtt\.password_file: file not found: {tmp_path}/secret\.txt; create it"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_password_file_unreadable(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("pw\n", encoding="utf-8")
    secret.chmod(0)
    path = write(tmp_path, "mqtt:\n  password_file: secret.txt\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: file cannot be read: .*read access"):
        load_config(path)


def test_password_file_is_folder(tmp_path: Path) -> None:
    path = write(tmp_path, f"mqtt:\n  password_file: {tmp_path}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: is a folder, not a file"):
        load_config(path)


def test_password_from_file(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n", encoding="utf-8")
    path = write(tmp_path, "mqtt:\n  username: agent\n  password_file: secret.txt\n")
    config = load_config(path)
    assert config.mqtt.password_file == tmp_path / "secret.txt"
    assert config.mqtt.read_password() == "s3cret"


def test_password_inline_and_file_exclusive(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n", encoding="utf-8")
    path = write(tmp_path, "mqtt:\n  password: a\n  password_file: secret.txt\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password: set either mqtt\.password or mqtt\.password_file, not both"):
        load_config(path)


def test_no_password() -> None:
    assert load_config(None).mqtt.read_password() is None


# Overrides


def test_override_parses_yaml_types(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "mqtt:\n  port: 1883\n"),
        ["mqtt.port=1884", "window.retain_s=1.5", "mqtt.username=agent", "agent_id=line_2"],
    )
    assert config.mqtt.port == 1884
    assert config.window.retain_s == 1.5
    assert config.mqtt.username == "agent"
    assert config.agent_id == "line_2"
    assert config.mqtt.client_id == "edge-agent-line_2"


def test_override_empty_value_is_null(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  username: agent\n")
    assert load_config(path, ["mqtt.username="]).mqtt.username is None


def test_override_creates_missing_section() -> None:
    assert load_config(None, ["adaptation.max_shots_per_class=7"]).adaptation.max_shots_per_class == 7


def test_override_whole_section() -> None:
    config = load_config(None, ["window={size: 512, hop: 256}"])
    assert config.window.size == 512
    assert config.window.hop == 256


def test_override_unknown_key() -> None:
    errors = errors_of(None, ("mqtt.prot=3",))
    assert errors == ["--set mqtt.prot: unknown key 'mqtt.prot' (did you mean 'mqtt.protocol' or 'mqtt.port'?)"]


def test_override_unknown_section() -> None:
    errors = errors_of(None, ("windw.size=3",))
    assert errors == ["--set windw.size: unknown key 'windw' (did you mean 'window'?)"]


def test_override_below_a_value() -> None:
    errors = errors_of(None, ("mqtt.port.x=1",))
    assert errors == ["--set mqtt.port.x: 'mqtt.port' is a value, not a section, so 'mqtt.port.x' does not exist"]


def test_override_without_equals() -> None:
    errors = errors_of(None, ("mqtt.port",))
    assert errors == ["--set 'mqtt.port': expected KEY=VALUE, such as mqtt.port=1884"]


def test_override_invalid_yaml_value() -> None:
    errors = errors_of(None, ("mqtt.host=[a",))
    assert errors == ["--set mqtt.host: value '[a' is not valid YAML; quote it"]


def test_override_invalid_value_marked() -> None:
    errors = errors_of(None, ("mqtt.port=70000",))
    assert errors == ["mqtt.port: must be between 1 and 65535, got 70000 (set by --set)"]


def test_override_and_file_errors_together(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 0\n")
    errors = errors_of(path, ("nope=1", "window.hop=0"))
    assert len(errors) == 3


# Paths


def test_relative_paths_resolve_against_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(folder, "model:\n  checkpoint: models/fault.pt\nstorage:\n  dir: state\n")
    config = load_config(path)
    assert config.model.checkpoint == folder / "models" / "fault.pt"
    assert config.storage.dir == folder / "state"


def test_default_checkpoint_is_shipped_one(tmp_path: Path) -> None:
    path = write(tmp_path, "agent_id: a\n")
    assert load_config(path).model.checkpoint is None


def test_absolute_path_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  dir: /srv/edge\n")
    assert load_config(path).storage.dir == Path("/srv/edge")


def test_home_folder_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, "storage:\n  dir: ~/edge\n")
    assert load_config(path).storage.dir == tmp_path / "home" / "edge"


def test_override_path_against_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load_config(write(folder, ""), ["model.checkpoint=new.pt"])
    assert config.model.checkpoint == work / "new.pt"
    assert config.storage.dir == Path("/var/lib/edge-agent")


# Printing, comparing and docs


def test_redaction_hides_password(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  username: agent\n  password: s3cret\n")
    data = redacted_dict(load_config(path))
    assert data["mqtt"]["password"] == "***"
    assert data["mqtt"]["username"] == "agent"
    assert "s3cret" not in repr(data)
    assert "s3cret" not in repr(load_config(path))


def test_redaction_shows_plain_values(tmp_path: Path) -> None:
    data = redacted_dict(load_config(write(tmp_path, "")))
    assert data["mqtt"]["password"] is None
    assert data["model"]["checkpoint"] is None
    assert data["window"]["size"] == 2048


def test_diff_paths_lists_changed_keys() -> None:
    old = load_config(None)
    new = load_config(None, ["mqtt.port=1884", "window.hop=512", "mqtt.password=x"])
    assert diff_paths(old, new) == ["mqtt.port", "mqtt.password", "window.hop"]
    assert diff_paths(old, old) == []


def test_diff_paths_agent_id_changes_client_id() -> None:
    new = load_config(None, ["agent_id=b"])
    assert diff_paths(load_config(None), new) == ["agent_id", "mqtt.client_id"]


def test_reference_lists_every_key() -> None:
    reference = render_reference()
    for key in all_keys():
        assert f"| `{key}` |" in reference
    assert "| `mqtt.port` | integer | `1883` | between 1 and 65535 |" in reference
    assert "| `mqtt.keepalive_s` | integer | `30` | between 5 and 3600 | s |" in reference


def test_every_key_described() -> None:
    for key in all_keys():
        model = AgentConfig
        *sections, name = key.split(".")
        for section in sections:
            model = AgentConfig.model_fields[section].annotation  # type: ignore[assignment]
        assert model.model_fields[name].description, key


def test_docs_in_sync() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert docs == render_reference(), (
        "docs/configuration.md is out of date; regenerate it with "
        "`python -m edge_agent.config > docs/configuration.md`"
    )


def test_quote_hint_only_for_quoted_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as quoted:
        load_config(write(tmp_path, 'mqtt:\n  qos: "1"\n'))
    assert "remove the quotes" in str(quoted.value)
    with pytest.raises(ConfigError) as word:
        load_config(None, ["mqtt.qos=x"])
    assert "mqtt.qos: must be an integer, got 'x'" in str(word.value)
    assert "quotes" not in str(word.value)
