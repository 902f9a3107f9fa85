"""PNG plots of a replay report: confusion matrix, accuracy over time, latency histogram.

Uses matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Windows per point of the accuracy-over-time curve.
ACCURACY_BIN = 50


def write_replay_plots(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write the plots of `report` into `folder` and return their paths.

    confusion.png always, accuracy_over_time.png and latency.png when the report
    contains a `timeline`.
    """
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [_plot_confusion(report, folder / "confusion.png")]
    timeline = report.get("timeline")
    if timeline:
        written.append(_plot_accuracy(report, timeline, folder / "accuracy_over_time.png"))
        latencies = [row["latency_ms"] for row in timeline if row.get("latency_ms") is not None]
        if latencies:
            written.append(_plot_latency(latencies, folder / "latency.png"))
    return written


def _plot_confusion(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    confusion = report["confusion"]
    matrix = np.asarray(confusion["matrix"], dtype=np.float64)
    rows, columns = confusion["labels"], confusion["columns"]
    # Rows are normalised to recall, so rare classes stay readable.
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)

    figure, axes = plt.subplots(figsize=(1.0 + 0.6 * len(columns), 1.0 + 0.5 * len(rows)))
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("diagnosis")
    axes.set_ylabel("truth")
    for i in range(len(rows)):
        for j in range(len(columns)):
            if matrix[i, j]:
                colour = "white" if share[i, j] > 0.5 else "black"
                axes.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8, color=colour)
    axes.set_title(f"confusion, accuracy {report['accuracy']:.3f}")
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_accuracy(report: dict[str, Any], timeline: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = sorted(timeline, key=lambda row: row["t_s"])
    times = np.asarray([row["t_s"] for row in rows])
    correct = np.asarray([bool(row["correct"]) for row in rows], dtype=np.float64)
    centres, accuracy = [], []
    for begin in range(0, len(rows), ACCURACY_BIN):
        centres.append(float(times[begin : begin + ACCURACY_BIN].mean()))
        accuracy.append(float(correct[begin : begin + ACCURACY_BIN].mean()))

    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.plot(centres, accuracy, marker="o", label=f"accuracy per {ACCURACY_BIN} scored windows")
    for index, label_time in enumerate(report.get("label_times_s", [])):
        axes.axvline(label_time, color="grey", alpha=0.4, linewidth=1, label="label published" if index == 0 else None)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("stream time (s)")
    axes.set_ylabel("accuracy")
    axes.set_title("accuracy as labels arrive")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_latency(latencies_ms: list[float], path: Path) -> Path:
    import matplotlib.pyplot as plt

    values = np.asarray(latencies_ms)
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(values, bins=40)
    p50, p95 = np.percentile(values, [50, 95])
    axes.axvline(p50, color="black", linestyle="--", label=f"p50 {p50:.1f} ms")
    axes.axvline(p95, color="red", linestyle="--", label=f"p95 {p95:.1f} ms")
    axes.set_xlabel("latency (ms), last chunk published to diagnosis received")
    axes.set_ylabel("windows")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
