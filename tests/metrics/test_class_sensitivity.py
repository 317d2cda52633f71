"""class_sensitivity: hand-checked values, class-agnostic methods score gap 0 / pointing <= 0.5, an oracle 1 / 1."""

from __future__ import annotations

import pytest
import torch
from bert_helpers import tiny_pairs_bert

from xaibench.core.config import LoopConfig
from xaibench.core.loop import run_job
from xaibench.core.types import Attribution, AttributionMethod, Batch, ModelAdapter
from xaibench.datasets.synthetic_pairs import SyntheticPairs
from xaibench.datasets.synthetic_text_pairs import SyntheticTextPairs
from xaibench.methods.attention import RawAttention, Rollout
from xaibench.metrics.class_sensitivity import ClassSensitivity, item_scores
from xaibench.metrics.segmentation import Segmentation

CONFIG = LoopConfig(device="cpu", target="each", spot_check=0, save_examples=0, batch_size=4)


class MaskOracle(AttributionMethod):
    """The explained class's own evidence as its map: the explained object's mask (pixels) or 1 on the
    word-pieces of the explained topic's words."""

    name = "mask_oracle"

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        with torch.no_grad():
            logits = model.logits(batch.inputs)
        if batch.images is not None:
            maps, level = batch.masks.to(logits.dtype), "pixels"
        else:
            index = batch.extras["word_index"]
            maps = torch.zeros(index.shape, dtype=logits.dtype)
            for i, spans in enumerate(batch.extras["rationales"]):
                for start, end in spans:
                    maps[i] += ((index[i] >= start) & (index[i] < end)).to(logits.dtype)
            level = "tokens"
        return Attribution(maps=maps, targets=target, logits=logits, level=level)


def test_item_scores_by_hand() -> None:
    values = torch.tensor([0.0, 3.0, 1.0, -2.0, 0.0, 1.0])
    valid = torch.ones(6, dtype=torch.bool)
    own = torch.tensor([False, True, True, False, False, False])
    other = torch.tensor([False, False, False, False, True, True])
    masks = torch.stack([own, other])
    # positive mass 3 + 1 + 1 = 5: 4 in own, 1 in the other; the maximum (3) is in own
    assert item_scores(values, valid, masks) == (1.0, [0.8, 0.2])
    # a constant map: every position is a tied maximum (2 of 6 in own) and the mass spreads evenly
    pointing, shares = item_scores(torch.zeros(6), valid, masks)
    assert pointing == pytest.approx(1 / 3) and shares == pytest.approx([1 / 3, 1 / 3])
    # words without a score (not valid) are never the maximum and carry no mass
    nan = torch.tensor([float("nan"), 1.0, 0.0, 0.0, 0.0, 3.0])
    assert item_scores(nan, ~torch.isnan(nan), masks) == (0.0, [0.25, 0.75])


def _image_batch(maps: torch.Tensor) -> tuple[Batch, Attribution]:
    a = torch.zeros(4, 4, dtype=torch.long)
    a[:2, :2] = 1  # object of class 0: top left
    b = torch.zeros(4, 4, dtype=torch.long)
    b[2:, 2:] = 1  # object of class 2: bottom right
    batch = Batch(
        ids=("s#0", "s#2"),
        inputs=None,
        labels=torch.tensor([0, 2]),
        images=torch.zeros(2, 3, 4, 4),
        masks=torch.stack([a, b]),
        extras={"samples": ("s", "s"), "other_masks": (b[None], a[None])},
    )
    return batch, Attribution(maps=maps, targets=torch.tensor([0, 2]), logits=torch.zeros(2, 4), level="pixels")


def test_image_values_by_hand() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 0, 3] = 2.0, 1.0, -1.0  # class 0: 2/3 own, 1/3 other, max in own
    maps[1, 0, 0], maps[1, 3, 3] = 1.0, 3.0  # class 2: 3/4 own, 1/4 other, max in own
    batch, attribution = _image_batch(maps)
    metric = ClassSensitivity()
    rows = metric.update(batch, attribution, model=None)
    assert rows[0]["pointing"] == rows[1]["pointing"] == 1.0
    assert rows[0]["mass_gap"] == pytest.approx(1 / 3) and rows[1]["mass_gap"] == pytest.approx(1 / 2)
    assert rows[0]["both_point"] == rows[1]["both_point"] == 1.0
    out = metric.compute()
    assert out["pointing"] == 1.0 and out["mass_gap"] == pytest.approx(5 / 12) and out["both_point"] == 1.0
    assert out["mass_own"] == pytest.approx((2 / 3 + 3 / 4) / 2) and out["n"] == 2 and out["n_samples"] == 1
    # a tie between the two objects counts half a hit (a random tie break), and so does both_point
    maps[1, 3, 3] = 1.0
    batch, attribution = _image_batch(maps)
    rows = ClassSensitivity().update(batch, attribution, model=None)
    assert rows[1]["pointing"] == 0.5 and rows[1]["mass_gap"] == 0.0 and rows[0]["both_point"] == 0.5


