"""PNG figures of an evaluation report, drawn with matplotlib's Agg backend.

The figures use `matplotlib.figure.Figure` with an Agg canvas directly, so importing
this module does not change the global matplotlib backend of the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edge_agent.evaluation import SettingResult


def write_plots(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write `accuracy_vs_shots.png` and `confusion_hardest.png` into `directory`; return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    results: list[SettingResult] = report["results"]
    paths = [_accuracy_vs_shots(results, report["scenario"], out / "accuracy_vs_shots.png")]
    meta = [result for result in results if result.method == "meta" and result.confusion is not None]
    if meta:
        hardest = min(meta, key=lambda result: result.accuracy)
        paths.append(_confusion(hardest, report["scenario"], out / "confusion_hardest.png"))
    return paths


def _accuracy_vs_shots(results: list[SettingResult], scenario: str, path: Path) -> Path:
    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series: dict[str, list[SettingResult]] = {}
    for result in results:
        name = result.algorithm if result.method == "meta" else f"{result.method} (baseline)"
        series.setdefault(f"{name}, {result.n_way}-way", []).append(result)
    for name, points in series.items():
        points.sort(key=lambda result: result.n_shot)
        shots = np.array([p.n_shot for p in points])
        accuracy = np.array([100 * p.accuracy for p in points])
        band = np.array([100 * p.ci95 for p in points])
        style = "-" if "baseline" not in name else "--"
        (line,) = axes.plot(shots, accuracy, style, marker="o", label=name)
        axes.fill_between(shots, accuracy - band, accuracy + band, color=line.get_color(), alpha=0.2)
    axes.set_xlabel("shots per class (n_shot)")
    axes.set_ylabel("query accuracy (%), 95% CI band")
    axes.set_title(f"{scenario}: accuracy against shots")
    axes.set_xticks(sorted({r.n_shot for r in results}))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return path


def _confusion(result: SettingResult, scenario: str, path: Path) -> Path:
    assert result.confusion is not None
    counts = result.confusion
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(result.classes) + 2)
    figure = Figure(figsize=(size, size), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    axes.set_xticks(range(len(result.classes)), result.classes, rotation=60, ha="right", fontsize="small")
    axes.set_yticks(range(len(result.classes)), result.classes, fontsize="small")
    for (row, column), value in np.ndenumerate(counts):
        if value:
            axes.text(column, row, str(value), ha="center", va="center", fontsize="x-small",
                      color="white" if rates[row, column] > 0.5 else "black")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{scenario}, {result.algorithm} {result.n_way}-way {result.n_shot}-shot: "
                   f"{100 * result.accuracy:.1f}%", fontsize="small")
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of the true class")
    figure.tight_layout()
    figure.savefig(path)
    return path
