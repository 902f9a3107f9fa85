"""Wire formats: signal chunks in both forms, labels and diagnoses, and every rejection."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edge_agent.errors import PayloadError
from edge_agent.payloads import (
    SIGNAL_HEADER_SIZE,
    Diagnosis,
    LabelEvent,
    decode_diagnosis,
    decode_label,
    decode_signal,
    encode_diagnosis,
    encode_signal_binary,
    encode_signal_json,
)

MAX = 4096


def reject_signal(payload: bytes, reason: str, match: str) -> PayloadError:
    with pytest.raises(PayloadError, match=match) as info:
        decode_signal(payload, max_samples=MAX)
    assert info.value.reason == reason
    return info.value


def reject_label(body: object, reason: str, match: str) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(PayloadError, match=match) as info:
        decode_label(payload)
    assert info.value.reason == reason


def json_signal(**fields: object) -> bytes:
    body: dict[str, object] = {"ts": 1700000000.5, "fs": 12000, "seq": 7, "values": [0.5, -1.0, 2]}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


# Signal: accepted forms


def test_binary_round_trip() -> None:
    values = np.array([0.25, -1.5, 3.0e-6, 1e30], dtype=np.float32)
    chunk = decode_signal(encode_signal_binary(1700000000.125, 48000.0, 2**40, values), max_samples=MAX)
    assert chunk.ts == 1700000000.125
    assert chunk.fs == 48000.0
    assert chunk.seq == 2**40
    assert chunk.values.dtype == np.float32
    assert chunk.values.shape == (4,)
    np.testing.assert_array_equal(chunk.values, values)


def test_binary_header_layout() -> None:
    payload = encode_signal_binary(2.5, 12000.0, 9, [1.0])
    assert payload[:4] == b"EAV1"
    assert struct.unpack("<ddQ", payload[4:28]) == (2.5, 12000.0, 9)
    assert payload[28:] == struct.pack("<f", 1.0)
    assert SIGNAL_HEADER_SIZE == 28


def test_json_round_trip() -> None:
    values = [0.5, -1.0, 2.0]
    chunk = decode_signal(encode_signal_json(10.0, 12000, 0, values), max_samples=MAX)
    assert (chunk.ts, chunk.fs, chunk.seq) == (10.0, 12000.0, 0)
    np.testing.assert_array_equal(chunk.values, np.array(values, dtype=np.float32))
    assert chunk.duration_s == pytest.approx(3 / 12000)


def test_json_leading_whitespace_and_integers() -> None:
    chunk = decode_signal(b"  \n" + json_signal(values=[1, 2, 3]), max_samples=MAX)
    assert chunk.values.dtype == np.float32
    assert chunk.values.tolist() == [1.0, 2.0, 3.0]


def test_json_ignores_unknown_fields() -> None:
    chunk = decode_signal(json_signal(unit="g"), max_samples=MAX)
    assert chunk.seq == 7


@pytest.mark.parametrize("encode", [encode_signal_binary, encode_signal_json])
def test_decoded_values_read_only(encode) -> None:
    chunk = decode_signal(encode(0.0, 12000, 0, [1.0, 2.0]), max_samples=MAX)
    with pytest.raises(ValueError):
        chunk.values[0] = 5.0


def test_exactly_max_samples_accepted() -> None:
    chunk = decode_signal(encode_signal_binary(0.0, 12000, 0, np.zeros(MAX)), max_samples=MAX)
    assert len(chunk.values) == MAX


# Signal: rejections, JSON form


def test_not_utf8() -> None:
    reject_signal(b'{"ts": "\xff"}', "not_utf8", "not valid UTF-8")


def test_not_json() -> None:
    error = reject_signal(b'{"ts": 1,' + b"x" * 500, "not_json", "not valid JSON")
    assert "(509 bytes)" in str(error)
    assert len(str(error)) < 250


def test_json_array_is_not_signal() -> None:
    reject_signal(b"[1, 2, 3]", "unknown_magic", "neither JSON")


@pytest.mark.parametrize("name", ["ts", "fs", "seq", "values"])
def test_missing_field(name: str) -> None:
    reject_signal(json_signal(**{name: ...}), "missing_field", f"required field '{name}' is missing")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"ts": "1700000000"}, "field 'ts' must be a number, got string"),
        ({"fs": None}, "field 'fs' must be a number, got null"),
        ({"seq": 7.0}, "field 'seq' must be an integer, got number"),
        ({"seq": "7"}, "field 'seq' must be an integer, got string"),
        ({"values": 1.0}, "'values' must be a JSON array of numbers, got number"),
        ({"values": [1.0, "2.0"]}, "must contain only numbers, found string '2.0'"),
        ({"values": [1.0, None]}, "must contain only numbers, found null"),
        ({"values": [1.0, [2.0]]}, "must contain only numbers, found array"),
    ],
)
def test_wrong_type(fields: dict[str, object], match: str) -> None:
    reject_signal(json_signal(**fields), "wrong_type", match)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"ts": True}, "field 'ts' must be a number, got boolean"),
        ({"fs": False}, "field 'fs' must be a number, got boolean"),
        ({"seq": True}, "field 'seq' must be an integer, got boolean"),
        ({"values": [1.0, True]}, "found boolean True"),
    ],
)
def test_bool_is_not_number(fields: dict[str, object], match: str) -> None:
    reject_signal(json_signal(**fields), "wrong_type", match)


def test_nan_ts() -> None:
    reject_signal(json_signal(ts=float("nan")), "non_finite", "'ts' must be finite")


def test_non_finite_values_counted() -> None:
    payload = json_signal(values=[1.0, float("nan"), 2.0, float("inf"), float("-inf")])
    reject_signal(payload, "non_finite", r"has 3 non-finite sample\(s\) .* of 5, the first at index 1")


def test_value_beyond_float32_is_non_finite() -> None:
    reject_signal(json_signal(values=[1.0, 1e39]), "non_finite", "1 non-finite sample")


def test_huge_integer_value() -> None:
    reject_signal(json_signal(values=[10**400]), "non_finite", "too large for a float")


@pytest.mark.parametrize("fs", [0, -12000, float("inf"), float("nan")])
def test_invalid_fs(fs: float) -> None:
    reject_signal(json_signal(fs=fs), "invalid_fs", "'fs' must be a positive, finite sample rate")


def test_negative_seq() -> None:
    reject_signal(json_signal(seq=-1), "invalid_seq", "between 0 and 2\\*\\*64-1, got -1")


def test_seq_beyond_uint64() -> None:
    reject_signal(json_signal(seq=2**64), "invalid_seq", "got 18446744073709551616")


def test_empty_values_json() -> None:
    reject_signal(json_signal(values=[]), "empty_values", "no samples")


def test_too_many_samples_json() -> None:
    reject_signal(json_signal(values=[0.0] * (MAX + 1)), "too_many_samples", "4097 samples, more than the maximum of 4096")


# Signal: rejections, binary form


def test_truncated_header() -> None:
    payload = encode_signal_binary(0.0, 12000, 0, [1.0])[:20]
    reject_signal(payload, "truncated_header", "has 20 bytes but its header needs 28")


def test_body_not_multiple_of_four() -> None:
    payload = encode_signal_binary(0.0, 12000, 0, [1.0, 2.0])[:-1]
    reject_signal(payload, "bad_length", "body has 7 bytes, not a multiple of 4")


def test_empty_values_binary() -> None:
    reject_signal(encode_signal_binary(0.0, 12000, 0, []), "empty_values", "no samples")


def test_too_many_samples_binary() -> None:
    payload = encode_signal_binary(0.0, 12000, 0, np.zeros(MAX + 1))
    reject_signal(payload, "too_many_samples", "4097 samples")


def test_non_finite_binary() -> None:
    values = np.array([1.0, np.nan, 2.0, np.nan], dtype=np.float32)
    reject_signal(encode_signal_binary(0.0, 12000, 3, values), "non_finite", "seq 3 has 2 non-finite")


def test_binary_invalid_fs() -> None:
    reject_signal(encode_signal_binary(0.0, 0.0, 0, [1.0]), "invalid_fs", "got 0.0")


def test_other_magic() -> None:
    payload = b"EAV2" + encode_signal_binary(0.0, 12000, 0, [1.0])[4:]
    reject_signal(payload, "unknown_magic", "unknown binary signal format b'EAV2'")


def test_unknown_bytes() -> None:
    reject_signal(b"\x00\x01garbage", "unknown_magic", "neither JSON")


def test_empty_payload() -> None:
    reject_signal(b"", "unknown_magic", "neither JSON")


# Labels


def test_label_decoded() -> None:
    payload = json.dumps(
        {"start": 100.0, "end": 160.5, "label": "inner_race_007", "id": "op-42", "source": "hmi"}
    ).encode()
    assert decode_label(payload) == LabelEvent(100.0, 160.5, "inner_race_007", "op-42", "hmi")


def test_label_optional_fields_absent() -> None:
    event = decode_label(b'{"start": 1, "end": 2, "label": "normal"}')
    assert event.label_id is None
    assert event.source is None


def test_label_end_not_after_start() -> None:
    reject_label({"start": 5, "end": 5, "label": "a"}, "invalid_interval", r"'end' \(5.0\) must be after 'start'")


def test_label_longer_than_day() -> None:
    reject_label({"start": 0, "end": 86400.5, "label": "a"}, "invalid_interval", "more than the maximum of 86400 s")


def test_label_non_finite() -> None:
    reject_label(b'{"start": 0, "end": Infinity, "label": "a"}', "non_finite", "must be finite")


@pytest.mark.parametrize("name", ["", "inner race", "x" * 65, "a/b", "défaut"])
def test_label_invalid_name(name: str) -> None:
    reject_label({"start": 0, "end": 1, "label": name}, "invalid_label", "label name .* is invalid")


def test_label_64_characters_accepted() -> None:
    assert decode_label(json.dumps({"start": 0, "end": 1, "label": "a" * 64}).encode()).label == "a" * 64


def test_label_name_wrong_type() -> None:
    reject_label({"start": 0, "end": 1, "label": 7}, "wrong_type", "'label' must be a string, got number")


def test_label_start_bool() -> None:
    reject_label({"start": True, "end": 1, "label": "a"}, "wrong_type", "'start' must be a number, got boolean")


def test_label_missing_end() -> None:
    reject_label({"start": 0, "label": "a"}, "missing_field", "'end' is missing")


def test_label_id_wrong_type() -> None:
    reject_label({"start": 0, "end": 1, "label": "a", "id": 5}, "wrong_type", "'id' must be a string or null")


def test_label_empty_id() -> None:
    reject_label({"start": 0, "end": 1, "label": "a", "id": ""}, "wrong_type", "'id' must be a non-empty string")


def test_label_not_object() -> None:
    reject_label(b'"inner_race_007"', "not_object", "must be a JSON object, got string")


# Diagnoses


def make_diagnosis(**fields: object) -> Diagnosis:
    values: dict[str, object] = {
        "ts": 1700000001.0,
        "window_start": 1700000000.0,
        "window_end": 1700000000.1706,
        "label": "inner_race_007",
        "confidence": 0.9,
        "scores": {"inner_race_007": 0.9, "normal": 0.1},
        "model_version": "d38b099d-p3",
        "latency_ms": 12.5,
        "seq": 41,
    }
    values.update(fields)
    return Diagnosis(**values)  # type: ignore[arg-type]


def test_diagnosis_round_trip() -> None:
    diagnosis = make_diagnosis()
    body = json.loads(encode_diagnosis(diagnosis))
    assert "reason" not in body
    assert body["scores"] == {"inner_race_007": 0.9, "normal": 0.1}
    assert decode_diagnosis(diagnosis.to_json()) == diagnosis


def test_diagnosis_without_label_has_reason() -> None:
    reason = "need at least 2 classes with >= 1 support examples; have: inner_race_007 (5)"
    diagnosis = make_diagnosis(label=None, confidence=None, scores={}, reason=reason)
    body = json.loads(diagnosis.to_json())
    assert body["label"] is None
    assert body["confidence"] is None
    assert body["reason"] == reason
    assert Diagnosis.from_json(diagnosis.to_json()) == diagnosis


def test_diagnosis_null_label_needs_reason() -> None:
    with pytest.raises(ValueError, match="reason is required"):
        make_diagnosis(label=None, confidence=None)


def test_diagnosis_confidence_range() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_diagnosis(confidence=1.5)


def test_diagnosis_nan_score() -> None:
    with pytest.raises(ValueError, match="score of class 'normal' must be finite"):
        make_diagnosis(scores={"normal": float("nan")})


def test_diagnosis_from_json_invalid() -> None:
    body = json.loads(make_diagnosis().to_json())
    body["reason"] = "should not be here"
    with pytest.raises(PayloadError, match="reason must be null when label is set") as info:
        Diagnosis.from_json(json.dumps(body).encode())
    assert info.value.reason == "invalid_diagnosis"


def test_diagnosis_from_json_wrong_type() -> None:
    body = json.loads(make_diagnosis().to_json())
    body["model_version"] = 3
    with pytest.raises(PayloadError, match="'model_version' must be a string or null, got number") as info:
        Diagnosis.from_json(json.dumps(body).encode())
    assert info.value.reason == "wrong_type"
