"""``synthetic_pairs``: two objects of two different classes per image, a pixel mask per object.

Each image holds two shapes of ``synthetic_shapes``' four classes (square, disk, triangle, cross), always
of two different classes, at random positions without overlap, on a noisy textured background (a colour
gradient, a faint random plane wave and pixel noise). Colour, size and position are drawn independently
of the class, so the shape is the only evidence of a class. The labels are the set of classes present
(multi-label), the ground truth a mask per object: a benchmark in the spirit of CLEVR-XAI (Arras, Osman &
Samek, Information Fusion 2022) and FunnyBirds (Hesse, Schaub-Meyer & Roth, ICCV 2023), whose evidence is
known by construction. With ``target=each`` every image is explained once per object, so a method that
shows the same map for both classes cannot score well (see :mod:`xaibench.metrics.class_sensitivity`).

Sample ``i`` depends only on ``(seed, offset + i)``. The background under each object is kept
(:meth:`SyntheticPairs.occluded`), so an object can be removed exactly, for the evidence tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xaibench.core.types import DatasetAdapter, Sample
from xaibench.datasets._drawing import CLASSES, paint, random_colour, shape_mask, smooth_background

__all__ = ["CLASSES", "RADIUS", "SyntheticPairs", "render_pair"]

_PLACEMENT_TRIES = 1000
_COLOUR_TRIES = 100
#: an object's colour differs from the mean background under it by at least this much in some channel
MIN_CONTRAST = 0.35
#: default object radius range, as fractions of the image side (the pairs ViT is trained on it)
RADIUS: tuple[float, float] = (0.19, 0.245)


def _textured_background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """:func:`smooth_background` plus a faint plane wave of random frequency, direction and phase."""
    s = yy.shape[0]
    img = smooth_background(rng, yy, xx)
    freq, angle, phase = rng.uniform(2.0, 6.0), rng.uniform(0.0, np.pi), rng.uniform(0.0, 2 * np.pi)
    amplitude = rng.uniform(0.02, 0.08)
    wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) / s + phase)
    return img + (amplitude * wave).astype(np.float32)


def render_pair(
    seed: int,
    index: int,
    image_size: int,
    num_objects: int = 2,
    radius: tuple[float, float] = RADIUS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render sample ``index``.

    Args:
        seed, index: the sample is a pure function of these.
        image_size: side ``S`` of the square image.
        num_objects: objects in the image, each of another class (1 to 4).
        radius: range of the object radius as a fraction of ``S``.

    Returns:
        ``(image, background, masks, classes)``: ``[3, S, S]`` float32 in [0, 1], the same image without
        the objects, ``[K, S, S]`` bool masks of the ``K`` objects (disjoint) and their ``[K]`` classes in
        increasing order.
    """
    rng = np.random.default_rng([seed, index])
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    background = _textured_background(rng, yy, xx)
    img = background.copy()
    classes = np.sort(rng.choice(len(CLASSES), size=num_objects, replace=False))
    for _ in range(_PLACEMENT_TRIES):  # the whole layout again until the bounding circles are 2 px apart
        radii = rng.uniform(*radius, size=num_objects) * s
        centres = [rng.uniform(r + 1, s - r - 1, size=2) for r in radii]
        if all(
            float(np.sum((centres[j] - centres[k]) ** 2)) > (radii[j] + radii[k] + 2) ** 2
            for j in range(num_objects)
            for k in range(j)
        ):
            break
    else:
        raise ValueError(f"cannot place {num_objects} objects of radius {radius} in a {s}x{s} image; enlarge it")
    masks = []
    for c, r, (cy, cx) in zip(classes, radii, centres, strict=True):
        mask = shape_mask(int(c), float(cy), float(cx), float(r), yy, xx)
        under = background[:, mask].mean(axis=1)
        for _ in range(_COLOUR_TRIES):  # visible: some channel differs from the background under it
            colour = random_colour(rng)
            if float(np.abs(colour - under).max()) >= MIN_CONTRAST:
                break
        paint(rng, img, mask, colour)
        masks.append(mask)
    return np.clip(img, 0.0, 1.0), np.clip(background, 0.0, 1.0), np.stack(masks), classes


