"""timm ViT families beyond ViT-B: prefix tokens (distillation, registers), patch 14, non-square and
dynamic sizes, pooling the attention methods cannot read, and models the adapter refuses.

Every family is a tiny random-weight model built with timm's own constructors (no download). Each
attention method (and each LRP method where :mod:`xaibench.methods.lrp` supports the family) must give
maps on the family's patch grid, a batch of N must equal N batches of 1, and no hook or instance patch
may be left behind. A constructed case (attention forced to a known matrix) checks that the extra
prefix tokens of distilled DeiT and DINOv2-with-registers are dropped, and the patch grid read in the
right order.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import tiny_timm_vit
from xaibench.core.types import Batch
from xaibench.methods.attention import AttnGradCAM, GradRollout, RawAttention, Rollout
from xaibench.methods.baselines import RandomAttribution


def _families() -> dict[str, tuple[dict, tuple[int, int]]]:
    """name -> (tiny_timm_vit kwargs, input (H, W)); the input size differs from img_size for the dynamic one."""
    from timm.models.deit import VisionTransformerDistilled

    return {
        # DeiT distilled: CLS + distillation token, head = mean of the two classifiers
        "deit_distilled": ({"vit_cls": VisionTransformerDistilled, "img_size": (48, 64), "patch_size": 16}, (48, 64)),
        # DINOv2 with registers: patch 14, 4 registers without position embedding, LayerScale
        "dinov2_reg": (
            {"img_size": (28, 42), "patch_size": 14, "reg_tokens": 4, "no_embed_class": True, "init_values": 1e-1},
            (28, 42),
        ),
        # DINOv2 / MAE-like: patch 14, square, class token only
        "patch14": ({"img_size": 42, "patch_size": 14, "init_values": 1e-1}, (42, 42)),
        # CLIP tower-like: pre-norm, QuickGELU
        "clip_like": ({"img_size": 32, "patch_size": 8, "pre_norm": True, "act_layer": "quick_gelu"}, (32, 32)),
        # dynamic_img_size: built for 32x32, run at 40x56 (position embedding interpolated per call)
        "dynamic": ({"img_size": 32, "patch_size": 8, "dynamic_img_size": True}, (40, 56)),
    }


FAMILIES = list(_families())

ATTENTION_METHODS = {
    "raw_attention": RawAttention,
    "rollout": lambda: Rollout(start_layer=0),
    "rollout_max_discard": lambda: Rollout(start_layer=0, head_fusion="max", discard_ratio=0.5),
    "grad_rollout": lambda: GradRollout(start_layer=0, discard_ratio=0.5),
    "attn_gradcam": AttnGradCAM,
    "random": RandomAttribution,
}


def _lrp_methods() -> dict:
    from xaibench.methods import lrp

    return {
        "transformer_attribution": lambda: lrp.TransformerAttribution(start_layer=0),
        "lrp_rollout": lambda: lrp.LRPRollout(start_layer=0),
        "partial_lrp": lambda: lrp.PartialLRP(),
        "full_lrp": lambda: lrp.FullLRP(),
    }


LRP_METHODS = _lrp_methods()


def _model(family: str):
    kwargs, size = _families()[family]
    return tiny_timm_vit(**kwargs).to(dtype=torch.float64), size


def _batch(x: torch.Tensor) -> Batch:
    return Batch(ids=tuple(f"s{i}" for i in range(len(x))), inputs=x, labels=torch.arange(len(x)) % 4)


def _leftovers(model: nn.Module) -> list[str]:
    bad = []
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or "forward" in m.__dict__:
            bad.append(name)
    for attr in ("forward_features", "_pos_embed", "pool", "forward_head"):
        if attr in model.__dict__:
            bad.append(f"<model>.{attr}")
    return bad


def _check_method(model, method, size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, *size, generator=g, dtype=torch.float64)
    before = model.logits(x).detach()
    target = torch.tensor([0, 1, 2, 3])
    full = method(model, _batch(x), target)
    if full.level == "tokens":
        gh, gw = model.grid_for(size)
        ph, pw = model.patch_size
        assert (gh, gw) == (size[0] // ph, size[1] // pw)
        assert full.maps.shape == (4, gh, gw)
    else:
        assert full.maps.shape == (4, *size)
    assert torch.equal(full.targets, target)
    assert torch.isfinite(full.maps).all()
    torch.testing.assert_close(full.logits, before, rtol=1e-10, atol=1e-12)
    for i in range(4):
        single = method(model, Batch(ids=(f"s{i}",), inputs=x[i : i + 1], labels=target[i : i + 1]), target[i : i + 1])
        torch.testing.assert_close(single.maps, full.maps[i : i + 1], rtol=1e-9, atol=1e-12)
    assert _leftovers(model.model) == []
    torch.testing.assert_close(model.logits(x).detach(), before, rtol=0, atol=0)


@pytest.mark.parametrize("method_name", list(ATTENTION_METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_methods_on_family(family: str, method_name: str) -> None:
    model, size = _model(family)
    _check_method(model, ATTENTION_METHODS[method_name](), size)


@pytest.mark.parametrize("method_name", list(LRP_METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_lrp_methods_on_family(family: str, method_name: str) -> None:
    make = LRP_METHODS[method_name]
    if isinstance(make, Exception):
        pytest.skip(f"xaibench.methods.lrp is not importable: {make}")
    method = make()
    model, size = _model(family)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    try:
        method(model, _batch(x), torch.tensor([0]))
    except (TypeError, ValueError) as exc:
        if "LRP" not in str(exc) and "relevance" not in str(exc):
            raise  # not a refusal: a bug
        assert _leftovers(model.model) == []  # a refusal leaves nothing behind either
        pytest.skip(
            f"{type(method).__name__} does not support the {family} family ({type(model.model).__name__}): {exc}"
        )
    _check_method(model, method, size)


# -- geometry -------------------------------------------------------------------------------------------
def test_prefix_tokens_and_grids() -> None:
    expect = {  # family -> (num_prefix_tokens, grid for its input)
        "deit_distilled": (2, (3, 4)),
        "dinov2_reg": (5, (2, 3)),
        "patch14": (1, (3, 3)),
        "clip_like": (1, (4, 4)),
        "dynamic": (1, (5, 7)),
    }
    for family, (prefix, grid) in expect.items():
        model, size = _model(family)
        assert model.num_prefix_tokens == prefix, family
        assert model.grid_for(size) == grid, family
        assert model.num_tokens(torch.zeros(1, 3, *size)) == prefix + grid[0] * grid[1]


def test_dynamic_size_maps_follow_each_input() -> None:
    model, _ = _model("dynamic")
    assert model.grid_size == (4, 4)  # the configured 32x32
    for size, grid in (((40, 56), (5, 7)), ((32, 32), (4, 4)), ((24, 64), (3, 8))):
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        assert Rollout()(model, _batch(x), None).maps.shape == (2, *grid)
        assert RandomAttribution()(model, _batch(x), None).maps.shape == (2, *grid)


def test_dynamic_size_collate_checks_the_patch_multiple() -> None:
    from xaibench.core.types import Sample

    model, _ = _model("dynamic")
    batch = model.collate([Sample(id="a", image=torch.rand(3, 40, 56))])
    assert batch.inputs.shape == (1, 3, 40, 56)
    with pytest.raises(ValueError, match="multiple of"):
        model.collate([Sample(id="a", image=torch.rand(3, 41, 56))])
    fixed, _ = _model("patch14")
    with pytest.raises(ValueError, match="image_size"):
        fixed.collate([Sample(id="a", image=torch.rand(3, 56, 56))])


def test_token_map_refuses_a_row_that_does_not_fit() -> None:
    model, _ = _model("dinov2_reg")
    with pytest.raises(ValueError, match="5 prefix tokens"):
        model.token_map(torch.zeros(1, 7))
    row = torch.arange(5 + 6, dtype=torch.float64)[None]
    assert model.token_map(row).tolist() == [[[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]]]


# -- constructed attention: the expected maps are known ---------------------------------------------
class _RowQ(nn.Module):
    """Replaces ``attn.q_norm``: the CLS query is ``e_0 / scale``, every other query ``e_1 / scale``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(q)
        out[..., 0, 0] = 1.0 / self.scale
        out[..., 1:, 1] = 1.0 / self.scale
        return out + 0 * q  # stays in the graph


