"""ImageNet-segmentation (Guillaumin et al., IJCV 2014) from ``gtsegs_ijcv.mat``.

The file is MATLAB v7.3 (HDF5): ``/value/img`` and ``/value/gt`` hold object references per image
(REFERENCE §4). It is read lazily: only the index is touched at start-up, each image is read when asked
for, and each DataLoader worker opens its own handle. Preprocessing is the reference's: image
``Resize((S, S))`` PIL bilinear, no crop; mask ``Resize((S, S))`` nearest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xaibench.types import DatasetAdapter, Sample


def _open_h5(path: Path):
    import h5py

    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet-segmentation file {path} not found; fetch gtsegs_ijcv.mat with `make data` or set dataset.path"
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(
            f"{path} is not a readable MATLAB v7.3 (HDF5) file ({exc}); expected gtsegs_ijcv.mat — "
            "re-download it (`make data`)"
        ) from None


class ImageNetSegmentation(DatasetAdapter):
    """Images and foreground masks of ``gtsegs_ijcv.mat``.

    Args:
        path: the ``.mat`` file.
        image_size: side ``S`` images and masks are resized to (the model's input size).
    """

    modality = "image"
    provides = frozenset({"mask"})

    def __init__(self, path: str, image_size: int = 224) -> None:
        self.path = Path(path)
        self.image_size = int(image_size)
        with _open_h5(self.path) as f:
            if "value" not in f or "img" not in f["value"] or "gt" not in f["value"]:
                raise ValueError(
                    f"{self.path} has no /value/img and /value/gt datasets (found top-level keys "
                    f"{sorted(f.keys())}); expected the gtsegs_ijcv.mat layout"
                )
            self._len = int(f["/value/img"].shape[0])
            if int(f["/value/gt"].shape[0]) != self._len:
                raise ValueError(f"{self.path}: {self._len} images but {f['/value/gt'].shape[0]} masks")
        self._file = None
        self._pid = None

    def _h5(self):
        # one handle per process: h5py handles must not cross a fork into DataLoader workers
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = _open_h5(self.path), os.getpid()
        return self._file

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} images")
        f = self._h5()
        try:
            raw = np.asarray(f[f["/value/img"][index, 0]])  # (3, W, H) uint8
            gt = np.asarray(f[f[f["/value/gt"][index, 0]][0, 0]])  # (W, H)
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.path}: image {index} is unreadable ({exc}); the file may be truncated") from None
        if raw.ndim != 3 or raw.shape[0] != 3:
            raise ValueError(f"{self.path}: image {index} has shape {raw.shape}, expected (3, W, H)")
        size = (self.image_size, self.image_size)
        image = Image.fromarray(np.ascontiguousarray(raw.transpose(2, 1, 0)).astype(np.uint8)).convert("RGB")
        image = image.resize(size, Image.BILINEAR)
        mask = Image.fromarray(np.ascontiguousarray(gt.transpose(1, 0)).astype(np.uint8)).resize(size, Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
        return Sample(id=self.sample_id(index), image=pixels, mask=torch.from_numpy(np.asarray(mask).astype(np.int64)))

    def sample_id(self, index: int) -> str:
        return f"seg_{index:05d}"
