"""High-bit-depth images (16-bit PNG/PGM/TIFF, 32-bit float TIFF) load scaled to [0, 1] wherever images are
read (issue 19, item 3): a 16-bit gradient spans the range instead of loading 99.6 % white (Pillow's
``convert("RGB")`` clips 16-bit grey values at 255)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from xaibench.datasets.image_folder import ImageFolder, load_rgb, open_rgb
from xaibench.datasets.imagenet_seg import ImageNetSegmentation
from xaibench.datasets.imagenet_val import ImageNetVal

W, H = 64, 48
#: 8-bit quantisation of a value in [0, 1] (the loaders reduce high-bit-depth images to 8 bits, rounded)
QUANT = 0.5 / 255 + 1e-6


def gradient16() -> np.ndarray:
    """``[H, W]`` uint16, 0 at the left edge to 65535 at the right edge (every column one value)."""
    return np.tile(np.round(np.linspace(0, 65535, W)).astype(np.uint16), (H, 1))


def write_png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """A 48-bit (16 bits per channel) RGB PNG, written with the standard library (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def write_pgm16(path: Path, gray: np.ndarray, maxval: int = 65535) -> None:
    path.write_bytes(f"P5\n{gray.shape[1]} {gray.shape[0]}\n{maxval}\n".encode() + gray.astype(">u2").tobytes())


def assert_gradient(image: torch.Tensor, expected: np.ndarray, what: str, tol: float = QUANT) -> None:
    """``image`` ``[3, H, W]`` in [0, 1] equals ``expected`` ``[H, W]`` in [0, 1] up to 8-bit rounding, per channel."""
    assert image.shape == (3, H, W) and image.dtype == torch.float32, what
    white = float((image >= 1.0).float().mean())
    assert white < 0.05, f"{what}: {white:.1%} of the values are white (a 16-bit image read as 8 bits)"
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0, what
    err = (image.double() - torch.from_numpy(expected)[None]).abs().max().item()
    assert err <= tol, f"{what}: max error {err:.4g} against value / 65535"


@pytest.mark.parametrize("kind", ["png_I;16", "tiff_I;16", "pgm_16bit", "tiff_int32", "png_rgb48", "tiff_float32"])
def test_high_bit_depth_gradient_spans_the_range(kind: str, tmp_path: Path) -> None:
    g = gradient16()
    expected = g / 65535.0
    path = tmp_path / f"gradient.{kind.split('_')[0]}"
    if kind in ("png_I;16", "tiff_I;16"):
        Image.fromarray(g).save(path)  # mode I;16
    elif kind == "pgm_16bit":
        write_pgm16(path, g)  # Pillow opens it as mode I
    elif kind == "tiff_int32":
        Image.fromarray(g.astype(np.int32)).save(path)  # mode I
    elif kind == "png_rgb48":
        write_png16_rgb(path, np.stack([g, g, g], axis=-1))
    else:
        Image.fromarray(expected.astype(np.float32)).save(path)  # mode F in [0, 1]
        expected = expected.astype(np.float32).astype(np.float64)
    opened = Image.open(path)
    assert opened.mode in ("I;16", "I;16B", "I", "RGB", "F"), opened.mode
    # Pillow decodes 16-bit RGB to its high byte (truncation: up to one 8-bit step); the rest is rounded here
    tol = 1 / 255 + 1e-6 if kind == "png_rgb48" else QUANT
    assert_gradient(load_rgb(path, (H, W)), expected, f"load_rgb {kind} ({opened.mode})", tol)
    assert open_rgb(path).mode == "RGB"


def test_twelve_bit_pgm_is_scaled_by_its_maxval(tmp_path: Path) -> None:
    g12 = np.tile(np.round(np.linspace(0, 4095, W)).astype(np.uint16), (H, 1))
    write_pgm16(tmp_path / "g12.pgm", g12, maxval=4095)
    assert_gradient(load_rgb(tmp_path / "g12.pgm", (H, W)), g12 / 4095.0, "12-bit PGM")


def test_out_of_range_values_are_a_clear_error(tmp_path: Path) -> None:
    wide = np.full((H, W), 70000, dtype=np.int32)
    wide[0, 0] = -5
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide.tif.*32-bit integer.*-5 to 70000.*0 to 65535"):
        open_rgb(tmp_path / "wide.tif")
    Image.fromarray(np.full((H, W), 3.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif.*floating-point.*3.5 to 3.5.*\[0, 1\]"):
        open_rgb(tmp_path / "float.tif")


def test_eight_bit_images_load_exactly_as_before(tmp_path: Path) -> None:
    """The 8-bit path is untouched: ``uint8 / 255`` of Pillow's RGB conversion (torchvision's ``ToTensor``)."""
    rng = np.random.default_rng(0)
    for mode, channels in (("L", 1), ("RGB", 3)):
        array = rng.integers(0, 256, (H, W, channels), dtype=np.uint8)
        Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode).save(tmp_path / f"{mode}.png")
        ref = np.asarray(Image.open(tmp_path / f"{mode}.png").convert("RGB"), dtype=np.float32) / 255
        assert torch.equal(load_rgb(tmp_path / f"{mode}.png", (H, W)), torch.from_numpy(ref).permute(2, 0, 1))


def test_image_folder_and_imagenet_val_read_16_bit_files(tmp_path: Path) -> None:
    wnid = "n01440764"
    (tmp_path / "val" / wnid).mkdir(parents=True)
    Image.fromarray(gradient16()).save(tmp_path / "val" / wnid / "gradient.png")
    expected = gradient16() / 65535.0
    ds = ImageNetVal(tmp_path / "val", image_size=W, wnids=[wnid])
    image = ds[0].image
    # squash-resized to W×W: every row is still the gradient along x
    assert float((image >= 1.0).float().mean()) < 0.05 and float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert (image[0, 0] - torch.from_numpy(expected[0]).float()).abs().max() <= QUANT
    folder = ImageFolder(tmp_path / "val", image_size=(H, W))
    assert_gradient(folder[0].image, expected, "image_folder")


def test_gtsegs_high_bit_depth_images_are_scaled(tmp_path: Path) -> None:
    """A gtsegs-layout file whose image is uint16 (or float in [0, 1]) loads scaled, never wrapped modulo 256."""
    g = gradient16()
    for name, data in (("u16", g), ("f64", g / 65535.0)):
        path = tmp_path / f"{name}.mat"
        img = np.stack([data] * 3)  # (3, H, W) as stored (the reader transposes (3, W, H))
        with h5py.File(path, "w") as f:
            refs = f.create_group("#refs#")
            d_img = refs.create_dataset("img", data=img.transpose(0, 2, 1))
            d_gt = refs.create_dataset("gt", data=np.zeros((W, H), dtype=np.uint8))
            cell = refs.create_dataset("cell", data=np.array([[d_gt.ref]], dtype=h5py.ref_dtype))
            f.create_dataset("value/img", data=np.array([[d_img.ref]], dtype=h5py.ref_dtype))
            f.create_dataset("value/gt", data=np.array([[cell.ref]], dtype=h5py.ref_dtype))
        image = ImageNetSegmentation(str(path), image_size=W)[0].image  # squash to W×W
        assert float(image.min()) == 0.0 and float(image.max()) == 1.0, name
        assert (image[0, 0] - torch.from_numpy(g[0] / 65535.0).float()).abs().max() <= QUANT, name
