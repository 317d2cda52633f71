"""Insertion and deletion curves (Petsiuk, Das & Saenko, BMVC 2018, "RISE", §4.1 "causal metrics").

Per image, the map (upsampled bilinearly to the image, :func:`xaibench.core.heatmaps.upsample`) orders the
pixels, most relevant first (a stable sort: tied pixels in raster order). In steps of ``s`` pixels
(``step_pixels`` at 224 × 224, i.e. 1/224 of the image as the RISE evaluation code, scaled with the
image's area) the model re-classifies

* **deletion**: the image with its first ``i·s`` ranked pixels replaced by the deletion baseline
  (``zero``: 0 in the model's normalised input, RISE's ``torch.zeros_like`` substrate, i.e. the dataset's
  mean colour; or ``blur``), ``i = 0 … n`` with ``n = ⌈H·W / s⌉``;
* **insertion**: the blurred image with its first ``i·s`` ranked pixels put back (RISE: a Gaussian blur,
  kernel 11 px, σ = 5 px; here normalised and with reflect padding).

The score at each step is the softmax probability of the explained class (``attribution.targets``; the
sigmoid for a multi-label model). Each curve's AUC is the trapezoidal area over the removed/inserted
fraction ``x_i = min(i·s, H·W) / (H·W)`` (RISE's ``auc``: uniform spacing, identical when ``s`` divides
``H·W``). Deletion: lower is better; insertion: higher. The fully inserted image is the unperturbed one,
the deletion curve's first point, so a sample costs ``2n + 1`` forwards, run in batches of ``batch_size``
inputs with fused attention (:mod:`xaibench.metrics.forwards`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from xaibench.core.heatmaps import upsample
from xaibench.core.types import Attribution, Batch, ImageModelAdapter, MetricRunner, ModelAdapter
from xaibench.metrics.class_scores import class_probabilities
from xaibench.metrics.forwards import classify_images
from xaibench.metrics.sums import TensorSums

BASELINES = ("zero", "blur")
#: fractions at which the mean curves are reported in ``metrics.json``
CURVE_POINTS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
REFERENCE_AREA = 224 * 224


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """``[B, C, H, W]`` blurred per channel with a normalised ``kernel × kernel`` Gaussian (reflect padding)."""
    if kernel < 1 or kernel % 2 == 0 or sigma <= 0:
        raise ValueError(f"blur kernel must be a positive odd size and sigma > 0; got {kernel}, {sigma}")
    x = torch.arange(kernel, dtype=torch.float64) - kernel // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(images.device, images.dtype)
    c = images.shape[1]
    pad = min(kernel // 2, images.shape[-1] - 1, images.shape[-2] - 1)
    out = F.pad(images, (pad, pad, pad, pad), mode="reflect") if pad > 0 else images
    k = kernel if pad == kernel // 2 else 2 * pad + 1
    g = g[kernel // 2 - k // 2 : kernel // 2 + k // 2 + 1]
    g = g / g.sum()
    out = F.conv2d(out, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` int64 rank of each pixel in a stable descending sort of ``maps`` ``[B, N]`` (0 = most relevant)."""
    order = torch.sort(maps, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(maps.shape[1], device=maps.device).expand_as(order))
    return ranks


