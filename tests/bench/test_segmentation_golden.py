"""End to end on the golden gtsegs file: our segmentation numbers equal the reference script's."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from helpers import golden_dir, load_golden_vit
from xaibench.core.loop import LoopConfig, run_job
from xaibench.datasets.imagenet_seg import ImageNetSegmentation
from xaibench.methods.attention import AttnGradCAM, RawAttention, Rollout
from xaibench.metrics.segmentation import Segmentation

# the reference script's method names -> ours, as its evaluation script calls them
METHODS = {
    "attn_last_layer": lambda: RawAttention(),
    "rollout": lambda: Rollout(start_layer=1),
    "attn_gradcam": lambda: AttnGradCAM(constant_map="nan"),
}
try:  # the relevance methods join when present
    from xaibench.methods import lrp

    METHODS.update(
        {
            "transformer_attribution": lambda: lrp.TransformerAttribution(start_layer=1),
            "full_lrp": lambda: lrp.FullLRP(),
            "lrp_last_layer": lambda: lrp.PartialLRP(),
        }
    )
except ImportError:
    pass


@pytest.mark.golden
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_segmentation_end_to_end_matches_reference(name: str, batch_size: int, tmp_path) -> None:
    gold = json.loads((golden_dir() / "seg_e2e_golden.json").read_text())
    if name not in gold:
        pytest.skip(f"{name} not in seg_e2e_golden.json")
    gold = gold[name]
    model = load_golden_vit("vit_tiny")
    dataset = ImageNetSegmentation(str(golden_dir() / "synthetic_gtsegs.mat"))
    record = run_job(
        dataset,
        model,
        METHODS[name](),
        {"segmentation": Segmentation()},
        tmp_path,
        LoopConfig(device="cpu", precision="float64", batch_size=batch_size),
    )
    ours = record["metrics"]["segmentation"]
    assert ours["total_correct"] == gold["total_correct"]
    assert ours["total_label"] == gold["total_label"]
    assert ours["total_inter"] == gold["total_inter"]
    assert ours["total_union"] == gold["total_union"]
    for key, ref in (("pixel_accuracy", "pixAcc"), ("miou", "mIoU"), ("map", "mAP")):
        assert math.isclose(ours[key], gold[ref], rel_tol=1e-6, abs_tol=1e-9), (key, ours[key], gold[ref])
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(gold["per_image_ap"])
    aps = [float(r["segmentation/ap"]) for r in rows]
    for ap, ref in zip(aps, gold["per_image_ap"], strict=True):
        assert math.isclose(ap, ref, rel_tol=1e-6)
    assert torch.get_default_dtype() == torch.float32
