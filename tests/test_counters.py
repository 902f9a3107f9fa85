"""Rejection records: counted by reason, logged at a limited rate."""

from __future__ import annotations

import logging

import pytest

from edge_agent.counters import Rejections


def test_rejections_counted_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections(logging.getLogger("test.rejections"), keep=2)
    rejections.record("a/b", "not_json", "first")
    rejections.record("a/b", "not_json", "second")
    rejections.record("a/c", "too_large", "third")
    assert rejections.by_reason() == {"not_json": 2, "too_large": 1}
    assert rejections.total() == 3
    assert [r["message"] for r in rejections.recent()] == ["second", "third"]


def test_repeated_reason_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections(logging.getLogger("test.rejections"), log_interval_s=3600)
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            rejections.record("a/b", "not_json", f"bad {n}")
        rejections.record("a/b", "too_large", "big")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "bad 0" in lines[0]
    assert "big" in lines[1]


def test_suppressed_count_reported_next_time(caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections(logging.getLogger("test.rejections"), log_interval_s=0.0)
    rejections._interval_s = 3600
    with caplog.at_level(logging.WARNING):
        rejections.record("a/b", "not_json", "first")
        rejections.record("a/b", "not_json", "second")
        rejections._interval_s = 0.0
        rejections.record("a/b", "not_json", "third")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "1 more of this kind suppressed" in lines[1]
