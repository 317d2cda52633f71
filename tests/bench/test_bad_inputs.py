"""Every bad input of the reliability issue, table-driven, through the same path as ``xaibench ...``:
compose the Hydra config, run the job, and check the error names the file and what was expected, is one of
the errors the CLI prints as one line (no traceback), and that nothing was written under the final output
name. Per-sample failures are also run with ``on_error=skip``: recorded with the reason and counted."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import golden_dir
from xaibench.apps.cli import USER_ERRORS, _root_cause, run_from_config
from xaibench.core.config import compose_config
from xaibench.datasets.imagenet_val import imagenet1k_wnids

IMAGE = ["model=vit_micro", "method=rollout", "batch_size=2"]
TEXT = ["model=bert_small", "method=rollout_bert", "metric=token_f1", "target=label", "batch_size=2"]
WNIDS = ["n01440764", "n01443537"]


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode).save(path, format="JPEG")


def imagenet_folder(root: Path, odd: Callable[[Path], None] | None = None) -> list[str]:
    """Two classes of two good images each, plus ``odd(path)`` written as the first image of class 0."""
    for k, wnid in enumerate(WNIDS):
        for j in range(2):
            write_image(root / wnid / f"{wnid}_{j + 1}.JPEG", seed=2 * k + j)
    if odd is not None:
        odd(root / WNIDS[0] / f"{WNIDS[0]}_0.JPEG")
    return [
        "dataset=imagenet_val",
        f"dataset.root={root}",
        f"dataset.wnids=[{','.join(WNIDS)}]",
        "dataset.image_size=64",
        "metric=perturbation",
        *IMAGE,
    ]


def gtsegs(path: Path, data: bytes | None = None, wrong_layout: bool = False) -> list[str]:
    if wrong_layout:
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=np.zeros(3))
    elif data is not None:
        path.write_bytes(data)
    return ["dataset=imagenet_seg", f"dataset.path={path}", "dataset.image_size=64", *IMAGE]


def eraser(root: Path, docs: dict[str, str], annotations: list[dict]) -> list[str]:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    for docid, text in docs.items():
        (root / "docs" / docid).write_text(text)
    (root / "test.jsonl").write_text("".join(json.dumps(a) + "\n" for a in annotations))
    return ["dataset=eraser_synthetic", f"dataset.root={root}", *TEXT]


def annotation(docid: str, label: str = "POS", spans: list[tuple[int, int]] | None = None) -> dict:
    evidences = [[{"docid": docid, "start_token": s, "end_token": e, "text": ""} for s, e in (spans or [])]]
    return {"annotation_id": docid, "classification": label, "evidences": evidences if spans else []}


REVIEW = "a great film with a fine cast and a good story"  # 11 words of the golden vocabulary


def good_review(root: Path, extra: dict | None = None) -> list[str]:
    docs = {"r1.txt": REVIEW, "r2.txt": REVIEW, **(extra or {}).get("docs", {})}
    anns = [annotation("r1.txt", spans=[(1, 3)]), annotation("r2.txt", "NEG", spans=[(6, 8)])]
    return eraser(root, docs, anns + (extra or {}).get("annotations", []))


def state_dict_file(path: Path, drop: str | None = None, reshape: str | None = None, model: str = "vit") -> None:
    from xaibench.models.timm_vit import TimmViT

    net = TimmViT(
        timm_kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 4}
    )
    state = dict(net.model.state_dict())
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(3, 32)
    torch.save(state, path)


def _bert_state_without(path: Path, key: str) -> list[str]:
    state = torch.load(golden_dir() / "bert_small_state_dict.pt", weights_only=True)
    del state[key]
    torch.save(state, path)
    return ["dataset=eraser_synthetic", *TEXT]


@dataclass(frozen=True)
class Case:
    """``build(tmp)`` makes the bad input and returns the overrides; the job must fail with ``error``
    matching ``message`` (a regex; ``{tmp}`` is the test's folder)."""

    name: str
    build: Callable[[Path], list[str]]
    error: type[BaseException]
    message: str


def _tiny(path: Path) -> None:
    write_image(path, size=(4, 3))


def _undecodable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG")


def _truncated_jpeg(path: Path) -> None:
    write_image(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:200])


def _all_classes_but_two(tmp: Path) -> list[str]:
    root = tmp / "val"
    for wnid in imagenet1k_wnids()[2:]:
        (root / wnid).mkdir(parents=True)
        (root / wnid / f"{wnid}_1.JPEG").touch()
    return ["dataset=imagenet_val", f"dataset.root={root}", "dataset.image_size=64", *IMAGE]