class _LogWeightK(nn.Module):
    """Replaces ``attn.k_norm``: key j is ``(log w_j, log u_j, 0, ...)``, so the CLS row of the softmax is
    ``w`` and every other row ``u`` (``Σw = Σu = 1``)."""

    def __init__(self, w: torch.Tensor, u: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logw", w.log())
        self.register_buffer("logu", u.log())

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(k)
        out[..., 0] = self.logw.to(k.dtype)
        out[..., 1] = self.logu.to(k.dtype)
        return out + 0 * k


def _force_attention(model, w: torch.Tensor, u: torch.Tensor) -> None:
    """Every block and head attends with ``w`` from the CLS token and with ``u`` from every other token."""
    for blk in model.model.blocks:
        blk.attn.q_norm = _RowQ(float(blk.attn.scale))
        blk.attn.k_norm = _LogWeightK(w, u)


@pytest.mark.parametrize("family", ["deit_distilled", "dinov2_reg"])
def test_extra_prefix_tokens_are_dropped_from_known_maps(family: str) -> None:
    kwargs, _ = _families()[family]
    size = (32, 48) if family == "deit_distilled" else (28, 42)
    model = tiny_timm_vit(**{**kwargs, "img_size": size}).to(dtype=torch.float64)
    prefix = model.num_prefix_tokens
    gh, gw = model.grid_size
    assert (gh, gw) == (2, 3) and prefix == (2 if family == "deit_distilled" else 5)
    n = prefix + gh * gw
    # CLS row w: heavy weight on every prefix token, distinct weights on the patches; other rows u: the
    # reverse order, so reading the distillation/register row instead of the CLS row would show
    w = torch.cat([torch.full((prefix,), 10.0), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]).double()
    u = torch.cat([torch.full((prefix,), 1.0), torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])]).double()
    w, u = w / w.sum(), u / u.sum()
    _force_attention(model, w, u)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    _, attn = model.forward_with_attention(x)
    A = u.expand(n, n).clone()
    A[0] = w
    for a in attn.values():  # the construction works: every head of every block is A
        torch.testing.assert_close(a, A.expand_as(a))

    # raw attention: the CLS row's patch entries, row-major on the 2x3 grid, prefix columns dropped
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64) / w.new_tensor(10.0 * prefix + 21)
    expected = expected.reshape(gh, gw).expand(2, gh, gw)
    torch.testing.assert_close(RawAttention()(model, _batch(x), None).maps, expected)
    # rollout over both blocks: e_0ᵀ M M with M = (A + I) / 2 (rows of A + I sum to 2)
    M = (A + torch.eye(n, dtype=torch.float64)) / 2
    roll = (M[0] @ M)[prefix:].reshape(gh, gw).expand(2, gh, gw)
    torch.testing.assert_close(Rollout(start_layer=0)(model, _batch(x), None).maps, roll)
    # Grad-CAM: mean_h(w_h · A_h[CLS]) = (mean_h w_h) · w, clamped, min-max scaled over the patches
    cam = AttnGradCAM()(model, _batch(x), torch.tensor([0, 1])).maps
    scaled = (expected - expected.amin()) / (expected.amax() - expected.amin())
    for i in range(2):
        assert torch.allclose(cam[i], scaled[i]) or torch.equal(cam[i], torch.zeros_like(cam[i]))


