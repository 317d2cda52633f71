"""ImageNet-1k (ILSVRC2012) validation set, read from the layouts people actually have.

No torchvision dataset class is needed; three layouts are recognised (``layout="auto"`` picks one):

``folders``
    ``root/n01440764/*.JPEG``: one folder per WordNet id (what ``torchvision.datasets.ImageNet`` and most
    preparation scripts leave behind).
``devkit``
    the official flat folder ``root/ILSVRC2012_val_00000001.JPEG ...`` with the ILSVRC2012 devkit:
    ``ILSVRC2012_validation_ground_truth.txt`` (line ``i`` holds the ILSVRC2012_ID, 1..1000, of image
    ``i``) and ``meta.mat`` (ILSVRC2012_ID -> WordNet id), from the extracted devkit or its
    ``ILSVRC2012_devkit_t12.tar.gz``, searched in ``root``, its parents and ``devkit_dir``.
``loc_csv``
    a flat folder with Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token of
    the prediction string is the WordNet id), searched in ``root`` and its parents (the Kaggle archive keeps
    it four levels above ``ILSVRC/Data/CLS-LOC/val``).

Class index = position of the WordNet id in the sorted list of the 1000 ImageNet-1k ids (torchvision's
and timm's order). The full 1000-class set is the default and is checked strictly (every class present,
50,000 images, no listed file missing): a wrong or half-extracted folder raises instead of silently
evaluating on part of the data. A subset needs to be asked for with ``wnids`` or ``num_classes``.

Preprocessing follows the reference's perturbation script (``Resize((224, 224))`` + ``ToTensor``, no crop,
no normalisation; REFERENCE.md §5): PIL bilinear resize to ``image_size × image_size``, RGB, float32 in
``[0, 1]``. ``resize_mode="resize_center_crop"`` gives timm's ``Resize(size / crop_pct)`` + ``CenterCrop``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xaibench.core.types import DatasetAdapter, RequiredAsset, Sample, path_asset
from xaibench.datasets._imagenet_layouts import (
    _LAYOUT_HELP,
    _WNID,
    GROUND_TRUTH_FILE,
    IMAGE_EXTENSIONS,
    IMAGENET_NUM_CLASSES,
    IMAGENET_VAL_SIZE,
    LABEL_SPACES,
    LAYOUTS,
    LOC_SOLUTION_FILE,
    LOC_SYNSET_FILE,
    META_FILE,
    ORDERS,
    RESIZE_MODES,
    ValLayouts,
    _Entry,
    _examples,
    _imagenet1k_lemmas,
    imagenet1k_wnids,
)
from xaibench.datasets.image_folder import open_rgb

log = logging.getLogger(__name__)


class ImageNetVal(ValLayouts, DatasetAdapter):
    """ImageNet-1k validation images with their ground-truth labels.

    Args:
        root: the validation folder (class folders or flat ``ILSVRC2012_val_*.JPEG`` files).
        image_size: side of the square output image.
        resize_mode: ``"squash"`` (reference: ``Resize((size, size))``, aspect ratio not kept, no crop) or
            ``"resize_center_crop"`` (shorter side to ``floor(size / crop_pct)``, then a centred
            ``size × size`` crop; the usual timm/torchvision evaluation transform).
        crop_pct: crop fraction of ``"resize_center_crop"`` (0.875: 256 -> 224).
        layout: ``"auto"``, ``"folders"``, ``"devkit"`` or ``"loc_csv"`` (see the module docstring).
        wnids: evaluate only these classes (WordNet ids); each must be present.
        num_classes: number of classes expected; 1000 (strict full set) unless ``wnids`` is given. A
            smaller number accepts whichever classes are present, as long as there are exactly that many.
        label_space: ``"imagenet1k"``: labels are the standard 1000-class indices also for a subset (for
            ImageNet classifiers); ``"subset"``: labels index the sorted selected classes (for a model with
            a small head).
        expected_images: ``"auto"``: 50,000 for the full set, no count check for a subset; an int: the
            exact count; ``None``: accept a partial copy (listed images that are missing are skipped with
            a warning instead of raising).
        devkit_dir: the devkit folder (or its ``data/``) or tarball, when it is not beside ``root``.
        labels_file: an explicit ``LOC_val_solution.csv`` or ``ILSVRC2012_validation_ground_truth.txt``.
        order: ``"class"`` (sorted class, then file name: torchvision ``ImageNet``'s order, which the
            reference evaluated and ``limit`` takes the head of) or ``"file"`` (by file name; the official
            val order, classes interleaved).

    Raises:
        FileNotFoundError: ``root``, the label files or listed images are missing.
        ValueError: the folder does not hold what the configuration asks for (wrong class count, unknown
            WordNet ids, empty class folders, image count different from ``expected_images``).
    """

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        hint = (
            "ImageNet cannot be redistributed: `xaibench-data imagenet_val` prints what to download and where to put it"
        )
        return path_asset("ImageNet validation images", config.get("root"), hint, folder=True)

    modality = "image"
    provides = frozenset({"label"})

    def __init__(
        self,
        root: str | Path,
        image_size: int = 224,
        resize_mode: str = "squash",
        crop_pct: float = 0.875,
        layout: str = "auto",
        wnids: Sequence[str] | None = None,
        num_classes: int | None = None,
        label_space: str = "imagenet1k",
        expected_images: int | str | None = "auto",
        devkit_dir: str | Path | None = None,
        labels_file: str | Path | None = None,
        order: str = "class",
    ) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; supported: {list(RESIZE_MODES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown ImageNet-val layout {layout!r}; supported: {list(LAYOUTS)}")
        if label_space not in LABEL_SPACES:
            raise ValueError(f"unknown label_space {label_space!r}; supported: {list(LABEL_SPACES)}")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; supported: {list(ORDERS)}")
        if int(image_size) < 1 or not 0.0 < float(crop_pct) <= 1.0:
            raise ValueError(f"need image_size >= 1 and 0 < crop_pct <= 1; got {image_size}, {crop_pct}")
        if not (expected_images is None or expected_images == "auto" or isinstance(expected_images, int)):
            raise ValueError(f"expected_images must be 'auto', an int or null; got {expected_images!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"ImageNet validation folder {self.root} does not exist (expected one of: "
                + "; ".join(f"{k}: {v}" for k, v in _LAYOUT_HELP.items())
                + ")"
            )
        self.image_size = int(image_size)
        self.resize_mode = resize_mode
        self.crop_pct = float(crop_pct)
        self.label_space = label_space
        self.order = order
        self._devkit_dir = Path(devkit_dir).expanduser() if devkit_dir is not None else None
        self._labels_file = Path(labels_file).expanduser() if labels_file is not None else None
        self._names_by_wnid: dict[str, str] = {}

        if wnids is not None:
            wnids = [str(w) for w in wnids]
            bad = [w for w in wnids if not _WNID.match(w)]
            if bad or not wnids or len(set(wnids)) != len(wnids):
                raise ValueError(f"`wnids` must be distinct WordNet ids like 'n01440764'; got {wnids[:8]}")
            if num_classes is not None and int(num_classes) != len(wnids):
                raise ValueError(f"num_classes={num_classes} but {len(wnids)} `wnids` were given")
            num_classes = len(wnids)
        num_classes = IMAGENET_NUM_CLASSES if num_classes is None else int(num_classes)
        if not 1 <= num_classes <= IMAGENET_NUM_CLASSES:
            raise ValueError(f"num_classes must be in 1..1000; got {num_classes}")
        self.full = wnids is None and num_classes == IMAGENET_NUM_CLASSES
        if expected_images == "auto":
            expected_images = IMAGENET_VAL_SIZE if self.full else False
        self._expected = expected_images  # int: exact count; False: no check; None: allow missing files
        self._requested_wnids = wnids
        self._num_classes = num_classes

        self.layout = self._detect_layout() if layout == "auto" else layout
        entries = {"folders": self._scan_folders, "devkit": self._scan_devkit, "loc_csv": self._scan_loc_csv}[
            self.layout
        ]()
        self.wnids, self._label_of = self._label_map(sorted({e.wnid for e in entries}))
        self._check_count(len(entries))
        key = (lambda e: (e.wnid, e.path.name)) if order == "class" else (lambda e: e.path.name)
        self.samples: list[tuple[Path, int]] = [(e.path, self._label_of[e.wnid]) for e in sorted(entries, key=key)]
        log.info(
            "ImageNet val (%s layout) at %s: %d images, %d classes", self.layout, self.root, len(self), len(self.wnids)
        )

    # -- DatasetAdapter ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.samples[index]
        return Sample(id=self.sample_id(index), label=label, image=self.load_image(path))

    def sample_id(self, index: int) -> str:
        """The image's path below ``root`` without its extension (``n01440764/ILSVRC2012_val_00000293`` in
        class folders, the file name in flat layouts): unique within the dataset, where a file name alone
        is not (two class folders may hold files of the same name)."""
        path = self.samples[index][0]
        try:
            return path.relative_to(self.root).with_suffix("").as_posix()
        except ValueError:  # an image found outside root (never for the supported layouts)
            return path.with_suffix("").as_posix()

    def class_names(self) -> Sequence[str] | None:
        """Names indexed by label (1000 in the ``imagenet1k`` label space), from ``LOC_synset_mapping.txt``,
        the devkit's ``meta.mat`` words, or timm's ImageNet lemmas."""
        space = self._space_wnids()
        names = dict(self._names_by_wnid)
        missing = [w for w in space if w not in names]
        if missing:
            try:
                lemmas = _imagenet1k_lemmas()
            except Exception:  # timm missing or changed: names are optional
                lemmas = {}
            names.update({w: lemmas[w] for w in missing if w in lemmas})
        return [names.get(w, w) for w in space]

    # -- images -----------------------------------------------------------------------------------
    def load_image(self, path: str | Path) -> torch.Tensor:
        """Read one image as ``[3, S, S]`` float32 in ``[0, 1]`` (``S = image_size``).

        Grayscale, palette, CMYK and RGBA files are converted to RGB first. The resize is PIL's bilinear
        (antialiased when shrinking), exactly what torchvision's ``Resize`` does on PIL images; the
        scaling to ``[0, 1]`` is torchvision ``ToTensor``'s (``uint8 -> float32 / 255``).
        """
        size = self.image_size
        img = open_rgb(path)
        if self.resize_mode == "squash":
            img = img.resize((size, size), Image.BILINEAR)
        else:
            width, height = img.size
            short = math.floor(size / self.crop_pct)
            if width <= height:
                new_w, new_h = short, int(short * height / width)
            else:
                new_w, new_h = int(short * width / height), short
            img = img.resize((new_w, new_h), Image.BILINEAR)
            top = int(round((new_h - size) / 2.0))
            left = int(round((new_w - size) / 2.0))
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8).copy()
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    # -- layout detection -------------------------------------------------------------------------
    def _class_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _WNID.match(p.name))

    def _flat_images(self) -> dict[str, Path]:
        return {p.stem: p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}

    def _detect_layout(self) -> str:
        class_dirs = self._class_dirs()
        flat = self._flat_images()
        if class_dirs:
            if flat:
                log.warning(
                    "%s holds both %d class folders and %d loose images; using the class folders",
                    self.root,
                    len(class_dirs),
                    len(flat),
                )
            return "folders"
        if not flat:
            others = sorted(p.name for p in self.root.iterdir())
            raise FileNotFoundError(
                f"no ImageNet validation images in {self.root}: found no WordNet-id class folders "
                f"(n01440764/...) and no *.JPEG files (it holds {len(others)} entries"
                + (f": {_examples(others)}" if others else "")
                + "). Expected one of: "
                + "; ".join(f"{k}: {v}" for k, v in _LAYOUT_HELP.items())
            )
        if self._labels_file is not None:
            return "loc_csv" if self._labels_file.suffix.lower() == ".csv" else "devkit"
        if self._find_upwards(LOC_SOLUTION_FILE) is not None:
            return "loc_csv"
        if self._find_devkit() is not None:
            return "devkit"
        raise FileNotFoundError(
            f"{self.root} holds {len(flat)} flat images but no labels: expected {LOC_SOLUTION_FILE} (searched "
            f"{[str(p) for p in self._upward_dirs()]}) or the devkit's {GROUND_TRUTH_FILE} + {META_FILE} "
            f"(searched {[str(p) for p in self._devkit_candidates()]}); pass `labels_file` / `devkit_dir`, "
            "or sort the images into WordNet-id class folders"
        )

    def _scan_folders(self) -> list[_Entry]:
        class_dirs = self._class_dirs()
        if not class_dirs:
            raise FileNotFoundError(
                f"layout 'folders' expects {_LAYOUT_HELP['folders']}; {self.root} has no folder named like a WordNet id"
            )
        by_wnid = {d.name: d for d in class_dirs}
        # counted in the messages (a folder of 3 classes is "3 class folders" even if 2 are not WordNet ids)
        others = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in by_wnid
        )
        wanted = self._select_classes(set(by_wnid), "class folders", others)
        if others:
            log.warning(
                "%s: ignoring %d folders not named like a WordNet id (%s)", self.root, len(others), _examples(others)
            )
        entries, empty = [], []
        for wnid in sorted(wanted):
            files = sorted(p for p in by_wnid[wnid].iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                empty.append(wnid)
            entries.extend(_Entry(p, wnid) for p in files)
        if empty:
            raise ValueError(
                f"layout 'folders' in {self.root}: {len(empty)} of {len(wanted)} class folders hold no images "
                f"({_examples(empty)}); an incomplete extraction?"
            )
        self._load_synset_names()
        return entries

    def _select_classes(self, present: set[str], what: str, others: Sequence[str] = ()) -> set[str]:
        """The classes to load among those ``present``, checked against the configuration; ``others``:
        class folders not named like a WordNet id (counted and named in the messages, never loaded)."""
        found = f"found {len(present) + len(others)} {what}"
        if others:
            found += f", {len(others)} of them not named like a WordNet id ({_examples(others)})"
        if self._requested_wnids is not None:
            missing = set(self._requested_wnids) - present
            if missing:
                raise FileNotFoundError(
                    f"layout {self.layout!r} in {self.root}: requested classes {_examples(missing)} are not "
                    f"among the {what} ({found})"
                )
            return set(self._requested_wnids)
        if self.full:
            canonical = set(self._canonical_wnids())
            missing, unknown = canonical - present, present - canonical
            if missing or unknown:
                parts = [found]
                if missing:
                    parts.append(f"{len(missing)} of the 1000 ImageNet-1k classes are missing ({_examples(missing)})")
                if unknown:
                    parts.append(f"{len(unknown)} are not ImageNet-1k classes ({_examples(unknown)})")
                raise ValueError(
                    f"layout {self.layout!r} in {self.root}: expected the full ImageNet-1k validation set "
                    f"(1000 classes); " + "; ".join(parts) + ". An incomplete extraction? To evaluate on a "
                    "subset set `wnids` or `num_classes`."
                )
            return present
        if len(present) != self._num_classes:
            raise ValueError(
                f"layout {self.layout!r} in {self.root}: num_classes={self._num_classes} but {found}"
                + (
                    "; only folders named like a WordNet id (n01440764) are ImageNet classes (class folders of "
                    "other names: dataset=image_folder)"
                    if others
                    else f" ({_examples(present)})"
                )
            )
        return present

    # -- devkit -----------------------------------------------------------------------------------
    def _check_count(self, count: int) -> None:
        if isinstance(self._expected, int) and not isinstance(self._expected, bool) and count != self._expected:
            raise ValueError(
                f"layout {self.layout!r} in {self.root}: expected {self._expected} validation images, found "
                f"{count} in {len(self.wnids)} classes. An incomplete extraction? Set expected_images: null "
                "to accept a partial copy."
            )

    # -- labels and names -------------------------------------------------------------------------
    def _canonical_wnids(self) -> list[str]:
        return imagenet1k_wnids()

    def _space_wnids(self) -> list[str]:
        return self._canonical_wnids() if self.label_space == "imagenet1k" else list(self.wnids)

    def _label_map(self, wnids: list[str]) -> tuple[list[str], dict[str, int]]:
        if self.label_space == "subset":
            return wnids, {w: i for i, w in enumerate(wnids)}
        index = {w: i for i, w in enumerate(self._canonical_wnids())}
        unknown = [w for w in wnids if w not in index]
        if unknown:
            raise ValueError(
                f"classes {_examples(unknown)} in {self.root} are not ImageNet-1k classes, so they have no "
                "standard label; use label_space: subset to number the classes found"
            )
        return wnids, {w: index[w] for w in wnids}

    def _load_synset_names(self) -> None:
        path = self._find_upwards(LOC_SYNSET_FILE)
        if path is None:
            return
        for line in path.read_text().splitlines():
            wnid, _, name = line.strip().partition(" ")
            if _WNID.match(wnid):
                self._names_by_wnid.setdefault(wnid, name.strip())
