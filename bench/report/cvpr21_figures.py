"""Figures of the CVPR 2021 reproduction: perturbation curves, ERASER token-F1 curves, example grids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from xaibench.report.cvpr21_index import (
    ERASER_DATASET,
    PERTURBATION_DATASET,
    TARGET_NAMES,
    Cell,
    _Builder,
)
from xaibench.report.cvpr21_tables import _token_f1_curve
from xaibench.report.figures import example_figure


def _perturbation_curve(cell: Cell, direction: str) -> tuple[list[float], list[float]]:
    if not cell.ok:
        return [], []
    values = cell.record.metrics.get("perturbation", {})
    points = []
    for key, value in values.items():
        m = re.fullmatch(rf"{direction}_acc_([0-9.]+)", key)
        if m and isinstance(value, (int, float)):
            points.append((float(m.group(1)), 100.0 * float(value)))
    base = values.get("base_accuracy")
    if not points or not isinstance(base, (int, float)):
        return [], []
    points.sort()
    return [0.0] + [p for p, _ in points], [100.0 * float(base)] + [a for _, a in points]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def perturbation_figure(b: _Builder, methods: Sequence[str], targets: Sequence[str], path: Path, title: str):
    """Accuracy vs removed fraction, one panel per (class, direction), one line per method.

    Returns:
        ``(path, csv_rows)``; ``path`` is ``None`` when no record has a curve.
    """
    curves, rows = {}, []
    for target in targets:
        for method in methods:
            cell = b.index.cell("perturbation", PERTURBATION_DATASET, method, target)
            for direction in ("positive", "negative"):
                xs, ys = _perturbation_curve(cell, direction)
                if xs:
                    curves[(target, direction, method)] = (xs, ys)
                    rows += [
                        {
                            "method": method,
                            "class": TARGET_NAMES[target],
                            "direction": direction,
                            "removed": x,
                            "accuracy": y,
                        }
                        for x, y in zip(xs, ys, strict=True)
                    ]
    if not curves:
        return None, rows
    shown = [t for t in targets if any(k[0] == t for k in curves)]
    plt = _pyplot()
    fig, axes = plt.subplots(len(shown), 2, figsize=(9, 3.2 * len(shown)), squeeze=False)
    for r, target in enumerate(shown):
        for c, direction in enumerate(("positive", "negative")):
            ax = axes[r, c]
            for method in methods:
                if (target, direction, method) in curves:
                    xs, ys = curves[(target, direction, method)]
                    ax.plot(xs, ys, marker="o", markersize=3, label=b.names.get(method, method))
            ax.set_title(f"{direction} perturbation, {TARGET_NAMES[target]} class", fontsize=9)
            ax.set_xlabel("removed fraction of pixels")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


def eraser_figure(b: _Builder, methods: Sequence[str], path: Path):
    """Token-F1 vs k (micro and macro panels), one line per method. Returns ``(path or None, csv_rows)``."""
    curves, rows = {}, []
    for method in methods:
        cell = b.index.cell("token_f1", ERASER_DATASET, method, "label")
        for average in ("micro", "macro"):
            curve = _token_f1_curve(cell, average)
            if curve:
                curves[(average, method)] = curve
                rows += [{"method": method, "average": average, "k": k, "token_f1": v} for k, v in curve]
    if not curves:
        return None, rows
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    for c, average in enumerate(("micro", "macro")):
        ax = axes[0, c]
        for method in methods:
            if (average, method) in curves:
                ks, vs = zip(*curves[(average, method)], strict=True)
                ax.plot(ks, vs, marker="o", markersize=3, label=b.names.get(method, method))
        ax.set_title(f"token-F1 ({average})", fontsize=9)
        ax.set_xlabel("k (words)")
        ax.set_ylabel("token-F1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("ERASER Movie Reviews (test), ground-truth class", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


def examples_grid(b: _Builder, runner: str, dataset: str, methods: Sequence[str], path: Path, title: str):
    """Example heatmaps (``examples.npz`` of each method's newest predicted-class job) in one grid."""
    run_dirs, labels = [], {}
    for method in methods:
        cell = b.index.cell(runner, dataset, method, "predicted")
        if cell.ok and cell.record.run_dir is not None and (cell.record.run_dir / "examples.npz").is_file():
            run_dirs.append(cell.record.run_dir)
            labels[cell.record.run_dir] = b.names.get(method, method)
    if not run_dirs:
        return None
    return example_figure(run_dirs, path, labels=labels, title=title)
