"""The ImageNet validation layouts other than class folders: the devkit's ground truth (with ``meta.mat``)
and Kaggle's ``LOC_val_solution.csv``; constants and the reader mixin of :class:`ImageNetVal`."""

from __future__ import annotations

import csv
import functools
import io
import logging
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("xaibench.datasets.imagenet_val")

IMAGENET_NUM_CLASSES = 1000
IMAGENET_VAL_SIZE = 50_000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
LAYOUTS = ("auto", "folders", "devkit", "loc_csv")
RESIZE_MODES = ("squash", "resize_center_crop")
LABEL_SPACES = ("imagenet1k", "subset")
ORDERS = ("class", "file")

GROUND_TRUTH_FILE = "ILSVRC2012_validation_ground_truth.txt"
META_FILE = "meta.mat"
DEVKIT_NAME = "ILSVRC2012_devkit_t12"
LOC_SOLUTION_FILE = "LOC_val_solution.csv"
LOC_SYNSET_FILE = "LOC_synset_mapping.txt"

_WNID = re.compile(r"^n\d{8}$")
_LAYOUT_HELP = {
    "folders": "one folder per WordNet id (root/n01440764/*.JPEG)",
    "devkit": (
        f"flat ILSVRC2012_val_XXXXXXXX.JPEG files plus the devkit's {GROUND_TRUTH_FILE} and {META_FILE} "
        f"(or {DEVKIT_NAME}.tar.gz)"
    ),
    "loc_csv": f"flat ILSVRC2012_val_XXXXXXXX.JPEG files plus {LOC_SOLUTION_FILE}",
}


def imagenet1k_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted), from timm's bundled list."""
    return list(_imagenet1k_info()[0])


@functools.lru_cache(maxsize=1)
def _imagenet1k_info() -> tuple[tuple[str, ...], dict[str, str]]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = tuple(info.label_names())
    if len(wnids) != IMAGENET_NUM_CLASSES or list(wnids) != sorted(wnids):
        raise RuntimeError("timm's ImageNet-1k synset list is not the expected 1000 sorted WordNet ids")
    return wnids, info.label_descriptions(as_dict=True)


def _imagenet1k_lemmas() -> dict[str, str]:
    return dict(_imagenet1k_info()[1])


def _examples(items: Sequence[str] | set[str], n: int = 5) -> str:
    items = sorted(items)
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


@dataclass(frozen=True)
class _Entry:
    path: Path
    wnid: str


