"""Relevance methods and the LRP engine on tiny random timm ViTs: shapes, batching, conservation,
canonizer hygiene, dtypes, errors (captum-style table over every method)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import tiny_vit
from xaibench.core.types import Attribution, AttributionMethod, Batch
from xaibench.methods._lrp import linear_rules, rules
from xaibench.methods._lrp.vit import ViTCanonizer, vit_relevance
from xaibench.methods._rollout import rollout
from xaibench.methods.lrp import FullLRP, LRPRollout, PartialLRP, TransformerAttribution

METHODS: dict[str, Callable[[], AttributionMethod]] = {
    "transformer_attribution": lambda: TransformerAttribution(start_layer=0),
    "transformer_attribution_sl1": lambda: TransformerAttribution(start_layer=1),
    "full_lrp": FullLRP,
    "full_lrp_ours": lambda: FullLRP(preset="ours"),
    "partial_lrp": PartialLRP,
    "partial_lrp_grad_first": lambda: PartialLRP(layer=0, use_gradient=True),
    "lrp_rollout": LRPRollout,
}
# (img, patch, extra VisionTransformer kwargs): square, non-square grid, registers + LayerScale +
# qk-norm + position embedding on patches only
GEOMETRIES = {
    "32p8": (32, 8, {}),
    "24x40p8": ((24, 40), 8, {}),
    "regs_ls_qknorm": (40, 8, {"reg_tokens": 2, "init_values": 0.5, "qk_norm": True, "no_embed_class": True}),
}
CONF = Path(__file__).resolve().parents[2] / "conf" / "method"


def _model(geometry: str = "32p8", dtype: torch.dtype = torch.float64, depth: int = 2):
    img, patch, kw = GEOMETRIES[geometry]
    return tiny_vit(img_size=img, patch_size=patch, depth=depth, **kw).to(dtype=dtype)


def _images(model, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, *model.image_size, generator=g) * 2 - 1).to(model.dtype)


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.full((len(x),), -1))


def _leftovers(model: nn.Module) -> list[str]:
    bad = []
    for name, m in model.named_modules():
        overrides = {"forward", "forward_features", "_pos_embed", "pool"} & set(vars(m))
        if overrides or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            bad.append(f"{name or '<model>'}: {sorted(overrides)}")
    return bad


def _expected_shape(model, out: Attribution, n: int) -> tuple[int, ...]:
    return (n, *model.image_size) if out.level == "pixels" else (n, *model.grid_size)


# -- every method: shapes, targets, logits, batching, hygiene -----------------------------------------


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("name", list(METHODS))
def test_batch_equals_singles(name: str, geometry: str) -> None:
    model = _model(geometry)
    x = _images(model, 4)
    with torch.no_grad():
        stock = model.logits(x)
    method = METHODS[name]()
    target = torch.tensor([3, 0, 3, 1])
    full = method(model, _batch(x), target)
    assert full.maps.shape == _expected_shape(model, full, 4)
    assert full.level == ("pixels" if name.startswith("full_lrp") else "tokens")
    assert full.maps.dtype == torch.float64 and torch.isfinite(full.maps).all()
    assert torch.equal(full.targets, target)
    assert not full.logits.requires_grad and not full.maps.requires_grad
    torch.testing.assert_close(full.logits, stock, rtol=0, atol=1e-12)
    for i in range(4):
        single = method(model, _batch(x[i : i + 1]), target[i : i + 1])
        scale = full.maps[i].abs().max()
        torch.testing.assert_close(single.maps[0], full.maps[i], rtol=1e-5, atol=1e-5 * float(scale))
    assert _leftovers(model.model) == []


@pytest.mark.parametrize("name", list(METHODS))
def test_predicted_target_under_no_grad(name: str) -> None:
    model = _model()
    x = _images(model, 3)
    with torch.no_grad():
        out = METHODS[name]()(model, _batch(x), None)
        assert not torch.is_grad_enabled()
    assert torch.equal(out.targets, model.logits(x).argmax(-1))
    assert out.maps.shape == _expected_shape(model, out, 3)
    assert type(METHODS[name]()).class_sensitive is True


def test_maps_depend_on_the_class() -> None:
    model = _model()
    x = _images(model, 1)
    for make in METHODS.values():
        method = make()
        a, b = (method(model, _batch(x), torch.tensor([c])).maps for c in (0, 2))
        assert not torch.allclose(a, b), type(method).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_model(dtype: torch.dtype) -> None:
    model = _model(dtype=dtype)
    x = _images(model, 2)
    for make in METHODS.values():
        out = make()(model, _batch(x), None)
        assert out.maps.dtype == dtype and out.logits.dtype == dtype
        assert torch.isfinite(out.maps).all()


def test_float32_is_close_to_float64() -> None:
    m64 = _model()
    m32 = _model(dtype=torch.float32)
    x = _images(m64, 2)
    for make in (lambda: TransformerAttribution(1), PartialLRP):
        a = make()(m64, _batch(x), torch.tensor([0, 1])).maps
        b = make()(m32, _batch(x.float()), torch.tensor([0, 1])).maps.double()
        assert (a - b).abs().max() <= 1e-3 * a.abs().max()


# -- method identities ----------------------------------------------------------------------------------


def test_single_block_rollout_is_partial_lrp() -> None:
    """C = I + Ā_{L-1}: its CLS row over the patches is Ā_{L-1}'s (the ∇A^(B-1)R ablation)."""
    model = _model(depth=3)
    x, t = _images(model, 2), torch.tensor([1, 2])
    a = TransformerAttribution(start_layer=-1)(model, _batch(x), t).maps
    b = PartialLRP(layer=-1, use_gradient=True, preset="ours")(model, _batch(x), t).maps
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_rollout_row_is_the_matrix_product() -> None:
    g = torch.Generator().manual_seed(0)
    mats = [torch.rand(2, 5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    eye = torch.eye(5, dtype=torch.float64)
    full = (eye + mats[2]) @ (eye + mats[1]) @ (eye + mats[0])
    torch.testing.assert_close(rollout(mats, row=0), full[:, 0])


def test_canonized_gradients_and_attention_are_the_stock_ones() -> None:
    """Gradient mode of the rules is the true gradient: compare with plain hooks on the stock model."""
    model = _model()
    x, t = _images(model, 3), torch.tensor([0, 3, 1])
    terms = TransformerAttribution(0).block_terms(model, _batch(x), t)
    with torch.enable_grad():
        logits, attn = model.forward_with_attention(x)
        grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), [attn[0], attn[1]])
    for b in (0, 1):
        torch.testing.assert_close(terms.attention[b], attn[b].detach(), rtol=0, atol=1e-14)
        torch.testing.assert_close(terms.gradient[b], grads[b], rtol=1e-10, atol=1e-14)


