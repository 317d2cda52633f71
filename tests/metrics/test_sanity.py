"""Sanity checks: on the golden ViT and BERT through the loop, the user's model untouched, refusal without a
method, and what a method that ignores the model (random) and one that ignores the class (rollout) show."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import golden_dir, load_golden_vit, tiny_vit
from xaibench.core.checks import check_compatible
from xaibench.core.config import LoopConfig
from xaibench.core.loop import run_job
from xaibench.core.types import Sample
from xaibench.datasets.synthetic import SyntheticShapes
from xaibench.methods.attention import Rollout
from xaibench.methods.baselines import RandomAttribution
from xaibench.methods.lrp import TransformerAttribution
from xaibench.metrics.sanity import Sanity

ONE = LoopConfig(device="cpu", batch_size=1, limit=1, spot_check=0, cache_dir=None, save_examples=0)


@pytest.mark.golden
def test_golden_vit_through_the_loop_keeps_the_weights(tmp_path) -> None:
    model = load_golden_vit("vit_tiny", dtype=torch.float32)
    before = model.weights_hash()
    record = run_job(
        SyntheticShapes(size=2, image_size=224),
        model,
        TransformerAttribution(),
        {"sanity": Sanity()},
        tmp_path,
        ONE,
    )
    out = record["metrics"]["sanity"]
    assert out["layers"] == ["head", "block3", "block2", "block1", "block0", "embeddings"]
    assert out["n"] == 1 and record["job"]["weights_sha256_16"] == before == model.weights_hash()
    # transformer attribution depends on the weights: fully randomised maps no longer look like the original
    assert out["spearman_last"] < 0.5 and out["spearman@head"] > out["spearman_last"]
    assert math.isfinite(out["random_logit_ssim"]) and out["random_logit_spearman"] < 0.99
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert "sanity/spearman@block3" in rows[0] and "sanity/random_logit_class" in rows[0] and len(rows) == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["sanity"]["n"] == 1


@pytest.mark.golden
def test_golden_bert_through_the_loop(tmp_path) -> None:
    from xaibench.datasets.eraser import EraserMovies
    from xaibench.models.hf_bert import HFBert

    d = golden_dir()
    model = HFBert(
        config_path=str(d / "bert_small_config.json"),
        state_dict_path=str(d / "bert_small_state_dict.pt"),
        vocab_path=str(d / "eraser_synthetic" / "vocab.txt"),
        name="bert_small",
    )
    before = model.weights_hash()
    dataset = EraserMovies(root=d / "eraser_synthetic" / "data")
    record = run_job(dataset, model, TransformerAttribution(start_layer=-1), {"sanity": Sanity()}, tmp_path, ONE)
    out = record["metrics"]["sanity"]
    assert out["layers"][0] == "head" and out["layers"][-1] == "embeddings" and out["n"] == 1
    assert all(math.isfinite(out[f"spearman@{name}"]) for name in out["layers"])
    assert model.weights_hash() == before == record["job"]["weights_sha256_16"]


def test_refused_without_a_method() -> None:
    model = tiny_vit(img_size=32, patch_size=8)
    dataset = SyntheticShapes(size=2, image_size=32)
    with pytest.raises(ValueError, match="recomputes maps with the attribution method"):
        check_compatible(dataset, model, None, {"sanity": Sanity()}, LoopConfig())
    batch = model.collate([dataset[0]])
    att = Rollout()(model, batch, None)
    with pytest.raises(ValueError, match="scores stored maps only"):
        Sanity().update(batch, att, model)
    with pytest.raises(ValueError, match="layers="):
        Sanity(layers="all")


def test_what_the_checks_show_and_shards_merge() -> None:
    model = tiny_vit(img_size=32, patch_size=8, depth=2).to(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(id=f"s{i}", label=0, image=torch.rand(3, 32, 32, generator=g)) for i in range(4)]
    batch = model.batch_to(model.collate(samples))
    # rollout reads no head weights and no class: head randomisation and the random logit leave it unchanged
    rollout = Rollout()
    runner = Sanity()
    runner.update(batch, rollout(model, batch, None), model, method=rollout)
    out = runner.compute()
    assert out["spearman@head"] == pytest.approx(1.0) and out["random_logit_spearman"] == pytest.approx(1.0)
    assert out["spearman@embeddings"] < 0.9
    # the random baseline draws its map from the sample id alone, whatever the weights: it fails the check
    rand = RandomAttribution()
    r = Sanity()
    r.update(batch, rand(model, batch, None), model, method=rand)
    assert r.compute()["spearman_last"] == pytest.approx(1.0)
    # batch of 4 = two batches of 2 merged, row for row
    halves = [Sanity(), Sanity()]
    rows = []
    for k, part in enumerate((slice(0, 2), slice(2, 4))):
        sub = model.batch_to(model.collate(samples[part]))
        rows += halves[k].update(sub, rollout(model, sub, None), model, method=rollout)
    whole = Sanity()
    full = whole.update(batch, rollout(model, batch, None), model, method=rollout)
    for a, b in zip(full, rows, strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-9) for k in a)
    halves[0].load_state(_merged(halves))
    merged, expected = halves[0].compute(), whole.compute()
    assert merged["layers"] == expected["layers"]
    assert all(merged[k] == pytest.approx(expected[k], abs=1e-9) for k in expected if k != "layers")


def _merged(runners):
    from xaibench.core.types import merge_states

    return merge_states([r.state() for r in runners])
