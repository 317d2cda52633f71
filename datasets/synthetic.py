"""``synthetic_shapes``: generated images whose class evidence is known pixel for pixel.

Each image shows one shape (square, disk, triangle or cross: the class) in a random colour, size and
position on a smooth, noisy background. The mask is exactly the shape's pixels, so a segmentation
benchmark runs offline with a ground truth no annotator disagrees with. Sample ``i`` depends only on
``(seed, i)``: any subset, order or worker split gives the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xaibench.core.types import DatasetAdapter, Sample
from xaibench.datasets._drawing import CLASSES, paint, shape_mask, smooth_background

__all__ = ["CLASSES", "SyntheticShapes", "render_shape"]


def render_shape(seed: int, index: int, image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Render sample ``index``: ``(image [3, S, S] float32 in [0,1], mask [S, S] int64, label)``."""
    rng = np.random.default_rng([seed, index])
    s = image_size
    label = int(rng.integers(len(CLASSES)))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    img = smooth_background(rng, yy, xx)
    r = float(rng.uniform(0.16, 0.28)) * s
    cy, cx = (float(v) for v in rng.uniform(r + 1, s - r - 1, size=2))
    mask = shape_mask(label, cy, cx, r, yy, xx)
    paint(rng, img, mask)
    return np.clip(img, 0.0, 1.0), mask.astype(np.int64), label


class SyntheticShapes(DatasetAdapter):
    """Generated shapes with pixel masks of the evidence.

    Args:
        size: number of samples.
        image_size: side of the square images (match the model's input size).
        seed: generator seed; samples are a pure function of ``(seed, index)``.
        offset: index of the first sample (disjoint train/test splits use different offsets).
    """

    modality = "image"
    provides = frozenset({"label", "mask"})

    def __init__(self, size: int = 200, image_size: int = 64, seed: int = 0, offset: int = 0) -> None:
        if size < 1 or image_size < 8:
            raise ValueError(f"synthetic_shapes needs size >= 1 and image_size >= 8, got {size}, {image_size}")
        self.size, self.image_size, self.seed, self.offset = int(size), int(image_size), int(seed), int(offset)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        i = self.offset + index
        image, mask, label = render_shape(self.seed, i, self.image_size)
        return Sample(id=f"shape_{i:06d}", label=label, image=torch.from_numpy(image), mask=torch.from_numpy(mask))

    def class_names(self) -> Sequence[str]:
        return CLASSES

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``[N, 3, S, S]`` and labels ``[N]`` at once (for training small models)."""
        items = [self[i] for i in range(len(self))]
        return torch.stack([s.image for s in items]), torch.tensor([s.label for s in items])
