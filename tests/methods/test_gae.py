"""GAE (``gae``): a hand-computed 2-block toy, batching (ViT prefix tokens, BERT padding), hygiene, errors, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bert_helpers import hook_counts, instance_overrides, text_samples, tiny_bert, unpadded_row
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import tiny_timm_vit, tiny_vit
from xaibench.core.types import Batch
from xaibench.datasets.synthetic_text import write_vocab
from xaibench.methods.gae import GenericAttention

CONF = Path(__file__).resolve().parents[2] / "conf" / "method"


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.zeros(len(x), dtype=torch.long))


def _by_hand(vit, x: torch.Tensor, target: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE written out on the bare ops of a 2-block timm ViT: the forward from its parameters, the attention
    probabilities kept, one backward of the target logits, then ``R ← R + Ā_b R`` from ``R = I``."""
    B, D = x.shape[0], vit.embed_dim
    patch = vit.patch_embed.proj
    t = F.conv2d(x, patch.weight, patch.bias, stride=patch.stride).flatten(2).transpose(1, 2)
    t = torch.cat([vit.cls_token.expand(B, -1, -1), t], dim=1) + vit.pos_embed
    probs = []
    for blk in vit.blocks:
        h = F.layer_norm(t, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        heads, n = blk.attn.num_heads, t.shape[1]
        q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(B, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        a.retain_grad()
        probs.append(a)
        t = t + (a @ v).transpose(1, 2).reshape(B, n, D) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        h = F.layer_norm(t, (D,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        t = t + blk.mlp.fc2(F.gelu(blk.mlp.fc1(h)))
    logits = vit.head(F.layer_norm(t, (D,), vit.norm.weight, vit.norm.bias, vit.norm.eps)[:, 0])
    logits.gather(1, target[:, None]).sum().backward()
    R = torch.eye(t.shape[1], dtype=x.dtype).expand(B, -1, -1)
    for a in probs[start:]:  # first block first
        a_bar = (a.grad * a).clamp(min=0).mean(dim=1)
        R = R + a_bar @ R
    return R.detach(), logits.detach()


def test_hand_computed_two_block_toy() -> None:
    model = tiny_vit(depth=2).to(dtype=torch.float64)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([2, 0, 3])
    R, logits = _by_hand(model.model, x.clone(), target)
    out = GenericAttention()(model, _batch(x), target)
    torch.testing.assert_close(out.logits, logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.maps, R[:, 0, 1:].reshape(3, 4, 4), rtol=1e-10, atol=1e-12)
    full, targets, _ = GenericAttention().relevance_matrix(model, _batch(x), target)
    torch.testing.assert_close(full, R, rtol=1e-10, atol=1e-12)
    assert torch.equal(targets, target) and out.level == "tokens"
    # from block 1 only: R = I + Ā_1 (block 0 is not read)
    late = GenericAttention(start_layer=1).relevance_matrix(model, _batch(x), target)[0]
    torch.testing.assert_close(late, _by_hand(model.model, x.clone(), target, start=1)[0], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(late, full)


def test_predicted_class_and_class_sensitivity() -> None:
    model = tiny_vit().to(dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    predicted = GenericAttention()(model, _batch(x), None)
    assert torch.equal(predicted.targets, model.logits(x).argmax(-1))
    other = GenericAttention()(model, _batch(x), (predicted.targets + 1) % 4)
    assert not torch.allclose(predicted.maps, other.maps)  # the map depends on the explained class


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2, "img_size": (24, 40)}])
def test_vit_batch_equals_singles_and_leaves_nothing(kw: dict) -> None:
    model = tiny_timm_vit(patch_size=8, img_size=kw.pop("img_size", 32), **kw).to(dtype=torch.float64)
    h, w = model.image_size
    x = torch.randn(4, 3, h, w, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3])
    hooks = hook_counts(model.model)
    full = GenericAttention()(model, _batch(x), target)
    assert full.maps.shape == (4, h // 8, w // 8) and not full.maps.requires_grad
    for i in range(4):
        one = GenericAttention()(model, _batch(x[i : i + 1]), target[i : i + 1])
        torch.testing.assert_close(one.maps, full.maps[i : i + 1], rtol=1e-10, atol=1e-12)
    assert instance_overrides(model.model) == [] and hook_counts(model.model) == hooks


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt"))


def test_bert_padded_batch_equals_unpadded_singles(bert) -> None:
    batch = bert.collate(text_samples(4))
    mask = batch.inputs["attention_mask"].bool()
    assert not mask.all()  # padded
    target = torch.tensor([2, 0, 1, 2])
    full = GenericAttention()(bert, batch, target)
    assert full.maps.shape == mask.shape and (full.maps[~mask] == 0).all() and (full.maps[:, 0] == 0).all()
    for i in range(4):
        one = GenericAttention()(bert, unpadded_row(batch, i), target[i : i + 1])
        n = one.maps.shape[1]
        torch.testing.assert_close(one.maps[0], full.maps[i, :n], rtol=1e-10, atol=1e-12)
        assert one.maps[0, 1:].abs().sum() > 0
    assert instance_overrides(bert.model) == []


def test_bad_arguments() -> None:
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match="start_layer"):
        GenericAttention(start_layer=0.5)
    with pytest.raises(ValueError, match="out of range"):
        GenericAttention(start_layer=2)(model, _batch(x), None)
    with pytest.raises(ValueError, match="out of range"):
        GenericAttention()(model, _batch(x), torch.tensor([7]))
    pooled = tiny_timm_vit(global_pool="avg", class_token=False, img_size=32, patch_size=8)
    with pytest.raises(ValueError, match="class token"):
        GenericAttention()(pooled, _batch(x), None)


def test_config_instantiates() -> None:
    method = instantiate(OmegaConf.load(CONF / "gae.yaml"))
    assert isinstance(method, GenericAttention) and method.name == "gae" and method.start_layer == 0
