"""ImageNetVal: every supported layout, label indices, preprocessing, and the errors for broken folders."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from xaibench.datasets.imagenet_val import ImageNetVal, imagenet1k_wnids

# (wnid, standard ImageNet-1k index, ILSVRC2012_ID of the devkit, name)
CLASSES = [
    ("n01440764", 0, 449, "tench, Tinca tinca"),
    ("n01443537", 1, 450, "goldfish, Carassius auratus"),
    ("n02119789", 278, 1, "kit fox, Vulpes macrotis"),
    ("n15075141", 999, 1000, "toilet tissue, toilet paper, bathroom tissue"),
]
# image number (1-based, official val order) -> class position in CLASSES, image mode, size
IMAGES = {
    1: (2, "RGB", (40, 30)),
    2: (0, "L", (25, 33)),
    3: (3, "CMYK", (30, 30)),
    4: (1, "RGB", (17, 50)),
    5: (0, "RGB", (64, 48)),
    6: (2, "RGB", (31, 29)),
    7: (3, "L", (20, 20)),
    8: (1, "RGB", (33, 44)),
}
SIZE = 32


def write_image(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode).save(path, format="JPEG", quality=95)


def stem(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}"


def expected_labels(order: str = "class") -> list[tuple[str, int]]:
    rows = [(stem(i), CLASSES[c][1], CLASSES[c][0]) for i, (c, _, _) in IMAGES.items()]
    rows.sort(key=(lambda r: (r[2], r[0])) if order == "class" else (lambda r: r[0]))
    return [(s, label) for s, label, _ in rows]


@pytest.fixture
def folders_root(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    for i, (c, mode, size) in IMAGES.items():
        (root / CLASSES[c][0]).mkdir(parents=True, exist_ok=True)
        write_image(root / CLASSES[c][0] / f"{stem(i)}.JPEG", mode, size, i)
    return root


def write_flat(root: Path) -> None:
    root.mkdir(parents=True)
    for i, (_, mode, size) in IMAGES.items():
        write_image(root / f"{stem(i)}.JPEG", mode, size, i)


def meta_mat_bytes() -> bytes:
    fields = [(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children")]
    rows = [(cid, wnid, words, "a gloss", 0, np.zeros((1, 0))) for wnid, _, cid, words in CLASSES]
    rows.append((1001, "n00001740", "entity", "an internal WordNet node", 2, np.array([1, 449])))
    array = np.empty((len(rows), 1), dtype=fields)
    for k, row in enumerate(rows):
        array[k, 0] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": array})
    return buf.getvalue()


def ground_truth_text() -> str:
    return "".join(f"{CLASSES[c][2]}\n" for _, (c, _, _) in sorted(IMAGES.items()))


@pytest.fixture
def devkit_root(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet" / "val"
    write_flat(root)
    data = tmp_path / "imagenet" / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "meta.mat").write_bytes(meta_mat_bytes())
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(ground_truth_text())
    return root


@pytest.fixture
def loc_root(tmp_path: Path) -> Path:
    top = tmp_path / "kaggle"
    root = top / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    write_flat(root)
    lines = ["ImageId,PredictionString"]
    for i, (c, _, _) in sorted(IMAGES.items(), reverse=True):
        wnid = CLASSES[c][0]
        lines.append(f"{stem(i)},{wnid} 1 2 30 40 {wnid} 3 4 10 20 ")
    (top / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    (top / "LOC_synset_mapping.txt").write_text("".join(f"{w} {name}\n" for w, _, _, name in CLASSES))
    return root


SUBSET = [c[0] for c in CLASSES]


def check_dataset(ds: ImageNetVal, order: str = "class") -> None:
    assert len(ds) == len(IMAGES)
    got = [(path.stem, label) for path, label in ds.samples]
    assert got == expected_labels(order)
    sample = ds[0]
    # ids are the path below root without the extension: unique even when two class folders share a file name
    assert sample.id == ds.samples[0][0].relative_to(ds.root).with_suffix("").as_posix() == ds.sample_id(0)
    assert sample.id.endswith(got[0][0]) and sample.label == got[0][1]
    assert sample.image.shape == (3, SIZE, SIZE) and sample.image.dtype == torch.float32
    assert 0.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
    assert ds.provides == frozenset({"label"}) and ds.modality == "image"


def test_standard_indices_match_torchvision_order() -> None:
    wnids = imagenet1k_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    for wnid, index, _, _ in CLASSES:
        assert wnids.index(wnid) == index


def test_folders_layout(folders_root: Path) -> None:
    ds = ImageNetVal(folders_root, image_size=SIZE, wnids=SUBSET)
    assert ds.layout == "folders"
    check_dataset(ds)
    assert ImageNetVal(folders_root, image_size=SIZE, num_classes=4).samples == ds.samples
    names = ds.class_names()
    assert len(names) == 1000 and names[0].startswith("tench")  # timm's lemmas as the fallback


def test_subset_selects_classes_and_label_space(folders_root: Path) -> None:
    ds = ImageNetVal(folders_root, image_size=SIZE, wnids=["n15075141", "n01443537"])
    assert sorted({label for _, label in ds.samples}) == [1, 999]
    sub = ImageNetVal(folders_root, image_size=SIZE, wnids=["n15075141", "n01443537"], label_space="subset")
    assert sorted({label for _, label in sub.samples}) == [0, 1]
    assert [n.split(",")[0] for n in sub.class_names()] == ["goldfish", "toilet tissue"]


def test_devkit_layout(devkit_root: Path) -> None:
    ds = ImageNetVal(devkit_root, image_size=SIZE, wnids=SUBSET)
    assert ds.layout == "devkit"
    check_dataset(ds)
    assert ds.class_names()[278] == "kit fox, Vulpes macrotis"  # from meta.mat's words
    by_file = ImageNetVal(devkit_root, image_size=SIZE, num_classes=4, order="file")
    check_dataset(by_file, order="file")


def test_devkit_from_tarball(tmp_path: Path) -> None:
    root = tmp_path / "val"
    write_flat(root)
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, payload in (
            ("ILSVRC2012_devkit_t12/data/meta.mat", meta_mat_bytes()),
            ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth_text().encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    check_dataset(ImageNetVal(root, image_size=SIZE, wnids=SUBSET))


def test_loc_csv_layout(loc_root: Path) -> None:
    ds = ImageNetVal(loc_root, image_size=SIZE, wnids=SUBSET)
    assert ds.layout == "loc_csv"
    check_dataset(ds)
    assert ds.class_names()[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_same_samples_in_every_layout(folders_root: Path, devkit_root: Path, loc_root: Path) -> None:
    datasets = [ImageNetVal(r, image_size=SIZE, wnids=SUBSET) for r in (folders_root, devkit_root, loc_root)]
    for k in range(len(IMAGES)):
        a, b, c = (d[k] for d in datasets)
        # ids are unique within a dataset: the class folder is part of the id where there is one
        assert a.id.split("/")[-1] == b.id == c.id and a.label == b.label == c.label
        assert a.id.split("/")[0] in SUBSET
        assert torch.equal(a.image, b.image) and torch.equal(a.image, c.image)


def test_preprocessing_matches_torchvision(folders_root: Path) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    for path, _ in ImageNetVal(folders_root, image_size=SIZE, wnids=SUBSET).samples:
        img = Image.open(path).convert("RGB")
        squash = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])(img)
        ours = ImageNetVal(folders_root, image_size=SIZE, wnids=SUBSET).load_image(path)
        assert torch.equal(ours, squash)
        crop = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(SIZE), transforms.ToTensor()])(img)
        ds = ImageNetVal(folders_root, image_size=SIZE, wnids=SUBSET, resize_mode="resize_center_crop", crop_pct=0.875)
        assert torch.equal(ds.load_image(path), crop)


def test_grayscale_and_cmyk_become_rgb(folders_root: Path) -> None:
    ds = ImageNetVal(folders_root, image_size=SIZE, wnids=SUBSET)
    for k, (path, _) in enumerate(ds.samples):
        mode = IMAGES[int(path.stem[-8:])][1]
        image = ds[k].image
        assert image.shape == (3, SIZE, SIZE)
        if mode == "L":
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


# -- strict full set ---------------------------------------------------------------------------------


def test_full_set_is_strict(tmp_path: Path) -> None:
    root = tmp_path / "val"
    for wnid in imagenet1k_wnids():
        (root / wnid).mkdir(parents=True)
        (root / wnid / f"{wnid}_1.JPEG").touch()  # listing only: nothing is decoded at construction
    ds = ImageNetVal(root, expected_images=1000)
    assert len(ds) == 1000 and [label for _, label in ds.samples] == list(range(1000))
    with pytest.raises(ValueError, match=r"expected 50000 validation images, found 1000"):
        ImageNetVal(root)
    (root / "n01440764" / "n01440764_1.JPEG").unlink()
    with pytest.raises(ValueError, match=r"1 of 1000 class folders hold no images \(n01440764\)"):
        ImageNetVal(root, expected_images=None)


def test_half_extracted_class_folders(folders_root: Path) -> None:
    with pytest.raises(ValueError, match=r"expected the full ImageNet-1k.*found 4 class folders; 996 of the 1000"):
        ImageNetVal(folders_root, image_size=SIZE)
    with pytest.raises(ValueError, match=r"num_classes=5 but found 4 class folders"):
        ImageNetVal(folders_root, image_size=SIZE, num_classes=5)
    with pytest.raises(FileNotFoundError, match=r"requested classes n09999999"):
        ImageNetVal(folders_root, image_size=SIZE, wnids=["n01440764", "n09999999"])


def test_not_imagenet_classes(tmp_path: Path) -> None:
    root = tmp_path / "val"
    (root / "n00000001").mkdir(parents=True)
    write_image(root / "n00000001" / "a.JPEG", "RGB", (8, 8), 0)
    with pytest.raises(ValueError, match=r"not ImageNet-1k classes"):
        ImageNetVal(root, num_classes=1)
    assert ImageNetVal(root, num_classes=1, label_space="subset").samples[0][1] == 0


def test_missing_root_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*folders: one folder per WordNet id"):
        ImageNetVal(tmp_path / "nowhere")
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no WordNet-id class folders .* 1 entries: stuff"):
        ImageNetVal(tmp_path / "empty")


def test_flat_images_without_labels(tmp_path: Path) -> None:
    write_flat(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match=r"8 flat images but no labels: expected LOC_val_solution.csv"):
        ImageNetVal(tmp_path / "val", wnids=SUBSET)
    with pytest.raises(FileNotFoundError, match=r"layout 'devkit' expects flat ILSVRC2012_val"):
        ImageNetVal(tmp_path / "val", layout="devkit", wnids=SUBSET)


def test_devkit_with_missing_and_stray_images(devkit_root: Path) -> None:
    (devkit_root / f"{stem(3)}.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 8 images .* missing .*ILSVRC2012_val_00000003.*found 7"):
        ImageNetVal(devkit_root, image_size=SIZE, wnids=SUBSET)
    partial = ImageNetVal(devkit_root, image_size=SIZE, wnids=SUBSET, expected_images=None)
    assert len(partial) == 7
    write_image(devkit_root / f"{stem(9)}.JPEG", "RGB", (8, 8), 9)
    with pytest.raises(ValueError, match=r"1 of the 8 images .* not listed .*ILSVRC2012_val_00000009"):
        ImageNetVal(devkit_root, image_size=SIZE, wnids=SUBSET, expected_images=None)


def test_devkit_full_set_reports_the_gap(devkit_root: Path) -> None:
    # the tiny devkit lists 4 classes only: asking for the full set names what is missing
    with pytest.raises(ValueError, match=r"expected the full ImageNet-1k validation set.*found 4 classes listed"):
        ImageNetVal(devkit_root, image_size=SIZE)


def test_loc_csv_header_and_explicit_file(loc_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nx,y\n")
    with pytest.raises(ValueError, match=r"expected the header 'ImageId,PredictionString'"):
        ImageNetVal(loc_root, labels_file=bad, wnids=SUBSET)
    explicit = ImageNetVal(
        loc_root,
        image_size=SIZE,
        layout="loc_csv",
        labels_file=loc_root.parents[3] / "LOC_val_solution.csv",
        wnids=SUBSET,
    )
    check_dataset(explicit)


def test_bad_options(folders_root: Path) -> None:
    for kwargs, pattern in [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"layout": "zip"}, "layout"),
        ({"label_space": "x"}, "label_space"),
        ({"wnids": ["tench"]}, "WordNet ids"),
        ({"wnids": SUBSET, "num_classes": 3}, "num_classes=3"),
        ({"order": "random"}, "order"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            ImageNetVal(folders_root, **kwargs)
