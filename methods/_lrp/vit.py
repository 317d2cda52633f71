"""Canonizer and relevance pass for stock timm ``VisionTransformer`` models.

:class:`ViTCanonizer` overrides ``forward`` on module *instances* (and ``forward_features``,
``_pos_embed`` and ``pool`` on the model instance) inside a ``with`` block and restores them in
``finally``; nothing is patched on classes and no hook is registered. Inside the block the model
computes exactly the stock values (every rule returns the stock op's output), while every operation
on the relevance path carries its LRP rule from a :class:`~xaibench.methods._lrp.presets.RulePreset`:

* leaves: ``nn.Linear`` (preset's linear rule), the patch-embedding ``Conv2d`` (z^B in the
  reference presets), LayerNorm, GELU and LayerScale (the preset's norm, activation and elementwise
  rules; identity in the reference presets); dropout, drop-path and ``nn.Identity`` are the identity
  in eval mode;
* inline operations: the two residual sums of each block and the position-embedding sum (preset's
  add rule), the softmax (elementwise rule), ``q @ kᵀ`` and ``attn @ v`` (the scores and context
  rules: bilinear z-rule, half per operand, in the reference presets), the class-token pooling
  (``IndexSelect`` z-rule in the reference presets).

Any other module raises ``TypeError`` naming it, and configurations whose forward differs from the
one above (attention masks, gated attention, SwiGLU MLPs, average or attention pooling, dynamic image
size, parallel or post-norm blocks, ...) are refused with a message. The attention is always
computed on the eager path, whatever the instance's ``fused_attn``.

:func:`vit_relevance` runs one forward and up to two backward passes (true gradients, then
relevance) that stop at the tensors asked for. Compute only what is read: blocks below the first
one read run without autograd, and since only the class token is pooled and everything after the
last attention is token-wise, the last block's ``attn @ v``, projection and MLP (and the final norm)
run on the class token alone. The logits are the stock ones (to rounding: a one-row product may
round differently from the full one); the last block's attention ``A`` is still computed whole, and
its other rows get zero gradient and relevance exactly as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from xaibench.methods._lrp.base import Canonizer, Relevance, block_index, check_targets, leaf_forward, relevance_pass
from xaibench.methods._lrp.presets import RulePreset

#: what :func:`vit_relevance` returns (the family-independent :class:`~.base.Relevance`)
ViTRelevance = Relevance

__all__ = ["ViTCanonizer", "ViTRelevance", "check_targets", "vit_relevance"]


def _timm():
    from timm.layers import DropPath, Mlp, PatchDropout, PatchEmbed
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    return VisionTransformer, Block, Attention, Mlp, PatchEmbed, (nn.Identity, nn.Dropout, DropPath, PatchDropout)


def _refuse(what: str) -> None:
    raise ValueError(
        f"LRP on timm ViT: {what} is not supported (supported: the plain pre-norm ViT/DeiT "
        "family with class-token pooling, as built by timm's VisionTransformer)"
    )


def _check_model(model: nn.Module) -> None:
    VisionTransformer, Block, Attention, Mlp, PatchEmbed, _ = _timm()
    if type(model) is not VisionTransformer:
        raise TypeError(
            f"the LRP canonizer supports timm VisionTransformer instances; got {type(model).__name__} "
            "(subclasses such as distilled DeiT or EVA change the forward pass and are not supported)"
        )
    if any(m.training for m in model.modules()):
        raise ValueError(
            "relevance methods need the model in eval mode (dropout and drop-path active); call model.eval() first"
        )
    if model.grad_checkpointing:
        _refuse("gradient checkpointing (set_grad_checkpointing(True))")
    if model.dynamic_img_size:
        _refuse("dynamic_img_size=True")
    if model.attn_pool is not None or model.global_pool != "token" or not model.has_class_token:
        _refuse(f"global_pool={model.global_pool!r} (only class-token pooling, global_pool='token')")
    if not isinstance(model.head, nn.Linear):
        _refuse(f"a {type(model.head).__name__} classifier head (need nn.Linear, num_classes > 0)")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed:
        _refuse(f"patch embedding {type(pe).__name__}")
    if not pe.flatten or pe.dynamic_img_pad:
        _refuse("a patch embedding without flatten or with dynamic padding")
    conv = pe.proj
    if (
        not isinstance(conv, nn.Conv2d)
        or conv.groups != 1
        or isinstance(conv.padding, str)
        or conv.padding_mode != "zeros"
    ):
        _refuse("a patch-embedding projection other than a plain Conv2d (groups=1, zero padding)")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            _refuse(f"block {i} of type {type(blk).__name__} (only timm's Block)")
        if type(blk.attn) is not Attention:
            _refuse(f"blocks.{i}.attn of type {type(blk.attn).__name__} (only timm's Attention)")
        if blk.attn.gate is not None:
            _refuse(f"gated attention (blocks.{i}.attn.gate)")
        if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.fc1, nn.Linear):
            _refuse(f"blocks.{i}.mlp of type {type(blk.mlp).__name__} (only timm's Mlp with nn.Linear)")
        for ls in (blk.ls1, blk.ls2):
            if getattr(ls, "inplace", False):
                _refuse(f"in-place LayerScale in block {i}")


class ViTCanonizer(Canonizer):
    """Give every operation of a timm ``VisionTransformer`` its LRP rule, inside a ``with`` block.

    Args:
        model: a stock timm ``VisionTransformer`` in eval mode (e.g. ``TimmViT(...).model``).
        preset: rule preset name (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``) or a
            :class:`RulePreset`.
        grad_from_block: index of the first block whose tensors a backward pass will read; the stem
            and earlier blocks then run without autograd (nothing below is needed). ``None`` keeps
            the whole forward differentiable (relevance down to the pixels).
        record_blocks: blocks whose attention probabilities ``A_b`` ``[B, h, n, n]`` are recorded
            in :attr:`attention` (the tensors multiplied with ``v``, in the autograd graph).

    Attributes:
        state: the :class:`~xaibench.methods._lrp.rules.RuleState` switched by :meth:`relevance_mode`.
        attention: ``{block: A_b}`` filled by the forward pass.

    Example::

        with torch.enable_grad(), ViTCanonizer(vit, "ours", record_blocks=[3]) as canon:
            logits = vit(x)
            with canon.relevance_mode():
                (R_A,) = torch.autograd.grad(logits, canon.attention[3], one_hot)
    """

    def check(self) -> None:
        """Refuse models outside the supported timm ViT family (see the module docstring)."""
        _check_model(self.model)

    def depth(self) -> int:
        """Number of blocks."""
        return len(self.model.blocks)

    # -- what gets which rule -------------------------------------------------------------------
    def _plan(self) -> list[tuple[object, str, Callable]]:
        _, Block, Attention, Mlp, PatchEmbed, passthrough = _timm()
        model = self.model
        containers = (nn.Sequential, Block, Attention, Mlp, PatchEmbed)
        plan: list[tuple[object, str, Callable]] = []
        block_of = {id(blk.attn): i for i, blk in enumerate(model.blocks)}
        last = len(model.blocks) - 1
        for name, m in model.named_modules():
            if m is model:
                continue
            if type(m) in containers:
                if isinstance(m, nn.Sequential) and m is not model.blocks:
                    raise TypeError(f"module '{name}' (Sequential) has no LRP rule; only model.blocks may be one")
                if isinstance(m, Block):
                    plan.append((m, "forward", self._block_forward(m, m is model.blocks[last])))
                elif isinstance(m, Attention):
                    b = block_of[id(m)]
                    plan.append((m, "forward", self._attention_forward(m, b, b == last)))
                continue
            if any(True for _ in m.children()):
                raise TypeError(f"module '{name}' ({type(m).__name__}) has no LRP rule (not a supported container)")
            rule = self._leaf_rule(name, m, passthrough, input_layer=model.patch_embed.proj)
            if rule is not None:
                plan.append((m, "forward", leaf_forward(m, rule)))
        plan += [
            (model, "forward_features", self._forward_features()),
            (model, "_pos_embed", self._pos_embed()),
            (model, "pool", self._pool()),
        ]
        return plan

    # -- instance forwards ----------------------------------------------------------------------
    def _forward_features(self) -> Callable:
        model, start = self.model, self.grad_from_block

        def forward_features(x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
            if attn_mask is not None or is_causal:
                _refuse("an attention mask or causal attention")
            grad = torch.is_grad_enabled()
            # below the first block read, nothing needs a graph: run it like a no_grad forward
            with torch.set_grad_enabled(grad and start is None):
                x = model.patch_embed(x)
                x = model._pos_embed(x)
                x = model.patch_drop(x)
                x = model.norm_pre(x)
            for i, blk in enumerate(model.blocks):
                if grad and i == start:
                    x = x.detach().requires_grad_(True)
                with torch.set_grad_enabled(grad and (start is None or i >= start)):
                    x = blk(x)
            return model.norm(x)

        return forward_features

    def _pos_embed(self) -> Callable:
        model = self.model

        def _pos_embed(x: torch.Tensor) -> torch.Tensor:
            to_cat = []
            if model.cls_token is not None:
                to_cat.append(model.cls_token.expand(x.shape[0], -1, -1))
            if model.reg_token is not None:
                to_cat.append(model.reg_token.expand(x.shape[0], -1, -1))
            if model.pos_embed is None:
                return torch.cat(to_cat + [x.view(x.shape[0], -1, x.shape[-1])], dim=1)
            if model.no_embed_class:
                x = self._add(x, model.pos_embed)
                if to_cat:
                    x = torch.cat(to_cat + [x], dim=1)
            else:
                if to_cat:
                    x = torch.cat(to_cat + [x], dim=1)
                x = self._add(x, model.pos_embed)
            return model.pos_drop(x)

        return _pos_embed

    def _pool(self) -> Callable:
        model = self.model

        def pool(x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
            pool_type = model.global_pool if pool_type is None else pool_type
            if pool_type != "token":
                _refuse(f"pool_type={pool_type!r}")
            return self._rule("pool", x[:, 0], x, 0)

        return pool

    def _block_forward(self, blk: nn.Module, last: bool) -> Callable:
        def forward(x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
            if attn_mask is not None or is_causal:
                _refuse("an attention mask or causal attention")
            skip, x = self._fork(x)
            y = blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
            if last:
                # only the class token is pooled, and after the last attention everything is
                # token-wise: the rest of the model runs on that token alone (see _attention_forward)
                skip = skip[:, :1]
            x = self._add(skip, y)
            skip, x = self._fork(x)
            return self._add(skip, blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))))

        return forward

    def _attention_forward(self, attn: nn.Module, index: int, last: bool) -> Callable:
        record = index in self.record_blocks

        def forward(x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
            if attn_mask is not None or is_causal:
                _refuse("an attention mask or causal attention")
            B, N, _ = x.shape
            qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = attn.q_norm(q), attn.k_norm(k)
            # the stock eager path's op order (q * scale, then @ kᵀ), so the values are timm's
            kt = k.transpose(-2, -1)
            scores = self._rule("scores", (q * attn.scale) @ kt, q, kt, attn.scale)
            a = self._rule("elementwise", scores.softmax(dim=-1), scores)
            a = attn.attn_drop(a)
            if record:
                self.attention[index] = a
            out = a @ v
            if last:
                # the class-token row only (the pooled token); A_b stays whole for the record,
                # its other rows get zero gradient and relevance, as in the reference
                a, out, N = a[:, :, :1], out[:, :, :1], 1
            out = self._rule("context", out, a, v)
            out = out.transpose(1, 2).reshape(B, N, attn.attn_dim)
            out = attn.norm(out)
            out = attn.proj(out)
            return attn.proj_drop(out)

        return forward


def vit_relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    preset: str | RulePreset,
    *,
    blocks: Sequence[int] = (),
    gradients: bool = False,
    input_relevance: bool = False,
) -> ViTRelevance:
    """One forward pass with LRP rules, then the backward passes that were asked for.

    Runs under ``torch.enable_grad()`` whatever the caller's mode, and stops each backward pass at
    the lowest tensor read: block ``min(blocks)``'s attention, or the pixels.

    Args:
        model: stock timm ``VisionTransformer`` in eval mode.
        inputs: ``[B, 3, H, W]`` normalised images in the model's dtype and device.
        target: ``[B]`` int64 classes, or ``None`` for each sample's argmax.
        preset: rule preset (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``).
        blocks: blocks whose ``A_b`` and ``R^(A)_b`` (and ``∂y_c/∂A_b``) to return.
        gradients: also compute ``∂y_c/∂A_b`` (a true-gradient backward pass).
        input_relevance: also return the relevance at the pixels ``[B, 3, H, W]``.

    Returns:
        A :class:`ViTRelevance`.
    """
    _check_model(model)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise TypeError("inputs must be a [B, C, H, W] tensor of normalised images")
    depth = len(model.blocks)
    wanted = sorted({block_index(b, depth) for b in blocks})
    if not wanted and not input_relevance:
        raise ValueError("nothing to compute: give `blocks` and/or input_relevance=True")
    start = None if input_relevance else wanted[0]
    with torch.enable_grad(), ViTCanonizer(model, preset, grad_from_block=start, record_blocks=wanted) as canon:
        x = inputs.detach().requires_grad_(input_relevance)
        return relevance_pass(
            canon, lambda: (model(x), x), target, gradients=gradients, input_relevance=input_relevance
        )
