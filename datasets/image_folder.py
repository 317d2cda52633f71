"""``image_folder``: any folder of class folders of images (torchvision ``ImageFolder`` layout).

``root/<class>/<image>``: one sub-folder per class, labels are the class folders' indices in sorted
order (torchvision's rule), images anywhere below their class folder. Used to fit linear probes
(``xaibench-train-probe``) and to evaluate on one's own labelled images. No ground-truth masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from xaibench.core.types import DatasetAdapter, Sample

#: file suffixes read as images (lower case), as torchvision's ``IMG_EXTENSIONS``
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: images with a side shorter than this are refused: upsampling a thumbnail to 224 px makes a blur whose
#: attribution maps say nothing (ImageNet's smallest validation images are tens of pixels on a side)
MIN_IMAGE_SIDE = 8


def to_uint8(values: np.ndarray, source: str) -> np.ndarray:
    """Pixel values of any supported sample type as ``uint8``, scaled by the type's range and rounded.

    ``uint8`` is returned as it is; ``uint16`` (16-bit PNG/PGM/TIFF, MATLAB ``uint16``) is divided by 257
    (``65535 -> 255``); floating-point values must lie in ``[0, 1]`` and are multiplied by 255. The
    8-bit result is what every loader resizes (PIL's 8-bit bilinear, as torchvision's ``Resize`` on the
    reference's images), so a high-bit-depth image keeps its full range at 8-bit precision.

    Args:
        values: pixel array of any shape.
        source: what the values are, for the error message (e.g. ``"image /path/x.png"``).

    Raises:
        ValueError: floats outside ``[0, 1]`` or not finite, or another sample type (signed, 32-bit, bool).
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if values.dtype.kind == "f":
        finite = bool(np.isfinite(values).all())
        lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if values.size else (0.0, 0.0)
        if not finite or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{source} holds floating-point pixel values from {lo:g} to {hi:g}"
                + ("" if finite else " (and NaN or infinite ones)")
                + "; expected values in [0, 1] (or 8- or 16-bit unsigned integers)"
            )
        return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"{source} has pixel type {values.dtype}; expected uint8, uint16 or floating point in [0, 1]")


def _high_bit_depth_rgb(img: Image.Image, path: Path) -> Image.Image:
    """An RGB image from a Pillow image with more than 8 bits per sample (modes ``I;16*``, ``I``, ``F``).

    Pillow's ``convert("RGB")`` clips such values at 255 instead of scaling them (a 16-bit gradient
    becomes 99.6 % white), so they are scaled here: ``I;16*`` by 65535; ``I`` (32-bit integers, how
    Pillow opens 16-bit PGM files, already scaled to 65535 from their ``maxval``) as 16-bit values;
    ``F`` must lie in ``[0, 1]``. 16-bit RGB(A) files need none of this: Pillow decodes them to 8 bits.
    """
    values = np.asarray(img)
    if img.mode == "I":
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"image {path} is a 32-bit integer image (mode I) with values {lo} to {hi}; expected samples "
                "from 0 to 65535 (8- or 16-bit images)"
            )
        values = values.astype(np.uint16)
    elif img.mode.startswith("I;16"):
        values = values.astype(np.uint16)  # big-/little-endian containers alike
    return Image.fromarray(to_uint8(values, f"image {path}"), mode="L").convert("RGB")


#: Pillow modes with more than 8 bits per sample (greyscale); see :func:`_high_bit_depth_rgb`
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def open_rgb(path: str | Path, min_side: int = MIN_IMAGE_SIDE) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image.

    Grayscale, palette, CMYK and RGBA are converted as Pillow (and torchvision's loaders) do.
    High-bit-depth files are scaled to 8 bits over their full range: 16-bit greyscale (modes ``I;16``,
    ``I``) by ``65535 -> 255``, 32-bit float (mode ``F``) from ``[0, 1]``; 16-bit RGB is reduced to 8 bits
    by Pillow's decoder (its high byte).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a decodable image (truncated, not an image, unsupported format), is
            smaller than ``min_side`` pixels on a side, or holds values outside its type's range (a 32-bit
            integer image beyond 16 bits, a float image outside ``[0, 1]``); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            if mode in HIGH_BIT_DEPTH_MODES:
                img.load()  # decodes the pixel data: truncation shows up here
                high = img.copy()
            else:
                high = None
                rgb = img.convert("RGB")  # decodes the pixel data: truncation shows up here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"cannot decode image {path}: {exc} (expected a complete JPEG/PNG/... file; the file may be truncated "
            "or not an image)"
        ) from None
    if min(size) < min_side:
        raise ValueError(
            f"image {path} is {size[0]}x{size[1]} pixels ({mode}); images smaller than {min_side} px on a side are "
            "refused (their upsampled attribution maps carry no spatial information)"
        )
    return _high_bit_depth_rgb(high, path) if high is not None else rgb


