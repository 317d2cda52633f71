"""The network behind a model adapter, as the relevance methods see it: which pass to run, how to read maps.

Each relevance method (:mod:`xaibench.methods.lrp`, :mod:`xaibench.methods.attnlrp`) is written once;
the family decides how its relevance pass is run and how a per-token row or the input relevance becomes
the map the metrics read. Family conventions, as the reference's generators have them:

================================  =================================  ==================================
                                  ViT (``ViT_LRP.py``, §3.1)         BERT (``ExplanationGenerator``, §3.2)
================================  =================================  ==================================
rollout of ``I + Ā_b``            unnormalised                       row-normalised
map of a per-token row            CLS row over the patch grid        CLS row over all word-pieces
CLS entry                         dropped (prefix token)             rollouts: row minimum; others: 0
input relevance map               ``Σ_RGB`` at the pixels            ``Σ_hidden`` per word-piece, [CLS] 0
================================  =================================  ==================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

from xaibench.core.types import AttributionMethod, Batch, ImageModelAdapter, ModelAdapter, TextModelAdapter
from xaibench.methods._lrp.base import Relevance
from xaibench.methods._lrp.presets import RulePreset, get_preset

__all__ = ["Family", "Network", "RelevanceMethod", "network"]

Family = Literal["vit", "bert"]


class Network:
    """A supported network behind an adapter: how to run the relevance pass and read maps from it.

    Attributes:
        family: ``"vit"`` or ``"bert"``.
        depth: number of transformer blocks (encoder layers).
        normalize_rollout: whether rollouts row-normalise ``I + Ā_b`` (BERT) or not (ViT).
        net: the stock ``nn.Module``.
    """

    family: Family
    depth: int
    normalize_rollout: bool
    net: nn.Module

    def _pass(self) -> Callable[..., Relevance]:
        """The family's relevance pass (``vit_relevance`` or ``bert_relevance``)."""
        raise NotImplementedError

    def _inputs(self, batch: Batch) -> object:
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
        through_embeddings: bool = False,
    ) -> Relevance:
        """One relevance pass (see :func:`~xaibench.methods._lrp.vit.vit_relevance`).

        ``through_embeddings``: read the input relevance at the model's input embeddings (BERT: the
        word-piece embeddings instead of the encoder input; a ViT's input is the pixels either way).
        """
        options = {"through_embeddings": through_embeddings} if self.family == "bert" else {}
        return self._pass()(
            self.net,
            self._inputs(batch),
            target,
            preset,
            blocks=blocks,
            gradients=gradients,
            input_relevance=input_relevance,
            **options,
        )

    def row_map(self, row: torch.Tensor, batch: Batch, cls: Literal["zero", "min"]) -> torch.Tensor:
        """``[B, n]`` values over all tokens -> the map the metrics read."""
        raise NotImplementedError

    def input_map(self, relevance: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Literal["tokens", "pixels"]]:
        """The map from the relevance at the input of the pass, and its level."""
        raise NotImplementedError


class _ViT(Network):
    family: Family = "vit"
    normalize_rollout = False

    def __init__(self, adapter: ImageModelAdapter, vit: nn.Module) -> None:
        self.net = vit
        self.depth = len(vit.blocks)
        self.prefix = int(adapter.num_prefix_tokens)
        self.grid = tuple(int(g) for g in vit.patch_embed.grid_size)

    def _pass(self) -> Callable[..., Relevance]:
        from xaibench.methods._lrp.vit import vit_relevance

        return vit_relevance

    def _inputs(self, batch: Batch) -> torch.Tensor:
        if not isinstance(batch.inputs, torch.Tensor) or batch.inputs.dim() != 4:
            raise TypeError("relevance methods on a ViT need batch.inputs as a [B, 3, H, W] image tensor")
        return batch.inputs

    def row_map(self, row: torch.Tensor, batch: Batch, cls: Literal["zero", "min"]) -> torch.Tensor:
        # the prefix tokens (CLS, registers, ...) are dropped, so the CLS convention does not matter
        return row[:, self.prefix :].reshape(row.shape[0], *self.grid)

    def input_map(self, relevance: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Literal["tokens", "pixels"]]:
        return relevance.sum(dim=1), "pixels"


class _Bert(Network):
    family: Family = "bert"
    normalize_rollout = True

    def __init__(self, adapter: TextModelAdapter, bert: nn.Module) -> None:
        self.adapter = adapter
        self.net = bert
        self.depth = len(bert.bert.encoder.layer)

    def _pass(self) -> Callable[..., Relevance]:
        from xaibench.methods._lrp.bert import bert_relevance

        return bert_relevance

    def _inputs(self, batch: Batch) -> Mapping[str, torch.Tensor]:
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
        # the reference's generate_full_lrp: Σ over the hidden units, [CLS] = 0
        return self.row_map(relevance.sum(dim=-1), batch, "zero"), "tokens"


def network(model: ModelAdapter) -> Network:
    """The supported network behind an adapter (timm ViT or Hugging Face BERT classifier)."""
    from timm.models.vision_transformer import VisionTransformer

    net = model.model if isinstance(model, ModelAdapter) else None
    if isinstance(model, ImageModelAdapter) and isinstance(net, VisionTransformer):
        return _ViT(model, net)
    if isinstance(model, TextModelAdapter):
        from xaibench.methods._lrp.bert import is_bert

        if is_bert(net):
            return _Bert(model, net)
    raise TypeError(
        "relevance methods need a model adapter wrapping a timm VisionTransformer (xaibench TimmViT) or a "
        f"Hugging Face BertForSequenceClassification (xaibench HFBert); got {type(model).__name__} wrapping "
        f"{type(net).__name__}"
    )


class RelevanceMethod(AttributionMethod):
    """Base of the methods that run the LRP engine: a rule preset, and a readable ``repr``."""

    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    class_sensitive: ClassVar[bool] = True

    def __init__(self, preset: str | RulePreset) -> None:
        self.preset = get_preset(preset)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v.name if isinstance(v, RulePreset) else v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