class ValLayouts:
    """Readers of the flat layouts (``devkit``, ``loc_csv``); mixed into :class:`ImageNetVal`, whose
    attributes (``root``, ``_flat_images``, ``_select_classes``, ...) they use."""

    def _upward_dirs(self, levels: int = 4) -> list[Path]:
        dirs = [self.root]
        for parent in self.root.resolve().parents:
            if len(dirs) > levels:
                break
            dirs.append(parent)
        return dirs

    def _find_upwards(self, name: str) -> Path | None:
        for folder in self._upward_dirs():
            if (folder / name).is_file():
                return folder / name
        return None

    # -- folders ----------------------------------------------------------------------------------
    def _devkit_candidates(self) -> list[Path]:
        bases = [self._devkit_dir] if self._devkit_dir is not None else []
        for folder in self._upward_dirs(2):
            bases += [folder, folder / DEVKIT_NAME, folder / f"{DEVKIT_NAME}.tar.gz"]
        out: list[Path] = []
        for base in bases:
            out += [base, base / "data"] if base.suffix != ".gz" else [base]
        return out

    def _find_devkit(self) -> tuple[bytes, bytes, str] | None:
        """``(ground truth text, meta.mat bytes, where)`` from an extracted devkit or its tarball."""
        for cand in self._devkit_candidates():
            if cand.is_dir() and (cand / META_FILE).is_file():
                gt = self._labels_file if self._labels_file is not None else cand / GROUND_TRUTH_FILE
                if gt.is_file():
                    return gt.read_bytes(), (cand / META_FILE).read_bytes(), str(cand)
            elif cand.is_file() and cand.name.endswith(".tar.gz"):
                try:
                    with tarfile.open(cand, "r:gz") as tar:
                        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                        if META_FILE in members and (GROUND_TRUTH_FILE in members or self._labels_file):
                            meta = tar.extractfile(members[META_FILE]).read()
                            gt = (
                                self._labels_file.read_bytes()
                                if self._labels_file is not None
                                else tar.extractfile(members[GROUND_TRUTH_FILE]).read()
                            )
                            return gt, meta, str(cand)
                except (tarfile.TarError, OSError, EOFError) as exc:
                    raise ValueError(f"cannot read the devkit archive {cand}: {exc}") from None
        return None

    def _scan_devkit(self) -> list[_Entry]:
        found = self._find_devkit()
        if found is None:
            raise FileNotFoundError(
                f"layout 'devkit' expects {_LAYOUT_HELP['devkit']}; found no {META_FILE} with "
                f"{GROUND_TRUTH_FILE} in {[str(p) for p in self._devkit_candidates()]} (set `devkit_dir`)"
            )
        gt_text, meta_bytes, where = found
        id_to_wnid = self._read_meta(meta_bytes, where)
        try:
            ids = [int(line) for line in gt_text.decode().split()]
        except ValueError:
            raise ValueError(f"{GROUND_TRUTH_FILE} in {where} is not one integer ILSVRC2012_ID per line") from None
        unknown = sorted({i for i in ids if i not in id_to_wnid})
        if unknown:
            raise ValueError(f"{GROUND_TRUTH_FILE} in {where} uses ILSVRC2012_IDs {unknown[:5]} not in {META_FILE}")
        listed = {f"ILSVRC2012_val_{i:08d}": id_to_wnid[c] for i, c in enumerate(ids, start=1)}
        return self._match_flat(listed, f"{GROUND_TRUTH_FILE} ({where})")

    def _read_meta(self, meta_bytes: bytes, where: str) -> dict[int, str]:
        from scipy.io import loadmat

        try:
            synsets = loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        except Exception as exc:  # scipy raises several types for a foreign file
            raise ValueError(f"cannot read {META_FILE} in {where} as the ILSVRC2012 devkit's: {exc}") from None
        synsets = np.atleast_1d(synsets)
        fields = synsets.dtype.names or ()
        if not {"ILSVRC2012_ID", "WNID"} <= set(fields):
            raise ValueError(f"{META_FILE} in {where} has no ILSVRC2012_ID/WNID synset fields (has {fields})")
        id_to_wnid: dict[int, str] = {}
        for s in synsets:
            if "num_children" in fields and int(s["num_children"]) != 0:
                continue  # internal WordNet nodes; the 1000 classes are the leaves
            wnid = str(s["WNID"])
            id_to_wnid[int(s["ILSVRC2012_ID"])] = wnid
            if "words" in fields:
                self._names_by_wnid.setdefault(wnid, str(s["words"]))
        return id_to_wnid

    # -- Kaggle LOC csv ---------------------------------------------------------------------------
    def _scan_loc_csv(self) -> list[_Entry]:
        path = self._labels_file if self._labels_file is not None else self._find_upwards(LOC_SOLUTION_FILE)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"layout 'loc_csv' expects {_LAYOUT_HELP['loc_csv']}; no {LOC_SOLUTION_FILE} at "
                + (str(path) if path is not None else f"{[str(p) for p in self._upward_dirs()]}")
            )
        listed: dict[str, str] = {}
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise ValueError(f"{path}: expected the header 'ImageId,PredictionString'; got {header}")
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                tokens = row[1].split() if len(row) > 1 else []
                if not tokens or not _WNID.match(tokens[0]):
                    raise ValueError(f"{path}:{line_no}: no WordNet id at the start of the PredictionString")
                listed[row[0].strip()] = tokens[0]
        self._load_synset_names()
        return self._match_flat(listed, str(path))

    # -- shared flat-layout logic -----------------------------------------------------------------
    def _match_flat(self, listed: dict[str, str], source: str) -> list[_Entry]:
        """Join the listed ``{stem: wnid}`` with the flat image files, checking for strays and gaps."""
        flat = self._flat_images()
        if not flat:
            raise FileNotFoundError(f"layout {self.layout!r}: no *.JPEG images directly in {self.root}")
        strays = set(flat) - set(listed)
        if strays:
            raise ValueError(
                f"layout {self.layout!r}: {len(strays)} of the {len(flat)} images in {self.root} are not listed "
                f"in {source} ({_examples(strays)}); is this the validation folder?"
            )
        if self._requested_wnids is None and not self.full:
            present = {listed[s] for s in flat}  # num_classes: the classes of the images at hand
        else:
            present = set(listed.values())
        wanted = self._select_classes(present, f"classes listed in {source}")
        selected = {stem: wnid for stem, wnid in listed.items() if wnid in wanted}
        missing = set(selected) - set(flat)
        if missing:
            message = (
                f"layout {self.layout!r}: {len(missing)} of the {len(selected)} images that {source} lists for "
                f"the selected classes are missing from {self.root} ({_examples(missing)}); found "
                f"{len(flat)} images"
            )
            if self._expected is not None:
                raise FileNotFoundError(
                    message + ". An incomplete extraction? Set expected_images: null to evaluate on what is there."
                )
            log.warning("%s; evaluating on the %d present", message, len(selected) - len(missing))
        return [_Entry(flat[stem], wnid) for stem, wnid in selected.items() if stem in flat]
