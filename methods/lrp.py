"""Relevance-based attribution: transformer attribution, full LRP, partial LRP, LRP rollout.

All methods share one engine (:mod:`xaibench.methods._lrp`): LRP rules as ``autograd.Function`` s,
two rule presets (``"ours"`` = the reference's ``layers_ours.py``, ``"lrp"`` = ``layers_lrp.py``) and
one instance-scoped canonizer per model family: timm ``VisionTransformer`` (:mod:`.vit`, images) and
Hugging Face ``BertForSequenceClassification`` (:mod:`.bert`, text). Each method is written once; the
family only decides how the relevance pass is run and how a per-token row becomes a map
(:class:`_Network`). Each method runs one forward pass and only the backward passes it reads,
stopping at the lowest block it needs (REFERENCE §3.1, §3.2).

Family conventions, as the reference's generators have them:

================================  =================================  ==================================
                                  ViT (``ViT_LRP.py``, §3.1)         BERT (``ExplanationGenerator``, §3.2)
================================  =================================  ==================================
rollout of ``I + Ā_b``            unnormalised                       row-normalised
map                               CLS row over the patch grid        CLS row over all word-pieces
CLS entry                         dropped (prefix token)             rollouts: row minimum; others: 0
transformer attribution default   ``start_layer=0``                  last layer (reference: 11 of 12)
full LRP ends at                  the pixels (z^B), ``Σ_RGB``        the encoder input, ``Σ_hidden``
================================  =================================  ==================================

Everything is per sample: the relevance at the logits is ``one_hot(target_i)`` for sample ``i`` and
the rescaled residual rule sums per sample (the reference puts every requested class into row 0 and
sums the rescaling over the whole batch tensor, REFERENCE §8 items 7-8), so a batch of ``N`` gives
the same maps as ``N`` batches of one; for text, padding gets no relevance and maps are 0 there.
Maps are raw method outputs: no upsampling, no min-max.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from xaibench.methods._lrp.base import Relevance
from xaibench.methods._lrp.presets import RulePreset, get_preset
from xaibench.types import Attribution, AttributionMethod, Batch, ModelAdapter

__all__ = ["TransformerAttribution", "LRPRollout", "PartialLRP", "FullLRP", "cls_rollout"]

Family = Literal["vit", "bert"]


class _Network:
    """A supported network behind an adapter: how to run the relevance pass and read maps from it.

    Attributes:
        family: ``"vit"`` or ``"bert"``.
        depth: number of transformer blocks (encoder layers).
        normalize_rollout: whether rollouts row-normalise ``I + Ā_b`` (BERT) or not (ViT).
    """

    family: Family
    depth: int
    normalize_rollout: bool
    net: nn.Module

    @staticmethod
    def _pass() -> Callable[..., Relevance]:
        """The family's relevance pass (``vit_relevance`` or ``bert_relevance``)."""
        raise NotImplementedError

    @staticmethod
    def _inputs(batch: Batch) -> Any:
        """``batch.inputs``, checked for the family."""
        raise NotImplementedError

    def relevance(
        self,
        batch: Batch,
        target: torch.Tensor | None,
        preset: RulePreset,
        *,
        blocks: Sequence[int] = (),
        gradients: bool = False,
        input_relevance: bool = False,
    ) -> Relevance:
        """One relevance pass (see :func:`~xaibench.methods._lrp.vit.vit_relevance`)."""
        return self._pass()(
            self.net,
            self._inputs(batch),
            target,
            preset,
            blocks=blocks,
            gradients=gradients,
            input_relevance=input_relevance,
        )

    def row_map(self, row: torch.Tensor, batch: Batch, cls: Literal["zero", "min"]) -> torch.Tensor:
        """``[B, n]`` values over all tokens -> the map the metrics read."""
        raise NotImplementedError

    def input_map(self, relevance: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Literal["tokens", "pixels"]]:
        """The full-LRP map from the relevance at the lowest tensor, and its level."""
        raise NotImplementedError


