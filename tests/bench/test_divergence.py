"""The float32-vs-float64 divergence table of make bench, on the random micro ViT."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from xaibench.apps import divergence
from xaibench.core.precision import map_divergence
from xaibench.methods.attention import Rollout


def test_map_divergence_is_relative_to_the_float64_scale() -> None:
    high = torch.tensor([[0.0, 2.0, 4.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    low = high + torch.tensor([[0.0, 0.4, 0.0], [0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]], dtype=torch.float64)
    d = map_divergence(low.float(), high)
    assert d[0].item() == pytest.approx(0.1, rel=1e-6) and d[1].item() == 0.0 and torch.isnan(d[2])


def test_table_over_methods_and_weights_come_back_unchanged(tmp_path) -> None:
    model, batch = divergence.build("vit_micro", 3)
    before = model.weights_hash()
    frame = divergence.run(["vit_micro"], 3, torch.device("cpu"), ["rollout", "full_lrp", "random"])
    assert set(frame["method"]) == {"rollout", "full_lrp"}  # random has no rounding to measure
    assert (frame["precision"] == "float32").all() and (frame["samples"] == 3).all()
    rollout = frame.set_index("method").loc["rollout"]
    assert rollout["max_rel_divergence"] < 1e-5 and not rollout["dominated_by_rounding"]
    # the model used by the helper is restored to float32 with its exact weights
    d = divergence.precision_divergence(model, Rollout(), batch, None, torch.float32)
    assert model.dtype == torch.float32 and model.weights_hash() == before and len(d) == 3
    md = divergence.write(frame, tmp_path, torch.device("cpu"), 3)
    assert "full_lrp" in md.read_text() and len(pd.read_csv(md.with_suffix(".csv"))) == 2


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown divergence model 'nope'; supported: shapes_vit"):
        divergence.build("nope", 1)


@pytest.mark.gpu
def test_reduced_precision_rows_on_cuda_and_weights_restored() -> None:
    model, batch = divergence.build("vit_micro", 2)
    model.to(device=torch.device("cuda"))
    before = model.weights_hash()
    for low in (torch.bfloat16, torch.float16):
        d = divergence.precision_divergence(model, Rollout(), batch, None, low)
        assert len(d) == 2 and bool(torch.isfinite(d).all()) and float(d.max()) < 0.1
    assert model.dtype == torch.float32 and model.weights_hash() == before  # bf16 round trip undone from a copy
    frame = divergence.run(["vit_micro"], 2, torch.device("cuda"), ["rollout"])
    assert set(frame["precision"]) == {"float32", "bfloat16", "float16"}