def _an_extra_class(tmp: Path) -> list[str]:
    overrides = imagenet_folder(tmp / "val")
    write_image(tmp / "val" / "n00000001" / "x.JPEG")
    return [o for o in overrides if not o.startswith("dataset.wnids")] + ["dataset.num_classes=3"]


def _two_folders_not_wordnet_ids(tmp: Path) -> list[str]:
    """Three class folders, one named like a WordNet id: the message counts all three (issue 19, item 9)."""
    root = tmp / "val"
    for name in ("n01440764", "cats", "dogs"):
        write_image(root / name / "a.JPEG")
    return ["dataset=imagenet_val", f"dataset.root={root}", "dataset.image_size=64", *IMAGE]


def _gtsegs_plain_arrays(path: Path) -> list[str]:
    """``/value/img`` and ``/value/gt`` holding pixels instead of object references."""
    with h5py.File(path, "w") as f:
        f.create_dataset("value/img", data=np.zeros((1, 3, 20, 16), dtype=np.uint8))
        f.create_dataset("value/gt", data=np.zeros((1, 20, 16), dtype=np.uint8))
    return gtsegs(path)


def _gtsegs_without_cells(path: Path) -> list[str]:
    """``/value/gt`` referencing the masks directly (the MATLAB cell level missing)."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img = refs.create_dataset("img", data=np.zeros((3, 20, 16), dtype=np.uint8))
        gt = refs.create_dataset("gt", data=np.zeros((20, 16), dtype=np.uint8))
        f.create_dataset("value/img", data=np.array([[img.ref]], dtype=h5py.ref_dtype))
        f.create_dataset("value/gt", data=np.array([[gt.ref]], dtype=h5py.ref_dtype))
    return gtsegs(path)


JOB_FAILURES = [
    Case("gtsegs missing", lambda t: gtsegs(t / "gone.mat"), FileNotFoundError, r"{tmp}/gone.mat.*make data"),
    Case(
        "gtsegs not HDF5",
        lambda t: gtsegs(t / "junk.mat", b"MATLAB 5.0 MAT-file, not HDF5" * 40),
        ValueError,
        r"{tmp}/junk.mat.*not a readable MATLAB v7.3",
    ),
    Case(
        "gtsegs truncated",
        lambda t: gtsegs(t / "cut.mat", (golden_dir() / "synthetic_gtsegs.mat").read_bytes()[:4000]),
        ValueError,
        r"{tmp}/cut.mat.*(truncated|not a readable)",
    ),
    Case(
        "gtsegs wrong layout",
        lambda t: gtsegs(t / "wrong.mat", wrong_layout=True),
        ValueError,
        r"{tmp}/wrong.mat.*no /value/img",
    ),
    Case(
        "gtsegs pixels instead of references",
        lambda t: _gtsegs_plain_arrays(t / "plain.mat"),
        ValueError,
        r"^{tmp}/plain.mat: /value/img is a \(1, 3, 20, 16\) uint8 dataset; expected the gtsegs_ijcv.mat layout: "
        r"/value/img and /value/gt of shape \(N, 1\) holding object references",
    ),
    Case(
        "gtsegs masks without the cell level",
        lambda t: _gtsegs_without_cells(t / "nocell.mat"),
        ValueError,
        r"^{tmp}/nocell.mat: image 0: /value/gt leads to a \(20, 16\) uint8 dataset where a 1x1 cell of "
        r"references was expected; expected the gtsegs_ijcv.mat layout",
    ),
    Case(
        "imagenet root missing",
        lambda t: ["dataset=imagenet_val", f"dataset.root={t}/nowhere", *IMAGE],
        FileNotFoundError,
        r"{tmp}/nowhere does not exist",
    ),
    Case("imagenet missing classes", _all_classes_but_two, ValueError, r"998 class folders.*n01440764"),
    Case("imagenet extra class", _an_extra_class, ValueError, r"n00000001.*not ImageNet-1k classes"),
    Case(
        "imagenet class folders not named by WordNet id",
        _two_folders_not_wordnet_ids,
        ValueError,
        r"found 3 class folders, 2 of them not named like a WordNet id \(cats, dogs\); 999 of the 1000",
    ),
    Case(
        "imagenet requested class absent",
        lambda t: [o.replace(WNIDS[1], "n09999999") for o in imagenet_folder(t / "val")],
        FileNotFoundError,
        r"requested classes n09999999",
    ),
    Case(
        "eraser root missing",
        lambda t: ["dataset=eraser_synthetic", f"dataset.root={t}/movies", *TEXT],
        FileNotFoundError,
        r"{tmp}/movies/test.jsonl not found.*ERASER layout",
    ),
    Case(
        "eraser document missing",
        lambda t: good_review(t / "m", {"annotations": [annotation("gone.txt", spans=[(0, 1)])]}),
        FileNotFoundError,
        r"document {tmp}/m/docs/gone.txt not found \(referenced by test.jsonl\)",
    ),
    Case(
        "eraser span out of range",
        lambda t: good_review(t / "m", {"annotations": [annotation("r1.txt", spans=[(9, 40)])]}),
        ValueError,
        r"test.jsonl annotation 3 \(r1.txt\): evidence span \[9, 40\) is outside document 'r1.txt' of 11 words",
    ),
    Case(
        "checkpoint missing",
        lambda t: [*IMAGE, f"+model.checkpoint_path={t}/none.pt"],
        FileNotFoundError,
        r"checkpoint {tmp}/none.pt not found",
    ),
    Case(
        "checkpoint not a torch file",
        lambda t: (t / "junk.pt").write_bytes(b"\x80\x04K\x01.") and [*IMAGE, f"+model.checkpoint_path={t}/junk.pt"],
        ValueError,
        r"cannot read checkpoint {tmp}/junk.pt: .*expected a state dict saved with torch.save",
    ),
    Case(
        "checkpoint holding an arbitrary pickle",
        lambda t: torch.save(argparse.Namespace(w=1), t / "obj.pt") or [*IMAGE, f"+model.checkpoint_path={t}/obj.pt"],
        ValueError,
        r"cannot read checkpoint {tmp}/obj.pt: .*arbitrary pickles are refused",
    ),
    Case(
        "safetensors truncated",
        lambda t: (
            (t / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
            and [*IMAGE, f"+model.checkpoint_path={t}/w.safetensors"]
        ),
        ValueError,
        r"cannot read checkpoint {tmp}/w.safetensors: .*expected a complete .safetensors file",
    ),
    Case(
        "BERT state dict of another config",
        lambda t: (
            _bert_state_without(t / "bert.pt", "classifier.bias")
            + [f"model.state_dict_path={t}/bert.pt", f"dataset.root={golden_dir()}/eraser_synthetic/data"]
        ),
        ValueError,
        r"checkpoint {tmp}/bert.pt does not match the model config: missing keys \['classifier.bias'\]",
    ),
    Case(
        "checkpoint of another config",
        lambda t: (
            state_dict_file(t / "sd.pt", drop="head.bias", reshape="pos_embed")
            or [*IMAGE, f"+model.checkpoint_path={t}/sd.pt"]
        ),
        ValueError,
        r"{tmp}/sd.pt does not match the model config: .*head.bias",
    ),
]


def run(tmp: Path, overrides: list[str]) -> tuple[dict | None, Path]:
    out = tmp / "out" / "job"
    cfg = compose_config([*overrides, f"paths.output_dir={tmp}/out", "cache_dir=null", "spot_check=0"])
    return run_from_config(cfg, out), out


def nothing_written(out: Path) -> bool:
    return not any((out / name).exists() for name in ("metrics.json", "scores.csv", "examples.npz", "timing.json"))


@pytest.mark.parametrize("case", JOB_FAILURES, ids=lambda c: c.name)
def test_bad_input_is_one_clear_error_and_writes_nothing(case: Case, tmp_path: Path) -> None:
    overrides = case.build(tmp_path)
    with pytest.raises(Exception) as info:
        run(tmp_path, overrides)
    cause = _root_cause(info.value)
    assert isinstance(cause, case.error), f"{type(cause).__name__}: {cause}"
    assert isinstance(cause, USER_ERRORS)  # the CLI prints these as one line, no traceback
    assert re.search(case.message.format(tmp=re.escape(str(tmp_path))), str(cause), re.S), str(cause)
    assert nothing_written(tmp_path / "out" / "job")


@dataclass(frozen=True)
class SampleCase:
    """A bad sample among good ones: ``on_error=raise`` stops with ``message``; ``skip`` records and counts it."""

    name: str
    build: Callable[[Path], list[str]]
    message: str
    bad_id: str


SAMPLE_FAILURES = [
    SampleCase(
        "undecodable image",
        lambda t: imagenet_folder(t / "val", _undecodable),
        r"cannot decode image {tmp}/val/n01440764/n01440764_0.JPEG",
        "n01440764/n01440764_0",
    ),
    SampleCase(
        "truncated image",
        lambda t: imagenet_folder(t / "val", _truncated_jpeg),
        r"cannot decode image {tmp}/val/n01440764/n01440764_0.JPEG.*truncated",
        "n01440764/n01440764_0",
    ),
    SampleCase(
        "tiny image",
        lambda t: imagenet_folder(t / "val", _tiny),
        r"image {tmp}/val/n01440764/n01440764_0.JPEG is 4x3 pixels .*smaller than 8 px",
        "n01440764/n01440764_0",
    ),
    SampleCase(
        "gtsegs image of the wrong shape",
        lambda t: _gtsegs_with_a_two_channel_image(t / "odd.mat"),
        r"{tmp}/odd.mat: image 1 has shape \(2, 20, 16\), expected \(3, W, H\)",
        "seg_00001",
    ),
    SampleCase(
        "gtsegs mask not 0/1",
        lambda t: _gtsegs_with_a_bad_mask(t / "m255.mat", lambda m: m * 255),
        r"{tmp}/m255.mat: image 1: its mask holds the values \[0, 255\]; expected 0/1 \(background/foreground\)",
        "seg_00001",
    ),
    SampleCase(
        "gtsegs mask of another size",
        lambda t: _gtsegs_with_a_bad_mask(t / "msize.mat", lambda m: np.zeros((20, 20), dtype=np.uint8)),
        r"{tmp}/msize.mat: image 1 is 20x16 pixels but its mask 20x20 \(width x height\); expected a mask of "
        r"the image's size",
        "seg_00001",
    ),
]


def _gtsegs_with_a_bad_mask(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> list[str]:
    """Three gtsegs-layout images (stored (3, W, H), masks (W, H) behind a 1x1 cell), the second mask
    replaced by ``change(mask)``."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs, gt_refs = [], []
        for k in range(3):
            mask = (rng.random((20, 16)) > 0.5).astype(np.uint8)
            img = refs.create_dataset(f"i{k}", data=rng.integers(0, 256, (3, 20, 16), dtype=np.uint8))
            gt = refs.create_dataset(f"g{k}", data=change(mask) if k == 1 else mask)
            cell = refs.create_dataset(f"r{k}", data=np.array([[gt.ref]], dtype=h5py.ref_dtype))
            img_refs.append([img.ref])
            gt_refs.append([cell.ref])
        f.create_dataset("value/img", data=np.array(img_refs, dtype=h5py.ref_dtype))
        f.create_dataset("value/gt", data=np.array(gt_refs, dtype=h5py.ref_dtype))
    return gtsegs(path)


