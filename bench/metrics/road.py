"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods").

Per image, the map (upsampled bilinearly to the image) ranks the pixels (a stable sort: tied pixels in
raster order). For each fraction ``p`` in ``fractions`` (default 0.1 … 0.9) and each order, the ``int(p·H·W)``
pixels first in **MoRF** order (most relevant first) or **LeRF** order (least relevant first) are removed
and filled in by noisy linear imputation (:mod:`xaibench.metrics.imputation`) in the model's normalised
input space (as the authors and Quantus do), and the model re-classifies the image (fused attention, in
forwards of ``batch_size``). Per step: a **hit** when the prediction is the ground-truth label (as the
perturbation test; a multi-label model: the label is still detected) and the explained class's
probability. AUCs are trapezoidal over ``x = 0, fractions`` with ``x = 0`` the unperturbed image: the
accuracy AUC in percent (as the perturbation test's, MoRF lower is better, LeRF higher) and the
probability AUC. ``lerf_minus_morf`` (accuracy AUC) summarises both orders (higher is better).

The imputation noise is drawn from a generator seeded with ``seed`` and the sample id, so a sample gets
the same noise in any batch and on any rank. A sample costs ``2·len(fractions) + 1`` forwards and
``2·len(fractions)`` sparse solves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch

from xaibench.core.heatmaps import upsample
from xaibench.core.types import Attribution, Batch, ImageModelAdapter, MetricRunner, ModelAdapter
from xaibench.metrics.class_scores import ClassStats, class_probabilities
from xaibench.metrics.forwards import classify_images
from xaibench.metrics.imputation import noisy_linear_impute
from xaibench.metrics.insertion_deletion import pixel_ranks
from xaibench.metrics.sums import TensorSums

ORDERS = ("morf", "lerf")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def trapezoid_from_zero(base: float, values: Sequence[float], fractions: Sequence[float]) -> float:
    """Trapezoidal area of ``[base, *values]`` over ``[0, *fractions]``."""
    xs, ys = [0.0, *fractions], [base, *values]
    return sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))


