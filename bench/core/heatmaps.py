"""Turning an attribution into the pixel heatmap the image metrics, figures and ``xaibench-explain`` read
(REFERENCE §3.1 post-processing): the one implementation of upsampling and min-max scaling.

Constant-map policy: a map with no spread (``max == min``) carries no ranking. :func:`min_max` returns
``constant`` for it: ``0.0`` by default (segmentation, figures and explanations show an empty map), or
``nan`` where the reference's ``(m - min) / (max - min)`` semantics are reproduced (the perturbation
test's stored heatmaps, REFERENCE §8 item 19). A map that already holds NaN stays all NaN; callers count
and handle it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaibench.core.types import Attribution


def upsample(maps: torch.Tensor, level: str, image_size: tuple[int, int]) -> torch.Tensor:
    """Token maps ``[B, gh, gw]`` upsampled bilinearly to ``image_size`` (``align_corners=False``, no
    antialias: the reference's ``F.interpolate(scale_factor=16)`` for ViT-B/16); pixel maps ``[B, H, W]``
    checked against ``image_size`` and returned as they are.

    Raises:
        ValueError: not ``[B, h, w]``, pixel maps of another size, or an unknown ``level``.
    """
    if maps.dim() != 3:
        raise ValueError(
            f"image attribution maps must be [B, gh, gw] (tokens) or [B, H, W] (pixels); got shape "
            f"{tuple(maps.shape)} at level {level!r}"
        )
    height, width = (int(v) for v in image_size)
    if level == "tokens":
        return F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    if level == "pixels":
        if tuple(maps.shape[-2:]) != (height, width):
            raise ValueError(f"pixel-level maps are {tuple(maps.shape[-2:])} but the images are {(height, width)}")
        return maps
    raise ValueError(f"unknown attribution level {level!r}; supported: 'tokens', 'pixels'")


def min_max(maps: torch.Tensor, constant: float = 0.0) -> torch.Tensor:
    """``(m - min) / (max - min)`` per sample over all but the first dimension; ``constant`` where a
    sample's map is constant; all NaN where it holds NaN (see the module's constant-map policy)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), constant)
    scaled = torch.where(flat.isnan().any(dim=1, keepdim=True), torch.nan, scaled)
    return scaled.reshape(maps.shape)


def pixel_heatmaps(attribution: Attribution, image_size: tuple[int, int], constant: float = 0.0) -> torch.Tensor:
    """:func:`upsample` then :func:`min_max` of an attribution's maps.

    The reference min-max scales over the whole batch tensor at batch size 1; we scale per sample.

    Returns:
        ``[B, H, W]`` in the attribution's dtype (float64 for integer maps), on the maps' device.
    """
    maps = attribution.maps
    if not maps.is_floating_point():
        maps = maps.double()
    return min_max(upsample(maps, attribution.level, image_size), constant)
