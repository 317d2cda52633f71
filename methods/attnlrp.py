"""AttnLRP and CP-LRP: relevance from the logit to the model's input, as rule presets of the LRP engine.

* AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
  Transformers", ICML 2024; its authors' package ``lxt``): ε-LRP on linear layers (gradient × input,
  biases absorb their share), the identity rule on LayerNorm (standard deviation held constant), on
  GELU and on BERT's pooler tanh, the uniform rule on ``q @ kᵀ`` and ``A @ v`` (relevance into ``q`` and
  ``k`` divided by 4, into ``v`` by 2, as ``lxt``'s efficient rules), the softmax by its gradient.
* CP-LRP (Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation",
  ICML 2022): the same with the attention held constant (no relevance through ``q`` and ``k``; ``A @ v``
  is linear in ``v``).

Optional ``gamma``: the γ-rule on every ``nn.Linear`` (``lxt`` suggests it for ViTs; zennit's ``Gamma``),
default off. The rules are the presets ``"attnlrp"`` / ``"cp_lrp"`` of :mod:`xaibench.methods._lrp`
(:mod:`~xaibench.methods._lrp.attnlrp_rules`), run by the same canonizers as the other relevance
methods: nothing is patched on classes. One forward and one backward pass.

Maps: ViT ``Σ_RGB x ⊙ R_x`` at the pixels ``[B, H, W]`` (level ``"pixels"``); BERT ``Σ_hidden e ⊙ R_e``
at the word-piece embeddings ``[B, n]`` (the input of ``lxt``'s BERT explanation; ``[CLS]`` entry and
padding 0, the reference's BERT convention).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from xaibench.core.types import Attribution, Batch, ModelAdapter
from xaibench.methods._lrp.base import Relevance
from xaibench.methods._lrp.network import RelevanceMethod, network
from xaibench.methods._lrp.presets import attnlrp_preset

__all__ = ["AttnLRP", "CPLRP"]


class AttnLRP(RelevanceMethod):
    """AttnLRP (Achtibat et al., ICML 2024) to the pixels (ViT) or the word-piece embeddings (BERT).

    Args:
        gamma: γ of the γ-rule on ``nn.Linear`` layers; 0 (default) is the ε-rule.
    """

    name: ClassVar[str] = "attnlrp"
    #: CP-LRP: the attention is a constant
    conservative: ClassVar[bool] = False

    def __init__(self, gamma: float = 0.0) -> None:
        super().__init__(attnlrp_preset(gamma, conservative=self.conservative))
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma!r})"

    def input_relevance(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Relevance:
        """The relevance pass; its ``input_relevance`` is ``R = x ⊙ g_x`` at the pixels ``[B, 3, H, W]``
        (ViT) or at the word-piece embeddings ``[B, n, D]`` (BERT), before any sum."""
        return network(model).relevance(batch, target, self.preset, input_relevance=True, through_embeddings=True)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        res = self.input_relevance(model, batch, target)
        maps, level = network(model).input_map(res.input_relevance, batch)
        return Attribution(maps=maps, targets=res.targets, logits=res.logits, level=level)


class CPLRP(AttnLRP):
    """CP-LRP (Ali et al., ICML 2022): AttnLRP's rules with the attention held constant."""

    name: ClassVar[str] = "cp_lrp"
    conservative: ClassVar[bool] = True
