"""ImageNet-segmentation (Guillaumin et al., IJCV 2014) from ``gtsegs_ijcv.mat``.

The file is MATLAB v7.3 (HDF5): ``/value/img`` and ``/value/gt`` hold object references per image
(REFERENCE §4). It is read lazily: only the index is touched at start-up, each image is read when asked
for, and each DataLoader worker opens its own handle. Preprocessing is the reference's: image
``Resize((S, S))`` PIL bilinear, no crop; mask ``Resize((S, S))`` nearest.

Checks: the layout (references, cell level) is verified on opening, so another file says which layout is
expected; each image's mask must be the image's size and hold only 0 and 1, otherwise reading that image
raises a ``ValueError`` naming its index (a recorded skip under ``on_error=skip``). Images stored as
``uint16`` or floats in ``[0, 1]`` are scaled to 8 bits (:func:`~xaibench.datasets.image_folder.to_uint8`),
never wrapped modulo 256.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xaibench.core.types import DatasetAdapter, RequiredAsset, Sample, path_asset
from xaibench.datasets.image_folder import to_uint8


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


#: the layout of ``gtsegs_ijcv.mat`` (MATLAB v7.3 cell arrays), as error messages state it
LAYOUT = (
    "/value/img and /value/gt of shape (N, 1) holding object references: /value/img[i, 0] -> the (3, W, H) "
    "image, /value/gt[i, 0] -> a 1x1 cell -> the (W, H) 0/1 mask"
)


def _describe(obj) -> str:
    """``a (3, 20, 16) uint8 dataset``, ``an object reference dataset``, ``a group`` (for layout errors)."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        return f"a {type(obj).__name__.lower()}"
    kind = "object reference" if h5py.check_dtype(ref=obj.dtype) is not None else str(obj.dtype)
    return f"a {obj.shape} {kind} dataset"


def _is_refs(obj, shape: tuple[int, ...] | None = None) -> bool:
    import h5py

    ok = isinstance(obj, h5py.Dataset) and h5py.check_dtype(ref=obj.dtype) is not None
    return ok and obj.ndim == 2 and (obj.shape[1] == 1 if shape is None else obj.shape == shape)


class _LayoutError(ValueError):
    """The file is HDF5 but not laid out as ``gtsegs_ijcv.mat``."""


class ImageNetSegmentation(DatasetAdapter):
    """Images and foreground masks of ``gtsegs_ijcv.mat``.

    Args:
        path: the ``.mat`` file.
        image_size: side ``S`` images and masks are resized to (the model's input size).
    """

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        hint = "fetch it with `make data` (or `xaibench-data imagenet_seg`)"
        return path_asset("ImageNet-segmentation (gtsegs_ijcv.mat)", config.get("path"), hint)

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
            for name in ("img", "gt"):
                if not _is_refs(f["value"][name]):
                    raise ValueError(
                        f"{self.path}: /value/{name} is {_describe(f['value'][name])}; expected the "
                        f"gtsegs_ijcv.mat layout: {LAYOUT}"
                    )
            self._len = int(f["/value/img"].shape[0])
            if int(f["/value/gt"].shape[0]) != self._len:
                raise ValueError(f"{self.path}: {self._len} images but {f['/value/gt'].shape[0]} masks")
            if self._len:  # the reference chain of the first image, checked before any compute
                try:
                    self._entry(f, 0)
                except _LayoutError:
                    raise
                except (KeyError, OSError, ValueError, TypeError) as exc:
                    raise ValueError(f"{self.path}: image 0 is unreadable ({exc}); the file may be truncated") from None
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

    def _entry(self, f, index: int):
        """The image and mask datasets of image ``index``, following the layout's references.

        Raises:
            ValueError: a reference leads somewhere other than the layout says (the layout is named).
        """
        import h5py

        def layout_error(what: str) -> ValueError:
            return _LayoutError(f"{self.path}: image {index}: {what}; expected the gtsegs_ijcv.mat layout: {LAYOUT}")

        image = f[f["/value/img"][index, 0]]
        if not isinstance(image, h5py.Dataset) or h5py.check_dtype(ref=image.dtype) is not None:
            raise layout_error(f"/value/img leads to {_describe(image)} where an image was expected")
        cell = f[f["/value/gt"][index, 0]]
        if not _is_refs(cell, (1, 1)):
            raise layout_error(f"/value/gt leads to {_describe(cell)} where a 1x1 cell of references was expected")
        mask = f[cell[0, 0]]
        if not isinstance(mask, h5py.Dataset) or h5py.check_dtype(ref=mask.dtype) is not None:
            raise layout_error(f"the mask cell leads to {_describe(mask)} where a mask was expected")
        return image, mask

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} images")
        f = self._h5()
        try:
            image_data, mask_data = self._entry(f, index)
            raw = np.asarray(image_data)  # (3, W, H)
            gt = np.asarray(mask_data)  # (W, H)
        except _LayoutError:
            raise
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.path}: image {index} is unreadable ({exc}); the file may be truncated") from None
        if raw.ndim != 3 or raw.shape[0] != 3:
            raise ValueError(f"{self.path}: image {index} has shape {raw.shape}, expected (3, W, H)")
        self._check_mask(index, raw, gt)
        size = (self.image_size, self.image_size)
        pixels8 = to_uint8(raw, f"{self.path}: image {index}")
        image = Image.fromarray(np.ascontiguousarray(pixels8.transpose(2, 1, 0))).convert("RGB")
        image = image.resize(size, Image.BILINEAR)
        mask = Image.fromarray(np.ascontiguousarray(gt.transpose(1, 0)).astype(np.uint8)).resize(size, Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
        return Sample(id=self.sample_id(index), image=pixels, mask=torch.from_numpy(np.asarray(mask).astype(np.int64)))

    def _check_mask(self, index: int, raw: np.ndarray, gt: np.ndarray) -> None:
        """A mask must be ``(W, H)`` like its ``(3, W, H)`` image and hold only 0 (background) and 1
        (foreground): anything else would be scored silently against the wrong pixels or classes."""
        if gt.ndim != 2:
            raise ValueError(f"{self.path}: image {index}: its mask has shape {gt.shape}, expected (W, H)")
        if gt.shape != raw.shape[1:]:
            raise ValueError(
                f"{self.path}: image {index} is {raw.shape[1]}x{raw.shape[2]} pixels but its mask "
                f"{gt.shape[0]}x{gt.shape[1]} (width x height); expected a mask of the image's size"
            )
        values = np.unique(gt)
        if not np.isin(values, (0, 1)).all():
            shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:6].tolist())
            more = f", ... ({values.size} distinct)" if values.size > 6 else ""
            raise ValueError(
                f"{self.path}: image {index}: its mask holds the values [{shown}{more}]; expected 0/1 "
                "(background/foreground)"
            )

    def sample_id(self, index: int) -> str:
        return f"seg_{index:05d}"
