"""Attention-based attribution methods: raw attention, rollout, attention Grad-CAM.

These read the softmax attention probabilities ``A_b`` (``[B, h, n, n]``) of a stock model, recorded by
the model adapter's ``forward_with_attention`` inside a scoped hook, and (for Grad-CAM) their gradient
``∂y_c/∂A_b``. The adapter's ``token_map`` turns a per-token row ``[B, n]`` into the map the metrics read
(ViT: patch grid without prefix tokens; BERT: word-pieces). Everything is per sample, so a batch of N gives
the same maps as N batches of 1.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from xaibench.types import Attribution, AttributionMethod, Batch, ModelAdapter


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


def rollout_matrix(attentions: list[torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """Attention rollout ``Â_{L-1} ⋯ Â_s`` with ``Â_b = I + Ā_b`` (row-normalised if ``normalize``).

    Abnar & Zuidema (2020), Eq. for "attention rollout"; REFERENCE §3.1.

    Args:
        attentions: per block ``Ā_b`` of shape ``[B, n, n]`` (heads already fused), first to last.

    Returns:
        ``[B, n, n]``.
    """
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype, device=attentions[0].device)
    joint = None
    for a in attentions:
        a = a + eye
        if normalize:
            a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


class RawAttention(AttributionMethod):
    """Last-layer attention of the CLS token, head mean (the reference's ``attn_last_layer``).

    ``A_{L-1}.clamp(min=0).mean(heads)[CLS, :]``; class-agnostic, one forward, no backward.
    """

    name: ClassVar[str] = "raw_attention"
    class_sensitive: ClassVar[bool] = False

    def __init__(self, layer: int = -1) -> None:
        self.layer = layer

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        with torch.inference_mode():
            logits, attn = model.forward_with_attention(batch.inputs, layers=[self.layer])
            a = next(iter(attn.values()))
            row = a.clamp(min=0).mean(dim=1)[:, 0, :]
            targets, _ = select_logit(logits, target)
            maps = model.token_map(row)
        return Attribution(maps=maps.clone(), targets=targets.clone(), logits=logits.clone())


class Rollout(AttributionMethod):
    """Attention rollout from ``start_layer`` (``Baselines.generate_rollout``), CLS row.

    Heads are fused by ``head_fusion`` (``mean`` as the reference; ``min``/``max`` as vit-explain) and each
    ``I + Ā_b`` is row-normalised. Class-agnostic.
    """

    name: ClassVar[str] = "rollout"
    class_sensitive: ClassVar[bool] = False

    def __init__(self, start_layer: int = 0, head_fusion: Literal["mean", "min", "max"] = "mean") -> None:
        if head_fusion not in ("mean", "min", "max"):
            raise ValueError(f"head_fusion must be 'mean', 'min' or 'max', got {head_fusion!r}")
        self.start_layer = start_layer
        self.head_fusion = head_fusion

    def fuse(self, a: torch.Tensor) -> torch.Tensor:
        if self.head_fusion == "mean":
            return a.mean(dim=1)
        return a.amin(dim=1) if self.head_fusion == "min" else a.amax(dim=1)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        depth = len(model.attention_layers())
        if not -depth <= self.start_layer < depth:
            raise ValueError(f"start_layer={self.start_layer} out of range for a model with {depth} blocks")
        layers = list(range(self.start_layer % depth, depth))
        with torch.inference_mode():
            logits, attn = model.forward_with_attention(batch.inputs, layers=layers)
            joint = rollout_matrix([self.fuse(attn[b]) for b in layers])
            targets, _ = select_logit(logits, target)
            maps = model.token_map(joint[:, 0, :])
        return Attribution(maps=maps.clone(), targets=targets.clone(), logits=logits.clone())


class AttnGradCAM(AttributionMethod):
    """Grad-CAM on the last attention map (``Baselines.generate_cam_attn``; Selvaraju et al. 2017).

    Per head ``w_h = mean(∂y_c/∂A_h)``, map ``= clamp_min0(mean_h(w_h · A_h))`` min-max scaled. The gradient
    is computed only down to the last attention (``torch.autograd.grad`` stops there). ``weights`` picks the
    region the gradient is averaged over and the map is scaled over: ``cls_row`` (the reference's ViT code:
    CLS row, patch columns) or ``all`` (its BERT code: the whole ``n×n`` matrix); ``None`` takes the model
    adapter's reference convention. ``constant_map``: the reference returns NaN for a constant map (0/0);
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

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        region = self.weights or getattr(model, "gradcam_weights", "cls_row")
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
            mask_of = getattr(model, "token_mask", None)
            valid = (
                mask_of(batch.inputs) if mask_of is not None else torch.ones(a.shape[0], a.shape[-1], dtype=torch.bool)
            )
            valid = valid.to(a.device)
            pair = valid[:, :, None] & valid[:, None, :]  # [B, n, n]
            w = (grad * pair[:, None]).sum(dim=(-2, -1)) / pair.sum(dim=(-2, -1))[:, None]  # [B, h]
            cam = (w[:, :, None, None] * a).mean(dim=1).clamp(min=0)  # [B, n, n]
            cam = minmax(cam, (1, 2), self.constant_map, valid=pair)
            maps = model.token_map(cam[:, 0, :])
        return Attribution(maps=maps, targets=targets.detach(), logits=logits.detach())
