"""Figures drawn from run records: the example-heatmap grid of a sweep (``examples.png``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from xaibench.report.pair_figure import class_groups, pair_figure

log = logging.getLogger(__name__)


def example_figure(
    run_dirs: Sequence[Path],
    out_path: Path,
    labels: Mapping[Path, str] | None = None,
    title: str | None = None,
) -> Path | None:
    """A grid: one row per example image; input, ground-truth mask, then one heatmap per method.

    Args:
        run_dirs: job folders; those with an ``examples.npz`` are shown.
        out_path: the PNG to write.
        labels: column title per run folder, in the order to show (default: the records' method names,
            sorted).
        title: figure title.

    Returns:
        ``out_path``, or ``None`` when no folder holds examples. Runs whose examples show other images
        than the first run's (another dataset or limit) are left out with a warning.
    """
    items = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "examples.npz"
        if path.is_file():
            with np.load(path) as z:
                item = {k: z[k] for k in z.files}
            item["label"] = labels[run_dir] if labels is not None else str(item["method"])
            items.append(item)
    if not items:
        return None
    if labels is None:
        items.sort(key=lambda it: it["label"])
    first = items[0]
    same = [it for it in items if list(it["ids"]) == list(first["ids"])]
    for it in items:
        if not any(it is s for s in same):
            log.warning(
                "examples of %s show other images than %s; left out of %s", it["label"], first["label"], out_path
            )
    items = same
    groups = class_groups(first)
    if groups is not None:  # target=each on a multi-label set: each image's maps of every class side by side
        return pair_figure(items, groups, out_path, title)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(first["ids"])
    has_mask = "masks" in first
    cols = 1 + int(has_mask) + len(items)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + (0.3 if title else 0)), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(first["images"][r].transpose(1, 2, 0))
        if has_mask:
            axes[r, 1].imshow(first["masks"][r], cmap="gray")
        for c, it in enumerate(items):
            ax = axes[r, 1 + int(has_mask) + c]
            ax.imshow(first["images"][r].transpose(1, 2, 0))
            ax.imshow(np.nan_to_num(it["heatmaps"][r].astype(np.float32)), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    titles = ["input"] + (["mask"] if has_mask else []) + [it["label"] for it in items]
    for c, name in enumerate(titles):
        axes[0, c].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
