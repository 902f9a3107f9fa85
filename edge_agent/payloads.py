"""Wire formats of the MQTT messages: signal chunks, labels and diagnoses.

A signal chunk arrives as JSON or as a binary frame, and `decode_signal` distinguishes
them by the first bytes (see `docs/messages.md` for the byte layout). Every rejected
payload raises `PayloadError`, whose `reason` is one of the stable codes below, so the
daemon can count rejections by cause. Messages name the bad value and what the sender
should change, and quote at most `EXCERPT_BYTES` of the payload.

Signal reasons: ``not_utf8``, ``not_json``, ``not_object``, ``missing_field``,
``wrong_type``, ``non_finite``, ``invalid_fs``, ``invalid_seq``, ``empty_values``,
``too_many_samples``, ``bad_length``, ``truncated_header``, ``unknown_magic``.
Label reasons: the first five of those, plus ``invalid_interval`` and ``invalid_label``.
Diagnosis reason (replay tool): ``invalid_diagnosis``.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from edge_agent.errors import PayloadError

SIGNAL_MAGIC: Final = b"EAV1"
# Header after the magic: ts (float64), fs (float64), seq (uint64), all little-endian.
SIGNAL_HEADER: Final = struct.Struct("<4sddQ")
SIGNAL_HEADER_SIZE: Final = SIGNAL_HEADER.size  # 28 bytes
SAMPLE_DTYPE: Final = np.dtype("<f4")

LABEL_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]+")
MAX_LABEL_LENGTH: Final = 64
MAX_LABEL_DURATION_S: Final = 86_400.0
MAX_ID_LENGTH: Final = 128
MAX_SEQ: Final = 2**64 - 1
EXCERPT_BYTES: Final = 60


@dataclass(frozen=True, eq=False)
class SignalChunk:
    """One chunk of a vibration signal as the sender published it.

    `values` is a read-only 1-D float32 array of shape (n_samples,), with the first
    sample taken at `ts` (epoch seconds) and the others every 1/`fs` seconds.
    """

    ts: float
    fs: float
    seq: int
    values: np.ndarray

    @property
    def duration_s(self) -> float:
        """Time covered by the samples, in seconds."""
        return len(self.values) / self.fs


@dataclass(frozen=True)
class LabelEvent:
    """An operator's statement that the asset showed fault `label` from `start` to `end`.

    Times are epoch seconds in the sender's clock, the same clock as the signal's `ts`.
    `label_id` is the sender's optional idempotence key and `source` an optional
    free-form origin (a person, an MES system).
    """

    start: float
    end: float
    label: str
    label_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """The model's verdict on one window, as published on the diagnosis topic.

    `label` and `confidence` are None when no diagnosis could be made, and then
    `reason` explains why. `latency_ms` runs from the window's completion on the box to
    the publish. `model_version` names the active model: the weights hash prefix and the
    count of support sets installed ("d38b099d-p9").
    """

    ts: float
    window_start: float
    window_end: float
    label: str | None
    confidence: float | None
    scores: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    latency_ms: float = 0.0
    seq: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_diagnosis(self)

    def to_json(self) -> bytes:
        """Encode the diagnosis as strict JSON in UTF-8, with `reason` only when label is None."""
        body: dict[str, Any] = {
            "ts": self.ts,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "label": self.label,
            "confidence": self.confidence,
            "scores": dict(self.scores),
            "model_version": self.model_version,
            "latency_ms": self.latency_ms,
            "seq": self.seq,
        }
        if self.label is None:
            body["reason"] = self.reason
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, payload: bytes) -> Diagnosis:
        """Parse a payload written by `to_json`, raising PayloadError if it is invalid."""
        body = _parse_json_object(payload, kind="diagnosis")
        try:
            return cls(
                ts=_require_number(body, "ts", payload),
                window_start=_require_number(body, "window_start", payload),
                window_end=_require_number(body, "window_end", payload),
                label=_optional_str(body, "label", payload),
                confidence=_optional_number(body, "confidence", payload),
                scores=_require_scores(body, payload),
                model_version=_optional_str(body, "model_version", payload) or "",
                latency_ms=_require_number(body, "latency_ms", payload),
                seq=None if body.get("seq") is None else _require_int(body, "seq", payload),
                reason=_optional_str(body, "reason", payload),
            )
        except ValueError as exc:
            raise PayloadError("invalid_diagnosis", f"invalid diagnosis: {exc}") from exc


def encode_diagnosis(diagnosis: Diagnosis) -> bytes:
    """Encode a diagnosis for the diagnosis topic (same as `Diagnosis.to_json`)."""
    return diagnosis.to_json()


def decode_diagnosis(payload: bytes) -> Diagnosis:
    """Parse a diagnosis payload (same as `Diagnosis.from_json`)."""
    return Diagnosis.from_json(payload)


def encode_signal_binary(ts: float, fs: float, seq: int, values: Any) -> bytes:
    """Encode a chunk as the binary frame: magic, header, then little-endian float32 samples."""
    samples = np.ascontiguousarray(values, dtype=SAMPLE_DTYPE).reshape(-1)
    return SIGNAL_HEADER.pack(SIGNAL_MAGIC, float(ts), float(fs), int(seq)) + samples.tobytes()


def encode_signal_json(ts: float, fs: float, seq: int, values: Any) -> bytes:
    """Encode a chunk as a JSON object with the fields ts, fs, seq and values."""
    samples = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    body = {"ts": float(ts), "fs": float(fs), "seq": int(seq), "values": samples}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def decode_signal(payload: bytes, *, max_samples: int) -> SignalChunk:
    """Decode a signal chunk in either form and validate it.

    The binary form is recognised by its magic, the JSON form by a leading ``{``
    (after optional whitespace). Raises PayloadError for anything else, for chunks
    with more than `max_samples` samples, and for invalid field values.
    """
    if payload[:4] == SIGNAL_MAGIC:
        ts, fs, seq, samples = _decode_signal_binary(payload, max_samples)
    elif payload.lstrip()[:1] == b"{":
        ts, fs, seq, samples = _decode_signal_json(payload, max_samples)
    elif payload[:2] == b"EA" and len(payload) >= 4:
        raise PayloadError(
            "unknown_magic",
            f"unknown binary signal format {bytes(payload[:4])!r}; this agent reads "
            f"{SIGNAL_MAGIC!r} frames and JSON objects, so upgrade the agent or send one of those",
        )
    else:
        raise PayloadError(
            "unknown_magic",
            f"signal payload is neither JSON (starting with '{{') nor a binary frame "
            f"starting with {SIGNAL_MAGIC!r}; payload starts with {_excerpt(payload)}",
        )

    _check_signal_fields(ts, fs, seq, samples, payload)
    samples.setflags(write=False)
    return SignalChunk(ts=ts, fs=fs, seq=seq, values=samples)


def _decode_signal_binary(payload: bytes, max_samples: int) -> tuple[float, float, int, np.ndarray]:
    if len(payload) < SIGNAL_HEADER_SIZE:
        raise PayloadError(
            "truncated_header",
            f"binary signal frame has {len(payload)} bytes but its header needs "
            f"{SIGNAL_HEADER_SIZE} (magic, ts, fs, seq); send the whole header",
        )
    _, ts, fs, seq = SIGNAL_HEADER.unpack_from(payload)
    body_bytes = len(payload) - SIGNAL_HEADER_SIZE
    if body_bytes % SAMPLE_DTYPE.itemsize:
        raise PayloadError(
            "bad_length",
            f"binary signal body has {body_bytes} bytes, not a multiple of 4; "
            "send whole little-endian float32 samples",
        )
    n_samples = body_bytes // SAMPLE_DTYPE.itemsize
    _check_sample_count(n_samples, max_samples)
    samples = np.frombuffer(payload, dtype=SAMPLE_DTYPE, offset=SIGNAL_HEADER_SIZE)
    return ts, fs, seq, samples.astype(np.float32)


def _decode_signal_json(payload: bytes, max_samples: int) -> tuple[float, float, int, np.ndarray]:
    body = _parse_json_object(payload, kind="signal")
    ts = _require_number(body, "ts", payload)
    fs = _require_number(body, "fs", payload)
    seq = _require_int(body, "seq", payload)
    values = _require_field(body, "values", payload)
    if not isinstance(values, list):
        raise PayloadError(
            "wrong_type",
            f"signal field 'values' must be a JSON array of numbers, got {_json_type(values)}",
        )
    _check_sample_count(len(values), max_samples)

    # numpy would turn true into 1.0, null into NaN and "1.5" into 1.5, so check types first.
    value_types = set(map(type, values))
    if not value_types <= {float, int}:
        bad = next(v for v in values if type(v) not in (float, int))
        raise PayloadError(
            "wrong_type",
            f"signal field 'values' must contain only numbers, found {_json_type(bad)} "
            f"{_short(bad)}; send every sample as a JSON number",
        )
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError as exc:
        raise PayloadError(
            "non_finite",
            "signal field 'values' contains an integer too large for a float; "
            "send samples in the sensor's physical unit",
        ) from exc

    # Values beyond the float32 range become inf here and are reported as non-finite.
    with np.errstate(over="ignore"):
        samples = wide.astype(np.float32)
    return ts, fs, seq, samples


def _check_sample_count(n_samples: int, max_samples: int) -> None:
    if n_samples == 0:
        raise PayloadError(
            "empty_values", "signal chunk has no samples; send at least one sample per chunk"
        )
    if n_samples > max_samples:
        raise PayloadError(
            "too_many_samples",
            f"signal chunk has {n_samples} samples, more than the maximum of {max_samples}; "
            "split the signal into smaller chunks",
        )


def _check_signal_fields(
    ts: float, fs: float, seq: int, samples: np.ndarray, payload: bytes
) -> None:
    if not math.isfinite(ts):
        raise PayloadError(
            "non_finite", f"signal field 'ts' must be finite epoch seconds, got {ts!r}"
        )
    if not math.isfinite(fs) or fs <= 0:
        raise PayloadError(
            "invalid_fs",
            f"signal field 'fs' must be a positive, finite sample rate in Hz, got {fs!r}",
        )
    if not 0 <= seq <= MAX_SEQ:
        raise PayloadError(
            "invalid_seq",
            f"signal field 'seq' must be a chunk counter between 0 and 2**64-1, got {seq}",
        )
    n_bad = int(np.count_nonzero(~np.isfinite(samples)))
    if n_bad:
        first_bad = int(np.argmax(~np.isfinite(samples)))
        raise PayloadError(
            "non_finite",
            f"signal chunk seq {seq} has {n_bad} non-finite sample(s) (NaN or inf) of "
            f"{len(samples)}, the first at index {first_bad}; drop or repair them before sending",
        )


def decode_label(payload: bytes) -> LabelEvent:
    """Decode and validate a label message.

    `label` becomes a class name, so it must be 1 to 64 characters from
    ``[A-Za-z0-9_.-]``. The interval must be finite, with `end` after `start`, and
    at most one day long. Unknown fields are ignored. Raises PayloadError.
    """
    body = _parse_json_object(payload, kind="label")
    start = _require_number(body, "start", payload)
    end = _require_number(body, "end", payload)
    label = _require_field(body, "label", payload)
    label_id = _optional_str(body, "id", payload)
    source = _optional_str(body, "source", payload)

    if not (math.isfinite(start) and math.isfinite(end)):
        raise PayloadError(
            "non_finite", f"label 'start' and 'end' must be finite epoch seconds, got {start!r} and {end!r}"
        )
    if end <= start:
        raise PayloadError(
            "invalid_interval",
            f"label 'end' ({end}) must be after 'start' ({start}); swap or correct them",
        )
    if end - start > MAX_LABEL_DURATION_S:
        raise PayloadError(
            "invalid_interval",
            f"label interval is {end - start:.0f} s long, more than the maximum of "
            f"{MAX_LABEL_DURATION_S:.0f} s (one day); send shorter intervals",
        )
    _check_label_name(label)
    if label_id is not None and not 0 < len(label_id) <= MAX_ID_LENGTH:
        raise PayloadError(
            "wrong_type",
            f"label field 'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
            f"got {len(label_id)} characters",
        )
    return LabelEvent(start=start, end=end, label=label, label_id=label_id, source=source)


def _check_label_name(label: object) -> None:
    if not isinstance(label, str):
        raise PayloadError(
            "wrong_type", f"label field 'label' must be a string, got {_json_type(label)}"
        )
    if not 0 < len(label) <= MAX_LABEL_LENGTH or not LABEL_PATTERN.fullmatch(label):
        raise PayloadError(
            "invalid_label",
            f"label name {_short(label)} is invalid: it must be 1 to {MAX_LABEL_LENGTH} "
            "characters from A-Z, a-z, 0-9, '_', '.' and '-' (for example inner_race_007)",
        )


def _check_diagnosis(diagnosis: Diagnosis) -> None:
    """Raise ValueError if the fields of a diagnosis contradict each other."""
    numbers = {
        "ts": diagnosis.ts,
        "window_start": diagnosis.window_start,
        "window_end": diagnosis.window_end,
        "latency_ms": diagnosis.latency_ms,
    }
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if diagnosis.label is None:
        if diagnosis.confidence is not None:
            raise ValueError("confidence must be null when label is null")
        if not diagnosis.reason:
            raise ValueError("reason is required when label is null")
    else:
        if diagnosis.confidence is None or not 0.0 <= diagnosis.confidence <= 1.0:
            raise ValueError(
                f"confidence must be between 0 and 1 when label is set, got {diagnosis.confidence!r}"
            )
        if diagnosis.reason is not None:
            raise ValueError("reason must be null when label is set")
    for name, score in diagnosis.scores.items():
        if not math.isfinite(score):
            raise ValueError(f"score of class {name!r} must be finite, got {score!r}")


def _parse_json_object(payload: bytes, *, kind: str) -> dict[str, Any]:
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            "not_utf8",
            f"{kind} payload is not valid UTF-8 (invalid byte at offset {exc.start}); "
            "send UTF-8 encoded JSON",
        ) from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            "not_json",
            f"{kind} payload is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); payload starts with {_excerpt(payload)}",
        ) from exc
    if not isinstance(body, dict):
        raise PayloadError(
            "not_object", f"{kind} payload must be a JSON object, got {_json_type(body)}"
        )
    return body


def _require_field(body: dict[str, Any], name: str, payload: bytes) -> Any:
    if name not in body:
        raise PayloadError(
            "missing_field",
            f"required field {name!r} is missing; payload starts with {_excerpt(payload)}",
        )
    return body[name]


def _require_number(body: dict[str, Any], name: str, payload: bytes) -> float:
    value = _require_field(body, name, payload)
    # bool is a subclass of int in Python, but true/false is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(
            "wrong_type", f"field {name!r} must be a number, got {_json_type(value)} {_short(value)}"
        )
    try:
        return float(value)
    except OverflowError as exc:
        raise PayloadError("non_finite", f"field {name!r} is too large for a float") from exc


def _require_int(body: dict[str, Any], name: str, payload: bytes) -> int:
    value = _require_field(body, name, payload)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(
            "wrong_type",
            f"field {name!r} must be an integer, got {_json_type(value)} {_short(value)}",
        )
    return value


def _optional_number(body: dict[str, Any], name: str, payload: bytes) -> float | None:
    if body.get(name) is None:
        return None
    return _require_number(body, name, payload)


def _optional_str(body: dict[str, Any], name: str, payload: bytes) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise PayloadError(
        "wrong_type", f"field {name!r} must be a string or null, got {_json_type(value)}"
    )


def _require_scores(body: dict[str, Any], payload: bytes) -> dict[str, float]:
    scores = _require_field(body, "scores", payload)
    if not isinstance(scores, dict):
        raise PayloadError(
            "wrong_type", f"field 'scores' must be an object, got {_json_type(scores)}"
        )
    return {name: _require_number(scores, name, payload) for name in scores}


def _json_type(value: object) -> str:
    """Name the JSON type of a parsed value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: object) -> str:
    """Return repr(value) cut to EXCERPT_BYTES characters."""
    text = repr(value)
    return text if len(text) <= EXCERPT_BYTES else text[:EXCERPT_BYTES] + "..."


def _excerpt(payload: bytes) -> str:
    """Return the first EXCERPT_BYTES bytes of a payload for an error message."""
    head = bytes(payload[:EXCERPT_BYTES])
    suffix = f"... ({len(payload)} bytes)" if len(payload) > EXCERPT_BYTES else ""
    return f"{head!r}{suffix}"
