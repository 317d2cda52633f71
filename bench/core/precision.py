"""How far rounding moves a method's maps: the run's precision against float64 (the loop's spot check).

The relevance rules divide by sums of products that can nearly cancel, so float32 rounding is amplified
(``../shared/golden/README.md``: on random weights the reference's own float32 and float64 full-LRP maps
differ by up to 99 %). The statistic, per sample: ``max |map_low - map_float64| / max |map_float64|``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from xaibench.core.targets import explained_samples
from xaibench.core.types import AttributionMethod, Batch, DatasetAdapter, ModelAdapter

log = logging.getLogger(__name__)


def map_divergence(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Per sample ``max |low - high| / max |high|`` over the flattened maps ``[B, ...]`` (float64; NaN
    where either map is not finite)."""
    a, b = low.double().flatten(1), high.double().flatten(1)
    finite = torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1)
    scale = b.abs().amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    out = (a - b).abs().amax(dim=1) / scale
    return torch.where(finite, out, torch.full_like(out, float("nan")))


def precision_divergence(
    model: ModelAdapter,
    method: AttributionMethod,
    batch: Batch,
    target: torch.Tensor | None,
    low: torch.dtype,
    high: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Per-sample :func:`map_divergence` of ``method``'s maps with the model in ``low`` vs in ``high``.

    The high-precision pass explains the classes the low one chose. The model comes back in the dtype it
    had, with its exact weights (a float32 -> float64 -> float32 round trip is exact; for bf16/fp16 the
    weights are restored from a copy).
    """
    dtype = model.dtype
    saved = {k: v.detach().clone() for k, v in model.model.state_dict().items()} if low.itemsize < 4 else None
    try:
        model.to(dtype=low)
        first = method(model, model.batch_to(batch), target)
        model.to(dtype=high)
        second = method(model, model.batch_to(batch), first.targets.to(model.device))
    finally:
        model.to(dtype=dtype)
        if saved is not None:
            model.model.load_state_dict(saved)
    return map_divergence(first.maps, second.maps)


def spot_check(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    *,
    samples: int,
    target_mode: str,
    threshold: float,
    precision: str,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any] | None:
    """Maps of the first ``samples`` samples at the run's ``dtype`` vs float64: is the run dominated by
    rounding? ``None`` when off (``samples < 1``), already float64, or the samples cannot be read."""
    k = min(samples, len(dataset))
    if k < 1 or dtype == torch.float64:
        return None
    try:
        batch = model.collate([s for i in range(k) for s in explained_samples(dataset[i], target_mode)])
    except Exception as exc:  # the run itself reports unreadable samples
        log.info("float64 spot check skipped: %s: %s", type(exc).__name__, exc)
        return None
    target = batch.labels.to(device) if target_mode in ("label", "each") else None
    divergence = precision_divergence(model, method, batch, target, dtype)
    divergence = divergence[torch.isfinite(divergence)]
    worst = float(divergence.max()) if divergence.numel() else 0.0
    flagged = worst > threshold
    if flagged:
        log.warning(
            "%s at %s differs from float64 by %.1f%% of the map's scale on the first %d samples: the maps are "
            "dominated by rounding; run with precision=float64",
            method.name,
            precision,
            100 * worst,
            k,
        )
    return {"samples": k, "max_rel_divergence": worst, "threshold": threshold, "flagged": flagged}