class _ViT(_Network):
    family: Family = "vit"
    normalize_rollout = False

    def __init__(self, adapter: ModelAdapter, vit: nn.Module) -> None:
        self.net = vit
        self.depth = len(vit.blocks)
        self.prefix = int(getattr(adapter, "num_prefix_tokens", vit.num_prefix_tokens))
        self.grid = tuple(int(g) for g in vit.patch_embed.grid_size)

    @staticmethod
    def _pass() -> Callable[..., Relevance]:
        from xaibench.methods._lrp.vit import vit_relevance

        return vit_relevance

    @staticmethod
    def _inputs(batch: Batch) -> torch.Tensor:
        if not isinstance(batch.inputs, torch.Tensor) or batch.inputs.dim() != 4:
            raise TypeError("relevance methods on a ViT need batch.inputs as a [B, 3, H, W] image tensor")
        return batch.inputs

    def row_map(self, row: torch.Tensor, batch: Batch, cls: Literal["zero", "min"]) -> torch.Tensor:
        # the prefix tokens (CLS, registers, ...) are dropped, so the CLS convention does not matter
        return row[:, self.prefix :].reshape(row.shape[0], *self.grid)

    def input_map(self, relevance: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Literal["tokens", "pixels"]]:
        return relevance.sum(dim=1), "pixels"


