"""Relevance-based attribution for stock timm ViTs: transformer attribution, full LRP, partial LRP.

All methods share one engine (:mod:`xaibench.methods._lrp`): LRP rules as ``autograd.Function`` s,
two rule presets (``"ours"`` = the reference's ``layers_ours.py``, ``"lrp"`` = ``layers_lrp.py``) and
an instance-scoped canonizer for the timm ``VisionTransformer``. Each method runs one forward pass
and only the backward passes it reads, stopping at the lowest block it needs (REFERENCE §3.1).

Everything is per sample: the relevance at the logits is ``one_hot(target_i)`` for sample ``i`` and
the rescaled residual rule sums per sample (the reference puts every requested class into row 0 and
sums the rescaling over the whole batch tensor, REFERENCE §8 items 7-8), so a batch of ``N`` gives
the same maps as ``N`` batches of one. Maps are raw method outputs: no upsampling, no min-max.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from xaibench.methods._lrp.presets import RulePreset, get_preset
from xaibench.methods._lrp.vit import ViTRelevance, vit_relevance
from xaibench.types import Attribution, AttributionMethod, Batch, ModelAdapter

__all__ = ["TransformerAttribution", "LRPRollout", "PartialLRP", "FullLRP", "cls_rollout"]


def _vit(model: ModelAdapter) -> tuple[nn.Module, int, tuple[int, int]]:
    """The stock timm ViT behind an adapter, its number of prefix tokens and its patch grid."""
    from timm.models.vision_transformer import VisionTransformer

    vit = getattr(model, "model", None)
    if not isinstance(vit, VisionTransformer):
        raise TypeError(
            "relevance methods need a model adapter wrapping a timm VisionTransformer (xaibench TimmViT); "
            f"got {type(model).__name__} wrapping {type(vit).__name__}"
        )
    grid = tuple(int(g) for g in vit.patch_embed.grid_size)
    return vit, int(getattr(model, "num_prefix_tokens", vit.num_prefix_tokens)), grid


def _check_index(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (a block index, negative counts from the end); got {value!r}")
    return value


def _blocks_from(start: int, depth: int) -> list[int]:
    if not -depth <= start < depth:
        raise ValueError(f"start_layer={start} is out of range for a model with {depth} blocks")
    return list(range(start % depth, depth))


def cls_rollout(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Class-token row of the unnormalised rollout ``C = (I + M_last) ⋯ (I + M_first)``.

    Reference ``ViT_LRP.compute_rollout_attention`` (REFERENCE §3.1, no row normalisation), computed
    as a row vector ``e_0ᵀ (I + M_last) ⋯`` (``O(n²)`` per block instead of ``O(n³)``).

    Args:
        mats: per-block ``[B, n, n]`` matrices, first block first.

    Returns:
        ``[B, n]``, row 0 of ``C``.
    """
    if not mats:
        raise ValueError("cls_rollout needs at least one block")
    first = mats[0]
    row = torch.zeros(first.shape[0], 1, first.shape[-1], dtype=first.dtype, device=first.device)
    row[:, :, 0] = 1
    for m in reversed(mats):
        row = torch.baddbmm(row, row, m)
    return row[:, 0]


