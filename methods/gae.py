"""Generic Attention-model Explainability (GAE): Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021.

The successor of transformer attribution, with no LRP: the attention of each block is weighted by its
gradient, and the relevance of the tokens to each other is accumulated from the first block up. For a
self-attention encoder (the paper's self-attention rules; its authors' ViT notebook
``Transformer_MM_explainability_ViT.ipynb``: ``avg_heads``, ``apply_self_attention_rules``)::

    Ā_b = mean_h( max(0, ∂y_c/∂A_b ⊙ A_b) )       (clamp before the head mean)
    R ← R + Ā_b · R,  from R = I, for b = start_layer … L-1    (no row normalisation)

i.e. ``R = (I + Ā_{L-1}) ⋯ (I + Ā_s)``, the unnormalised rollout of ``Ā_b``. The map is the class
token's row of ``R``: over the patch tokens for a ViT (prefix columns dropped), over the word-pieces for
BERT (``[CLS]`` entry and padding 0, the reference's BERT convention). One forward and one backward
pass that stops at block ``start_layer``'s attention, with per-sample targets.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from xaibench.core.types import Attribution, AttributionMethod, Batch, ModelAdapter
from xaibench.methods._rollout import rollout
from xaibench.methods.attention import select_logit

__all__ = ["GenericAttention"]


class GenericAttention(AttributionMethod):
    """GAE for self-attention classifiers (timm ViT, Hugging Face BERT), batched with per-sample targets.

    Args:
        start_layer: first block of the accumulation (negative counts from the end); 0 = all blocks,
            as the authors' code.
    """

    name: ClassVar[str] = "gae"
    class_sensitive: ClassVar[bool] = True

    def __init__(self, start_layer: int = 0) -> None:
        if isinstance(start_layer, bool) or not isinstance(start_layer, int):
            raise TypeError(
                f"start_layer must be an int (a block index, negative counts from the end); got {start_layer!r}"
            )
        self.start_layer = start_layer

    def __repr__(self) -> str:
        return f"GenericAttention(start_layer={self.start_layer})"

    def _blocks(self, model: ModelAdapter) -> list[int]:
        depth = len(model.attention_layers())
        if not -depth <= self.start_layer < depth:
            raise ValueError(f"start_layer={self.start_layer} out of range for a model with {depth} blocks")
        return list(range(self.start_layer % depth, depth))

    def block_matrices(
        self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """``Ā_b`` ``[B, n, n]`` of the accumulated blocks (first first), the targets ``[B]`` and logits ``[B, C]``.

        One forward with the attention probabilities recorded and one backward of ``Σ_i y_{i, c_i}``
        to the lowest block read (samples do not interact, so sample ``i`` gets ``∂y_{i, c_i}/∂A_b``).
        """
        model.check_cls_readout(self.name)
        blocks = self._blocks(model)
        with torch.enable_grad():
            logits, attn = model.forward_with_attention(batch.inputs, layers=blocks)
            targets, selected = select_logit(logits, target)
            grads = torch.autograd.grad(selected, [attn[b] for b in blocks])
        with torch.no_grad():
            mats = [(g * attn[b].detach()).clamp_(min=0).mean(dim=1) for b, g in zip(blocks, grads, strict=True)]
        return mats, targets.detach(), logits.detach()

    def relevance_matrix(
        self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole token-to-token relevance ``R`` ``[B, n, n]`` (the authors' ``R``), targets and logits."""
        mats, targets, logits = self.block_matrices(model, batch, target)
        return rollout(mats), targets, logits

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        mats, targets, logits = self.block_matrices(model, batch, target)
        with torch.no_grad():
            maps = model.token_map(rollout(mats, row=0))  # the class token's row of R
        return Attribution(maps=maps, targets=targets, logits=logits, level="tokens")
