"""Relevance-based attribution: transformer attribution, full LRP, partial LRP, LRP rollout.

All methods share one engine (:mod:`xaibench.methods._lrp`): LRP rules as ``autograd.Function`` s,
rule presets (here the reference's two: ``"ours"`` = ``layers_ours.py``, ``"lrp"`` = ``layers_lrp.py``;
AttnLRP's are used by :mod:`xaibench.methods.attnlrp`) and one instance-scoped canonizer per model
family: timm ``VisionTransformer`` (images) and Hugging Face ``BertForSequenceClassification`` (text).
Each method is written once; the family only decides how the relevance pass is run and how a per-token
row becomes a map (:class:`~xaibench.methods._lrp.network.Network`). Each method runs one forward pass
and only the backward passes it reads, stopping at the lowest block it needs (REFERENCE §3.1, §3.2).

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

from typing import ClassVar

import torch

from xaibench.core.types import Attribution, Batch, ModelAdapter
from xaibench.methods._lrp.base import Relevance
from xaibench.methods._lrp.network import Network, RelevanceMethod, network
from xaibench.methods._lrp.presets import RulePreset
from xaibench.methods._rollout import rollout

__all__ = ["TransformerAttribution", "LRPRollout", "PartialLRP", "FullLRP"]


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


class TransformerAttribution(RelevanceMethod):
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

    def _blocks(self, net: Network) -> list[int]:
        start = self.default_start[net.family] if self.start_layer is None else self.start_layer
        return _blocks_from(start, net.depth)

    def block_terms(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Relevance:
        """``A_b``, ``∇A_b`` and ``R^(A)_b`` (each ``[B, h, n, n]``) for the blocks the method reads."""
        return self._terms(network(model), batch, target)

    def _terms(self, net: Network, batch: Batch, target: torch.Tensor | None) -> Relevance:
        return net.relevance(batch, target, self.preset, blocks=self._blocks(net), gradients=True)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        net = network(model)
        res = self._terms(net, batch, target)
        mats = [(res.gradient[b] * res.relevance[b]).clamp_(min=0).mean(dim=1) for b in sorted(res.relevance)]
        row = rollout(mats, normalize=net.normalize_rollout, row=0)
        return Attribution(maps=net.row_map(row, batch, "min"), targets=res.targets, logits=res.logits, level="tokens")


class LRPRollout(RelevanceMethod):
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
        net = network(model)
        start = self.default_start[net.family] if self.start_layer is None else self.start_layer
        blocks = _blocks_from(start, net.depth)
        res = net.relevance(batch, target, self.preset, blocks=blocks)
        mats = [res.relevance[b].clamp(min=0).mean(dim=1) for b in blocks]
        row = rollout(mats, normalize=net.normalize_rollout, row=0)
        return Attribution(maps=net.row_map(row, batch, "min"), targets=res.targets, logits=res.logits, level="tokens")


class PartialLRP(RelevanceMethod):
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
        net = network(model)
        if not -net.depth <= self.layer < net.depth:
            raise ValueError(f"layer={self.layer} is out of range for a model with {net.depth} blocks")
        b = self.layer % net.depth
        res = net.relevance(batch, target, self.preset, blocks=[b], gradients=self.use_gradient)
        cam = res.relevance[b][:, :, 0]  # CLS rows [B, h, n]: nothing else is read
        if self.use_gradient:
            cam = res.gradient[b][:, :, 0] * cam
        maps = net.row_map(cam.clamp(min=0).mean(dim=1), batch, "zero")
        return Attribution(maps=maps, targets=res.targets, logits=res.logits, level="tokens")


class FullLRP(RelevanceMethod):
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
        net = network(model)
        res = net.relevance(batch, target, self.preset, input_relevance=True)
        maps, level = net.input_map(res.input_relevance, batch)
        return Attribution(maps=maps, targets=res.targets, logits=res.logits, level=level)