# -- pooling the CLS-row methods cannot explain --------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_pool": "avg"}, "global_pool='avg'"),
        ({"global_pool": "avg", "class_token": False}, "no class token"),
        ({"global_pool": "map"}, "attention"),
        ({"global_pool": "max", "reg_tokens": 2}, "global_pool='max'"),
    ],
)
def test_non_token_pooling_is_refused_by_cls_row_methods(kwargs: dict, match: str) -> None:
    model = tiny_timm_vit(img_size=32, patch_size=8, **kwargs).to(dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert model.cls_readout_problem() is not None
    for make in (RawAttention, Rollout, GradRollout, AttnGradCAM):
        with pytest.raises(ValueError, match=match) as info:
            make()(model, _batch(x), None)
        assert "CLS" in str(info.value)
    # the model itself and methods that do not read the CLS row still work
    assert model.logits(x).shape == (2, 4)
    assert RandomAttribution()(model, _batch(x), None).maps.shape == (2, 4, 4)


def test_token_pooling_models_pass_the_readout_check() -> None:
    for family in FAMILIES:
        model, _ = _model(family)
        assert model.cls_readout_problem() is None, family


# -- refusals --------------------------------------------------------------------------------------------
def test_hierarchical_models_are_refused() -> None:
    from timm.models.swin_transformer import SwinTransformer

    from xaibench.models.timm_vit import TimmViT

    swin = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1))
    with pytest.raises(TypeError, match="Swin"):
        TimmViT(model=swin)


