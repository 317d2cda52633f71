"""ImageNet-segmentation reader: the golden file's layout, lazy reading, and clear errors for bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from helpers import golden_dir
from xaibench.datasets.imagenet_seg import ImageNetSegmentation


def test_reads_the_gtsegs_layout() -> None:
    ds = ImageNetSegmentation(str(golden_dir() / "synthetic_gtsegs.mat"), image_size=224)
    assert len(ds) == 6
    s = ds[0]
    assert s.image.shape == (3, 224, 224) and s.image.dtype == torch.float32
    assert 0 <= float(s.image.min()) and float(s.image.max()) <= 1
    assert s.mask.shape == (224, 224) and set(s.mask.unique().tolist()) <= {0, 1}
    small = ImageNetSegmentation(str(golden_dir() / "synthetic_gtsegs.mat"), image_size=64)[0]
    assert small.image.shape == (3, 64, 64) and small.mask.shape == (64, 64)


def test_orientation_matches_the_reference(tmp_path) -> None:
    """A non-square image stored (3, W, H) comes out H×W with the mask aligned to it."""
    h, w = 6, 10
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:3, :, 0] = 255  # top half red
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[:3] = 1
    path = tmp_path / "one.mat"
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        d_img = refs.create_dataset("a", data=img.transpose(2, 1, 0))
        d_gt = refs.create_dataset("b", data=mask.transpose(1, 0))
        inner = refs.create_dataset("c", data=np.array([[d_gt.ref]], dtype=h5py.ref_dtype))
        f.create_dataset("value/img", data=np.array([[d_img.ref]], dtype=h5py.ref_dtype))
        f.create_dataset("value/gt", data=np.array([[inner.ref]], dtype=h5py.ref_dtype))
    s = ImageNetSegmentation(str(path), image_size=20)[0]
    assert float(s.image[0, :5].mean()) > 0.9 and float(s.image[0, 15:].mean()) < 0.1
    assert s.mask[:5].all() and not s.mask[15:].any()


def test_bad_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="make data"):
        ImageNetSegmentation(str(tmp_path / "missing.mat"))
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" * 10)
    with pytest.raises(ValueError, match="not a readable MATLAB v7.3"):
        ImageNetSegmentation(str(junk))
    wrong = tmp_path / "wrong.mat"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(ValueError, match="no /value/img"):
        ImageNetSegmentation(str(wrong))
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes((golden_dir() / "synthetic_gtsegs.mat").read_bytes()[:4000])
    with pytest.raises(ValueError):
        ds = ImageNetSegmentation(str(truncated))
        ds[len(ds) - 1]