def _gtsegs_with_a_two_channel_image(path: Path) -> list[str]:
    """A gtsegs-layout file (MATLAB v7.3: images stored (C, W, H) behind HDF5 references) of three
    images, the second with two channels."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs, gt_refs = [], []
        for k, channels in enumerate((3, 2, 3)):
            img = refs.create_dataset(f"i{k}", data=rng.integers(0, 256, (channels, 20, 16), dtype=np.uint8))
            gt = refs.create_dataset(f"g{k}", data=(rng.random((20, 16)) > 0.5).astype(np.uint8))
            inner = refs.create_dataset(f"r{k}", data=np.array([[gt.ref]], dtype=h5py.ref_dtype))
            img_refs.append([img.ref])
            gt_refs.append([inner.ref])
        f.create_dataset("value/img", data=np.array(img_refs, dtype=h5py.ref_dtype))
        f.create_dataset("value/gt", data=np.array(gt_refs, dtype=h5py.ref_dtype))
    return gtsegs(path)


@pytest.mark.parametrize("case", SAMPLE_FAILURES, ids=lambda c: c.name)
def test_bad_sample_raises_or_is_a_counted_skip(case: SampleCase, tmp_path: Path) -> None:
    overrides = case.build(tmp_path)
    pattern = case.message.format(tmp=re.escape(str(tmp_path)))
    with pytest.raises(Exception) as info:
        run(tmp_path, overrides)
    cause = _root_cause(info.value)
    assert isinstance(cause, USER_ERRORS) and re.search(pattern, str(cause), re.S), f"{type(cause)}: {cause}"
    assert nothing_written(tmp_path / "out" / "job")

    record, out = run(tmp_path, [*overrides, "on_error=skip"])
    rows = list(csv.DictReader((out / "scores.csv").open()))
    skipped = [r for r in rows if r.get("skipped") == "True"]
    assert len(skipped) == record["job"]["skipped"] >= 1
    assert record["job"]["n"] == len(rows) - len(skipped) >= 1  # the good samples still count
    assert all(re.search(pattern, r["skip_reason"], re.S) or "unreadable" in r["skip_reason"] for r in skipped)
    if case.bad_id:
        assert [r["id"] for r in skipped] == [case.bad_id]
    assert sum(record["job"]["skip_reasons"].values()) == len(skipped)


def test_grayscale_and_cmyk_images_are_converted_not_refused(tmp_path: Path) -> None:
    def odd(path: Path) -> None:
        write_image(path, "L", (30, 40), 7)
        write_image(path.with_name("cmyk.JPEG"), "CMYK", (33, 33), 8)

    record, out = run(tmp_path, imagenet_folder(tmp_path / "val", odd))
    assert record["job"]["n"] == 6 and record["job"]["skipped"] == 0
    assert np.isfinite(record["metrics"]["perturbation"]["positive_auc"])


def test_text_longer_than_the_model_is_truncated_reported_and_counted(tmp_path: Path, caplog) -> None:
    long_review = " ".join([REVIEW] * 8)  # 88 words, more pieces than max_length=32
    overrides = good_review(tmp_path / "m", {"docs": {"r1.txt": long_review}})
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        record, out = run(tmp_path, [*overrides, "model.max_length=32"])
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert any(re.match(r"document r1.txt truncated to 32 word-pieces: \d+ of \d+ pieces", m) for m in warned), warned
    assert record["job"]["truncated"] == 1 and record["job"]["n"] == 2
    rows = {r["id"]: r["truncated"] for r in csv.DictReader((out / "scores.csv").open())}
    assert rows == {"r1.txt": "True", "r2.txt": "False"}


def test_empty_evidence_is_warned_and_scored_as_eraser_does(tmp_path: Path, caplog) -> None:
    overrides = good_review(tmp_path / "m", {"docs": {"r3.txt": REVIEW}, "annotations": [annotation("r3.txt")]})
    with caplog.at_level(logging.WARNING, logger="xaibench"):
        record, out = run(tmp_path, overrides)
    assert any(
        re.search(r"1 of 3 annotations have empty evidence \(e.g. r3.txt\)", r.getMessage()) for r in caplog.records
    )
    rows = {r["id"]: r for r in csv.DictReader((out / "scores.csv").open())}
    assert record["job"]["n"] == 3 and record["job"]["skipped"] == 0
    assert float(rows["r3.txt"]["token_f1/p@5"]) == 0.0  # its top words can only be false positives


# -- options and folders: refused before any work, in one line (issue 19, item 9) ---------------------------
OPTION_FAILURES = [
    Case("device=gpu", lambda t: [*IMAGE, "dataset.size=2", "device=gpu"], ValueError, r"device='gpu'.*cpu, cuda"),
    Case("seed=abc", lambda t: [*IMAGE, "dataset.size=2", "seed=abc"], ValueError, r"seed='abc' is not valid.*integer"),
    Case("seed=1.5", lambda t: [*IMAGE, "dataset.size=2", "seed=1.5"], ValueError, r"seed=1.5 is not valid.*integer"),
    Case(
        "spot_check=-1", lambda t: [*IMAGE, "dataset.size=2", "spot_check=-1"], ValueError, r"spot_check must be >= 0"
    ),
    Case("batch_size=0", lambda t: [*IMAGE, "dataset.size=2", "batch_size=0"], ValueError, r"batch_size must be >= 1"),
]


@pytest.mark.parametrize("case", OPTION_FAILURES, ids=lambda c: c.name)
def test_bad_option_is_refused_not_coerced(case: Case, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        cfg = compose_config([*case.build(tmp_path), f"paths.output_dir={tmp_path}/out", "cache_dir=null"])
        run_from_config(cfg, tmp_path / "out" / "job")
    cause = _root_cause(info.value)
    assert isinstance(cause, case.error) and isinstance(cause, USER_ERRORS), f"{type(cause).__name__}: {cause}"
    assert re.search(case.message, str(cause)), str(cause)
    assert nothing_written(tmp_path / "out" / "job")