def test_headless_backbones_need_a_probe() -> None:
    with pytest.raises(ValueError, match="no classification head.*xaibench-train-probe"):
        tiny_timm_vit(img_size=32, patch_size=8, num_classes=0)
    backbone = tiny_timm_vit(img_size=32, patch_size=8, num_classes=0, require_head=False)
    assert backbone.model(torch.randn(1, 3, 32, 32)).shape == (1, 32)  # pooled features
    with pytest.raises(ValueError, match="global_pool=''"):
        tiny_timm_vit(img_size=32, patch_size=8, global_pool="")


def test_create_kwargs_only_with_arch() -> None:
    from timm.models.vision_transformer import VisionTransformer

    from xaibench.models.timm_vit import TimmViT

    with pytest.raises(ValueError, match="create_kwargs"):
        TimmViT(
            timm_kwargs={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
            create_kwargs={"a": 1},
        )
    with pytest.raises(ValueError, match="create_kwargs"):
        TimmViT(
            model=VisionTransformer(img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2),
            create_kwargs={"a": 1},
        )


# -- checkpoints: position embedding resampled as timm does, classifier dropped for backbones ------------
def test_checkpoint_position_embedding_is_resampled(tmp_path) -> None:
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    from xaibench.models.timm_vit import TimmViT

    kw = {"patch_size": 14, "embed_dim": 16, "depth": 1, "num_heads": 2, "num_classes": 3, "reg_tokens": 2}
    kw["no_embed_class"] = True
    torch.manual_seed(0)
    big = VisionTransformer(img_size=56, **kw)  # 4x4 grid, as a 518-px DINOv2 checkpoint into a 224-px model
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(path))
    small = TimmViT(timm_kwargs={"img_size": 28, **kw}, checkpoint_path=str(path))
    assert small.grid_size == (2, 2)
    want = resample_abs_pos_embed(big.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=0)
    torch.testing.assert_close(small.model.pos_embed.detach(), want)
    torch.testing.assert_close(small.model.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)

    # a backbone (num_classes=0) skips the checkpoint's classifier (CLIP's projection head)
    backbone = TimmViT(
        timm_kwargs={"img_size": 56, **kw, "num_classes": 0}, checkpoint_path=str(path), require_head=False
    )
    torch.testing.assert_close(backbone.model.norm.weight, big.norm.weight)
    # other mismatches still name the keys
    with pytest.raises(ValueError, match="shape mismatches|missing keys|unexpected keys"):
        TimmViT(timm_kwargs={"img_size": 56, **{**kw, "embed_dim": 32}}, checkpoint_path=str(path))


def test_missing_checkpoint_names_the_download(tmp_path) -> None:
    from xaibench.models.timm_vit import load_vit_checkpoint

    model = tiny_timm_vit(img_size=32, patch_size=8).model
    with pytest.raises(FileNotFoundError, match="huggingface.co/timm/deit_base_patch16_224.fb_in1k"):
        load_vit_checkpoint(model, tmp_path / "nope.safetensors", arch="deit_base_patch16_224.fb_in1k")


def test_distilled_head_averages_cls_and_distillation_classifiers() -> None:
    model, size = _model("deit_distilled")
    vit = model.model
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    feats = vit.forward_features(x)
    want = (vit.head(feats[:, 0]) + vit.head_dist(feats[:, 1])) / 2
    torch.testing.assert_close(model.logits(x), want)


@pytest.mark.parametrize(
    "config", ["deit_base", "deit_base_distilled", "dinov2_vits14", "dinov2_vits14_reg", "mae", "clip", "probe"]
)
def test_family_configs_compose(config: str) -> None:
    from hydra import compose, initialize_config_dir

    from xaibench.core.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={config}", "logger=none"])
    if config == "probe":
        assert cfg.model._target_ == "xaibench.models.probe_files.load_probe"
        return
    assert cfg.model._target_ == "xaibench.models.timm_vit.TimmViT"
    assert cfg.model.pretrained is False and "/weights/" in cfg.model.checkpoint_path
    assert cfg.model.checkpoint_path.endswith(f"{cfg.model.arch}.safetensors")