class SyntheticPairs(DatasetAdapter):
    """Images with two objects of different classes, a mask per object, multi-label.

    Args:
        size: number of samples.
        image_size: side of the square images (match the model's input size).
        seed: generator seed; samples are a pure function of ``(seed, offset + index)``.
        offset: index of the first sample (disjoint train/test splits use different offsets).
        min_objects, max_objects: objects per image (the benchmark: 2 and 2; the demo model is trained on 1
            to 2). The count of sample ``i`` is ``min_objects + i mod (max_objects - min_objects + 1)``.
        radius: range of the object radius as a fraction of ``image_size``.
    """

    modality = "image"
    provides = frozenset({"labels", "mask", "class_evidence"})

    def __init__(
        self,
        size: int = 64,
        image_size: int = 64,
        seed: int = 0,
        offset: int = 0,
        min_objects: int = 2,
        max_objects: int = 2,
        radius: Sequence[float] = RADIUS,
    ) -> None:
        if size < 1 or image_size < 16:
            raise ValueError(f"synthetic_pairs needs size >= 1 and image_size >= 16, got {size}, {image_size}")
        if not 1 <= min_objects <= max_objects <= len(CLASSES):
            raise ValueError(
                f"synthetic_pairs needs 1 <= min_objects <= max_objects <= {len(CLASSES)} (one object per class), "
                f"got {min_objects}, {max_objects}"
            )
        radius = tuple(float(r) for r in radius)
        if len(radius) != 2 or not 0.0 < radius[0] <= radius[1] < 0.25:
            raise ValueError(
                f"radius must be (low, high) fractions of the image side with 0 < low <= high < 0.25, got {radius}"
            )
        self.size, self.image_size, self.seed, self.offset = int(size), int(image_size), int(seed), int(offset)
        self.min_objects, self.max_objects, self.radius = int(min_objects), int(max_objects), radius

    def __len__(self) -> int:
        return self.size

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        i = self.offset + index
        count = self.min_objects + i % (self.max_objects - self.min_objects + 1)
        return render_pair(self.seed, i, self.image_size, count, self.radius)

    def sample_id(self, index: int) -> str:
        return f"pair_{self.offset + index:06d}"

    def __getitem__(self, index: int) -> Sample:
        image, _, masks, classes = self._render(index)
        labels = tuple(int(c) for c in classes)
        return Sample(
            id=self.sample_id(index),
            label=labels[0] if len(labels) == 1 else -1,
            image=torch.from_numpy(image),
            mask=torch.from_numpy(masks.any(axis=0).astype(np.int64)),
            labels=labels,
            class_masks=torch.from_numpy(masks.astype(np.int64)),
        )

    def occluded(self, index: int, cls: int) -> torch.Tensor:
        """Image ``index`` with the object of class ``cls`` filled with the background under it: ``[3, S, S]``.

        Raises:
            ValueError: no object of class ``cls`` in the image.
        """
        image, background, masks, classes = self._render(index)
        where = np.flatnonzero(classes == cls)
        if not where.size:
            raise ValueError(f"sample {self.sample_id(index)} has no object of class {cls} (it has {classes.tolist()})")
        mask = masks[where[0]]
        image = image.copy()
        image[:, mask] = background[:, mask]
        return torch.from_numpy(image)

    @property
    def name(self) -> str:
        return "synthetic_pairs"

    def class_names(self) -> Sequence[str]:
        return CLASSES

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``[N, 3, S, S]`` and multi-hot targets ``[N, C]`` float32 (for training small models)."""
        images, targets = [], torch.zeros(self.size, len(CLASSES))
        for i in range(self.size):
            image, _, _, classes = self._render(i)
            images.append(torch.from_numpy(image))
            targets[i, torch.from_numpy(classes)] = 1.0
        return torch.stack(images), targets
