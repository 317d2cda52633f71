"""Attention-based attribution methods: raw attention, rollout (and its vit-explain variants), attention
Grad-CAM.

These read the softmax attention probabilities ``A_b`` (``[B, h, n, n]``) of a stock model, recorded by
the model adapter's ``forward_with_attention`` inside a scoped hook, and (for Grad-CAM and gradient
rollout) their gradient ``∂y_c/∂A_b``. The adapter's ``token_map`` turns a per-token row ``[B, n]`` into the
map the metrics read (ViT: patch grid without prefix tokens; BERT: word-pieces). Everything is per
sample, so a batch of N gives the same maps as N batches of 1.

Which row is read: every method here reads the **class token's row** (CLS, token 0) of the attention
(or rollout) matrix, i.e. what the class token gathers from every token. The columns of the other
prefix tokens (a distilled DeiT's distillation token, DINOv2's registers) are dropped by ``token_map``,
and their rows are never read. A distilled DeiT averages a classifier on the CLS token and one on the
distillation token; these maps explain the CLS path. Models whose head does not read the class token
(average or attention pooling, no class token) are refused (the adapter's ``check_cls_readout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from xaibench.core.types import Attribution, AttributionMethod, Batch, ModelAdapter
from xaibench.methods._rollout import rollout


def select_logit(logits: torch.Tensor, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample target classes and the sum of their logits ``Σ_i y_{i, c_i}`` (to differentiate).

    Args:
        logits: ``[B, C]``.
        target: ``[B]`` classes, or ``None`` for each sample's argmax.

    Returns:
        ``(targets [B], scalar)``; the gradient of the scalar w.r.t. sample i's tensors is ``∂y_{i,c_i}``
        because samples do not interact in the forward pass.
    """
    if target is None:
        target = logits.detach().argmax(dim=-1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for a batch of {logits.shape[0]}")
    if bool(((target < 0) | (target >= logits.shape[-1])).any()):
        raise ValueError(
            f"target classes {target.tolist()} out of range for a model with {logits.shape[-1]} classes "
            "(is the dataset's label missing? use target=predicted)"
        )
    return target, logits.gather(1, target[:, None]).sum()


def minmax(
    x: torch.Tensor, dims: tuple[int, ...], constant_map: str, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Min-max scale each sample to [0, 1] over ``dims`` (and only the ``valid`` entries, if given);
    a constant sample becomes 0 or NaN."""
    if valid is None:
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    else:
        inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
        lo = torch.where(valid, x, inf).amin(dim=dims, keepdim=True)
        hi = torch.where(valid, x, -inf).amax(dim=dims, keepdim=True)
    span = hi - lo
    if constant_map == "nan":  # the reference's 0/0
        return (x - lo) / span
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def fuse_heads(a: torch.Tensor, head_fusion: Literal["mean", "min", "max"]) -> torch.Tensor:
    """``[B, h, n, n]`` -> ``[B, n, n]``: mean, min or max over the heads (vit-explain's ``head_fusion``)."""
    if head_fusion == "mean":
        return a.mean(dim=1)
    return a.amin(dim=1) if head_fusion == "min" else a.amax(dim=1)


def discard_lowest(m: torch.Tensor, ratio: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Zero the lowest ``ratio`` of each sample's fused attention entries, never the (CLS, CLS) entry.

    vit-explain's ``discard_ratio`` (jacobgil/vit-explain ``rollout``), defined per sample: for sample ``i``
    with ``m_i`` real tokens (all ``n`` unless ``valid`` marks padding), its ``m_i²`` real entries
    ``M_i[q, k]`` are ranked in ascending order of value, ties by ascending flattened index ``q·n + k``
    (a stable sort); the first ``k_i = int(m_i² · ratio)`` of them are set to 0, except entry ``(0, 0)``
    (the class token's attention to itself, index 0 of the flattened map), which is always kept, so
    ``k_i − 1`` entries are zeroed when it is among the lowest. vit-explain does the same on sample 0
    only (``flat[0, indices] = 0``) and over the padded length; per sample, a batch of N equals N
    batches of 1 also with padding.

    Args:
        m: ``[B, n, n]`` fused attention (heads fused), not modified.
        ratio: fraction in ``[0, 1)`` of the entries to drop.
        valid: ``[B, n]`` bool, True at real tokens (text padding); ``None``: all real.

    Returns:
        ``[B, n, n]``, ``m`` with the dropped entries set to 0.
    """
    if ratio <= 0:
        return m
    B, n, _ = m.shape
    if valid is None:
        pair = torch.ones(B, n * n, dtype=torch.bool, device=m.device)
    else:
        valid = valid.to(device=m.device, dtype=torch.bool)
        pair = (valid[:, :, None] & valid[:, None, :]).reshape(B, n * n)
    flat = m.reshape(B, n * n)
    inf = torch.tensor(float("inf"), dtype=m.dtype, device=m.device)
    order = torch.where(pair, flat, inf).argsort(dim=-1, stable=True)  # padding pairs rank last
    count = torch.tensor([int(int(c) * ratio) for c in pair.sum(dim=-1)], device=m.device)
    ranked_low = torch.arange(n * n, device=m.device)[None, :] < count[:, None]  # [B, n*n] by rank
    drop = torch.zeros_like(pair).scatter_(1, order, ranked_low)
    drop[:, 0] = False  # the class token's own entry (vit-explain: ``indices[indices != 0]``)
    return torch.where(drop, torch.zeros((), dtype=m.dtype, device=m.device), flat).reshape(B, n, n)


def _check_ratio(discard_ratio: float) -> float:
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)):
        raise TypeError(f"discard_ratio must be a number in [0, 1); got {discard_ratio!r}")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ValueError(
            f"discard_ratio must be in [0, 1) (the fraction of attention entries dropped); got {discard_ratio}"
        )
    return float(discard_ratio)


class RawAttention(AttributionMethod):
    """Last-layer attention of the CLS token, head mean (the reference's ``attn_last_layer``).

    ``A_{L-1}.clamp(min=0).mean(heads)[CLS, :]`` (row of token 0; the columns of all prefix tokens are
    dropped by ``token_map``); class-agnostic, one forward, no backward.
    """

    name: ClassVar[str] = "raw_attention"
    class_sensitive: ClassVar[bool] = False

    def __init__(self, layer: int = -1) -> None:
        self.layer = layer

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        model.check_cls_readout(self.name)
        with torch.inference_mode():
            logits, attn = model.forward_with_attention(batch.inputs, layers=[self.layer])
            a = next(iter(attn.values()))
            row = a.clamp(min=0).mean(dim=1)[:, 0, :]
            targets, _ = select_logit(logits, target)
            maps = model.token_map(row)
        return Attribution(maps=maps.clone(), targets=targets.clone(), logits=logits.clone())


class Rollout(AttributionMethod):
    """Attention rollout from ``start_layer`` (Abnar & Zuidema 2020; ``Baselines.generate_rollout``), CLS row.

    Per block ``b ≥ start_layer``: heads are fused, ``Ā_b = fuse_h(A_b)``, by ``head_fusion`` (``mean`` as
    the reference; ``min``/``max`` as vit-explain); with ``discard_ratio > 0`` the lowest entries of
    ``Ā_b`` are zeroed per sample, never the (CLS, CLS) entry (:func:`discard_lowest`; vit-explain);
    then ``Â_b = (I + Ā_b) / rowsum(I + Ā_b)`` and ``C = Â_{L-1} ⋯ Â_s``. The map is ``C[CLS, patches]``
    (row of token 0, prefix columns dropped). Class-agnostic. With ``discard_ratio=0`` and
    ``head_fusion="mean"`` this is the reference's rollout.

    Differences from vit-explain (jacobgil/vit-explain ``vit_rollout.py``), all deliberate: its
    ``a / a.sum(dim=-1)`` broadcasts the ``[B, n]`` row sums over the *last* axis, i.e. divides column
    ``j`` by row ``j``'s sum; here each row is divided by its own sum (the two agree only when all row
    sums are equal, e.g. mean fusion without discarding). It discards on batch element 0 only; here
    per sample. It starts at block 0 (``start_layer=0``) and divides the map by its maximum (the
    metrics here min-max scale instead).

    Args:
        start_layer: first block (negative counts from the end); the reference's scripts use 1.
        head_fusion: ``mean``, ``min`` or ``max`` over heads.
        discard_ratio: fraction in ``[0, 1)`` of each block's fused entries to zero (vit-explain: 0.9);
            ``None``: :attr:`default_discard_ratio` (0, the reference's rollout).
    """

    name: ClassVar[str] = "rollout"
    class_sensitive: ClassVar[bool] = False
    #: whether blocks are weighted by the attention gradient (:class:`GradRollout`)
    uses_gradient: ClassVar[bool] = False

    #: ``discard_ratio`` when none is given (vit-explain's defaults: 0 for rollout, 0.9 for gradient rollout)
    default_discard_ratio: ClassVar[float] = 0.0

    def __init__(
        self,
        start_layer: int = 0,
        head_fusion: Literal["mean", "min", "max"] = "mean",
        discard_ratio: float | None = None,
    ) -> None:
        if head_fusion not in ("mean", "min", "max"):
            raise ValueError(f"head_fusion must be 'mean', 'min' or 'max', got {head_fusion!r}")
        if isinstance(start_layer, bool) or not isinstance(start_layer, int):
            raise TypeError(f"start_layer must be an int (a block index); got {start_layer!r}")
        self.start_layer = start_layer
        self.head_fusion = head_fusion
        self.discard_ratio = _check_ratio(self.default_discard_ratio if discard_ratio is None else discard_ratio)

    def fuse(self, a: torch.Tensor) -> torch.Tensor:
        """``[B, h, n, n]`` -> ``[B, n, n]`` by ``head_fusion``."""
        return fuse_heads(a, self.head_fusion)

    def block_matrix(self, a: torch.Tensor, grad: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor:
        """One block's ``Ā_b`` ``[B, n, n]`` (before ``+ I``) from ``A_b`` (and ``∂y_c/∂A_b``), ``[B, h, n, n]``."""
        return discard_lowest(self.fuse(a), self.discard_ratio, valid)

    def joint(
        self,
        attentions: Sequence[torch.Tensor],
        gradients: Sequence[torch.Tensor] | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rollout matrix ``C = Â_{L-1} ⋯ Â_s`` ``[B, n, n]`` from per-block ``[B, h, n, n]`` tensors.

        Args:
            attentions: ``A_b`` of the rolled-out blocks, first to last.
            gradients: ``∂y_c/∂A_b`` of the same blocks (gradient rollout only).
            valid: ``[B, n]`` bool, real (non-padding) tokens, for ``discard_ratio``.
        """
        grads = [None] * len(attentions) if gradients is None else list(gradients)
        if len(grads) != len(attentions):
            raise ValueError(f"{len(attentions)} attention blocks but {len(grads)} gradients")
        mats = [self.block_matrix(a, g, valid) for a, g in zip(attentions, grads, strict=True)]
        return rollout(mats, normalize=True)

    def _layers(self, model: ModelAdapter) -> list[int]:
        depth = len(model.attention_layers())
        if not -depth <= self.start_layer < depth:
            raise ValueError(f"start_layer={self.start_layer} out of range for a model with {depth} blocks")
        return list(range(self.start_layer % depth, depth))

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        model.check_cls_readout(self.name)
        layers = self._layers(model)
        valid = model.token_mask(batch.inputs) if self.discard_ratio > 0 else None
        if not self.uses_gradient:
            with torch.inference_mode():
                logits, attn = model.forward_with_attention(batch.inputs, layers=layers)
                targets, _ = select_logit(logits, target)
                joint = self.joint([attn[b] for b in layers], valid=valid)
                maps = model.token_map(joint[:, 0, :])
            return Attribution(maps=maps.clone(), targets=targets.clone(), logits=logits.clone())
        with torch.enable_grad():
            logits, attn = model.forward_with_attention(batch.inputs, layers=layers)
            targets, selected = select_logit(logits, target)
            # one backward, stopping at the lowest rolled-out block
            grads = torch.autograd.grad(selected, [attn[b] for b in layers])
        with torch.no_grad():
            joint = self.joint([attn[b].detach() for b in layers], [g.detach() for g in grads], valid)
            maps = model.token_map(joint[:, 0, :])
        return Attribution(maps=maps, targets=targets.detach(), logits=logits.detach())


class GradRollout(Rollout):
    """Gradient-weighted attention rollout for a class (vit-explain ``grad_rollout``), CLS row.

    Per block ``b ≥ start_layer``: ``Ā_b = max(0, fuse_h(∂y_c/∂A_b ⊙ A_b))`` — attention times its
    gradient (the logit ``y_c`` of the explained class), heads fused (``mean`` as vit-explain), *then*
    negative entries set to 0 (the clamp comes after the head fusion, unlike transformer attribution's
    clamp before the head mean); the lowest ``discard_ratio`` of the entries are zeroed per sample
    (:func:`discard_lowest`, never the (CLS, CLS) entry); ``Â_b = (I + Ā_b) / rowsum(I + Ā_b)``;
    ``C = Â_{L-1} ⋯ Â_s``; map ``C[CLS, patches]``. One forward and one backward that stops at block
    ``start_layer``.

    Differences from vit-explain (jacobgil/vit-explain ``vit_grad_rollout.py``), all deliberate:
    vit-explain records gradients with backward hooks, which fire last block first, and zips them with
    the forward-ordered attentions, so block ``b``'s attention meets block ``L−1−b``'s gradient
    (jacobgil/vit-explain#6); here each block uses its own gradient. Its class-token protection is
    commented out in ``grad_rollout`` (``#indices = indices[indices != 0]``); here the (CLS, CLS) entry
    is kept as in its plain rollout. The row normalisation, per-sample discarding and scaling differ as
    listed in :class:`Rollout`.

    Args:
        start_layer: first block (vit-explain: 0).
        head_fusion: fusion of ``∂y_c/∂A ⊙ A`` over heads (vit-explain: ``mean``).
        discard_ratio: fraction in ``[0, 1)`` of each block's entries to zero; ``None``: 0.9 (vit-explain's
            default).
    """

    name: ClassVar[str] = "grad_rollout"
    class_sensitive: ClassVar[bool] = True
    uses_gradient: ClassVar[bool] = True
    default_discard_ratio: ClassVar[float] = 0.9

    def block_matrix(self, a: torch.Tensor, grad: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor:
        """``max(0, fuse_h(∂y_c/∂A_b ⊙ A_b))`` with the lowest entries discarded, ``[B, n, n]``."""
        if grad is None:
            raise ValueError("gradient rollout needs the attention gradients ∂y_c/∂A_b of every block")
        return discard_lowest(self.fuse(grad * a).clamp(min=0), self.discard_ratio, valid)


class AttnGradCAM(AttributionMethod):
    """Grad-CAM on the last attention map (``Baselines.generate_cam_attn``; Selvaraju et al. 2017).

    Per head ``w_h = mean(∂y_c/∂A_h)``, map ``= clamp_min0(mean_h(w_h · A_h))`` min-max scaled. The gradient
    is computed only down to the last attention (``torch.autograd.grad`` stops there). ``weights`` picks the
    region the gradient is averaged over and the map is scaled over: ``cls_row`` (the reference's ViT code:
    CLS row, patch columns: token 0's row, every prefix column excluded) or ``all`` (its BERT code: the
    whole ``n×n`` matrix); ``None`` takes the model adapter's reference convention. ``constant_map``: the reference returns NaN for a constant map (0/0);
    ``zeros`` (default) returns an all-zero map instead, ``nan`` reproduces the reference.
    """

    name: ClassVar[str] = "attn_gradcam"

    def __init__(
        self,
        layer: int = -1,
        weights: Literal["cls_row", "all"] | None = None,
        constant_map: Literal["zeros", "nan"] = "zeros",
    ) -> None:
        if constant_map not in ("zeros", "nan"):
            raise ValueError(f"constant_map must be 'zeros' or 'nan', got {constant_map!r}")
        if weights not in (None, "cls_row", "all"):
            raise ValueError(f"weights must be 'cls_row', 'all' or null, got {weights!r}")
        self.layer = layer
        self.weights = weights
        self.constant_map = constant_map
        #: the reference's NaN maps are intended output here, not a failure (see the loop's finiteness check)
        self.allows_nan_maps = constant_map == "nan"

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        model.check_cls_readout(self.name)
        region = self.weights or model.gradcam_weights
        with torch.enable_grad():
            logits, attn = model.forward_with_attention(batch.inputs, layers=[self.layer])
            a = next(iter(attn.values()))
            targets, selected = select_logit(logits, target)
            (grad,) = torch.autograd.grad(selected, a)
        a, grad = a.detach(), grad.detach()
        if region == "cls_row":
            first = model.num_prefix_tokens
            w = grad[:, :, 0, first:].mean(dim=-1)[:, :, None]  # [B, h, 1]
            row = (w * a[:, :, 0, :]).mean(dim=1).clamp(min=0)  # [B, n]
            maps = model.token_map(row)
            maps = minmax(maps, tuple(range(1, maps.dim())), self.constant_map)
        else:
            # average and scale over real (query, key) pairs only, so padding never changes a map
            valid = model.token_mask(batch.inputs)
            if valid is None:
                valid = torch.ones(a.shape[0], a.shape[-1], dtype=torch.bool)
            valid = valid.to(a.device)
            pair = valid[:, :, None] & valid[:, None, :]  # [B, n, n]
            w = (grad * pair[:, None]).sum(dim=(-2, -1)) / pair.sum(dim=(-2, -1))[:, None]  # [B, h]
            cam = (w[:, :, None, None] * a).mean(dim=1).clamp(min=0)  # [B, n, n]
            cam = minmax(cam, (1, 2), self.constant_map, valid=pair)
            maps = model.token_map(cam[:, 0, :])
        return Attribution(maps=maps, targets=targets.detach(), logits=logits.detach())
