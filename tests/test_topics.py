"""Topic templates: checking, subscription filters, matching and filling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.topics import (
    format_topic,
    parse_topic,
    template_placeholders,
    templates_overlap,
    topic_filter,
)

SIGNAL = "plant/{line}/{asset}/vibration"


def test_placeholders_in_level_order() -> None:
    assert template_placeholders(SIGNAL) == ("line", "asset")
    assert template_placeholders("edge-agent/status") == ()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "must not be empty"),
        ("plant/+/{asset}", r"wildcard '\+'"),
        ("plant/#", "wildcard '#'"),
        ("$SYS/{asset}", r"must not start with '\$'"),
        ("plant/x{asset}", "whole topic level"),
        ("plant/{asset}x", "whole topic level"),
        ("plant/{asset", "unbalanced braces"),
        ("plant/asset}", "unbalanced braces"),
        ("plant/{{asset}}", "stray brace"),
        ("plant/{}", "must be a name"),
        ("plant/{0}", "must be a name"),
        ("plant/{asset:>4}", "format spec"),
        ("plant/{asset!r}", "format spec"),
        ("{asset}/{asset}", "appears twice"),
        ("a\x00b", "NUL"),
        ("a" * 65536, "at most 65535 bytes"),
    ],
)
def test_invalid_template_rejected(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        template_placeholders(template)


def test_filter_replaces_placeholders() -> None:
    assert topic_filter(SIGNAL) == "plant/+/+/vibration"
    assert topic_filter("edge-agent/status") == "edge-agent/status"


def test_filter_with_fixed_value() -> None:
    assert topic_filter(SIGNAL, line="L1") == "plant/L1/+/vibration"
    assert topic_filter("edge-agent/{agent_id}/status", agent_id="edge-01") == (
        "edge-agent/edge-01/status"
    )


def test_parse_matching_topic() -> None:
    assert parse_topic(SIGNAL, "plant/L1/pump-3/vibration") == {"line": "L1", "asset": "pump-3"}


@pytest.mark.parametrize(
    "topic",
    [
        "plant/L1/pump-3/label",
        "plant/L1/pump-3",
        "plant/L1/pump-3/vibration/extra",
        "plant//pump-3/vibration",
        "factory/L1/pump-3/vibration",
        "",
    ],
)
def test_parse_non_matching_topic(topic: str) -> None:
    assert parse_topic(SIGNAL, topic) is None


def test_format_fills_and_ignores_extra_values() -> None:
    topic = format_topic(SIGNAL, line="L1", asset="pump-3", agent_id="edge-01")
    assert topic == "plant/L1/pump-3/vibration"


def test_format_missing_value() -> None:
    with pytest.raises(ValueError, match=r"no value for placeholder \{line\}"):
        format_topic(SIGNAL, asset="pump-3")


@pytest.mark.parametrize("value", ["", "a/b", "a+", "#", "a\x00"])
def test_format_rejects_value_that_changes_levels(value: str) -> None:
    with pytest.raises(ValueError, match=r"value for \{asset\}"):
        format_topic(SIGNAL, line="L1", asset=value)


def test_format_rejects_invalid_template() -> None:
    with pytest.raises(ValueError, match="wildcard"):
        format_topic("plant/+/{asset}", asset="pump-3")


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (SIGNAL, "plant/{line}/{asset}/label", False),
        (SIGNAL, SIGNAL, True),
        (SIGNAL, "plant/L1/{asset}/vibration", True),
        (SIGNAL, "plant/{line}/{asset}/vibration/x", False),
        ("edge-agent/{agent_id}/status", "{a}/{b}/{asset}", True),
    ],
)
def test_overlap(first: str, second: str, expected: bool) -> None:
    assert templates_overlap(first, second) is expected


level_text = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)


@given(line=level_text, asset=level_text)
def test_format_then_parse_round_trip(line: str, asset: str) -> None:
    topic = format_topic(SIGNAL, line=line, asset=asset)
    assert parse_topic(SIGNAL, topic) == {"line": line, "asset": asset}
