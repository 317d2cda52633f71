"""Perturbation runner: AUC definitions, heatmap preparation, directions, batching and shard merging."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.types import Attribution, Batch, ImageModelAdapter, Sample, merge_states
from xaibench.metrics.perturbation import (
    DEFAULT_STEPS,
    Perturbation,
    perturbation_auc,
    reference_heatmap,
)

SIDE = 10  # 10 x 10 images: k = int(100 * p) pixels per step


class ThresholdModel(ImageModelAdapter):
    """Predicts class 0 while more than ``t`` of the pixels are left, ``t`` = the image's (constant) value.

    Sample ``b`` is built with value ``t_b``; with label 0 it is a hit at removed fraction ``x`` iff
    ``1 - x > t_b``, so the accuracy curve is known in closed form.
    """

    modality = "image"

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1).double()
        self.seen: list[torch.Tensor] = []

    @property
    def name(self) -> str:
        return "threshold"

    def collate(self, samples: Sequence[Sample]) -> Batch:
        raise NotImplementedError

    def attention_layers(self) -> Sequence[nn.Module]:
        return []

    @property
    def grid_size(self) -> tuple[int, int]:
        return (SIDE, SIDE)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * 2 - 1  # like Normalize(0.5, 0.5): removed pixels become -1

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        self.seen.append(inputs.detach().clone())
        images = (inputs + 1) / 2
        kept = (images != 0).any(dim=1).flatten(1).double().mean(dim=1)
        value = images.flatten(1).amax(dim=1).double()
        return torch.stack([kept - value, torch.zeros_like(kept), torch.full_like(kept, -5.0)], dim=1)

    def forward_with_attention(self, inputs, layers=None):
        raise NotImplementedError("a test stub without attention")

    def token_map(self, row):
        raise NotImplementedError("a test stub without tokens")


def threshold_batch(values: Sequence[float], start: int = 0) -> Batch:
    n = len(values)
    images = torch.tensor(values, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, SIDE, SIDE).contiguous()
    return Batch(
        ids=tuple(f"s{start + i}" for i in range(n)),
        inputs=None,
        labels=torch.zeros(n, dtype=torch.long),
        images=images,
    )


def random_attr(n: int, seed: int = 0, level: str = "pixels") -> Attribution:
    g = torch.Generator().manual_seed(seed)
    shape = (n, SIDE, SIDE) if level == "pixels" else (n, 2, 2)
    return Attribution(
        maps=torch.rand(shape, generator=g, dtype=torch.float64),
        targets=torch.zeros(n, dtype=torch.long),
        logits=torch.zeros(n, 3),
        level=level,
    )


# -- AUC -------------------------------------------------------------------------------------------


def test_auc_closed_forms() -> None:
    steps = list(DEFAULT_STEPS)
    # accuracy 1 - x is linear, so the trapezoid rule is exact: ∫_0^0.9 (1 - x) dx = 0.495
    linear = [1 - x for x in steps]
    assert perturbation_auc(linear, 1.0, steps, "trapezoid_0_to_0.9") == pytest.approx(49.5, abs=1e-12)
    # eleven points add (0.9 -> 1.0) with acc(1.0) = 0: + 0.1 * (0.1 + 0) / 2 = 0.005
    assert perturbation_auc(linear, 1.0, steps, "eleven_point") == pytest.approx(50.0, abs=1e-12)
    # a constant curve a: 90 a, and 90 a + 5 a
    assert perturbation_auc([0.6] * 9, 0.6, steps, "trapezoid_0_to_0.9") == pytest.approx(54.0)
    assert perturbation_auc([0.6] * 9, 0.6, steps, "eleven_point") == pytest.approx(57.0)
    # a drop to zero after the first step: the first trapezoid only
    assert perturbation_auc([0.0] * 9, 0.8, steps, "trapezoid_0_to_0.9") == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown AUC definition"):
        perturbation_auc(linear, 1.0, steps, "simpson")


def test_metric_auc_equals_closed_form() -> None:
    values = [(b + 0.5) / 10 for b in range(10)]  # hit at x iff 1 - x > t_b: accuracy 1 - x
    metric = Perturbation(batch_size=7)
    rows = metric.update(threshold_batch(values), random_attr(10), ThresholdModel())
    out = metric.compute()
    assert out["n"] == 10 and out["base_accuracy"] == 1.0
    for direction in ("positive", "negative"):
        for step in DEFAULT_STEPS:
            assert out[f"{direction}_acc_{step:g}"] == pytest.approx(1 - step)
        assert out[f"{direction}_auc"] == pytest.approx(49.5)
        assert out[f"{direction}_auc_trapezoid_0_to_0.9"] == pytest.approx(49.5)
        assert out[f"{direction}_auc_eleven_point"] == pytest.approx(50.0)
        # the mean of the per-sample AUCs is the dataset AUC
        assert sum(r[f"{direction}_auc"] for r in rows) / len(rows) == pytest.approx(49.5)
    assert out["auc_definition"] == "trapezoid_0_to_0.9"
    eleven = Perturbation(auc="eleven_point")
    eleven.update(threshold_batch(values), random_attr(10), ThresholdModel())
    assert eleven.compute()["positive_auc"] == pytest.approx(50.0)
    assert eleven.compute()["auc_definition"] == "eleven_point"


# -- heatmap preparation ----------------------------------------------------------------------------


def test_token_maps_are_upsampled_and_scaled_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1)
    attr = Attribution(maps=maps, targets=torch.zeros(3, dtype=torch.long), logits=torch.zeros(3, 2))
    together = reference_heatmap(attr, (32, 32), dtype=None)
    for b in range(3):
        # the reference: batch of one, scale_factor = patch size, min-max over the (single-sample) batch
        res = F.interpolate(maps[b : b + 1, None], scale_factor=8, mode="bilinear")
        res = (res - res.min()) / (res.max() - res.min())
        assert torch.equal(together[b], res[0, 0])
    assert reference_heatmap(attr, (32, 32)).dtype == torch.float32  # the reference's HDF5 dtype


def test_constant_map_gives_nan_like_the_reference() -> None:
    attr = Attribution(maps=torch.ones(1, 4, 4), targets=torch.zeros(1, dtype=torch.long), logits=torch.zeros(1, 2))
    assert torch.isnan(reference_heatmap(attr, (8, 8))).all()
    metric = Perturbation(steps=[0.5])
    rows = metric.update(
        threshold_batch([0.3]), Attribution(torch.ones(1, 2, 2), attr.targets, attr.logits), ThresholdModel()
    )
    assert rows[0]["positive_hit_0.5"] == 1  # still classified (0.5 left > 0.3)


def test_directions_remove_most_and_least_relevant_first() -> None:
    relevance = torch.arange(SIDE * SIDE, dtype=torch.float64).view(1, SIDE, SIDE)  # pixel i has relevance i
    attr = Attribution(
        maps=relevance, targets=torch.zeros(1, dtype=torch.long), logits=torch.zeros(1, 3), level="pixels"
    )
    for direction, removed in (("positive", range(80, 100)), ("negative", range(0, 20))):
        model = ThresholdModel()
        Perturbation(steps=[0.2], directions=[direction]).update(threshold_batch([0.5]), attr, model)
        perturbed = (model.seen[-1][-1] + 1) / 2  # [3, H, W]: the last image is the 0.2 step
        zero = (perturbed == 0).all(dim=0).flatten()
        assert zero.nonzero().flatten().tolist() == list(removed)


def test_rows_and_keys_for_one_direction() -> None:
    metric = Perturbation(steps=[0.25, 0.5], directions="negative")
    rows = metric.update(threshold_batch([0.1, 0.9]), random_attr(2), ThresholdModel())
    assert set(rows[0]) == {
        "model_hit", "model_pred", "model_dissimilarity", "negative_auc",
        *(f"negative_{q}_{p}" for q in ("hit", "logit_diff", "prob_diff", "dissimilarity") for p in ("0.25", "0.5")),
    }  # fmt: skip
    assert [r["negative_hit_0.5"] for r in rows] == [1, 0]
    out = metric.compute()
    assert not any(k.startswith("positive") for k in out)
    # logit and probability differences: top-1 after minus top-1 before
    kept = 1 - int(100 * 0.5) / 100
    assert rows[0]["negative_logit_diff_0.5"] == pytest.approx((kept - 0.1) - (1 - 0.1), abs=1e-6)
    # dissimilarity: log(p_label / p_second); label 0 is top-1 here, class 1 (logit 0) is second
    assert rows[0]["model_dissimilarity"] == pytest.approx(0.9, abs=1e-6)


def test_same_rows_whatever_the_batching() -> None:
    values = [0.05, 0.35, 0.55, 0.75, 0.95]
    attr = random_attr(5, level="tokens")
    one = Perturbation(batch_size=64)
    rows_one = one.update(threshold_batch(values), attr, ThresholdModel())
    split = Perturbation(batch_size=3)
    rows_split = []
    for sl in (slice(0, 2), slice(2, 5)):
        part = Attribution(attr.maps[sl], attr.targets[sl], attr.logits[sl], attr.level)
        rows_split += split.update(threshold_batch(values[sl], sl.start), part, ThresholdModel())
    assert rows_one == rows_split
    on_model_device = Perturbation(topk_device="model").update(threshold_batch(values), attr, ThresholdModel())
    assert on_model_device == rows_one
    assert _close(one.compute(), split.compute())  # sums in another order: equal to rounding


def test_shards_merge_to_the_whole() -> None:
    values = [(b + 0.5) / 10 for b in range(10)]
    attr = random_attr(10)
    whole = Perturbation()
    whole.update(threshold_batch(values), attr, ThresholdModel())
    a, b = Perturbation(), Perturbation()
    a.update(
        threshold_batch(values[:4]),
        Attribution(attr.maps[:4], attr.targets[:4], attr.logits[:4], "pixels"),
        ThresholdModel(),
    )
    b.update(
        threshold_batch(values[4:], 4),
        Attribution(attr.maps[4:], attr.targets[4:], attr.logits[4:], "pixels"),
        ThresholdModel(),
    )
    a.merge(b)
    assert _close(a.compute(), whole.compute())
    # the loop's path: states gathered from the ranks, added leaf by leaf, loaded into one runner
    c = Perturbation()
    c.load_state(merge_states([a.state(), Perturbation().state()]))
    assert _close(c.compute(), whole.compute())
    assert json.loads(json.dumps(c.state())) == c.state()  # plain numbers and lists
    with pytest.raises(ValueError, match="shape"):
        Perturbation(directions=["negative"]).load_state(c.state())
    c.reset()
    assert c.compute()["n"] == 0 and math.isnan(c.compute()["positive_auc"])


def _close(x: dict, y: dict) -> bool:
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], str):
            assert x[k] == y[k]
        else:
            assert x[k] == pytest.approx(y[k], rel=1e-12, abs=1e-15), k
    return True


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"directions": ["pos"]}, "directions"),
        ({"directions": []}, "directions"),
        ({"directions": ["positive", "positive"]}, "directions"),
        ({"steps": [0.5, 0.2]}, "strictly increasing"),
        ({"steps": [0.0, 0.5]}, "strictly increasing"),
        ({"steps": []}, "empty"),
        ({"auc": "simpson"}, "auc"),
        ({"batch_size": 0}, "batch_size"),
        ({"heatmap_dtype": "float16"}, "heatmap_dtype"),
        ({"topk_device": "cuda"}, "topk_device"),
    ],
)
def test_bad_parameters(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        Perturbation(**kwargs)


def test_bad_inputs() -> None:
    metric = Perturbation()
    batch = threshold_batch([0.5, 0.5])
    unlabeled = Batch(ids=batch.ids, inputs=None, labels=torch.tensor([0, -1]), images=batch.images)
    with pytest.raises(ValueError, match=r"samples \['s1'\] have none"):
        metric.update(unlabeled, random_attr(2), ThresholdModel())
    with pytest.raises(ValueError, match="needs `batch.images`"):
        metric.update(Batch(ids=batch.ids, inputs=None, labels=batch.labels), random_attr(2), ThresholdModel())
    with pytest.raises(ValueError, match="3 maps for a batch of 2"):
        metric.update(batch, random_attr(3), ThresholdModel())
    with pytest.raises(ValueError, match="pixel-level maps are"):
        metric.update(
            batch, Attribution(torch.rand(2, 5, 5), torch.zeros(2), torch.zeros(2, 3), "pixels"), ThresholdModel()
        )
    assert Perturbation.requires == frozenset({"label"}) and Perturbation.needs_model
    assert Perturbation.modalities == frozenset({"image"})
