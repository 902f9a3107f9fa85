"""Scores of a replay: accuracy, per-class precision and recall, confusion, latency."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# A diagnosis with no label (model not ready) counts as wrong and lands in this column.
NO_LABEL = "(none)"


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str | None], classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Return the column labels and the (true, predicted) count matrix.

    Rows are `classes`; columns are `classes` plus any other predicted name and
    NO_LABEL for missing labels, so no diagnosis is silently left out.
    """
    columns = list(classes)
    extra = sorted({p for p in predicted if p is not None and p not in columns})
    columns += extra
    if any(p is None for p in predicted):
        columns.append(NO_LABEL)
    index = {name: i for i, name in enumerate(columns)}
    matrix = np.zeros((len(classes), len(columns)), dtype=np.int64)
    row = {name: i for i, name in enumerate(classes)}
    for t, p in zip(truth, predicted):
        matrix[row[t], index[NO_LABEL if p is None else p]] += 1
    return columns, matrix


def per_class_scores(classes: Sequence[str], columns: Sequence[str], matrix: np.ndarray) -> dict[str, dict[str, float]]:
    scores = {}
    for i, name in enumerate(classes):
        j = list(columns).index(name)
        true_positive = int(matrix[i, j])
        support = int(matrix[i].sum())
        predicted = int(matrix[:, j].sum())
        scores[name] = {
            "precision": true_positive / predicted if predicted else 0.0,
            "recall": true_positive / support if support else 0.0,
            "support": support,
        }
    return scores


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2), "max": round(float(values.max()), 2)}


def score(truth: Sequence[str], predicted: Sequence[str | None], classes: Sequence[str]) -> dict[str, Any]:
    """Return accuracy, per_class and confusion for paired truths and predictions."""
    columns, matrix = confusion_matrix(truth, predicted, classes)
    correct = sum(1 for t, p in zip(truth, predicted) if t == p)
    return {
        "accuracy": correct / len(truth) if truth else 0.0,
        "per_class": per_class_scores(classes, columns, matrix),
        "confusion": {"labels": list(classes), "columns": columns, "matrix": matrix.tolist()},
    }


def format_summary(report: dict[str, Any]) -> str:
    """Render the report as a few readable lines for the terminal."""
    lines = [
        f"accuracy          {report['accuracy']:.4f}  ({report['windows_correct']} of {report['windows_scored']} scored windows)",
        f"diagnoses         {report['diagnoses_received']} of {report['windows_scored']} scored windows received"
        f" ({report['diagnoses_total']} in all, {report['diagnoses_duplicated']} duplicated)",
        f"labels            {report['labels_published']} published, {report['labels_applied']} applied by the agent",
    ]
    latency = report["latency_ms"]
    if latency["p50"] is not None:
        lines.append(f"latency (ms)      p50 {latency['p50']}  p95 {latency['p95']}  p99 {latency['p99']}")
    lines.append(f"duration          {report['duration_s']:.1f} s")
    lines.append("per class         precision  recall  support")
    for name, s in report["per_class"].items():
        lines.append(f"  {name:<16}{s['precision']:>9.3f}{s['recall']:>8.3f}{s['support']:>9d}")
    return "\n".join(lines)
