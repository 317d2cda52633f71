"""Turning an attribution into the pixel heatmap the image metrics read (REFERENCE §3.1 post-processing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaibench.types import Attribution


def pixel_heatmaps(attribution: Attribution, image_size: tuple[int, int]) -> torch.Tensor:
    """Upsample token maps to the image and min-max scale each sample to [0, 1].

    Token maps ``[B, gh, gw]`` are upsampled bilinearly (``align_corners=False``, no antialias: the
    reference's ``F.interpolate(scale_factor=16)`` for ViT-B/16) to ``image_size``; pixel maps
    ``[B, H, W]`` are used as they are. The reference min-max scales over the whole batch tensor at batch
    size 1; we scale per sample. A constant map becomes all zeros, and a map with NaN is returned as all
    NaN (callers count and handle it).

    Returns:
        ``[B, H, W]`` in the attribution's dtype.
    """
    maps = attribution.maps
    if attribution.level == "tokens":
        if maps.dim() != 3:
            raise ValueError(f"image token maps must be [B, gh, gw], got shape {tuple(maps.shape)}")
        maps = F.interpolate(maps[:, None], size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]
    elif tuple(maps.shape[-2:]) != tuple(image_size):
        raise ValueError(f"pixel maps are {tuple(maps.shape[-2:])}, images are {tuple(image_size)}")
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    scaled = torch.where(flat.isnan().any(dim=1, keepdim=True), torch.nan, scaled)
    return scaled.reshape(maps.shape)