def curve_auc(fractions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoidal area of ``values`` ``[B, n+1]`` over ``fractions`` ``[n+1]`` (from 0 to 1)."""
    return ((values[:, 1:] + values[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)


class InsertionDeletion(TensorSums, MetricRunner):
    """RISE insertion and deletion AUCs of the explained class's probability.

    Args:
        step_pixels: pixels per step at 224 × 224 (RISE: 224); scaled to ``round(step_pixels · H·W / 224²)``
            (at least 1). E.g. 256 removes one 16 × 16 patch's worth of pixels per step.
        deletion_baseline: ``zero`` (RISE) or ``blur``.
        insertion_baseline: ``blur`` (RISE) or ``zero``.
        blur_kernel, blur_sigma: the Gaussian blur (RISE: 11 px, σ 5 px).
        batch_size: inputs per re-classification forward.
        fused_attention: re-classify with the model's fused attention (``False``: the eager path).
    """

    name: ClassVar[str] = "insertion_deletion"
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    needs_model: ClassVar[bool] = True
    higher_is_better: ClassVar[Mapping[str, bool]] = {"insertion_auc": True, "deletion_auc": False}
    sum_attrs: ClassVar[tuple[str, ...]] = ("_sums", "_deletion", "_insertion")

    def __init__(
        self,
        step_pixels: int = 224,
        deletion_baseline: str = "zero",
        insertion_baseline: str = "blur",
        blur_kernel: int = 11,
        blur_sigma: float = 5.0,
        batch_size: int = 64,
        fused_attention: bool = True,
    ) -> None:
        if int(step_pixels) < 1:
            raise ValueError(f"insertion_deletion: step_pixels must be >= 1, got {step_pixels}")
        for what, value in (("deletion_baseline", deletion_baseline), ("insertion_baseline", insertion_baseline)):
            if value not in BASELINES:
                raise ValueError(f"insertion_deletion: unknown {what} {value!r}; supported: {list(BASELINES)}")
        if int(batch_size) < 1:
            raise ValueError(f"insertion_deletion: batch_size must be >= 1, got {batch_size}")
        gaussian_blur(torch.zeros(1, 1, 3, 3), int(blur_kernel), float(blur_sigma))  # validates the blur
        self.step_pixels = int(step_pixels)
        self.deletion_baseline, self.insertion_baseline = deletion_baseline, insertion_baseline
        self.blur_kernel, self.blur_sigma = int(blur_kernel), float(blur_sigma)
        self.batch_size = int(batch_size)
        self.fused_attention = bool(fused_attention)
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64)  # Σ deletion AUC, Σ insertion AUC, samples
        self._deletion = torch.zeros(len(CURVE_POINTS), dtype=torch.float64)
        self._insertion = torch.zeros(len(CURVE_POINTS), dtype=torch.float64)

    def step_size(self, height: int, width: int) -> int:
        """Pixels per step for an ``H × W`` image."""
        return max(1, round(self.step_pixels * height * width / REFERENCE_AREA))

    def _baseline(self, kind: str, inputs: torch.Tensor) -> torch.Tensor:
        if kind == "zero":
            return torch.zeros_like(inputs)
        return gaussian_blur(inputs, self.blur_kernel, self.blur_sigma)

    def curves(
        self, inputs: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, model: ModelAdapter
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deletion and insertion curves ``[B, n+1]`` (float64) and the fractions ``[n+1]``.

        Args:
            inputs: ``[B, 3, H, W]`` normalised model inputs (on the model's device).
            maps: ``[B, H, W]`` pixel relevance.
            targets: ``[B]`` the explained classes.
        """
        b, _, height, width = inputs.shape
        area = height * width
        step = self.step_size(height, width)
        n = math.ceil(area / step)
        ranks = pixel_ranks(maps.reshape(b, -1).to(inputs.device)).reshape(b, 1, height, width)
        removed = torch.clamp(torch.arange(n + 1) * step, max=area)
        deletion_base = self._baseline(self.deletion_baseline, inputs)
        insertion_base = self._baseline(self.insertion_baseline, inputs)

        def edited() -> Iterator[torch.Tensor]:
            for k in removed.tolist():  # deletion, 0 … n steps (k = 0: the unperturbed image)
                yield torch.where(ranks < k, deletion_base, inputs)
            for k in removed[:-1].tolist():  # insertion, 0 … n-1 steps (n: the unperturbed image again)
                yield torch.where(ranks < k, inputs, insertion_base)

        logits = classify_images(model, edited(), self.batch_size, self.fused_attention)
        probs = [class_probabilities(lg.double(), model.multi_label).gather(1, targets[:, None])[:, 0] for lg in logits]
        deletion = torch.stack(probs[: n + 1], dim=1).numpy()
        insertion = torch.stack([*probs[n + 1 :], probs[0]], dim=1).numpy()
        return deletion, insertion, removed.double().numpy() / area

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """Two curves per image; one row per sample with ``deletion_auc``, ``insertion_auc`` and ``steps``.

        Args:
            batch: an image batch (``inputs`` ``[B, 3, H, W]`` normalised, on the model's device).
            attribution: ``[B, gh, gw]`` token maps or ``[B, H, W]`` pixel maps.
            model: an image model adapter.
        """
        if not isinstance(model, ImageModelAdapter) or not isinstance(batch.inputs, torch.Tensor):
            raise TypeError(f"insertion_deletion needs an image model and batch; got {type(model).__name__}")
        inputs = batch.inputs
        if len(attribution.maps) != len(inputs):
            raise ValueError(f"insertion_deletion: {len(attribution.maps)} maps for {len(inputs)} images")
        maps = upsample(attribution.maps.detach().double().nan_to_num(0.0), attribution.level, inputs.shape[-2:])
        targets = attribution.targets.detach().to("cpu").long()
        deletion, insertion, fractions = self.curves(inputs, maps, targets, model)
        del_auc, ins_auc = curve_auc(fractions, deletion), curve_auc(fractions, insertion)
        self._sums += torch.tensor([del_auc.sum(), ins_auc.sum(), len(inputs)], dtype=torch.float64)
        points = np.asarray(CURVE_POINTS)
        self._deletion += torch.from_numpy(np.stack([np.interp(points, fractions, c) for c in deletion]).sum(0))
        self._insertion += torch.from_numpy(np.stack([np.interp(points, fractions, c) for c in insertion]).sum(0))
        steps = len(fractions) - 1
        return [
            {"deletion_auc": float(d), "insertion_auc": float(i), "steps": steps}
            for d, i in zip(del_auc, ins_auc, strict=True)
        ]

    def compute(self) -> dict[str, Any]:
        """Mean ``deletion_auc`` and ``insertion_auc``, the mean curves at ``CURVE_POINTS``
        (``deletion@0.1``, …), and ``n``."""
        d, i, n = self._sums.tolist()
        mean = (lambda v: float(v) / n) if n else (lambda v: math.nan)
        out: dict[str, Any] = {"deletion_auc": mean(d), "insertion_auc": mean(i), "n": int(n)}
        for j, x in enumerate(CURVE_POINTS):
            out[f"deletion@{x:g}"] = mean(self._deletion[j])
            out[f"insertion@{x:g}"] = mean(self._insertion[j])
        return out