def test_the_same_map_for_both_classes_gives_gap_exactly_zero() -> None:
    torch.manual_seed(1)
    shared = torch.randn(4, 4)
    batch, attribution = _image_batch(torch.stack([shared, shared]))
    metric = ClassSensitivity()
    rows = metric.update(batch, attribution, model=None)
    assert rows[0]["mass_gap"] == -rows[1]["mass_gap"] != 0.0
    assert rows[0]["pointing"] + rows[1]["pointing"] <= 1.0
    assert metric.compute()["mass_gap"] == 0.0


def test_shards_merge_to_the_single_pass() -> None:
    torch.manual_seed(2)
    batches = [_image_batch(torch.randn(2, 4, 4)) for _ in range(3)]
    one, shard_a, shard_b = ClassSensitivity(), ClassSensitivity(), ClassSensitivity()
    for k, (batch, attribution) in enumerate(batches):
        one.update(batch, attribution, model=None)
        (shard_a if k % 2 else shard_b).update(batch, attribution, model=None)
    shard_a.merge(shard_b.state())
    assert shard_a.compute() == pytest.approx(one.compute())


def _run(tmp_path, dataset, model, method, name: str, segmentation: bool = False) -> dict:
    metrics = {"class_sensitivity": ClassSensitivity()}
    if segmentation:
        metrics["segmentation"] = Segmentation()
    return run_job(dataset, model, method, metrics, tmp_path / name, CONFIG)["metrics"]


def test_class_agnostic_image_methods_and_the_oracle_on_a_tiny_vit(tmp_path) -> None:
    from helpers import tiny_vit

    model = tiny_vit(img_size=32, patch_size=8, num_classes=4)
    data = SyntheticPairs(size=6, image_size=32, seed=3)
    for name, method in (("rollout", Rollout(start_layer=0)), ("raw_attention", RawAttention())):
        out = _run(tmp_path, data, model, method, name)["class_sensitivity"]
        assert out["mass_gap"] == 0.0, name
        assert out["pointing"] <= 0.5 and out["both_point"] == 0.0, name
        assert out["n"] == 12 and out["n_samples"] == 6
    oracle = _run(tmp_path, data, model, MaskOracle(), "oracle", segmentation=True)
    assert oracle["class_sensitivity"]["pointing"] == 1.0 and oracle["class_sensitivity"]["mass_gap"] == 1.0
    assert oracle["class_sensitivity"]["both_point"] == 1.0
    # segmentation scores each map against the explained object's mask: the oracle's is exact
    assert oracle["segmentation"]["iou_fg"] == pytest.approx(1.0) and oracle["segmentation"]["pixel_accuracy"] == 1.0


def test_rollout_maps_by_hand_on_a_tiny_vit() -> None:
    """The two classes of a sample get the same rollout map; the shares computed by hand cancel."""
    from helpers import tiny_vit
    from xaibench.core.heatmaps import upsample
    from xaibench.core.loading import collate_samples as _collate
    from xaibench.core.targets import explained_samples

    model = tiny_vit(img_size=32, patch_size=8, num_classes=4)
    sample = SyntheticPairs(size=1, image_size=32, seed=4)[0]
    batch = _collate(model, explained_samples(sample, "each"))
    attribution = Rollout(start_layer=0)(model, batch, batch.labels)
    assert torch.equal(attribution.maps[0], attribution.maps[1])
    pixels = upsample(attribution.maps.double(), "tokens", (32, 32))[0].clamp(min=0)
    a, b = (m.bool() for m in sample.class_masks)
    share_a, share_b = float(pixels[a].sum() / pixels.sum()), float(pixels[b].sum() / pixels.sum())
    rows = ClassSensitivity().update(batch, attribution, model)
    assert rows[0]["mass_gap"] == pytest.approx(share_a - share_b, abs=1e-12)
    assert rows[1]["mass_gap"] == pytest.approx(share_b - share_a, abs=1e-12)
    top = int(pixels.flatten().argmax())
    assert rows[0]["pointing"] == float(a.flatten()[top]) and rows[1]["pointing"] == float(b.flatten()[top])


def test_class_agnostic_text_methods_and_the_oracle_on_a_tiny_bert(tmp_path) -> None:
    model = tiny_pairs_bert(tmp_path)
    data = SyntheticTextPairs(6, seed=2)
    for name, method in (("rollout", Rollout(start_layer=0)), ("raw_attention", RawAttention())):
        out = _run(tmp_path, data, model, method, name)["class_sensitivity"]
        assert out["mass_gap"] == 0.0, name
        assert out["pointing"] <= 0.5 and out["both_point"] == 0.0, name
    oracle = _run(tmp_path, data, model, MaskOracle(), "oracle")["class_sensitivity"]
    assert oracle["pointing"] == 1.0 and oracle["mass_gap"] == 1.0 and oracle["both_point"] == 1.0


def test_needs_target_each_and_per_class_evidence(tmp_path) -> None:
    from helpers import tiny_vit
    from xaibench.datasets.synthetic import SyntheticShapes

    model = tiny_vit(img_size=32, patch_size=8, num_classes=4)
    metrics = {"class_sensitivity": ClassSensitivity()}
    with pytest.raises(ValueError, match="scores target=each, not target=predicted"):
        run_job(SyntheticPairs(2, 32), model, Rollout(), metrics, tmp_path, LoopConfig(device="cpu"))
    with pytest.raises(ValueError, match=r"needs \['class_evidence'\]"):
        run_job(SyntheticShapes(2, 32), model, Rollout(), metrics, tmp_path, CONFIG)
