"""synthetic_pairs: deterministic bytes, two disjoint objects of different classes, exact occlusion."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from xaibench.datasets.synthetic_pairs import CLASSES, SyntheticPairs, render_pair


def _digest(data: SyntheticPairs) -> str:
    h = hashlib.sha256()
    for i in range(len(data)):
        s = data[i]
        for t in (s.image, s.mask, s.class_masks):
            h.update(t.numpy().tobytes())
        h.update(repr((s.id, s.label, s.labels)).encode())
    return h.hexdigest()


def test_same_bytes_twice_and_seed_matters() -> None:
    assert _digest(SyntheticPairs(size=16, image_size=48, seed=3)) == _digest(
        SyntheticPairs(size=16, image_size=48, seed=3)
    )
    assert _digest(SyntheticPairs(size=16, image_size=48, seed=3)) != _digest(
        SyntheticPairs(size=16, image_size=48, seed=4)
    )


def test_offset_gives_the_same_samples_as_a_longer_set() -> None:
    long, tail = SyntheticPairs(size=10, image_size=48), SyntheticPairs(size=4, image_size=48, offset=6)
    for i in range(4):
        assert torch.equal(long[6 + i].image, tail[i].image) and long[6 + i].id == tail[i].id


def test_two_disjoint_objects_of_different_classes() -> None:
    data = SyntheticPairs(size=40, image_size=64, seed=1)
    seen = set()
    for i in range(len(data)):
        s = data[i]
        assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.float32
        assert 0 <= float(s.image.min()) and float(s.image.max()) <= 1
        assert s.label == -1 and len(s.labels) == 2 and s.labels[0] < s.labels[1]
        assert set(s.labels) <= set(range(len(CLASSES)))
        assert s.class_masks.shape == (2, 64, 64) and s.class_masks.dtype == torch.int64
        a, b = s.class_masks.bool()
        assert a.any() and b.any() and not (a & b).any()  # no overlap
        assert torch.equal(s.mask.bool(), a | b)
        for m in (a, b):  # each object differs from the background around it: the mask is real evidence
            inside = s.image[:, m].mean(dim=1)
            outside = s.image[:, ~(a | b)].mean(dim=1)
            assert float((inside - outside).abs().max()) > 0.1
        seen.update(s.labels)
    assert seen == set(range(len(CLASSES)))


def test_class_is_independent_of_size_and_position() -> None:
    """Colour, size and position are drawn after and apart from the class: their means per class agree."""
    data = SyntheticPairs(size=300, image_size=64, seed=2)
    area = {c: [] for c in range(len(CLASSES))}
    column = {c: [] for c in range(len(CLASSES))}
    for i in range(len(data)):
        s = data[i]
        for c, m in zip(s.labels, s.class_masks, strict=True):
            xs = torch.nonzero(m)[:, 1].float()  # every shape is left-right symmetric about its centre
            area[c].append(float(m.sum()) / {0: 2.89, 1: 3.14, 2: 1.944, 3: 2.31}[c])  # area / shape factor ~ r^2
            column[c].append(float(xs.mean()))
    radius2 = [np.mean(v) for v in area.values()]
    centre = [np.mean(v) for v in column.values()]
    assert max(radius2) / min(radius2) < 1.25
    assert max(centre) - min(centre) < 4.0


def test_one_or_two_objects_for_training() -> None:
    data = SyntheticPairs(size=6, image_size=48, min_objects=1, max_objects=2)
    counts = [len(data[i].labels) for i in range(6)]
    assert counts == [1, 2, 1, 2, 1, 2]
    single = data[0]
    assert single.label == single.labels[0] >= 0
    images, targets = data.arrays()
    assert images.shape == (6, 3, 48, 48) and targets.shape == (6, len(CLASSES))
    assert targets.sum(dim=1).tolist() == [float(c) for c in counts]


def test_occlusion_fills_exactly_the_object_with_background() -> None:
    data = SyntheticPairs(size=3, image_size=64, seed=5)
    s = data[1]
    image, background, masks, classes = render_pair(5, 1, 64, 2)
    for k, c in enumerate(s.labels):
        occ = data.occluded(1, c)
        m = torch.from_numpy(masks[k])
        assert torch.equal(occ[:, m], torch.from_numpy(background)[:, m])
        assert torch.equal(occ[:, ~m], s.image[:, ~m])
    missing = next(c for c in range(len(CLASSES)) if c not in s.labels)
    with pytest.raises(ValueError, match="no object of class"):
        data.occluded(1, missing)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size >= 1"):
        SyntheticPairs(size=0)
    with pytest.raises(ValueError, match="image_size >= 16"):
        SyntheticPairs(image_size=8)
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticPairs(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticPairs(max_objects=5)
    with pytest.raises(ValueError, match="radius"):
        SyntheticPairs(radius=(0.2, 0.1))
    with pytest.raises(IndexError):
        SyntheticPairs(size=2)[2]