class _Bert(_Network):
    family: Family = "bert"
    normalize_rollout = True

    def __init__(self, adapter: ModelAdapter, bert: nn.Module) -> None:
        self.adapter = adapter
        self.net = bert
        self.depth = len(bert.bert.encoder.layer)

    @staticmethod
    def _pass() -> Callable[..., Relevance]:
        from xaibench.methods._lrp.bert import bert_relevance

        return bert_relevance

    @staticmethod
    def _inputs(batch: Batch) -> Mapping[str, torch.Tensor]:
        if not isinstance(batch.inputs, Mapping) or "input_ids" not in batch.inputs:
            raise TypeError(
                "relevance methods on BERT need batch.inputs as a mapping with 'input_ids' and "
                "'attention_mask' (HFBert.collate)"
            )
        return batch.inputs

    def row_map(self, row: torch.Tensor, batch: Batch, cls: Literal["zero", "min"]) -> torch.Tensor:
        inputs = self._inputs(batch)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(inputs["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
        return self.adapter.token_map(row, attention_mask=mask, cls=cls)

    def input_map(self, relevance: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Literal["tokens", "pixels"]]:
        # the reference's generate_full_lrp: Σ over the hidden units at the encoder input, [CLS] = 0
        return self.row_map(relevance.sum(dim=-1), batch, "zero"), "tokens"


def _network(model: ModelAdapter) -> _Network:
    """The supported network behind an adapter (timm ViT or Hugging Face BERT classifier)."""
    from timm.models.vision_transformer import VisionTransformer

    net = getattr(model, "model", None)
    if isinstance(net, VisionTransformer):
        return _ViT(model, net)
    if net is not None and getattr(model, "modality", None) == "text":
        from xaibench.methods._lrp.bert import is_bert

        if is_bert(net):
            return _Bert(model, net)
    raise TypeError(
        "relevance methods need a model adapter wrapping a timm VisionTransformer (xaibench TimmViT) or a "
        f"Hugging Face BertForSequenceClassification (xaibench HFBert); got {type(model).__name__} wrapping "
        f"{type(net).__name__}"
    )


def _check_index(name: str, value: int | None, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (a block index, negative counts from the end); got {value!r}")
    return value


def _blocks_from(start: int, depth: int) -> list[int]:
    if not -depth <= start < depth:
        raise ValueError(f"start_layer={start} is out of range for a model with {depth} blocks")
    return list(range(start % depth, depth))


def cls_rollout(mats: Sequence[torch.Tensor], normalize: bool = False) -> torch.Tensor:
    """Class-token row of the rollout ``C = Â_last ⋯ Â_first`` with ``Â_b = I + M_b``.

    Without ``normalize``: reference ``ViT_LRP.compute_rollout_attention`` (REFERENCE §3.1, no row
    normalisation). With ``normalize``: each ``I + M_b`` is divided by its row sums, as the reference's
    BERT ``ExplanationGenerator.compute_rollout_attention`` does (REFERENCE §3.2). Computed as a row
    vector ``e_0ᵀ Â_last ⋯`` (``O(n²)`` per block instead of ``O(n³)``): with ``d = rowsum(I + M)``,
    ``r Â = r/d + (r/d) M``.

    Args:
        mats: per-block ``[B, n, n]`` matrices, first block first.
        normalize: row-normalise each ``I + M_b``.

    Returns:
        ``[B, n]``, row 0 of ``C``.
    """
    if not mats:
        raise ValueError("cls_rollout needs at least one block")
    first = mats[0]
    row = torch.zeros(first.shape[0], 1, first.shape[-1], dtype=first.dtype, device=first.device)
    row[:, :, 0] = 1
    for m in reversed(mats):
        if normalize:
            row = row / (m.sum(dim=-1) + 1)[:, None, :]
        row = torch.baddbmm(row, row, m)
    return row[:, 0]


class _RelevanceMethod(AttributionMethod):
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    class_sensitive: ClassVar[bool] = True

    def __init__(self, preset: str | RulePreset) -> None:
        self.preset = get_preset(preset)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v.name if isinstance(v, RulePreset) else v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class TransformerAttribution(_RelevanceMethod):
    """Transformer attribution (Chefer, Gur, Wolf, CVPR 2021, Eq. 13-15): the paper's method ("Ours").

    Per block ``b ≥ start_layer``: ``Ā_b = mean_h max(0, ∇A_b ⊙ R^(A)_b)`` (clamp before the head
    mean), with ``∇A_b = ∂y_c/∂A_b`` and ``R^(A)_b`` the LRP relevance of the attention probabilities
    under the ``ours`` rules; then the rollout ``C = Â_{L-1} ⋯ Â_s`` of ``Â_b = I + Ā_b`` and the
    map is ``C``'s class-token row.

    * ViT (reference ``ViT_LRP.VisionTransformer.relprop``, ``method="transformer_attribution"``,
      REFERENCE §3.1): ``I + Ā_b`` unnormalised, map ``C[CLS, patches]``. The evaluation scripts use
      ``start_layer=1``; the reference default (and ours) is 0.
    * BERT (reference ``ExplanationGenerator.Generator.generate_LRP``, REFERENCE §3.2): ``I + Ā_b``
      row-normalised, map ``C[CLS, :]`` over all word-pieces with the ``[CLS]`` entry set to the
      row's minimum (``rollout[:, 0, 0] = rollout[:, 0].min()``) and padding 0. The reference default
      ``start_layer=11`` is the last layer of BERT-base; ours is the last layer of any depth.

    Args:
        start_layer: first block of the rollout (negative counts from the end; ``-1`` = last block
            only, the "∇A^(B-1) R" ablation of Table 3). ``None``: the family default (ViT 0, BERT
            the last layer).
        preset: LRP rule preset for ``R^(A)`` (``"ours"`` in the paper).
    """

    name: ClassVar[str] = "transformer_attribution"
    #: ``start_layer=None`` per family (the reference generators' defaults)
    default_start: ClassVar[dict[str, int]] = {"vit": 0, "bert": -1}

    def __init__(self, start_layer: int | None = None, preset: str | RulePreset = "ours") -> None:
        super().__init__(preset)
        self.start_layer = _check_index("start_layer", start_layer, optional=True)

    def _blocks(self, net: _Network) -> list[int]:
        start = self.default_start[net.family] if self.start_layer is None else self.start_layer
        return _blocks_from(start, net.depth)

    def block_terms(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Relevance:
        """``A_b``, ``∇A_b`` and ``R^(A)_b`` (each ``[B, h, n, n]``) for the blocks the method reads."""
        return self._terms(_network(model), batch, target)

    def _terms(self, net: _Network, batch: Batch, target: torch.Tensor | None) -> Relevance:
        return net.relevance(batch, target, self.preset, blocks=self._blocks(net), gradients=True)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        net = _network(model)
        res = self._terms(net, batch, target)
        mats = [(res.gradient[b] * res.relevance[b]).clamp_(min=0).mean(dim=1) for b in sorted(res.relevance)]
        row = cls_rollout(mats, normalize=net.normalize_rollout)
        return Attribution(maps=net.row_map(row, batch, "min"), targets=res.targets, logits=res.logits, level="tokens")


class LRPRollout(_RelevanceMethod):
    """Rollout of attention relevance without gradients ("Ours w/o ∇A", Table 3 of the paper).

    ``Ā_b = mean_h max(0, R^(A)_b)``, rollout ``C = Â_{L-1} ⋯ Â_s`` of ``Â_b = I + Ā_b`` and the
    class-token row of ``C``, with the same family conventions as :class:`TransformerAttribution`
    (ViT: unnormalised, patch columns; BERT: row-normalised, ``[CLS]`` entry = row minimum).
    Reference ``generate_LRP(method="rollout")`` on the ViT ``ours`` model (REFERENCE §3.1, golden
    ``lrp_relevance_rollout_sl1``); the reference's BERT generator has no such method.

    Args:
        start_layer: first block of the rollout (negative counts from the end). ``None``: the family
            default (ViT 1 as the reference's evaluation; BERT the last layer, as transformer
            attribution).
        preset: LRP rule preset (``"ours"`` in the reference).
    """

    name: ClassVar[str] = "lrp_rollout"
    default_start: ClassVar[dict[str, int]] = {"vit": 1, "bert": -1}

    def __init__(self, start_layer: int | None = None, preset: str | RulePreset = "ours") -> None:
        super().__init__(preset)
        self.start_layer = _check_index("start_layer", start_layer, optional=True)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        net = _network(model)
        start = self.default_start[net.family] if self.start_layer is None else self.start_layer
        blocks = _blocks_from(start, net.depth)
        res = net.relevance(batch, target, self.preset, blocks=blocks)
        mats = [res.relevance[b].clamp(min=0).mean(dim=1) for b in blocks]
        row = cls_rollout(mats, normalize=net.normalize_rollout)
        return Attribution(maps=net.row_map(row, batch, "min"), targets=res.targets, logits=res.logits, level="tokens")


class PartialLRP(_RelevanceMethod):
    """Partial LRP (Voita et al. 2019): relevance of one block's attention probabilities.

    Map ``mean_h max(0, R^(A)_l)[CLS, :]`` under the ``lrp`` rules; with ``use_gradient``
    ``mean_h max(0, ∇A_l ⊙ R^(A)_l)`` (the reference's ``is_ablation=True``). ViT: reference
    ``generate_LRP(method="last_layer")`` on the ``orig`` model, ``layer=1`` is its
    ``method="second_layer"`` (REFERENCE §3.1), map over the patches. BERT: reference
    ``Generator.generate_LRP_last_layer`` (REFERENCE §3.2), map over all word-pieces with the
    ``[CLS]`` entry and padding 0. The relevance pass stops at block ``layer``.

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
        net = _network(model)
        if not -net.depth <= self.layer < net.depth:
            raise ValueError(f"layer={self.layer} is out of range for a model with {net.depth} blocks")
        b = self.layer % net.depth
        res = net.relevance(batch, target, self.preset, blocks=[b], gradients=self.use_gradient)
        cam = res.relevance[b][:, :, 0]  # CLS rows [B, h, n]: nothing else is read
        if self.use_gradient:
            cam = res.gradient[b][:, :, 0] * cam
        maps = net.row_map(cam.clamp(min=0).mean(dim=1), batch, "zero")
        return Attribution(maps=maps, targets=res.targets, logits=res.logits, level="tokens")


class FullLRP(_RelevanceMethod):
    """Full LRP (Binder et al. 2016) through every block to the model's input representation.

    * ViT: the relevance pass runs through every block, the position-embedding sum (the image part
      is kept), drops the prefix tokens and ends with the z^B rule of the patch-embedding
      convolution (per-sample data bounds); the map is ``Σ_RGB R_x`` ``[B, H, W]`` at input
      resolution (level ``"pixels"``). Reference ``generate_LRP(method="full")`` on the ``orig``
      model (REFERENCE §3.1); ``preset="ours"`` gives its ``full`` on the ``ours`` model (golden
      ``full_lrp_ours_rules``).
    * BERT: the pass ends at the encoder input (after the embedding LayerNorm; the embedding layer's
      relevance is never computed, as in the reference); the map is ``Σ_hidden R`` over all
      word-pieces with the ``[CLS]`` entry and padding 0 (level ``"tokens"``). Reference
      ``Generator.generate_full_lrp`` on the ``orig`` model (REFERENCE §3.2).

    With ``preset="lrp"`` every ``nn.Linear`` roughly doubles the total relevance (REFERENCE §8 item
    18), so deep models overflow float16 (``2^(4·depth)``); run them in float32 or bfloat16.

    Args:
        preset: LRP rule preset (``"lrp"`` for the paper's LRP baseline).
    """

    name: ClassVar[str] = "full_lrp"

    def __init__(self, preset: str | RulePreset = "lrp") -> None:
        super().__init__(preset)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        net = _network(model)
        res = net.relevance(batch, target, self.preset, input_relevance=True)
        maps, level = net.input_map(res.input_relevance, batch)
        return Attribution(maps=maps, targets=res.targets, logits=res.logits, level=level)
