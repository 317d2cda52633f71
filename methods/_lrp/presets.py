"""Rule presets as data: which rule each kind of operation gets.

The reference ships two copies of every layer with different ``relprop`` s (REFERENCE §2):
``modules/layers_ours.py`` (used for transformer attribution) and ``modules/layers_lrp.py`` (used for
the LRP and partial-LRP baselines). Here they are two presets over one set of rules:

=============================  =================================  ==================================
operation                      ``ours``                           ``lrp``
=============================  =================================  ==================================
``nn.Linear``                  α1β0, signed parts jointly         α1β0, signed parts separately
                               normalised                         normalised (doubles relevance)
sums (residual, pos-embed)     z-rule, rescaled per sample        plain z-rule
products (``q@kᵀ``, ``A@v``)   z-rule, half to each operand       same
residual fork (``Clone``)      sum of the users' relevance        same
patch-embedding convolution    z^B with per-sample data bounds    same
class-token pooling            z-rule on the selected token       same
LayerNorm, GELU, softmax, ...  identity                           same
=============================  =================================  ==================================
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.autograd import Function

from xaibench.methods._lrp import rules


def _identity_modules() -> tuple[type[nn.Module], ...]:
    """Leaf module types whose relevance passes unchanged (REFERENCE §2 identity row)."""
    from timm.layers import GELU, LayerScale, QuickGELU

    return (nn.LayerNorm, nn.GELU, GELU, QuickGELU, nn.ReLU, nn.Tanh, nn.Softmax, LayerScale)


@dataclass(frozen=True)
class RulePreset:
    """Which ``autograd.Function`` rule each operation kind gets.

    Attributes:
        name: preset id (``"ours"`` or ``"lrp"``).
        linear: rule for ``nn.Linear``.
        add: rule for sums of two tensors (residual connections, position embedding).
        matmul: rule for products of two activations (``q @ kᵀ``, ``attn @ v``).
        clone: rule for the forks of the residual stream.
        input_conv: rule for the patch-embedding convolution (the input layer).
        pool: rule for class-token pooling.
        identity: leaf module types whose relevance passes unchanged.
    """

    name: str
    linear: type[Function]
    add: type[Function]
    matmul: type[Function] = rules.MatMulZ
    clone: type[Function] = rules.Clone
    input_conv: type[Function] = rules.Conv2dZBox
    pool: type[Function] = rules.TokenSelect
    identity: tuple[type[nn.Module], ...] = ()


PRESETS: dict[str, RulePreset] = {
    # reference modules/layers_ours.py: transformer attribution ("Ours")
    "ours": RulePreset(
        name="ours",
        linear=rules.LinearAlphaBetaJoint,
        add=rules.AddRescaled,
        identity=_identity_modules(),
    ),
    # reference modules/layers_lrp.py: the LRP and partial-LRP baselines
    "lrp": RulePreset(
        name="lrp",
        linear=rules.LinearAlphaBetaSeparate,
        add=rules.AddZ,
        identity=_identity_modules(),
    ),
}


def get_preset(preset: str | RulePreset) -> RulePreset:
    """Look a preset up by name (``"ours"``, ``"lrp"``) or pass a :class:`RulePreset` through."""
    if isinstance(preset, RulePreset):
        return preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown LRP rule preset {preset!r}; supported: {sorted(PRESETS)}")
    return PRESETS[preset]
