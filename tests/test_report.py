"""Replay scoring: accuracy, confusion, per-class scores and latency percentiles."""

from __future__ import annotations

from edge_agent.report import NO_LABEL, latency_summary, score


def test_score_counts_missing_labels_as_wrong() -> None:
    result = score(["a", "a", "b", "b"], ["a", None, "b", "a"], ["a", "b"])
    assert result["accuracy"] == 0.5
    assert result["confusion"]["columns"] == ["a", "b", NO_LABEL]
    assert result["confusion"]["matrix"] == [[1, 0, 1], [1, 1, 0]]


def test_per_class_precision_recall() -> None:
    result = score(["a", "a", "b", "b"], ["a", "a", "b", "a"], ["a", "b"])
    assert result["per_class"]["a"]["precision"] == 2 / 3
    assert result["per_class"]["a"]["recall"] == 1.0
    assert result["per_class"]["b"]["precision"] == 1.0
    assert result["per_class"]["b"]["recall"] == 0.5


def test_unknown_predicted_class_gets_a_column() -> None:
    result = score(["a"], ["zzz"], ["a"])
    assert result["confusion"]["columns"] == ["a", "zzz"]
    assert result["accuracy"] == 0.0


def test_latency_percentiles() -> None:
    summary = latency_summary([float(v) for v in range(1, 101)])
    assert summary["p50"] == 50.5
    assert summary["p99"] == 99.01
    assert latency_summary([])["p50"] is None
