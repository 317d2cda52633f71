"""The example grid of a ``target=each`` sweep on a multi-label set (``synthetic_pairs``): for each image a
column per class (the input, the explained object's mask, then each method's map of that class), so the two
maps of one image sit side by side in every method's row."""

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
    """Draw the grid: a column per image and class, a row per method (and the input and masks on top).

    Args:
        items: each method's ``examples.npz`` content with its row title (the method's config name) as
            ``label``, all with the same ids, the explained samples (``images``, ``masks`` of the explained
            object, ``heatmaps``, ``targets``).
        groups: positions of each image's explained samples (:func:`class_groups`).
        out_path: the PNG to write.
        title: figure title.
        class_names: names of the class indices (default: the records' ``target_names``, else ``class <index>``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = items[0]
    columns = [j for group in groups for j in group]
    rows = 2 + len(items)
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(1.15 * len(columns) + 0.9, 1.15 * rows + (0.3 if title else 0)), squeeze=False
    )

    def name(j: int) -> str:
        c = int(first["targets"][j])
        if class_names is not None and c < len(class_names):
            return str(class_names[c])
        return str(first["target_names"][j]) if "target_names" in first else f"class {c}"

    for col, j in enumerate(columns):
        image = first["images"][j].transpose(1, 2, 0)
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"→ {name(j)}", fontsize=7)
        if "masks" in first:
            axes[1, col].imshow(first["masks"][j], cmap="gray", vmin=0, vmax=1)
        for r, it in enumerate(items, start=2):
            axes[r, col].imshow(image)
            heat = np.nan_to_num(it["heatmaps"][j].astype(np.float32))
            axes[r, col].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    for r, label in enumerate(["input", "mask", *(str(it["label"]) for it in items)]):
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