def sample_generator(seed: int, sample_id: str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the sample id (independent of batch and rank)."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class Road(TensorSums, MetricRunner):
    """ROAD accuracy and probability curves in MoRF and LeRF order, and their AUCs.

    Args:
        fractions: removed fractions, strictly increasing in ``(0, 1)`` (ROAD: 0.1 … 0.9).
        orders: any of ``morf``, ``lerf``.
        noise: standard deviation of the imputation noise, in normalised input units (ROAD: 0.01).
        seed: seeds the noise (with the sample id).
        batch_size: inputs per re-classification forward.
        fused_attention: re-classify with the model's fused attention (``False``: the eager path).
    """

    name: ClassVar[str] = "road"
    requires: ClassVar[frozenset[str]] = frozenset({"label"})
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    needs_model: ClassVar[bool] = True
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "morf_auc": False,
        "lerf_auc": True,
        "lerf_minus_morf": True,
        "morf_prob_auc": False,
        "lerf_prob_auc": True,
    }
    sum_attrs: ClassVar[tuple[str, ...]] = ("_base", "_hits", "_probs")

    def __init__(
        self,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        orders: Sequence[str] = ORDERS,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 64,
        fused_attention: bool = True,
    ) -> None:
        fractions = [float(f) for f in fractions]
        if not fractions or any(not 0 < f < 1 for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError(f"road: fractions must be strictly increasing in (0, 1); got {fractions}")
        orders = [orders] if isinstance(orders, str) else list(orders)
        if not orders or any(o not in ORDERS for o in orders) or len(set(orders)) != len(orders):
            raise ValueError(f"road: orders must be distinct values from {list(ORDERS)}; got {orders}")
        if float(noise) < 0 or int(batch_size) < 1:
            raise ValueError(f"road: noise must be >= 0 and batch_size >= 1; got {noise}, {batch_size}")
        self.fractions, self.orders = tuple(fractions), tuple(orders)
        self.noise, self.seed = float(noise), int(seed)
        self.batch_size, self.fused_attention = int(batch_size), bool(fused_attention)
        self.reset()

    def reset(self) -> None:
        shape = (len(self.orders), len(self.fractions))
        self._base = torch.zeros(3, dtype=torch.float64)  # samples, unperturbed hits, Σ unperturbed probability
        self._hits = torch.zeros(shape, dtype=torch.float64)
        self._probs = torch.zeros(shape, dtype=torch.float64)

    def removed_masks(self, maps: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(order index, fraction index, [B, H, W] bool removed pixels)`` for every step.

        Args:
            maps: ``[B, H, W]`` pixel relevance.
        """
        b, height, width = maps.shape
        area = height * width
        ranks = pixel_ranks(maps.reshape(b, -1)).reshape(b, height, width)
        for i, order in enumerate(self.orders):
            for j, fraction in enumerate(self.fractions):
                k = int(area * fraction)
                yield i, j, (ranks < k) if order == "morf" else (ranks >= area - k)

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """Impute and re-classify every step; one row per sample with ``{order}_hit_{p}``,
        ``{order}_prob_{p}``, ``{order}_auc`` and ``{order}_prob_auc``, and ``base_hit``, ``base_prob``."""
        if not isinstance(model, ImageModelAdapter) or not isinstance(batch.inputs, torch.Tensor):
            raise TypeError(f"road needs an image model and batch; got {type(model).__name__}")
        labels = batch.labels.detach().to("cpu").long()
        if bool((labels < 0).any()):
            raise ValueError("road scores hits against ground-truth labels; a sample has none (-1)")
        inputs = batch.inputs
        if len(attribution.maps) != len(inputs):
            raise ValueError(f"road: {len(attribution.maps)} maps for {len(inputs)} images")
        maps = upsample(
            attribution.maps.detach().to("cpu", torch.float64).nan_to_num(0.0), attribution.level, inputs.shape[-2:]
        )
        generators = [sample_generator(self.seed, sid) for sid in batch.ids]

        def edited() -> Iterator[torch.Tensor]:
            yield inputs
            for _, _, removed in self.removed_masks(maps):
                yield torch.stack(
                    [
                        noisy_linear_impute(x, r, self.noise, g)
                        for x, r, g in zip(inputs, removed, generators, strict=True)
                    ]
                )

        logits = classify_images(model, edited(), self.batch_size, self.fused_attention)
        targets = attribution.targets.detach().to("cpu").long()
        n_steps = len(self.orders) * len(self.fractions)
        stats = ClassStats(torch.cat(logits), labels.repeat(n_steps + 1), model.multi_label)
        probs = class_probabilities(torch.cat(logits).double(), model.multi_label)
        probs = probs.gather(1, targets.repeat(n_steps + 1)[:, None])[:, 0]
        shape = (n_steps + 1, len(inputs))
        hits, probs = stats.hit.reshape(shape).double(), probs.reshape(shape)
        d, f = len(self.orders), len(self.fractions)
        step_hits, step_probs = hits[1:].reshape(d, f, -1), probs[1:].reshape(d, f, -1)
        self._base += torch.tensor([len(inputs), float(hits[0].sum()), float(probs[0].sum())], dtype=torch.float64)
        self._hits += step_hits.sum(dim=2)
        self._probs += step_probs.sum(dim=2)
        rows = []
        for b in range(len(inputs)):
            row: dict[str, Any] = {"base_hit": int(hits[0, b]), "base_prob": float(probs[0, b])}
            for i, order in enumerate(self.orders):
                for j, fraction in enumerate(self.fractions):
                    row[f"{order}_hit_{fraction:g}"] = int(step_hits[i, j, b])
                    row[f"{order}_prob_{fraction:g}"] = float(step_probs[i, j, b])
                curve_h, curve_p = step_hits[i, :, b].tolist(), step_probs[i, :, b].tolist()
                row[f"{order}_auc"] = 100 * trapezoid_from_zero(float(hits[0, b]), curve_h, self.fractions)
                row[f"{order}_prob_auc"] = trapezoid_from_zero(float(probs[0, b]), curve_p, self.fractions)
            rows.append(row)
        return rows

    def compute(self) -> dict[str, Any]:
        """``base_accuracy``, ``base_prob``, per order ``{order}_acc_{p}``, ``{order}_prob_{p}``, ``{order}_auc``
        (percent) and ``{order}_prob_auc``; ``lerf_minus_morf`` when both orders ran; ``n``."""
        n, base_hits, base_prob = self._base.tolist()
        mean = (lambda v: float(v) / n) if n else (lambda v: math.nan)
        out: dict[str, Any] = {"n": int(n), "base_accuracy": mean(base_hits), "base_prob": mean(base_prob)}
        for i, order in enumerate(self.orders):
            accs = [mean(v) for v in self._hits[i]]
            probs = [mean(v) for v in self._probs[i]]
            for j, fraction in enumerate(self.fractions):
                out[f"{order}_acc_{fraction:g}"] = accs[j]
                out[f"{order}_prob_{fraction:g}"] = probs[j]
            out[f"{order}_auc"] = 100 * trapezoid_from_zero(out["base_accuracy"], accs, self.fractions)
            out[f"{order}_prob_auc"] = trapezoid_from_zero(out["base_prob"], probs, self.fractions)
        if set(self.orders) == set(ORDERS):
            out["lerf_minus_morf"] = out["lerf_auc"] - out["morf_auc"]
        return out
