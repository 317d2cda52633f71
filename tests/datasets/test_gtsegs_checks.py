"""``gtsegs_ijcv.mat`` masks and layout are checked (issue 19, items 3 and 9): a mask that is not 0/1 or not
the size of its image is a clear error naming the image index (the loop turns it into a recorded skip under
``on_error=skip``, see tests/bench/test_bad_inputs.py), and a file of another layout says which layout is
expected instead of "the file may be truncated"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from xaibench.datasets.imagenet_seg import ImageNetSegmentation

W, H = 20, 16


def good_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image ``(3, W, H)`` uint8 and its 0/1 mask ``(W, H)``, as MATLAB v7.3 stores them."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((W, H), dtype=np.uint8)
    mask[5:15, 4:12] = 1
    return rng.integers(0, 256, (3, W, H), dtype=np.uint8), mask


def write_gtsegs(path: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """The gtsegs layout: ``/value/img[i, 0]`` -> image, ``/value/gt[i, 0]`` -> 1×1 cell -> mask."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs, gt_refs = [], []
        for k, (img, mask) in enumerate(pairs):
            d_img = refs.create_dataset(f"img{k}", data=img)
            d_gt = refs.create_dataset(f"gt{k}", data=mask)
            cell = refs.create_dataset(f"cell{k}", data=np.array([[d_gt.ref]], dtype=h5py.ref_dtype))
            img_refs.append([d_img.ref])
            gt_refs.append([cell.ref])
        f.create_dataset("value/img", data=np.array(img_refs, dtype=h5py.ref_dtype))
        f.create_dataset("value/gt", data=np.array(gt_refs, dtype=h5py.ref_dtype))
    return path


def with_bad_second(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Path:
    pairs = [good_pair(k) for k in range(3)]
    pairs[1] = change(*pairs[1])
    return write_gtsegs(path, pairs)


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("mask 0/255", lambda i, m: (i, m * 255), r"image 1: its mask holds the values \[0, 255\]; expected 0/1"),
        ("mask labels", lambda i, m: (i, m * 2 + (m == 0) * 3), r"image 1: its mask holds the values \[2, 3\]"),
        ("mask soft", lambda i, m: (i, m.astype(np.float64) * 0.5), r"image 1: its mask holds the values \[0, 0.5\]"),
        (
            "mask taller",
            lambda i, m: (i, np.zeros((W, H + 4), np.uint8)),
            r"image 1 is 20x16 pixels but its mask 20x20",
        ),
        ("mask transposed", lambda i, m: (i, m.T.copy()), r"image 1 is 20x16 pixels but its mask 16x20"),
        (
            "mask 3-D",
            lambda i, m: (i, np.stack([m, m])),
            r"image 1: its mask has shape \(2, 20, 16\), expected \(W, H\)",
        ),
    ],
)
def test_bad_masks_name_the_image(name: str, change, message: str, tmp_path: Path) -> None:
    ds = ImageNetSegmentation(str(with_bad_second(tmp_path / "m.mat", change)), image_size=32)
    assert ds[0].mask.shape == (32, 32) and ds[2].mask.unique().tolist() == [0, 1]
    with pytest.raises(ValueError, match=message) as info:
        ds[1]
    assert str(tmp_path / "m.mat") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.bool_])
def test_zero_one_masks_of_any_type_are_accepted(dtype, tmp_path: Path) -> None:
    path = with_bad_second(tmp_path / "m.mat", lambda i, m: (i, m.astype(dtype)))
    assert ImageNetSegmentation(str(path), 32)[1].mask.unique().tolist() == [0, 1]


def _plain_arrays(path: Path) -> None:
    """``/value/img`` and ``/value/gt`` hold the pixels themselves, not references (a re-saved copy)."""
    img, mask = good_pair(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("value/img", data=img[None])
        f.create_dataset("value/gt", data=mask[None])


def _gt_without_cell(path: Path) -> None:
    """``/value/gt`` points at the masks directly (MATLAB cell level missing)."""
    img, mask = good_pair(0)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        d_img, d_gt = refs.create_dataset("img", data=img), refs.create_dataset("gt", data=mask)
        f.create_dataset("value/img", data=np.array([[d_img.ref]], dtype=h5py.ref_dtype))
        f.create_dataset("value/gt", data=np.array([[d_gt.ref]], dtype=h5py.ref_dtype))


def _row_vectors(path: Path) -> None:
    """``/value/img`` and ``/value/gt`` of shape (1, N) instead of (N, 1)."""
    write_gtsegs(path, [good_pair(k) for k in range(2)])
    with h5py.File(path, "r+") as f:
        for name in ("img", "gt"):
            refs = f[f"value/{name}"][()]
            del f[f"value/{name}"]
            f.create_dataset(f"value/{name}", data=refs.T)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_plain_arrays, r"/value/img is a \(1, 3, 20, 16\) uint8 dataset"),
        (_gt_without_cell, r"image 0: /value/gt leads to a \(20, 16\) uint8 dataset where a 1x1 cell"),
        (_row_vectors, r"/value/img is a \(1, 2\) object reference dataset"),
    ],
)
def test_another_layout_says_which_layout_is_expected(build, message: str, tmp_path: Path) -> None:
    path = tmp_path / "layout.mat"
    build(path)
    with pytest.raises(ValueError, match=message) as info:
        ImageNetSegmentation(str(path))  # before any image is read
    text = str(info.value)
    assert "expected the gtsegs_ijcv.mat layout" in text and "truncated" not in text and "\n" not in text