# -- conservation ---------------------------------------------------------------------------------------


def _relevance_at(model, x, target, preset, where: Callable[[nn.Module], list[nn.Module]]) -> list[torch.Tensor]:
    """Relevance at the inputs of the given modules (captured with test-local pre-hooks)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in where(model.model)]
    try:
        with torch.enable_grad(), ViTCanonizer(model.model, preset) as canon:
            logits = model.model(x.requires_grad_(True))
            seed = torch.zeros_like(logits).scatter_(1, target[:, None], 1.0)
            with canon.relevance_mode():
                return list(torch.autograd.grad(logits, seen + [x], seed))
    finally:
        for h in handles:
            h.remove()


def test_ours_preset_conserves_relevance_through_every_block() -> None:
    """ours: α1β0-joint Linear, rescaled Add, halved products, Clone sum and identities all conserve,
    so every block's input carries the one-hot's relevance (1 per sample), up to the 1e-9 stabilisers."""
    model = _model(depth=3)
    x, t = _images(model, 3), torch.tensor([0, 1, 2])
    rel = _relevance_at(model, x, t, "ours", lambda vit: list(vit.blocks))
    for r in rel[:-1]:
        torch.testing.assert_close(r.sum(dim=(1, 2)), torch.ones(3, dtype=r.dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", ["ours", "lrp"])
def test_patch_embedding_zb_rule_conserves(preset: str) -> None:
    """z^B: the pixels carry exactly the relevance of the patch tokens (prefix tokens are dropped)."""
    model = _model()
    x, t = _images(model, 2), torch.tensor([2, 0])
    vit = model.model
    captured: list[torch.Tensor] = []
    handle = vit.patch_embed.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        with torch.enable_grad(), ViTCanonizer(vit, preset) as canon:
            logits = vit(x.requires_grad_(True))
            seed = torch.zeros_like(logits).scatter_(1, t[:, None], 1.0)
            with canon.relevance_mode():
                r_tokens, r_pixels = torch.autograd.grad(logits, [captured[0], x], seed)
    finally:
        handle.remove()
    torch.testing.assert_close(r_pixels.sum(dim=(1, 2, 3)), r_tokens.sum(dim=(1, 2)), rtol=1e-8, atol=1e-10)
    full = FullLRP(preset)(model, _batch(x.detach()), t).maps
    torch.testing.assert_close(full.sum(dim=(1, 2)), r_pixels.sum(dim=(1, 2, 3)), rtol=1e-10, atol=1e-12)


def _rule_relevance(rule, out, inputs, R):
    state = rules.RuleState()
    leaves = [i.detach().requires_grad_(True) for i in inputs]
    with torch.enable_grad(), state.relevance_mode():
        y = rule.apply(state, out, *leaves)
        return torch.autograd.grad(y, leaves, R)


def test_linear_rules_conservation() -> None:
    g = torch.Generator().manual_seed(0)
    # wide enough that every output has both a positive and a negative contribution
    x = torch.randn(3, 5, 64, generator=g, dtype=torch.float64)
    w = torch.randn(6, 64, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    R = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    out = nn.functional.linear(x, w, b)
    state = rules.RuleState()
    with torch.enable_grad(), state.relevance_mode():
        xs = x.clone().requires_grad_(True)
        (joint,) = torch.autograd.grad(linear_rules.LinearAlphaBetaJoint.apply(state, out, xs, w, b), xs, R)
        (separate,) = torch.autograd.grad(linear_rules.LinearAlphaBetaSeparate.apply(state, out, xs, w, b), xs, R)
    # joint normalisation conserves, separate normalisation doubles (REFERENCE §2)
    # (up to the 1e-9 stabilisers)
    torch.testing.assert_close(joint.sum(-1), R.sum(-1), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(separate.sum(-1), 2 * R.sum(-1), rtol=1e-7, atol=1e-7)
    # the joint rule written out as the reference does (two linears on the signed parts)
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    s = R / (xp @ wp.T + xn @ wn.T + rules.EPS)
    torch.testing.assert_close(joint, xp * (s @ wp) + xn * (s @ wn), rtol=1e-12, atol=1e-12)


def test_add_rules_conserve_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    pos = torch.randn(1, 4, 5, generator=g, dtype=torch.float64)
    R = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, -3.0])[:, None, None]
    Ra, Rb = _rule_relevance(rules.AddZ, a + pos, [a, pos.expand(3, -1, -1)], R)
    torch.testing.assert_close(Ra + Rb, R, rtol=1e-6, atol=1e-8)
    Ra, Rb = _rule_relevance(rules.AddRescaled, a + pos, [a, pos.expand(3, -1, -1)], R)
    # per sample, not over the batch (REFERENCE §8 item 8)
    torch.testing.assert_close(Ra.sum((1, 2)) + Rb.sum((1, 2)), R.sum((1, 2)), rtol=1e-7, atol=1e-8)
    single = _rule_relevance(rules.AddRescaled, a[1:2] + pos, [a[1:2], pos], R[1:2])
    torch.testing.assert_close(single[0], Ra[1:2], rtol=1e-12, atol=1e-14)


def test_matmul_rule_halves_and_conserves() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    q = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    R = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    state = rules.RuleState()
    leaves = [p.clone().requires_grad_(True), q.clone().requires_grad_(True)]
    with torch.enable_grad(), state.relevance_mode():
        y = rules.MatMulZ.apply(state, (leaves[0] * 0.25) @ leaves[1], *leaves, 0.25)
        Rp, Rq = torch.autograd.grad(y, leaves, R)
    torch.testing.assert_close(Rp.sum((2, 3)), R.sum((2, 3)) / 2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(Rq.sum((2, 3)), R.sum((2, 3)) / 2, rtol=1e-6, atol=1e-7)
    s = R / (p @ q + rules.EPS)  # the z-rule on the unscaled product
    torch.testing.assert_close(Rp, p * (s @ q.transpose(-2, -1)) / 2, rtol=1e-10, atol=1e-12)


def test_rules_in_gradient_mode_are_the_stock_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    state = rules.RuleState()
    y = linear_rules.LinearAlphaBetaSeparate.apply(state, nn.functional.linear(x, w), x, w, None)
    y = rules.Identity.apply(state, torch.tanh(y), y)
    (grad,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(torch.tanh(nn.functional.linear(x, w)).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_safe_divide() -> None:
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    b = torch.tensor([0.0, 2.0, -4.0], dtype=torch.float64)
    torch.testing.assert_close(rules.safe_divide(a, b), torch.tensor([0.0, 2 / (2 + 1e-9), 3 / (-4 + 1e-9)]).double())
    assert torch.equal(rules.safe_divide(a.half(), b.half()), torch.tensor([0.0, 1.0, -0.75]).half())


# -- canonizer hygiene and refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ours", "lrp"])
def test_canonizer_keeps_logits_and_leaves_nothing(preset: str) -> None:
    for dtype, atol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        model = _model("regs_ls_qknorm", dtype=dtype)
        x = _images(model, 2)
        with torch.no_grad():
            stock = model.logits(x)
        with ViTCanonizer(model.model, preset), torch.no_grad():
            inside = model.logits(x)
        # same ops in the same order; only the last block's one-token products may round differently
        torch.testing.assert_close(inside, stock, rtol=0, atol=atol)
    assert _leftovers(model.model) == []
    with pytest.raises(RuntimeError, match="boom"), ViTCanonizer(model.model, preset):
        raise RuntimeError("boom")
    assert _leftovers(model.model) == []


def test_canonizer_restores_an_existing_instance_forward_and_does_not_nest() -> None:
    model = _model()
    head = model.model.head
    custom = head.forward
    head.forward = custom  # an instance attribute set by someone else
    with ViTCanonizer(model.model), pytest.raises(RuntimeError, match="nest"), ViTCanonizer(model.model):
        pass
    assert vars(head)["forward"] is custom
    del head.forward
    assert _leftovers(model.model) == []


def test_leaf_without_rule_is_named() -> None:
    model = _model()
    model.model.blocks[1].mlp.act = nn.SiLU().eval()
    with pytest.raises(TypeError, match=r"blocks\.1\.mlp\.act.*SiLU"):
        TransformerAttribution()(model, _batch(_images(model, 1)), None)
    assert _leftovers(model.model) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_pool": "avg"}, "global_pool"),
        ({"dynamic_img_size": True}, "dynamic_img_size"),
        ({"class_token": False, "global_pool": "avg"}, "global_pool"),
    ],
)
def test_unsupported_configurations_are_refused(kwargs: dict, match: str) -> None:
    model = tiny_vit(**kwargs)
    with pytest.raises(ValueError, match=match):
        FullLRP()(model, _batch(_images(model, 1).float()), None)


def test_training_mode_and_masks_are_refused() -> None:
    model = _model()
    model.model.train()
    with pytest.raises(ValueError, match="eval"):
        PartialLRP()(model, _batch(_images(model, 1)), None)
    model.model.eval()
    with ViTCanonizer(model.model), pytest.raises(ValueError, match="mask"):
        model.model(_images(model, 1), attn_mask=torch.zeros(1, 1, 17, 17, dtype=torch.float64))


def test_bad_arguments() -> None:
    model = _model()
    x = _images(model, 2)
    with pytest.raises(ValueError, match="out of range"):
        PartialLRP(layer=5)(model, _batch(x), None)
    with pytest.raises(ValueError, match="out of range"):
        TransformerAttribution(start_layer=2)(model, _batch(x), None)
    with pytest.raises(ValueError, match="preset"):
        FullLRP(preset="zennit")
    with pytest.raises(TypeError, match="int"):
        PartialLRP(layer=1.0)
    with pytest.raises(ValueError, match="shape"):
        PartialLRP()(model, _batch(x), torch.tensor([1]))
    with pytest.raises(ValueError, match="lie in"):
        PartialLRP()(model, _batch(x), torch.tensor([1, 4]))
    with pytest.raises(TypeError, match="target"):
        PartialLRP()(model, _batch(x), torch.tensor([1.0, 0.0]))
    with pytest.raises(TypeError, match="VisionTransformer"):
        PartialLRP()(object(), _batch(x), None)
    with pytest.raises(ValueError, match="nothing to compute"):
        vit_relevance(model.model, x, None, "lrp")
    assert _leftovers(model.model) == []


# -- configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        "transformer_attribution",
        "full_lrp",
        "partial_lrp",
        "lrp_rollout",
        "partial_lrp_grad",
        "partial_lrp_grad_block1",
    ],
)
def test_method_configs_instantiate(config: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    method = instantiate(OmegaConf.load(CONF / f"{config}.yaml"))
    assert isinstance(method, AttributionMethod)
    assert config.startswith(type(method).name)
    model = _model(depth=2)
    out = method(model, _batch(_images(model, 1)), None)
    assert torch.isfinite(out.maps).all()


# -- GPU --------------------------------------------------------------------------------------------------


@pytest.fixture
def _no_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.gpu
@pytest.mark.usefixtures("_no_tf32")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_cuda(dtype: torch.dtype) -> None:
    """float64/float32 on CUDA match the CPU float64 maps; half types run and stay finite (the rules
    divide by near-zero sums, so 8-10 mantissa bits are far from float64 maps, as float32 is for the
    reference's own full LRP: golden/README.md)."""
    cpu = _model()
    gpu = _model().to(device="cuda", dtype=dtype)
    x = _images(cpu, 3)
    t = torch.tensor([0, 1, 2])
    for make in (lambda: TransformerAttribution(1), PartialLRP, LRPRollout, FullLRP):
        out = make()(gpu, _batch(x.to("cuda", dtype)), t.cuda())
        assert out.maps.device.type == "cuda" and out.maps.dtype == dtype
        assert out.maps.shape == _expected_shape(cpu, out, 3)
        assert torch.isfinite(out.maps).all()
        if dtype in (torch.float64, torch.float32):
            ref = make()(cpu, _batch(x), t).maps
            tol = 1e-8 if dtype == torch.float64 else 1e-3
            assert (out.maps.double().cpu() - ref).abs().max() <= tol * ref.abs().max()
    with torch.no_grad():
        out = TransformerAttribution(0)(gpu, _batch(x.to("cuda", dtype)), None)
    assert torch.equal(out.targets, gpu.logits(x.to("cuda", dtype)).argmax(-1))
    assert _leftovers(gpu.model) == []
