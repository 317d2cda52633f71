"""Insertion/deletion and ROAD: known answers, batching, fused attention, bad input; the adapters' fused path."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from helpers import tiny_vit
from xaibench.core.types import Attribution, Batch, ImageModelAdapter, Sample
from xaibench.metrics.imputation import noisy_linear_impute
from xaibench.metrics.insertion_deletion import InsertionDeletion, gaussian_blur
from xaibench.metrics.road import Road

SIDE = 8


class MeanModel(ImageModelAdapter):
    """Two classes; ``logit_0 = 4 · mean(channel 0)``, ``logit_1 = 0``: the curves are known in closed form."""

    grid_size = (1, 1)

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1).double()
        self.calls = 0

    @property
    def name(self) -> str:
        return "mean"

    def collate(self, samples: Sequence[Sample]) -> Batch:
        raise NotImplementedError

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        m = inputs[:, 0].flatten(1).double().mean(dim=1)
        return torch.stack([4 * m, torch.zeros_like(m)], dim=1)

    def attention_layers(self) -> Sequence[nn.Module]:
        return []

    def forward_with_attention(self, inputs, layers=None):
        raise NotImplementedError

    def token_map(self, row):
        raise NotImplementedError


def mean_case(n: int = 2):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, SIDE, SIDE, generator=g, dtype=torch.float64)
    batch = Batch(ids=tuple(f"m{i}" for i in range(n)), inputs=images, labels=torch.zeros(n, dtype=torch.long))
    att = Attribution(
        maps=images[:, 0].clone(), targets=torch.zeros(n, dtype=torch.long), logits=torch.zeros(n, 2), level="pixels"
    )
    return batch, att


def test_deletion_curve_known_answer() -> None:
    """The map is the image itself: deletion to 0 removes the brightest pixels first, one pixel per step."""
    batch, att = mean_case()
    model = MeanModel()
    runner = InsertionDeletion(step_pixels=224 * 224 // (SIDE * SIDE), deletion_baseline="zero", batch_size=5)
    assert runner.step_size(SIDE, SIDE) == 1
    rows = runner.update(batch, att, model)
    area = SIDE * SIDE
    for i, row in enumerate(rows):
        values = batch.inputs[i, 0].flatten().sort(descending=True).values
        remaining = values.sum() - torch.cat([torch.zeros(1, dtype=torch.float64), values.cumsum(0)])
        probs = torch.sigmoid(4 * remaining / area)  # softmax of [4m, 0]
        expected = float(((probs[1:] + probs[:-1]) / 2).sum() / area)
        assert row["deletion_auc"] == pytest.approx(expected, abs=1e-12) and row["steps"] == area
    assert model.calls == -(-(2 * (2 * area + 1)) // 5)  # 2n + 1 inputs per image, in forwards of 5
    out = runner.compute()
    assert out["deletion@0"] == pytest.approx(float(torch.sigmoid(4 * batch.inputs[:, 0].mean((1, 2))).mean()))
    assert out["insertion@1"] == pytest.approx(out["deletion@0"])  # fully inserted = the image


def test_insertion_starts_from_the_blur_and_better_maps_score_better() -> None:
    batch, att = mean_case(3)
    model = MeanModel()
    good = InsertionDeletion(step_pixels=784 * 4, insertion_baseline="blur", blur_kernel=3, blur_sigma=1.0)
    rows = good.update(batch, att, model)
    inverted = Attribution(maps=-att.maps, targets=att.targets, logits=att.logits, level="pixels")
    bad = InsertionDeletion(step_pixels=784 * 4, insertion_baseline="blur", blur_kernel=3, blur_sigma=1.0)
    worse = bad.update(batch, inverted, model)
    for g, w in zip(rows, worse, strict=True):
        assert g["insertion_auc"] > w["insertion_auc"] and g["deletion_auc"] < w["deletion_auc"]
    blurred = gaussian_blur(torch.ones(1, 3, 6, 6, dtype=torch.float64), 3, 1.0)
    assert torch.allclose(blurred, torch.ones_like(blurred))  # normalised kernel, reflect padding


def test_road_keeps_constant_images_and_imputes_linear_ramps_exactly() -> None:
    # a linear ramp across the columns is harmonic for the 8-neighbour weights away from the left/right border
    ramp = torch.arange(12, dtype=torch.float64).expand(3, 10, 12).clone()
    removed = torch.zeros(10, 12, dtype=torch.bool)
    removed[0:6, 1:11] = True
    out = noisy_linear_impute(ramp, removed, noise=0.0)
    assert torch.allclose(out, ramp, atol=1e-12)
    with pytest.raises(ValueError, match="at least one kept pixel"):
        noisy_linear_impute(ramp, torch.ones(10, 12, dtype=torch.bool))
    # a constant image is imputed as itself: every step keeps the prediction
    images = torch.full((2, 3, SIDE, SIDE), 0.3, dtype=torch.float64)
    batch = Batch(ids=("a", "b"), inputs=images, labels=torch.zeros(2, dtype=torch.long))
    att = Attribution(
        maps=torch.rand(2, SIDE, SIDE), targets=torch.zeros(2, dtype=torch.long), logits=torch.zeros(2, 2)
    )
    runner = Road(noise=0.0)
    runner.update(batch, Attribution(att.maps, att.targets, att.logits, "pixels"), MeanModel())
    out = runner.compute()
    assert out["base_accuracy"] == 1.0 and out["morf_auc"] == pytest.approx(90.0) and out["lerf_minus_morf"] == 0
    assert out["morf_prob_0.5"] == pytest.approx(float(torch.sigmoid(torch.tensor(1.2))))


def test_batched_equals_one_by_one_fused_equals_eager_and_noise_follows_the_id() -> None:
    model = tiny_vit(img_size=16, patch_size=8).to(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    samples = [Sample(id=f"s{i}", label=i % 2, image=torch.rand(3, 16, 16, generator=g)) for i in range(3)]
    batch = model.batch_to(model.collate(samples))
    att = Attribution(
        maps=torch.rand(3, 2, 2, generator=g, dtype=torch.float64),
        targets=torch.tensor([0, 1, 2]),
        logits=torch.zeros(3, 4),
    )
    for make in (
        lambda f: InsertionDeletion(step_pixels=224 * 224 // 16, fused_attention=f, batch_size=7),
        lambda f: Road(fractions=[0.25, 0.75], fused_attention=f, batch_size=4),
    ):
        whole = make(True).update(batch, att, model)
        eager = make(False).update(batch, att, model)
        single = []
        for i in range(3):
            one = model.batch_to(model.collate(samples[i : i + 1]))
            single += make(True).update(
                one, Attribution(att.maps[i : i + 1], att.targets[i : i + 1], att.logits[i : i + 1]), model
            )
        for a, b, c in zip(whole, eager, single, strict=True):
            assert a == pytest.approx(b, abs=1e-10) and a == pytest.approx(c, abs=1e-10)


def test_adapters_fused_attention_matches_eager_and_restores_it() -> None:
    from timm.models.vision_transformer import Attention

    model = tiny_vit(img_size=16, patch_size=8).to(dtype=torch.float64)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        eager = model.logits(x)
        with model.fused_attention():
            assert all(m.fused_attn for m in model.model.modules() if isinstance(m, Attention))
            fused = model.logits(x)
    assert not any(m.fused_attn for m in model.model.modules() if isinstance(m, Attention))
    assert torch.allclose(eager, fused, atol=1e-12)
    groups = model.layer_groups()
    assert [n for n, _ in groups] == ["embeddings", "block0", "block1", "head"]
    covered = {
        id(p)
        for _, items in groups
        for it in items
        for p in ([it] if isinstance(it, nn.Parameter) else it.parameters())
    }
    assert covered == {id(p) for p in model.model.parameters()}


def test_bad_input_gets_one_clear_line() -> None:
    with pytest.raises(ValueError, match="step_pixels must be >= 1"):
        InsertionDeletion(step_pixels=0)
    with pytest.raises(ValueError, match="unknown deletion_baseline 'black'"):
        InsertionDeletion(deletion_baseline="black")
    with pytest.raises(ValueError, match="strictly increasing in \\(0, 1\\)"):
        Road(fractions=[0.5, 0.2])
    with pytest.raises(ValueError, match="orders must be distinct"):
        Road(orders=["morf", "random"])
    batch, att = mean_case()
    unlabelled = Batch(ids=batch.ids, inputs=batch.inputs, labels=torch.full((2,), -1))
    with pytest.raises(ValueError, match="ground-truth labels"):
        Road().update(unlabelled, att, MeanModel())


@pytest.mark.golden
def test_bert_fused_attention_matches_eager_and_restores_it() -> None:
    from helpers import golden_dir
    from xaibench.models.hf_bert import HFBert

    d = golden_dir()
    model = HFBert(
        config_path=str(d / "bert_small_config.json"),
        state_dict_path=str(d / "bert_small_state_dict.pt"),
        vocab_path=str(d / "eraser_synthetic" / "vocab.txt"),
    ).to(dtype=torch.float64)
    batch = model.collate([Sample(id="a", words=("a", "fine", "film")), Sample(id="b", words=("dull",))])
    with torch.no_grad():
        eager = model.logits(batch.inputs)
        with model.fused_attention():
            assert model.model.config._attn_implementation == "sdpa"
            fused = model.logits(batch.inputs)
    assert model.model.config._attn_implementation == "eager"
    assert torch.allclose(eager, fused, atol=1e-10)
    names = [n for n, _ in model.layer_groups()]
    assert names[0] == "embeddings" and names[-1] == "head" and len(names) == len(model.encoder_layers()) + 2
