"""synthetic_shapes: deterministic, masks are exactly the evidence, any split gives the same samples."""

from __future__ import annotations

import pytest
import torch

from xaibench.datasets.synthetic import CLASSES, SyntheticShapes


def test_samples_are_deterministic_and_well_formed() -> None:
    a, b = SyntheticShapes(size=12, image_size=40, seed=5), SyntheticShapes(size=12, image_size=40, seed=5)
    labels = set()
    for i in range(12):
        s, t = a[i], b[i]
        assert torch.equal(s.image, t.image) and torch.equal(s.mask, t.mask) and s.id == t.id
        assert s.image.shape == (3, 40, 40) and s.image.dtype == torch.float32
        assert 0 <= float(s.image.min()) and float(s.image.max()) <= 1
        assert s.mask.shape == (40, 40) and set(s.mask.unique().tolist()) == {0, 1}
        assert 0.02 < float(s.mask.float().mean()) < 0.5
        labels.add(s.label)
    assert labels <= set(range(len(CLASSES))) and len(labels) > 1


def test_offset_gives_the_same_samples_as_a_longer_set() -> None:
    long, tail = SyntheticShapes(size=10, image_size=32), SyntheticShapes(size=4, image_size=32, offset=6)
    for i in range(4):
        assert torch.equal(long[6 + i].image, tail[i].image) and long[6 + i].id == tail[i].id


def test_the_shape_is_visible_in_the_mask() -> None:
    """The masked pixels differ from the background: the mask marks real evidence."""
    s = SyntheticShapes(size=1, image_size=64, seed=1)[0]
    inside = s.image[:, s.mask.bool()].mean(dim=1)
    outside = s.image[:, ~s.mask.bool()].mean(dim=1)
    assert float((inside - outside).abs().max()) > 0.2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size >= 1"):
        SyntheticShapes(size=0)
    with pytest.raises(IndexError):
        SyntheticShapes(size=2)[2]