class _ViTRelevanceMethod(AttributionMethod):
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    class_sensitive: ClassVar[bool] = True

    def __init__(self, preset: str | RulePreset) -> None:
        self.preset = get_preset(preset)

    @staticmethod
    def _inputs(batch: Batch) -> torch.Tensor:
        if not isinstance(batch.inputs, torch.Tensor) or batch.inputs.dim() != 4:
            raise TypeError("relevance methods on a ViT need batch.inputs as a [B, 3, H, W] image tensor")
        return batch.inputs

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v.name if isinstance(v, RulePreset) else v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _token_map(values: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, n]`` over all tokens -> ``[B, gh, gw]`` over the patch tokens."""
    return values[:, prefix:].reshape(values.shape[0], *grid)


class TransformerAttribution(_ViTRelevanceMethod):
    """Transformer attribution (Chefer, Gur, Wolf, CVPR 2021, Eq. 13-15): the paper's method ("Ours").

    Per block ``b ≥ start_layer``: ``Ā_b = mean_h max(0, ∇A_b ⊙ R^(A)_b)`` (clamp before the head
    mean), with ``∇A_b = ∂y_c/∂A_b`` and ``R^(A)_b`` the LRP relevance of the attention probabilities
    under the ``ours`` rules; then ``C = (I + Ā_{L-1}) ⋯ (I + Ā_s)`` without row normalisation, and
    the map is ``C[CLS, patches]``. Reference ``ViT_LRP.VisionTransformer.relprop`` with
    ``method="transformer_attribution"`` (REFERENCE §3.1). The evaluation scripts use
    ``start_layer=1``; the reference default is 0.

    Args:
        start_layer: first block of the rollout (negative counts from the end; ``-1`` = last block
            only, the "∇A^(B-1) R" ablation of Table 3).
        preset: LRP rule preset for ``R^(A)`` (``"ours"`` in the paper).
    """

    name: ClassVar[str] = "transformer_attribution"

    def __init__(self, start_layer: int = 0, preset: str | RulePreset = "ours") -> None:
        super().__init__(preset)
        self.start_layer = _check_index("start_layer", start_layer)

    def block_terms(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> ViTRelevance:
        """``A_b``, ``∇A_b`` and ``R^(A)_b`` (each ``[B, h, n, n]``) for the blocks the method reads."""
        vit, _, _ = _vit(model)
        blocks = _blocks_from(self.start_layer, len(vit.blocks))
        return vit_relevance(vit, self._inputs(batch), target, self.preset, blocks=blocks, gradients=True)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        _, prefix, grid = _vit(model)
        res = self.block_terms(model, batch, target)
        mats = [(res.gradient[b] * res.relevance[b]).clamp_(min=0).mean(dim=1) for b in sorted(res.relevance)]
        return Attribution(
            maps=_token_map(cls_rollout(mats), prefix, grid), targets=res.targets, logits=res.logits, level="tokens"
        )


class LRPRollout(_ViTRelevanceMethod):
    """Rollout of attention relevance without gradients ("Ours w/o ∇A", Table 3 of the paper).

    ``Ā_b = mean_h max(0, R^(A)_b)``, ``C = (I + Ā_{L-1}) ⋯ (I + Ā_s)`` unnormalised, map
    ``C[CLS, patches]``. Reference ``generate_LRP(method="rollout")`` on the ``ours`` model
    (REFERENCE §3.1, golden ``lrp_relevance_rollout_sl1``).

    Args:
        start_layer: first block of the rollout (negative counts from the end).
        preset: LRP rule preset (``"ours"`` in the reference).
    """

    name: ClassVar[str] = "lrp_rollout"

    def __init__(self, start_layer: int = 1, preset: str | RulePreset = "ours") -> None:
        super().__init__(preset)
        self.start_layer = _check_index("start_layer", start_layer)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        vit, prefix, grid = _vit(model)
        blocks = _blocks_from(self.start_layer, len(vit.blocks))
        res = vit_relevance(vit, self._inputs(batch), target, self.preset, blocks=blocks)
        mats = [res.relevance[b].clamp(min=0).mean(dim=1) for b in blocks]
        return Attribution(
            maps=_token_map(cls_rollout(mats), prefix, grid), targets=res.targets, logits=res.logits, level="tokens"
        )


class PartialLRP(_ViTRelevanceMethod):
    """Partial LRP (Voita et al. 2019): relevance of one block's attention probabilities.

    Map ``mean_h max(0, R^(A)_l)[CLS, patches]`` under the ``lrp`` rules; with ``use_gradient``
    ``mean_h max(0, ∇A_l ⊙ R^(A)_l)`` (the reference's ``is_ablation=True``). Reference
    ``generate_LRP(method="last_layer")`` on the ``orig`` model; ``layer=1`` is its
    ``method="second_layer"`` (REFERENCE §3.1). The relevance pass stops at block ``layer``.

    Args:
        layer: block index (negative counts from the end; ``-1`` = last block).
        use_gradient: multiply by ``∂y_c/∂A_l`` before the clamp.
        preset: LRP rule preset (``"lrp"`` in the reference).
    """

    name: ClassVar[str] = "partial_lrp"

    def __init__(self, layer: int = -1, use_gradient: bool = False, preset: str | RulePreset = "lrp") -> None:
        super().__init__(preset)
        self.layer = _check_index("layer", layer)
        if not isinstance(use_gradient, bool):
            raise TypeError(f"use_gradient must be a bool; got {use_gradient!r}")
        self.use_gradient = use_gradient

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        vit, prefix, grid = _vit(model)
        depth = len(vit.blocks)
        if not -depth <= self.layer < depth:
            raise ValueError(f"layer={self.layer} is out of range for a model with {depth} blocks")
        b = self.layer % depth
        res = vit_relevance(vit, self._inputs(batch), target, self.preset, blocks=[b], gradients=self.use_gradient)
        cam = res.relevance[b][:, :, 0]  # CLS rows [B, h, n]: nothing else is read
        if self.use_gradient:
            cam = res.gradient[b][:, :, 0] * cam
        maps = _token_map(cam.clamp(min=0).mean(dim=1), prefix, grid)
        return Attribution(maps=maps, targets=res.targets, logits=res.logits, level="tokens")


class FullLRP(_ViTRelevanceMethod):
    """Full LRP (Binder et al. 2016) down to the pixels, summed over the colour channels.

    The relevance pass runs through every block, the position-embedding sum (the image part is
    kept), drops the prefix tokens and ends with the z^B rule of the patch-embedding convolution
    (per-sample data bounds); the map is ``Σ_RGB R_x`` ``[B, H, W]`` at input resolution. Reference
    ``generate_LRP(method="full")`` on the ``orig`` model (REFERENCE §3.1); ``preset="ours"`` gives
    the reference's ``full`` on the ``ours`` model (golden ``full_lrp_ours_rules``).

    With ``preset="lrp"`` every ``nn.Linear`` roughly doubles the total relevance (REFERENCE §8 item
    18), so deep models overflow float16 (``2^(4·depth)``); run them in float32 or bfloat16.

    Args:
        preset: LRP rule preset (``"lrp"`` for the paper's LRP baseline).
    """

    name: ClassVar[str] = "full_lrp"

    def __init__(self, preset: str | RulePreset = "lrp") -> None:
        super().__init__(preset)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        vit, _, _ = _vit(model)
        res = vit_relevance(vit, self._inputs(batch), target, self.preset, input_relevance=True)
        return Attribution(maps=res.input_relevance.sum(dim=1), targets=res.targets, logits=res.logits, level="pixels")
