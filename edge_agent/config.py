"""Configuration of edge-agent: schema, loading, overrides and reference docs.

The schema is a set of frozen pydantic models, one per YAML section. Every field
carries its type, bounds, unit and description. So the same models validate a
file, report every problem at once with its YAML path, and generate
docs/configuration.md (`python -m edge_agent.config > docs/configuration.md`).

Pydantic is used over hand-written checks because it collects all errors of a
file in one pass with their locations, and its field metadata doubles as the
documentation. Its error texts are translated into plain messages here, so users
never see pydantic's wording or links.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from edge_agent.errors import ConfigError
from edge_agent.topics import format_topic, template_placeholders, templates_overlap

DEFAULT_AGENT_ID = "edge-01"
AGENT_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _field(default: Any, description: str, *, unit: str | None = None, **constraints: Any) -> Any:
    """Declare a field with its description, optional unit and pydantic constraints."""
    extra = {"unit": unit} if unit else None
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class _FieldErrors(ValueError):
    """Errors of a cross-field validator, each addressed to one field of the section.

    Pydantic would report a model validator's error at the section; the error
    translation below moves each message to the field it names.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems


def _raise_problems(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise _FieldErrors(problems)


class _Section(BaseModel):
    # Strict, so YAML `port: "1883"` or `qos: true` is an error instead of a silent
    # conversion. Path and secret fields opt out, because YAML gives them as strings.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    section: ClassVar[str] = ""


class MqttConfig(_Section):
    """Connection to the MQTT broker."""

    section: ClassVar[str] = "mqtt"

    host: str = _field(
        "127.0.0.1", "Broker host name or IP address.", min_length=1, max_length=253
    )
    port: int = _field(1883, "Broker TCP port.", ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = _field(
        "5", "MQTT protocol version; \"5\" is needed for session expiry."
    )
    qos: int = _field(1, "QoS of label subscriptions and of diagnosis publications.", ge=0, le=2)
    signal_qos: int = _field(0, "QoS of the signal subscriptions.", ge=0, le=2)
    client_id: str | None = _field(
        None,
        "MQTT client id; null means \"edge-agent-{agent_id}\". Keep it stable, "
        "because the broker keeps a persistent session per client id.",
        min_length=1,
        max_length=256,
    )
    username: str | None = _field(
        None, "User name for broker authentication; null for none.", min_length=1
    )
    password: SecretStr | None = _field(
        None,
        "Password written inline; prefer password_file, which keeps the secret out "
        "of the config file. Never printed.",
        strict=False,
    )
    password_file: Path | None = _field(
        None,
        "File holding the broker password (trailing newline ignored); it must exist "
        "and be readable when the config is checked. Relative paths resolve against "
        "the config file's folder.",
        strict=False,
    )
    keepalive_s: int = _field(30, "MQTT keep-alive interval.", unit="s", ge=5, le=3600)
    reconnect_min_s: float = _field(
        1.0, "First delay before reconnecting after a lost connection.", unit="s", gt=0, le=3600
    )
    reconnect_max_s: float = _field(
        60.0,
        "Longest delay between reconnection attempts (the delay doubles up to this).",
        unit="s",
        gt=0,
        le=86400,
    )
    session_expiry_s: int = _field(
        86400,
        "How long the broker keeps the session and queued QoS 1/2 messages after a "
        "disconnect (MQTT 5 only).",
        unit="s",
        ge=0,
        le=4294967295,
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # YAML reads `protocol: 5` as the integer 5.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.exists():
            raise ValueError(
                f"file not found: {path}; create it with the broker password or set "
                "mqtt.password_file to null"
            )
        if path.is_dir():
            raise ValueError(f"is a folder, not a file: {path}")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(
                f"file cannot be read: {path} ({exc.strerror}); give the user that runs "
                "edge-agent read access to it"
            ) from exc
        return path

    @model_validator(mode="after")
    def _check_cross_fields(self) -> MqttConfig:
        problems = []
        if self.reconnect_min_s > self.reconnect_max_s:
            problems.append(
                (
                    "reconnect_max_s",
                    f"must be >= mqtt.reconnect_min_s ({self.reconnect_min_s}), "
                    f"got {self.reconnect_max_s}",
                )
            )
        if self.password is not None and self.password_file is not None:
            problems.append(("password", "set either mqtt.password or mqtt.password_file, not both"))
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None and self.protocol == "3.1.1":
            problems.append(
                ("username", "is required when a password is set with MQTT 3.1.1")
            )
        _raise_problems(problems)
        return self

    def read_password(self) -> str | None:
        """Return the broker password from `password` or `password_file`, or None.

        Reads the file on every call, so a rotated password applies on reconnect.
        Raises `ConfigError` when the file can no longer be read.
        """
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"mqtt.password_file: failed to read {self.password_file}: {exc}"
            ) from exc
        return text.rstrip("\r\n")


class TopicsConfig(_Section):
    """MQTT topic templates.

    A placeholder such as {line} or {asset} fills a whole topic level. Subscriptions
    put '+' in its place. A diagnosis is published with the placeholder values of
    the signal topic it was computed from.
    """

    section: ClassVar[str] = "topics"

    signal: str = _field(
        "plant/{line}/{asset}/vibration",
        "Topic template of incoming vibration signals; must contain {asset}.",
    )
    label: str = _field(
        "plant/{line}/{asset}/label",
        "Topic template of incoming labels; same placeholders as signal.",
    )
    diagnosis: str = _field(
        "plant/{line}/{asset}/diagnosis",
        "Topic template of published diagnoses; same placeholders as signal.",
    )
    status: str = _field(
        "edge-agent/{agent_id}/status",
        "Topic of the agent's status publications; may use only {agent_id}.",
    )

    @field_validator("signal", "label", "diagnosis")
    @classmethod
    def _asset_template(cls, template: str) -> str:
        names = template_placeholders(template)
        if "asset" not in names:
            raise ValueError(f"must contain the placeholder {{asset}}, got {template!r}")
        return template

    @field_validator("status")
    @classmethod
    def _status_template(cls, template: str) -> str:
        others = [name for name in template_placeholders(template) if name != "agent_id"]
        if others:
            raise ValueError(
                f"may use only the placeholder {{agent_id}}, got {{{others[0]}}} in {template!r}"
            )
        return template

    @model_validator(mode="after")
    def _check_cross_fields(self) -> TopicsConfig:
        problems = []
        signal_names = set(template_placeholders(self.signal))
        for name in ("label", "diagnosis"):
            names = set(template_placeholders(getattr(self, name)))
            if names != signal_names:
                problems.append(
                    (
                        name,
                        f"must use the same placeholders as topics.signal "
                        f"({_braced(signal_names)}), got {_braced(names) or 'none'}",
                    )
                )

        # A topic that matches two templates would be read as the wrong kind of
        # message, or the agent would receive its own diagnoses as signals.
        fields = ("signal", "label", "diagnosis", "status")
        for index, first in enumerate(fields):
            for second in fields[index + 1 :]:
                if templates_overlap(getattr(self, first), getattr(self, second)):
                    problems.append(
                        (
                            second,
                            f"overlaps topics.{first}: a topic can match both; give each "
                            "template a different literal level",
                        )
                    )
        _raise_problems(problems)
        return self


def _braced(names: set[str]) -> str:
    return ", ".join(f"{{{name}}}" for name in sorted(names))


class WindowConfig(_Section):
    """Cutting the signal stream of each asset into windows for the model."""

    section: ClassVar[str] = "window"

    size: int = _field(
        2048, "Window length at the model's sample rate.", unit="samples", ge=64, le=65536
    )
    hop: int = _field(
        1024,
        "Distance between the starts of consecutive windows; at most size.",
        unit="samples",
        ge=1,
        le=65536,
    )
    retain_s: float = _field(
        600.0,
        "Stream time of windows kept per asset, so that a label arriving late can "
        "still find its windows. They are kept in memory: 4 * size bytes per window, "
        "about 55 MiB per asset for 600 s at 12 kHz with size 2048 and hop 1024.",
        unit="s",
        ge=1,
        le=86400,
    )
    gap_tolerance_s: float = _field(
        0.005,
        "Largest jump of the timestamp between chunks that still continues the same "
        "window; a larger gap starts a new window.",
        unit="s",
        ge=0,
        le=60,
    )
    max_resample_ratio: float = _field(
        8.0,
        "Highest accepted ratio of a signal's sample rate to the model's; faster "
        "signals are resampled, higher ratios rejected.",
        ge=1,
        le=64,
    )

    @model_validator(mode="after")
    def _check_cross_fields(self) -> WindowConfig:
        if self.hop > self.size:
            raise _FieldErrors(
                [("hop", f"must be <= window.size ({self.size}), got {self.hop}")]
            )
        return self


class ModelConfig(_Section):
    """The diagnosis model."""

    section: ClassVar[str] = "model"

    checkpoint: Path | None = _field(
        None,
        "Model checkpoint file; null uses the checkpoint shipped in the package, "
        "meta-trained on simulated bearings. Relative paths resolve against the config "
        "file's folder. Its existence is checked when the daemon starts, not here.",
        strict=False,
    )
    device: Literal["auto", "cpu", "cuda"] = _field(
        "auto", "Where inference runs; auto uses CUDA when available."
    )
    max_batch: int = _field(
        64, "Most windows per inference batch.", unit="windows", ge=1, le=4096
    )


class AdaptationConfig(_Section):
    """Few-shot learning of new fault classes from labelled windows."""

    section: ClassVar[str] = "adaptation"

    algorithm: Literal["protonet", "reptile"] = _field(
        "protonet",
        "Few-shot algorithm; protonet assigns the class whose prototype (mean "
        "embedding of its support examples) is nearest. reptile also fine-tunes a "
        "copy of the model and a linear head on the support set in the background, "
        "and keeps the result when a leave-out check finds it no worse.",
    )
    n_shot_min: int = _field(
        1,
        "Support examples a class needs before it is diagnosed.",
        unit="examples",
        ge=1,
        le=1000,
    )
    max_shots_per_class: int = _field(
        50,
        "Support examples kept per class; the oldest is dropped beyond this.",
        unit="examples",
        ge=1,
        le=100000,
    )
    steps: int = _field(
        20,
        "Gradient steps of one fine-tuning run (reptile only).",
        unit="steps",
        ge=1,
        le=1000,
    )
    inner_lr: float = _field(
        1e-4,
        "Adam learning rate of the fine-tuning (reptile only).",
        gt=0,
        le=1,
    )
    leave_out_folds: int = _field(
        2,
        "Folds of the leave-out check that decides whether a fine-tuned model "
        "replaces the current one (reptile only). Each fold costs one more "
        "fine-tuning run.",
        unit="folds",
        ge=2,
        le=20,
    )
    debounce_s: float = _field(
        2.0,
        "Quiet time after the last support change before fine-tuning starts, so a "
        "burst of labels causes one run (reptile only).",
        unit="s",
        ge=0,
        le=3600,
    )

    @model_validator(mode="after")
    def _check_cross_fields(self) -> AdaptationConfig:
        if self.n_shot_min > self.max_shots_per_class:
            raise _FieldErrors(
                [
                    (
                        "max_shots_per_class",
                        f"must be >= adaptation.n_shot_min ({self.n_shot_min}), "
                        f"got {self.max_shots_per_class}",
                    )
                ]
            )
        return self


class StorageConfig(_Section):
    """Local state: support set, outbox and model versions."""

    section: ClassVar[str] = "storage"

    dir: Path = _field(
        Path("/var/lib/edge-agent"),
        "Folder for the agent's state. Relative paths resolve against the config "
        "file's folder.",
        strict=False,
    )
    keep_versions: int = _field(
        5,
        "Fine-tuned model versions kept under storage.dir/models; older ones are "
        "deleted, except the active one.",
        unit="versions",
        ge=1,
        le=1000,
    )


class LimitsConfig(_Section):
    """Protection against oversized or excessive input."""

    section: ClassVar[str] = "limits"

    max_payload_bytes: int = _field(
        1048576,
        "Largest accepted MQTT payload; larger messages are rejected.",
        unit="bytes",
        ge=1,
        le=268435455,
    )
    max_queue: int = _field(
        10000,
        "Messages waiting for the workers before new ones are dropped.",
        unit="messages",
        ge=1,
        le=10000000,
    )
    max_outbox: int = _field(
        100000,
        "Diagnoses kept on disk while the broker is unreachable; beyond this the "
        "oldest are dropped and counted.",
        unit="messages",
        ge=1,
        le=100000000,
    )


class StatusConfig(_Section):
    """Periodic status publications."""

    section: ClassVar[str] = "status"

    interval_s: float = _field(
        30.0, "Time between status publications.", unit="s", ge=1, le=86400
    )


class ServiceConfig(_Section):
    """Running as a service: shutdown and the systemd watchdog."""

    section: ClassVar[str] = "service"

    shutdown_timeout_s: float = _field(
        20.0,
        "Longest time a stop (SIGTERM or SIGINT) may take to finish the batch in flight, "
        "flush the outbox and publish \"offline\"; keep it below systemd's TimeoutStopSec.",
        unit="s",
        ge=1,
        le=3600,
    )
    stall_timeout_s: float = _field(
        30.0,
        "Time without progress of the pipeline worker after which the agent stops "
        "sending watchdog keep-alives to systemd, so that WatchdogSec restarts it.",
        unit="s",
        ge=1,
        le=3600,
    )


class ConfigWatchConfig(_Section):
    """Live reconfiguration. SIGHUP always re-reads the file."""

    section: ClassVar[str] = "config"

    watch: bool = _field(
        False, "Re-read the config file when it changes, as on SIGHUP."
    )
    watch_interval_s: float = _field(
        2.0, "Time between checks of the config file for changes.", unit="s", ge=0.1, le=3600
    )


class LogConfig(_Section):
    """Logging."""

    section: ClassVar[str] = "log"

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _field(
        "INFO", "Lowest level of log records written (case-insensitive)."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class AgentConfig(_Section):
    """Top-level keys."""

    agent_id: str = _field(
        DEFAULT_AGENT_ID,
        "Name of this agent: letters, digits, '_' and '-'. Used in the MQTT client id "
        "and the status topic.",
        min_length=1,
        max_length=64,
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    config: ConfigWatchConfig = Field(default_factory=ConfigWatchConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)

        # A section whose keys are all commented out reads as null in YAML.
        for name in _section_names():
            if name in data and data[name] is None:
                data[name] = {}

        agent_id = data.get("agent_id", DEFAULT_AGENT_ID)
        mqtt = data.get("mqtt", {})
        if isinstance(agent_id, str):
            client_id = f"edge-agent-{agent_id}"
            if isinstance(mqtt, dict) and mqtt.get("client_id") is None:
                data["mqtt"] = {**mqtt, "client_id": client_id}
            elif isinstance(mqtt, MqttConfig) and mqtt.client_id is None:
                data["mqtt"] = mqtt.model_copy(update={"client_id": client_id})
        return data

    @property
    def status_topic(self) -> str:
        """The status topic of this agent: `topics.status` filled with `agent_id`."""
        return format_topic(self.topics.status, agent_id=self.agent_id)

    @field_validator("agent_id")
    @classmethod
    def _agent_id_characters(cls, agent_id: str) -> str:
        if not set(agent_id) <= AGENT_ID_CHARACTERS:
            raise ValueError(
                f"may contain only letters, digits, '_' and '-', got {agent_id!r}"
            )
        return agent_id


def _section_names() -> list[str]:
    return [name for name, info in AgentConfig.model_fields.items() if _section_model(info)]


def _section_model(info: FieldInfo) -> type[_Section] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


# Cross-field rules, listed in the reference; the validators above enforce them.
CROSS_FIELD_RULES = (
    "`window.hop` must be <= `window.size`.",
    "`mqtt.reconnect_min_s` must be <= `mqtt.reconnect_max_s`.",
    "`adaptation.n_shot_min` must be <= `adaptation.max_shots_per_class`.",
    "`mqtt.password` and `mqtt.password_file` exclude each other; with MQTT 3.1.1 a "
    "password needs `mqtt.username`.",
    "`topics.signal`, `topics.label` and `topics.diagnosis` contain `{asset}` and use "
    "the same placeholders; `topics.status` may use only `{agent_id}`.",
    "Topic templates contain no MQTT wildcard (`+`, `#`), do not start with `$`, and "
    "no topic may match two of them.",
)


# ---------------------------------------------------------------------------
# Translation of pydantic errors into plain messages


def _describe_value(value: Any) -> str:
    """Show a value as a YAML user would recognise it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (str, Path)):
        return repr(str(value))
    return str(value)


def _describe_bounds(info: FieldInfo) -> str:
    """Describe the numeric or length bounds of a field in words, '' if it has none."""
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)

    if "min_length" in bounds or "max_length" in bounds:
        low, high = bounds.get("min_length"), bounds.get("max_length")
        if low is not None and high is not None:
            return f"{low} to {high} characters"
        if low is not None:
            return f"at least {low} character{'s' if low != 1 else ''}"
        return f"at most {high} characters"

    if "ge" in bounds and "le" in bounds:
        return f"between {bounds['ge']} and {bounds['le']}"
    parts = []
    if "ge" in bounds:
        parts.append(f"at least {bounds['ge']}")
    if "gt" in bounds:
        parts.append(f"greater than {bounds['gt']}")
    if "le" in bounds:
        parts.append(f"at most {bounds['le']}")
    if "lt" in bounds:
        parts.append(f"less than {bounds['lt']}")
    return " and ".join(parts)


def _model_at(loc: Sequence[Any]) -> type[_Section] | None:
    """Return the section model at a location such as ('mqtt',), None if there is none."""
    model: type[_Section] = AgentConfig
    for part in loc:
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        section = _section_model(info)
        if section is None:
            return None
        model = section
    return model


def _field_at(loc: Sequence[Any]) -> FieldInfo | None:
    model = _model_at(loc[:-1])
    if model is None or not loc:
        return None
    return model.model_fields.get(str(loc[-1]))


def all_keys(model: type[_Section] = AgentConfig, prefix: str = "") -> list[str]:
    """Return the dotted path of every leaf key of the schema, in schema order."""
    keys = []
    for name, info in model.model_fields.items():
        section = _section_model(info)
        if section is not None:
            keys.extend(all_keys(section, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _suggestion(key: str, names: Sequence[str]) -> str:
    """Return " (did you mean 'x'?)" for the names that `key` may be a typo or an
    abbreviation of, '' if none is close."""
    matches = [name for name in names if name.startswith(key)]
    matches += difflib.get_close_matches(key, names, n=2, cutoff=0.6)
    unique = list(dict.fromkeys(matches))[:2]
    if not unique:
        return ""
    return " (did you mean " + " or ".join(f"'{name}'" for name in unique) + "?)"


def _unknown_key_message(loc: Sequence[Any]) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    names = list(model.model_fields) if model is not None else []
    hint = _suggestion(key, names)
    if hint:
        return f"unknown key{hint}"

    # The key may exist in another section, e.g. a top-level `port:`.
    elsewhere = [path for path in all_keys() if path.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"unknown key here (did you mean '{elsewhere[0]}'?)"
    return f"unknown key; valid keys here: {', '.join(names)}"


def _unquoted_is_not_string(value: str) -> bool:
    """Return True when `value` without quotes would be read as a number, bool or null."""
    try:
        return not isinstance(yaml.safe_load(value), str)
    except yaml.YAMLError:
        return False


def _type_message(kind: str, value: Any) -> str:
    message = f"must be {kind}, got {_describe_value(value)}"
    if isinstance(value, str) and kind != "a string" and _unquoted_is_not_string(value):
        return f"{message} (a quoted string; remove the quotes)"
    if kind == "a string" and isinstance(value, (int, float, bool)):
        return f"{message} (put it in quotes)"
    return message


def _translate_error(error: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Turn one pydantic error into (dotted path, plain message) pairs."""
    loc = tuple(str(part) for part in error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    path = ".".join(loc) or "(top level)"
    info = _field_at(loc)

    if kind == "value_error" and isinstance(ctx.get("error"), _FieldErrors):
        return [(".".join(loc + (field,)), message) for field, message in ctx["error"].problems]
    if kind in ("value_error", "assertion_error"):
        return [(path, str(ctx.get("error", "is invalid")))]
    if kind == "extra_forbidden":
        return [(path, _unknown_key_message(loc))]
    if kind == "missing":
        return [(path, "required key is missing")]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bounds = _describe_bounds(info) if info is not None else ""
        return [(path, f"must be {bounds}, got {_describe_value(value)}")]
    if kind in ("string_too_short", "string_too_long"):
        bounds = _describe_bounds(info) if info is not None else ""
        return [(path, f"must be {bounds} long, got {_describe_value(value)}")]
    if kind == "literal_error":
        return [(path, f"must be {ctx.get('expected')}, got {_describe_value(value)}")]
    if kind == "int_type" and isinstance(value, float):
        return [(path, f"must be a whole number, got {value}")]

    type_names = {
        "int_type": "an integer",
        "float_type": "a number",
        "string_type": "a string",
        "bool_type": "true or false",
        "path_type": "a path (a string)",
        "model_type": "a section of keys (a YAML mapping)",
        "model_attributes_type": "a section of keys (a YAML mapping)",
        "dict_type": "a mapping",
    }
    if kind in type_names:
        return [(path, _type_message(type_names[kind], value))]
    return [(path, f"is invalid, got {_describe_value(value)}")]


def _translate(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        problems.extend(_translate_error(error))
    return problems


# ---------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that records duplicate keys, which PyYAML would let the
    last value win silently."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, typing.Hashable) and key in seen:
                mark = key_node.start_mark
                self.duplicates.append(
                    f"line {mark.line + 1}: duplicate key '{key}'; remove one of them"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Read a config file and return its mapping and the duplicate-key errors found."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file not found: {path}; pass the path of an existing file "
            "(config/agent.yaml in the source tree is a documented starting point)"
        ) from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config path is a folder, not a file: {path}") from exc
    except PermissionError as exc:
        raise ConfigError(
            f"config file cannot be read: {path} (permission denied); give the user "
            "that runs edge-agent read access to it"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file is not UTF-8 text: {path} (byte {exc.start}); save it as UTF-8"
        ) from exc

    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"invalid YAML in {path}",
            errors=[f"{where}{problem} (check the indentation, and quote values with ':' or '#')"],
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}", errors=[str(exc)]) from exc
    finally:
        loader.dispose()

    if data is None:
        return {}, loader.duplicates
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid configuration in {path}: the top level must be a mapping of keys "
            f"and sections such as 'mqtt:', got {_describe_value(data)}"
        )
    return data, loader.duplicates


def _check_override_key(key: str) -> str | None:
    """Return an error message if `key` is not a dotted key or section of the schema."""
    model: type[_Section] = AgentConfig
    parts = key.split(".")
    for index, part in enumerate(parts):
        info = model.model_fields.get(part)
        partial_key = ".".join(parts[: index + 1])
        if info is None:
            prefix = ".".join(parts[:index])
            candidates = [f"{prefix}.{name}" if prefix else name for name in model.model_fields]
            return f"unknown key '{partial_key}'{_suggestion(partial_key, candidates)}"
        section = _section_model(info)
        if section is None and index < len(parts) - 1:
            return f"'{partial_key}' is a value, not a section, so '{key}' does not exist"
        if section is not None:
            model = section
    return None


def _apply_overrides(
    data: dict[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Apply `KEY=VALUE` overrides and return the new data, the errors and the keys set."""
    errors: list[str] = []
    keys: list[str] = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"--set {override!r}: expected KEY=VALUE, such as mqtt.port=1884")
            continue
        problem = _check_override_key(key)
        if problem is not None:
            errors.append(f"--set {key}: {problem}")
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            errors.append(f"--set {key}: value {raw!r} is not valid YAML; quote it")
            continue

        data = _set_dotted(data, key.split("."), value)
        keys.append(key)
    return data, errors, keys


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    """Return a copy of `data` with the nested key `parts` set to `value`."""
    result = dict(data)
    if len(parts) == 1:
        result[parts[0]] = value
        return result
    inner = result.get(parts[0])
    result[parts[0]] = _set_dotted(inner if isinstance(inner, dict) else {}, parts[1:], value)
    return result


def _path_keys() -> list[str]:
    """Return the dotted keys of all path fields."""
    keys = []
    for key in all_keys():
        info = _field_at(tuple(key.split(".")))
        if info is not None and Path in _annotation_members(info.annotation):
            keys.append(key)
    return keys


def _annotation_members(annotation: Any) -> tuple[Any, ...]:
    """Split `X | None` into (X, NoneType), and return (annotation,) for other types."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _resolve_paths(
    data: dict[str, Any], config_dir: Path, override_keys: Sequence[str]
) -> dict[str, Any]:
    """Make relative paths absolute: file values against `config_dir`, overrides
    (given on a command line) against the working directory."""
    for key in _path_keys():
        section_name, name = key.split(".")
        section = data.get(section_name, {})
        if not isinstance(section, dict):
            continue
        if name in section:
            value = section[name]
        else:
            value = _field_at((section_name, name)).default  # type: ignore[union-attr]
        if not isinstance(value, (str, Path)):
            continue

        path = Path(value).expanduser()
        if not path.is_absolute():
            from_command_line = any(key == k or key.startswith(f"{k}.") for k in override_keys)
            path = (Path.cwd() if from_command_line else config_dir) / path
        data = _set_dotted(data, [section_name, name], str(path))
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> AgentConfig:
    """Read, override, resolve and validate a configuration.

    `path` is a YAML file, and None or an empty file means all defaults. Each override
    is `dotted.key=value`, its value parsed as YAML (`mqtt.port=1884` is an int).
    Relative paths in the file resolve against the file's folder, relative paths
    in overrides (and defaults when `path` is None) against the working directory.
    Raises `ConfigError` listing every problem, each as `dotted.key: message`.
    """
    if path is None:
        data: dict[str, Any] = {}
        problems = []
        config_dir = Path.cwd()
        source = "the defaults"
    else:
        path = Path(path).expanduser()
        data, problems = _read_yaml(path)
        config_dir = path.absolute().parent
        source = str(path)

    data, override_problems, override_keys = _apply_overrides(data, overrides)
    problems.extend(override_problems)
    data = _resolve_paths(data, config_dir, override_keys)

    config = None
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        for key, message in _translate(exc):
            from_override = any(key == k or key.startswith(f"{k}.") for k in override_keys)
            problems.append(f"{key}: {message}" + (" (set by --set)" if from_override else ""))

    if problems or config is None:
        count = f"{len(problems)} error{'s' if len(problems) != 1 else ''}"
        raise ConfigError(f"invalid configuration in {source} ({count})", errors=problems)
    return config


# ---------------------------------------------------------------------------
# Printing and comparing


def redacted_dict(config: AgentConfig) -> dict[str, Any]:
    """Return the effective configuration as plain data, safe to print.

    Paths become strings. The password is replaced by "***", or null when none is
    set. The password file's path and the user name are shown.
    """
    data = config.model_dump(mode="json")
    data["mqtt"]["password"] = "***" if config.mqtt.password is not None else None
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def diff_paths(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Return the dotted keys whose values differ between two configs, in schema order."""
    old_values = _flatten(old.model_dump())
    new_values = _flatten(new.model_dump())
    return [key for key in old_values if old_values[key] != new_values.get(key)]


# ---------------------------------------------------------------------------
# Reference documentation

_REFERENCE_INTRO = """\
# Configuration reference

edge-agent reads one YAML file. `config/agent.yaml` in the source tree sets every
key to its default, with a comment each. Every key is optional: a missing key takes
its default, and an empty file means all defaults. Unknown keys are errors, so a
misspelled key never goes unnoticed.

Check a file before starting the service. All problems are listed at once, each
with its key, for example `mqtt.port: must be between 1 and 65535, got 70000`:

    edge-agent check-config /etc/edge-agent/agent.yaml

Override single keys on the command line with `--set dotted.key=value`. The value
is read as YAML, so `--set mqtt.port=1884` is a number and `--set mqtt.username=`
is null.

Relative paths in the file resolve against the file's folder, and relative paths
given with `--set` against the working directory. `~` expands to the home folder.

Prefer `mqtt.password_file` to the inline `mqtt.password`, because it keeps the
secret out of the config file. The printed configuration shows `***` in place of
an inline password.

This page is generated from the schema in `edge_agent/config.py`. Regenerate it with
`python -m edge_agent.config > docs/configuration.md`.
"""


def _type_name(annotation: Any) -> str:
    members = _annotation_members(annotation)
    names = [_single_type_name(member) for member in members if member is not type(None)]
    name = " or ".join(names)
    return f"{name} or null" if type(None) in members else name


def _single_type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(f'`"{value}"`' for value in typing.get_args(annotation))
    names = {int: "integer", float: "number", str: "string", Path: "path", SecretStr: "string (secret)"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(info: FieldInfo) -> str:
    default = info.default
    if default is None:
        return "`null`"
    if isinstance(default, (str, Path)):
        return f'`"{default}"`'
    return f"`{default}`"


def _reference_table(model: type[_Section], prefix: str) -> list[str]:
    lines = [
        "| Key | Type | Default | Allowed | Unit | Description |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in model.model_fields.items():
        if _section_model(info) is not None:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        cells = [
            f"`{prefix}{name}`",
            _type_name(info.annotation),
            _default_text(info),
            _describe_bounds(info),
            str(extra.get("unit", "")),
            (info.description or "").replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_reference() -> str:
    """Render docs/configuration.md: an intro and a table of every key from the schema."""
    lines = [_REFERENCE_INTRO, "## Top level", ""]
    lines += _reference_table(AgentConfig, "")
    for name, info in AgentConfig.model_fields.items():
        section = _section_model(info)
        if section is None:
            continue
        doc = " ".join((section.__doc__ or "").split())
        lines += ["", f"## `{name}`", "", doc, ""]
        lines += _reference_table(section, f"{name}.")
    lines += ["", "## Rules across keys", ""]
    lines += [f"- {rule}" for rule in CROSS_FIELD_RULES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
