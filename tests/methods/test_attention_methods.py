"""Cross-cutting checks of every attention method (captum-style table): shapes, batching, no leftovers."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_vit
from xaibench.core.types import Batch
from xaibench.methods._rollout import rollout
from xaibench.methods.attention import AttnGradCAM, RawAttention, Rollout
from xaibench.methods.baselines import RandomAttribution

METHODS = {
    "raw_attention": RawAttention,
    "rollout": lambda: Rollout(start_layer=0),
    "rollout_max": lambda: Rollout(start_layer=1, head_fusion="max"),
    "attn_gradcam": AttnGradCAM,
    "random": RandomAttribution,
}


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.arange(len(x)) % 4)


def _leftovers(model: torch.nn.Module) -> list[str]:
    bad = []
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or "forward" in m.__dict__:
            bad.append(name)
    return bad


@pytest.mark.parametrize("geometry", [(32, 8, 0), (48, 16, 0), (40, 8, 2)])
@pytest.mark.parametrize("name", list(METHODS))
def test_batch_equals_singles_and_no_leftovers(name: str, geometry: tuple[int, int, int]) -> None:
    img, patch, registers = geometry
    model = tiny_vit(img_size=img, patch_size=patch, reg_tokens=registers).to(dtype=torch.float64)
    x = torch.randn(5, 3, img, img, dtype=torch.float64)
    before = model.logits(x).detach()
    method = METHODS[name]()
    target = torch.tensor([0, 1, 2, 3, 1])
    full = method(model, _batch(x), target)
    g = img // patch
    assert full.maps.shape == (5, g, g)
    assert torch.equal(full.targets, target)
    for i in range(5):
        single = method(model, Batch(ids=(f"s{i}",), inputs=x[i : i + 1], labels=target[i : i + 1]), target[i : i + 1])
        torch.testing.assert_close(single.maps, full.maps[i : i + 1], rtol=1e-10, atol=1e-12)
    assert _leftovers(model.model) == []
    torch.testing.assert_close(model.logits(x).detach(), before, rtol=0, atol=0)


def test_predicted_target_and_no_grad_outside() -> None:
    model = tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = AttnGradCAM()(model, _batch(x), None)
    assert torch.equal(out.targets, model.logits(x).argmax(-1))
    assert out.maps.min() >= 0 and out.maps.max() <= 1


def test_bad_target_is_a_clear_error() -> None:
    model = tiny_vit()
    with pytest.raises(ValueError, match="out of range"):
        AttnGradCAM()(model, _batch(torch.randn(2, 3, 32, 32)), torch.tensor([0, 99]))
    with pytest.raises(ValueError, match="start_layer"):
        Rollout(start_layer=5)(model, _batch(torch.randn(1, 3, 32, 32)), None)
    with pytest.raises(ValueError, match="head_fusion"):
        Rollout(head_fusion="median")


def test_rollout_matrix_hand_computed() -> None:
    """Two 2-token layers: Â_b = (A_b + I) / rowsum, rollout = Â_1 Â_0."""
    a0 = torch.tensor([[[0.5, 0.5], [0.2, 0.8]]], dtype=torch.float64)
    a1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    h0 = torch.tensor([[0.75, 0.25], [0.1, 0.9]], dtype=torch.float64)
    h1 = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(rollout([a0, a1], normalize=True)[0], h1 @ h0)
    torch.testing.assert_close(rollout([a0])[0], a0[0] + torch.eye(2, dtype=torch.float64))


def test_fused_attention_is_refused() -> None:
    from xaibench.models._attention_hooks import record_timm_attention

    model = tiny_vit()
    for m in model.model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    with pytest.raises(RuntimeError, match="fused attention"):
        with record_timm_attention(model.model) as _:
            model.model(torch.randn(1, 3, 32, 32))
