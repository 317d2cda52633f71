"""Segmentation metrics of a heatmap against a foreground mask (REFERENCE §4).

Per image: the heatmap (upsampled, min-max scaled) is thresholded at its own mean, ``fg = map > mean``.
Dataset level, as the reference aggregates: pixel accuracy and IoU are *pooled* (sums of correct,
labelled, intersection and union pixels over all images), mAP is the mean of per-image average
precision. Only these sums and per-image APs are kept, so memory does not grow with the image size and
shards merge exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from xaibench.core.heatmaps import pixel_heatmaps
from xaibench.core.types import Attribution, Batch, MetricRunner, ModelAdapter

_EPS = float(np.spacing(1))  # the reference's `+ eps` in the IoU denominator


def image_ap(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """AP of ``[1 - h, h]`` against ``[mask == 0, mask == 1]``, both channels pooled (the reference's
    ``get_ap_scores``)."""
    scores = np.concatenate([1.0 - heatmap.ravel(), heatmap.ravel()])
    labels = np.concatenate([(mask == 0).ravel(), (mask == 1).ravel()]).astype(np.int64)
    return float(average_precision_score(labels, scores))


class Segmentation(MetricRunner):
    """Pixel accuracy, mIoU (background/foreground) and mAP of thresholded heatmaps.

    A map with NaN values (the reference's Grad-CAM on a constant map) is handled as the reference
    does — every pixel background, soft scores 0 — and counted in ``nan_maps``.
    """

    name: ClassVar[str] = "segmentation"
    requires: ClassVar[frozenset[str]] = frozenset({"mask"})
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    higher_is_better: ClassVar[dict[str, bool]] = {"pixel_accuracy": True, "miou": True, "map": True}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.labeled = 0
        self.inter = np.zeros(2, dtype=np.int64)
        self.union = np.zeros(2, dtype=np.int64)
        self.ap_sum = 0.0
        self.n = 0
        self.nan_maps = 0

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        if batch.masks is None:
            raise ValueError("the segmentation metric needs masks; the dataset gave none")
        masks = batch.masks
        heat = pixel_heatmaps(attribution, tuple(masks.shape[-2:])).detach().cpu()
        rows = []
        for i in range(len(batch)):
            h, m = heat[i], masks[i].long()
            has_nan = bool(h.isnan().any())
            h = torch.nan_to_num(h, nan=0.0)
            pred = (h > h.mean()).long() if not has_nan else torch.zeros_like(m)
            correct = int((pred == m).sum())
            labeled = int((m >= 0).sum())
            inter = np.array([int(((pred == c) & (m == c)).sum()) for c in (0, 1)], dtype=np.int64)
            area_p = np.array([int((pred == c).sum()) for c in (0, 1)], dtype=np.int64)
            area_m = np.array([int((m == c).sum()) for c in (0, 1)], dtype=np.int64)
            union = area_p + area_m - inter
            ap = image_ap(h.numpy(), m.numpy())
            self.correct += correct
            self.labeled += labeled
            self.inter += inter
            self.union += union
            self.ap_sum += ap
            self.n += 1
            self.nan_maps += int(has_nan)
            rows.append(
                {
                    "pixel_accuracy": correct / labeled,
                    "iou_bg": float(inter[0] / (union[0] + _EPS)),
                    "iou_fg": float(inter[1] / (union[1] + _EPS)),
                    "ap": ap,
                    "correct": correct,
                    "labeled": labeled,
                    "inter_bg": int(inter[0]),
                    "inter_fg": int(inter[1]),
                    "union_bg": int(union[0]),
                    "union_fg": int(union[1]),
                    "nan_map": has_nan,
                }
            )
        return rows

    def state(self) -> dict[str, Any]:
        """Sums that merge exactly across shards (add them)."""
        return {
            "correct": self.correct,
            "labeled": self.labeled,
            "inter": self.inter.tolist(),
            "union": self.union.tolist(),
            "ap_sum": self.ap_sum,
            "n": self.n,
            "nan_maps": self.nan_maps,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.correct, self.labeled = int(state["correct"]), int(state["labeled"])
        self.inter = np.asarray(state["inter"], dtype=np.int64)
        self.union = np.asarray(state["union"], dtype=np.int64)
        self.ap_sum, self.n, self.nan_maps = float(state["ap_sum"]), int(state["n"]), int(state["nan_maps"])

    def compute(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("segmentation metric computed over zero images")
        iou = self.inter / (self.union + _EPS)
        return {
            "pixel_accuracy": self.correct / self.labeled,
            "miou": float(iou.mean()),
            "iou_bg": float(iou[0]),
            "iou_fg": float(iou[1]),
            "map": self.ap_sum / self.n,
            "total_correct": int(self.correct),
            "total_label": int(self.labeled),
            "total_inter": self.inter.tolist(),
            "total_union": self.union.tolist(),
            "n": self.n,
            "nan_maps": self.nan_maps,
        }
