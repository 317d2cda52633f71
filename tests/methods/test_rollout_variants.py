"""vit-explain's rollout variants as options of the attention methods: ``discard_ratio`` and gradient rollout.

Every expected number below is computed by hand in the comments (2-3 tokens, 1-2 blocks, 2 heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from helpers import tiny_vit
from xaibench.core.types import Batch, ModelAdapter, Sample
from xaibench.methods.attention import GradRollout, Rollout, discard_lowest

D = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D)


# -- discard_lowest ----------------------------------------------------------------------------------
M3 = t(
    [
        [0.1, 0.5, 0.4],
        [0.3, 0.3, 0.4],
        [0.05, 0.15, 0.8],
    ]
)


def test_discard_keeps_the_cls_self_entry() -> None:
    # 9 entries, ratio 0.34 -> int(3.06) = 3 lowest: 0.05 (flat 6), 0.1 (flat 0 = CLS->CLS), 0.15 (flat 7);
    # flat 0 is kept, so only two entries become 0
    out = discard_lowest(M3[None], 0.34)[0]
    torch.testing.assert_close(out, t([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.0, 0.0, 0.8]]))
    assert torch.equal(M3, t([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.05, 0.15, 0.8]]))  # input untouched


def test_discard_breaks_ties_by_flat_index() -> None:
    # ratio 0.45 -> int(4.05) = 4 lowest: 0.05 (6), 0.1 (0, kept), 0.15 (7), then the tie 0.3 at flat 3 and 4:
    # the lower index (3) goes
    out = discard_lowest(M3[None], 0.45)[0]
    torch.testing.assert_close(out, t([[0.1, 0.5, 0.4], [0.0, 0.3, 0.4], [0.0, 0.0, 0.8]]))


def test_discard_is_per_sample_and_counts_real_tokens_only() -> None:
    other = t([[0.9, 0.01, 0.09], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    both = discard_lowest(torch.stack([M3, other]), 0.34)
    torch.testing.assert_close(both[0], discard_lowest(M3[None], 0.34)[0])
    # other: 3 lowest are 0.01 (1), 0.09 (2), 0.2 (3; tie with 4, lower index first)
    torch.testing.assert_close(both[1], t([[0.9, 0.0, 0.0], [0.0, 0.2, 0.6], [0.3, 0.3, 0.4]]))
    # token 2 is padding: only the 2x2 real block counts, int(4 * 0.5) = 2 lowest of [[0.1, 0.5], [0.3, 0.3]]:
    # 0.1 (flat 0, kept) and 0.3 (flat 3 = row 1, col 0); padding entries are never touched
    valid = torch.tensor([[True, True, False]])
    out = discard_lowest(M3[None], 0.5, valid)[0]
    torch.testing.assert_close(out, t([[0.1, 0.5, 0.4], [0.0, 0.3, 0.4], [0.05, 0.15, 0.8]]))


def test_discard_ratio_zero_is_the_identity() -> None:
    torch.testing.assert_close(discard_lowest(M3[None], 0.0)[0], M3)


# -- Rollout(discard_ratio, head_fusion) ------------------------------------------------------------
def test_rollout_max_fusion_with_discard_hand_computed() -> None:
    head0 = [[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.05, 0.15, 0.8]]
    head1 = [[0.0, 0.2, 0.8], [0.6, 0.2, 0.2], [0.02, 0.1, 0.88]]
    a = t([head0, head1])[None]  # [B=1, h=2, n=3, n=3]
    # max over heads:  [[0.1, 0.5, 0.8], [0.6, 0.3, 0.4], [0.05, 0.15, 0.88]]
    # ratio 0.34 -> 3 lowest: 0.05 (6), 0.1 (0, kept), 0.15 (7) -> [[0.1, 0.5, 0.8], [0.6, 0.3, 0.4], [0, 0, 0.88]]
    # + I: [[1.1, 0.5, 0.8], [0.6, 1.3, 0.4], [0, 0, 1.88]], row sums 2.4, 2.3, 1.88
    want = t([[1.1 / 2.4, 0.5 / 2.4, 0.8 / 2.4], [0.6 / 2.3, 1.3 / 2.3, 0.4 / 2.3], [0.0, 0.0, 1.0]])
    got = Rollout(head_fusion="max", discard_ratio=0.34).joint([a])[0]
    torch.testing.assert_close(got, want)
    # each row sums to 1 (vit-explain's `a / a.sum(dim=-1)` would divide column j by row j's sum instead)
    torch.testing.assert_close(got.sum(-1), torch.ones(3, dtype=D))


def test_rollout_two_blocks_mean_with_discard_hand_computed() -> None:
    # block 0, heads equal: Ā0 = [[0.5, 0.5], [0.2, 0.8]]; 4 entries, ratio 0.5 -> 2 lowest: 0.2 (2), 0.5 (0, kept;
    # tie with flat 1, lower index first) -> [[0.5, 0.5], [0, 0.8]]; + I -> [[1.5, 0.5], [0, 1.8]] -> [[0.75, 0.25], [0, 1]]
    a0 = t([[[0.5, 0.5], [0.2, 0.8]], [[0.5, 0.5], [0.2, 0.8]]])[None]
    # block 1, mean of [[0.9, 0.1], [0.4, 0.6]] and [[0.7, 0.3], [0.6, 0.4]] = [[0.8, 0.2], [0.5, 0.5]];
    # 2 lowest: 0.2 (1), 0.5 (2; tie with 3) -> [[0.8, 0], [0, 0.5]]; + I -> [[1.8, 0], [0, 1.5]] -> I
    a1 = t([[[0.9, 0.1], [0.4, 0.6]], [[0.7, 0.3], [0.6, 0.4]]])[None]
    # C = Â1 Â0 = I @ [[0.75, 0.25], [0, 1]]
    got = Rollout(discard_ratio=0.5).joint([a0, a1])[0]
    torch.testing.assert_close(got, t([[0.75, 0.25], [0.0, 1.0]]))


def test_rollout_without_discard_is_unchanged() -> None:
    model = tiny_vit().to(dtype=D)
    x = torch.randn(3, 3, 32, 32, dtype=D)
    batch = Batch(ids=("a", "b", "c"), inputs=x, labels=torch.zeros(3, dtype=torch.long))
    _, attn = model.forward_with_attention(x)
    from xaibench.methods._rollout import rollout

    want = model.token_map(rollout([attn[b].mean(1) for b in sorted(attn)], normalize=True)[:, 0])
    torch.testing.assert_close(Rollout(start_layer=0, discard_ratio=0.0)(model, batch, None).maps, want.detach())


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        Rollout(discard_ratio=1.0)
    with pytest.raises(TypeError, match="discard_ratio must be a number"):
        Rollout(discard_ratio="0.9")
    with pytest.raises(ValueError, match="head_fusion"):
        GradRollout(head_fusion="median")
    with pytest.raises(TypeError, match="start_layer must be an int"):
        GradRollout(start_layer=0.5)
    with pytest.raises(ValueError, match="gradients"):
        GradRollout().block_matrix(t([[[[1.0]]]]), None, None)


# -- GradRollout --------------------------------------------------------------------------------------
class FixedAttention(ModelAdapter):
    """A model whose attention is given and whose logits are linear in it: ``y_c = Σ_b Σ W_b[c] ⊙ A_b``,
    so ``∂y_c/∂A_b = W_b[c]`` exactly. Token 0 is the CLS token; the map is tokens 1.. on a 1×(n−1) grid."""

    modality = "image"
    num_prefix_tokens = 1

    def __init__(self, attentions: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> None:
        self.attentions = list(attentions)  # per block [h, n, n]
        self.weights = list(weights)  # per block [C, h, n, n]
        self.model = nn.Linear(1, 1)  # the contract wants a module (device/dtype)

    @property
    def name(self) -> str:
        return "fixed_attention"

    def collate(self, samples: Sequence[Sample]) -> Batch:
        raise NotImplementedError

    def attention_layers(self) -> list[nn.Module]:
        return [nn.Identity() for _ in self.attentions]

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(inputs)[0]

    def forward_with_attention(self, inputs: torch.Tensor, layers=None):
        B = inputs.shape[0]
        depth = len(self.attentions)
        wanted = range(depth) if layers is None else [b % depth for b in layers]
        attn = {}
        logits = torch.zeros(B, self.weights[0].shape[0], dtype=D)
        for b in range(depth):
            a = self.attentions[b].expand(B, *self.attentions[b].shape).clone()
            if torch.is_grad_enabled():
                a.requires_grad_(True)
            logits = logits + torch.einsum("chij,bhij->bc", self.weights[b], a)
            if b in wanted:
                attn[b] = a
        return logits, attn

    def token_map(self, row: torch.Tensor) -> torch.Tensor:
        return row[:, 1:].reshape(row.shape[0], 1, -1)


def _two_token_model() -> FixedAttention:
    a0 = t([[[0.6, 0.4], [0.3, 0.7]], [[0.2, 0.8], [0.5, 0.5]]])
    g0 = t([[[1, 2], [0, -1]], [[-1, 1], [2, 0]]])
    a1 = t([[[0.5, 0.5], [0.9, 0.1]], [[0.7, 0.3], [0.4, 0.6]]])
    g1 = t([[[2, 0], [1, 1]], [[0, -2], [1, 3]]])
    # class 0 has gradients g_b, class 1 has zero gradients everywhere
    return FixedAttention([a0, a1], [torch.stack([g0, torch.zeros_like(g0)]), torch.stack([g1, torch.zeros_like(g1)])])


def test_grad_rollout_two_blocks_hand_computed() -> None:
    # block 0: ∇A⊙A per head: [[0.6, 0.8], [0, -0.7]] and [[-0.2, 0.8], [1.0, 0]]; mean [[0.2, 0.8], [0.5, -0.35]];
    #   clamp [[0.2, 0.8], [0.5, 0]]; + I [[1.2, 0.8], [0.5, 1]] -> Â0 = [[0.6, 0.4], [1/3, 2/3]]
    # block 1: per head [[1.0, 0], [0.9, 0.1]] and [[0, -0.6], [0.4, 1.8]]; mean [[0.5, -0.3], [0.65, 0.95]];
    #   clamp [[0.5, 0], [0.65, 0.95]]; + I [[1.5, 0], [0.65, 1.95]] -> Â1 = [[1, 0], [0.25, 0.75]]
    # C = Â1 Â0 = [[0.6, 0.4], [0.4, 0.6]]; CLS row [0.6, 0.4] -> map [0.4]
    model = _two_token_model()
    batch = Batch(ids=("a",), inputs=torch.zeros(1, 1, dtype=D), labels=torch.zeros(1, dtype=torch.long))
    out = GradRollout(discard_ratio=0.0)(model, batch, torch.tensor([0]))
    torch.testing.assert_close(out.maps, t([[[0.4]]]))
    # the same through joint(): the whole matrix
    grads = [w[0] for w in model.weights]
    joint = GradRollout(discard_ratio=0.0).joint([a[None] for a in model.attentions], [g[None] for g in grads])
    torch.testing.assert_close(joint[0], t([[0.6, 0.4], [0.4, 0.6]]))
    # vit-explain pairs block b's attention with block L-1-b's gradient (jacobgil/vit-explain#6); that gives
    # CLS row ≈ [0.669, 0.331], so the pairing is checked by the 0.4 above
    swapped = GradRollout(discard_ratio=0.0).joint([a[None] for a in model.attentions], [g[None] for g in grads[::-1]])
    assert abs(float(swapped[0, 0, 1]) - 0.4) > 0.05
    # predicted class (logit y_0 = 2.3 + 3.6 = 5.9 > y_1 = 0) and class sensitivity: class 1 has zero
    # gradients -> every Ā_b = 0 -> Â_b = I -> CLS row [1, 0] -> map [0]
    assert out.targets.tolist() == [0]
    torch.testing.assert_close(out.logits, t([[5.9, 0.0]]))
    torch.testing.assert_close(GradRollout(discard_ratio=0.0)(model, batch, None).maps, t([[[0.4]]]))
    torch.testing.assert_close(GradRollout(discard_ratio=0.0)(model, batch, torch.tensor([1])).maps, t([[[0.0]]]))
    # start_layer=1: only block 1 -> CLS row of Â1 = [1, 0] -> map [0]
    torch.testing.assert_close(GradRollout(start_layer=1, discard_ratio=0.0)(model, batch, None).maps, t([[[0.0]]]))


def test_grad_rollout_discard_and_clamp_order_hand_computed() -> None:
    a = t(
        [
            [[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]],
            [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]],
        ]
    )
    g = t(
        [
            [[1, 2, 1], [1, 1, 0], [0, 1, -1]],
            [[0, 1, 2], [1, -2, 1], [2, 0, 1]],
        ]
    )
    # ∇A⊙A per head: [[0.2, 0.6, 0.5], [0.1, 0.6, 0], [0, 0.4, -0.2]] and [[0, 0.4, 0.4], [0.3, -0.6, 0.4], [0.2, 0, 0.8]]
    # mean: [[0.1, 0.5, 0.45], [0.2, 0, 0.2], [0.1, 0.2, 0.3]]; clamp after the mean changes nothing here (a
    # clamp per head before the mean would give 0.3 at (1,1) and 0.4 at (2,2))
    # ratio 0.34 -> 3 lowest: 0 (flat 4), 0.1 (flat 0, kept), 0.1 (flat 6) -> [[0.1, 0.5, 0.45], [0.2, 0, 0.2], [0, 0.2, 0.3]]
    # + I: row 0 [1.1, 0.5, 0.45] / 2.05; row 1 [0.2, 1, 0.2] / 1.4; row 2 [0, 0.2, 1.3] / 1.5
    want = t([[1.1 / 2.05, 0.5 / 2.05, 0.45 / 2.05], [0.2 / 1.4, 1.0 / 1.4, 0.2 / 1.4], [0.0, 0.2 / 1.5, 1.3 / 1.5]])
    got = GradRollout(discard_ratio=0.34).joint([a[None]], [g[None]])[0]
    torch.testing.assert_close(got, want)
    model = FixedAttention([a], [g[None]])
    batch = Batch(ids=("a",), inputs=torch.zeros(1, 1, dtype=D), labels=torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(GradRollout(discard_ratio=0.34)(model, batch, None).maps, t([[[10 / 41, 9 / 41]]]))


def test_grad_rollout_on_a_vit_batch_equals_singles() -> None:
    model = tiny_vit(depth=3, reg_tokens=1).to(dtype=D)
    x = torch.randn(4, 3, 32, 32, dtype=D)
    target = torch.tensor([3, 0, 2, 1])
    method = GradRollout(start_layer=1, head_fusion="mean", discard_ratio=0.8)
    full = method(model, Batch(ids=("a", "b", "c", "d"), inputs=x, labels=target), target)
    assert full.maps.shape == (4, 4, 4) and torch.equal(full.targets, target)
    assert not full.maps.requires_grad and (full.maps >= 0).all()
    for i in range(4):
        single = method(model, Batch(ids=("s",), inputs=x[i : i + 1], labels=target[i : i + 1]), target[i : i + 1])
        torch.testing.assert_close(single.maps, full.maps[i : i + 1], rtol=1e-10, atol=1e-12)
    # reference computation: autograd by hand, the formula written out
    logits, attn = model.forward_with_attention(x)
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), [attn[b] for b in (1, 2)])
    joint = torch.eye(attn[0].shape[-1], dtype=D)
    for b, grad in zip((1, 2), grads, strict=True):
        fused = (grad * attn[b]).mean(1).clamp(min=0).detach()
        fused = discard_lowest(fused, 0.8) + torch.eye(fused.shape[-1], dtype=D)
        joint = (fused / fused.sum(-1, keepdim=True)) @ joint
    torch.testing.assert_close(full.maps, model.token_map(joint[:, 0]))


def test_grad_rollout_is_registered_as_a_config() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from xaibench.core.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["method=grad_rollout", "logger=none"])
        plain = compose("config", overrides=["method=rollout", "logger=none"])
    method = instantiate(cfg.method)
    assert isinstance(method, GradRollout) and method.class_sensitive and method.discard_ratio == 0.9
    rollout = instantiate(plain.method)
    assert type(rollout) is Rollout and not rollout.class_sensitive and rollout.discard_ratio == 0.0