def load_rgb(
    path: str | Path, size: int | Sequence[int], resize_mode: str = "squash", crop_pct: float = 0.875
) -> torch.Tensor:
    """Read an image as ``[3, H, W]`` float32 in ``[0, 1]``.

    Grayscale, palette, CMYK and RGBA files are converted to RGB. ``squash`` resizes to ``size``
    directly (the reference's ``Resize((224, 224))``; the whole image stays in view); ``resize_center_crop``
    resizes the short side to ``size / crop_pct`` and crops the centre (timm's evaluation transform).
    Resizing is PIL's bilinear (antialiased when shrinking), as torchvision's ``Resize`` on PIL images.

    Args:
        path: image file.
        size: ``S`` (square) or ``(H, W)``.
        resize_mode: ``squash`` or ``resize_center_crop``.
        crop_pct: fraction of the resized short side kept by ``resize_center_crop``.
    """
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if resize_mode not in ("squash", "resize_center_crop"):
        raise ValueError(f"resize_mode must be 'squash' or 'resize_center_crop', got {resize_mode!r}")
    img = open_rgb(path)
    if resize_mode == "squash":
        img = img.resize((width, height), Image.BILINEAR)
    else:
        w0, h0 = img.size
        scale = max(height, width) / crop_pct / min(w0, h0)
        new_w, new_h = max(width, round(w0 * scale)), max(height, round(h0 * scale))
        img = img.resize((new_w, new_h), Image.BILINEAR)
        top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
        img = img.crop((left, top, left + width, top + height))
    array = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class ImageFolder(DatasetAdapter):
    """Labelled images in class folders.

    Args:
        root: folder holding one sub-folder per class.
        image_size: side ``S`` (or ``[H, W]``) the images are resized to (match the model's input).
        resize_mode: ``squash`` (default) or ``resize_center_crop`` (see :func:`load_rgb`).
        crop_pct: for ``resize_center_crop``.
        classes: class folder names to use, in label order; default: every sub-folder, sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders, a requested class folder is missing, or a class holds no images.
    """

    modality = "image"
    provides = frozenset({"label"})

    def __init__(
        self,
        root: str | Path,
        image_size: int | Sequence[int] = 224,
        resize_mode: str = "squash",
        crop_pct: float = 0.875,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} not found (expected root/<class>/<image> files)")
        if resize_mode not in ("squash", "resize_center_crop"):
            raise ValueError(f"resize_mode must be 'squash' or 'resize_center_crop', got {resize_mode!r}")
        if not 0 < crop_pct <= 1 or math.isnan(crop_pct):
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.image_size = image_size if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        self.resize_mode, self.crop_pct = resize_mode, float(crop_pct)
        present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            classes = present
        missing = [c for c in classes if c not in present]
        if missing:
            raise ValueError(f"class folders {missing} not found in {self.root} (present: {present[:10]})")
        if not classes:
            raise ValueError(f"{self.root} holds no class folders (expected root/<class>/<image> files)")
        self.classes = tuple(classes)
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            files = sorted(
                p
                for p in (self.root / name).rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
            if not files:
                empty.append(name)
            self.samples.extend((p, label) for p in files)
        if empty:
            raise ValueError(
                f"class folders {empty[:10]} in {self.root} hold no images ({', '.join(IMAGE_EXTENSIONS)})"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.samples[index]
        image = load_rgb(path, self.image_size, self.resize_mode, self.crop_pct)
        return Sample(id=self.sample_id(index), label=label, image=image)

    def sample_id(self, index: int) -> str:
        return self.samples[index][0].relative_to(self.root).with_suffix("").as_posix()

    def class_names(self) -> Sequence[str]:
        return self.classes
