"""The example grid of a ``target=each`` sweep on a multi-label set (``synthetic_pairs``): one row per image
with the input, each object's mask, then for each method its map of each class side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def class_groups(item: Mapping[str, Any]) -> list[list[int]] | None:
    """Positions of the explained samples of each image (ids ``"<sample id>#<class>"``), in order; ``None``
    when the examples are not such groups (every image explained once)."""
    if "targets" not in item:
        return None
    groups: dict[str, list[int]] = {}
    for j, sample_id in enumerate(str(s) for s in item["ids"]):
        base, sep, cls = sample_id.rpartition("#")
        key = base if sep and cls == str(int(item["targets"][j])) else sample_id
        groups.setdefault(key, []).append(j)
    return list(groups.values()) if any(len(g) > 1 for g in groups.values()) else None


def pair_figure(
    items: Sequence[Mapping[str, Any]],
    groups: list[list[int]],
    out_path: Path,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw the grid.

    Args:
        items: each method's ``examples.npz`` content with its column title as ``label`` (all with the same
            ids, the explained samples: ``images``, ``masks`` (the explained object's), ``heatmaps``,
            ``targets``).
        groups: positions of each image's explained samples (:func:`class_groups`).
        out_path: the PNG to write.
        title: figure title.
        class_names: names of the class indices (default: ``class <index>``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = items[0]
    k = max(len(g) for g in groups)
    cols = 1 + k + k * len(items)
    fig, axes = plt.subplots(
        len(groups), cols, figsize=(1.3 * cols, 1.4 * len(groups) + (0.3 if title else 0)), squeeze=False
    )

    def name(j: int) -> str:
        c = int(first["targets"][j])
        return class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"

    for r, group in enumerate(groups):
        image = first["images"][group[0]].transpose(1, 2, 0)
        axes[r, 0].imshow(image)
        for m, j in enumerate(group):
            if "masks" in first:
                axes[r, 1 + m].imshow(first["masks"][j], cmap="gray", vmin=0, vmax=1)
            axes[r, 1 + m].set_title(f"mask: {name(j)}", fontsize=6)
            for c, it in enumerate(items):
                ax = axes[r, 1 + k + c * k + m]
                ax.imshow(image)
                heat = np.nan_to_num(it["heatmaps"][j].astype(np.float32))
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_title(f"{it['label']}\n→ {name(j)}" if r == 0 else f"→ {name(j)}", fontsize=6)
    axes[0, 0].set_title("input", fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
