"""Drawing shared by the generated image sets (``synthetic_shapes``, ``synthetic_pairs``).

The four shape classes, their pixel masks, the noisy background and the paint of a shape. Every function
draws from the caller's ``numpy`` generator in a fixed order, so a sample stays a pure function of its
seed and index.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = ("square", "disk", "triangle", "cross")


def shape_mask(kind: int, cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Pixels of shape ``kind`` (index into :data:`CLASSES`) of radius ``r`` centred at ``(cy, cx)``.

    Args:
        kind: 0 square, 1 disk, 2 upward triangle, 3 cross.
        cy, cx: centre in pixels.
        r: radius in pixels (half the side of the bounding box).
        yy, xx: ``[S, S]`` pixel coordinates (``np.mgrid``).

    Returns:
        ``[S, S]`` bool mask.
    """
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # axis-aligned square
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == 1:  # disk
        return dy**2 + dx**2 <= r**2
    if kind == 2:  # upward triangle
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    # cross: two bars
    w = r * 0.35
    return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))


def smooth_background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random low-frequency colour gradient plus pixel noise: ``[3, S, S]`` float32 (not clipped)."""
    s = yy.shape[0]
    base = rng.uniform(0.15, 0.55, size=(3, 1, 1)).astype(np.float32)
    grad = rng.uniform(-0.2, 0.2, size=(3, 2)).astype(np.float32)
    img = base + grad[:, :1, None] * (yy / s - 0.5) + grad[:, 1:, None] * (xx / s - 0.5)
    return img + rng.normal(0.0, 0.06, size=(3, s, s)).astype(np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated colour ``[3]`` float32: two channels in [0.6, 1], one dimmed to 30 % of that."""
    colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    colour[rng.integers(3)] *= 0.3  # saturated, never grey, so it stands out from the background
    return colour


def paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, colour: np.ndarray | None = None) -> None:
    """Fill ``mask`` of ``img`` ``[3, S, S]`` in place with ``colour`` (default: :func:`random_colour`) plus a
    little noise."""
    if colour is None:
        colour = random_colour(rng)
    img[:, mask] = colour[:, None] + rng.normal(0.0, 0.03, size=(3, int(mask.sum()))).astype(np.float32)
