"""Rule presets as data: which rule each kind of operation gets.

The reference ships two copies of every layer with different ``relprop`` s (REFERENCE §2):
``modules/layers_ours.py`` (used for transformer attribution) and ``modules/layers_lrp.py`` (used for
the LRP and partial-LRP baselines). Here they are two presets over one set of rules, next to AttnLRP
(Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022), which propagate in the Gradient ×
Input form (:mod:`.attnlrp_rules`; "gradient" = the stock backward of the operation):

=============================  ====================  ====================  =====================  ===============
operation                      ``ours``              ``lrp``               ``attnlrp``            ``cp_lrp``
=============================  ====================  ====================  =====================  ===============
``nn.Linear``                  α1β0, signed parts    α1β0, signed parts    ε (gradient); γ-rule   same
                               jointly normalised    separately (doubles)  with ``gamma > 0``
sums (residual, pos-embed)     z-rule, rescaled      plain z-rule          ε (gradient)           same
``q @ kᵀ``                     z-rule, half each     same                  uniform (half each)    no relevance
``A @ v``                      z-rule, half each     same                  uniform (half each)    all to ``v``
residual fork (``Clone``)      sum of the users      same                  gradient               same
patch-embedding convolution    z^B, per-sample       same                  ε (gradient)           same
                               bounds
class-token pooling            z-rule on the token   same                  gradient               same
LayerNorm                      identity              same                  σ held constant        same
GELU, tanh, ReLU               identity              same                  identity (implicit)    same
softmax, additive mask,        identity              same                  gradient               same
LayerScale
=============================  ====================  ====================  =====================  ===============
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Literal

from torch import nn
from torch.autograd import Function

from xaibench.methods._lrp import attnlrp_rules, linear_rules, rules

#: what a leaf module is to the presets (see :func:`leaf_kind`)
LeafKind = Literal["norm", "activation", "elementwise"]

#: transformers' GELU variants (elementwise nonlinearities)
_HF_ACTIVATIONS = (
    "GELUActivation",
    "NewGELUActivation",
    "FastGELUActivation",
    "QuickGELUActivation",
    "GELUTanh",
    "PytorchGELUTanh",
    "AccurateGELUActivation",
)


@functools.cache
def leaf_types() -> dict[LeafKind, tuple[type[nn.Module], ...]]:
    """The leaf module types each preset has a rule for, by kind (beside ``nn.Linear`` and the input conv)."""
    from timm.layers import GELU, LayerScale, QuickGELU

    activations: tuple[type[nn.Module], ...] = (nn.GELU, GELU, QuickGELU, nn.ReLU, nn.Tanh)
    try:
        from transformers import activations as hf
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf = None
    if hf is not None:
        activations += tuple(getattr(hf, n) for n in _HF_ACTIVATIONS if hasattr(hf, n))
    return {"norm": (nn.LayerNorm,), "activation": activations, "elementwise": (LayerScale, nn.Softmax)}


def leaf_kind(m: nn.Module) -> LeafKind | None:
    """``"norm"`` (LayerNorm), ``"activation"`` (GELU, tanh, ...), ``"elementwise"`` (LayerScale,
    softmax) or ``None`` for a module no preset has a leaf rule for."""
    for kind, types in leaf_types().items():
        if isinstance(m, types):
            return kind
    return None


@dataclass(frozen=True)
class RulePreset:
    """Which ``autograd.Function`` rule each operation kind gets (``None``: the stock gradient).

    Attributes:
        name: preset id (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``).
        linear: rule for ``nn.Linear``.
        add: rule for sums of two tensors (residual connections, position embedding).
        scores: rule for ``q @ kᵀ``.
        context: rule for ``A @ v``.
        clone: rule for the forks of the residual stream.
        input_conv: rule for the patch-embedding convolution (the input layer).
        pool: rule for class-token pooling.
        norm: rule for LayerNorm modules.
        activation: rule for elementwise nonlinearities (GELU, tanh, ReLU).
        elementwise: rule for the softmax, the additive attention mask and LayerScale.
        gradient_x_input: the pass carries a modified gradient ``g`` (``R_a = a ⊙ g_a``); relevance
            read at a tensor is that tensor times what reaches it (AttnLRP, CP-LRP).
    """

    name: str
    linear: type[Function] | None
    add: type[Function] | None
    scores: type[Function] | None = rules.MatMulZ
    context: type[Function] | None = rules.MatMulZ
    clone: type[Function] | None = rules.Clone
    input_conv: type[Function] | None = linear_rules.Conv2dZBox
    pool: type[Function] | None = rules.TokenSelect
    norm: type[Function] | None = rules.Identity
    activation: type[Function] | None = rules.Identity
    elementwise: type[Function] | None = rules.Identity
    gradient_x_input: bool = False


def attnlrp_preset(gamma: float = 0.0, *, conservative: bool = False) -> RulePreset:
    """AttnLRP (``conservative=False``) or CP-LRP (``True``), with the γ-rule on ``nn.Linear`` if ``gamma > 0``.

    Args:
        gamma: γ of the linear layers' γ-rule (0: the ε-rule, i.e. the gradient).
        conservative: CP-LRP: the attention is a constant (no relevance through ``q`` and ``k``, all of
            ``A @ v``'s to ``v``), instead of AttnLRP's uniform rule on both products.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0 (0: the epsilon rule); got {gamma!r}")
    base = PRESETS["cp_lrp" if conservative else "attnlrp"]
    if gamma == 0:
        return base
    return replace(base, name=f"{base.name}_gamma{gamma:g}", linear=attnlrp_rules.linear_gamma(float(gamma)))


_GRADIENT = {
    "linear": None,
    "add": None,
    "clone": None,
    "input_conv": None,
    "pool": None,
    "norm": attnlrp_rules.LayerNormFrozenStd,
    "activation": attnlrp_rules.IdentityImplicit,
    "elementwise": None,
    "gradient_x_input": True,
}

PRESETS: dict[str, RulePreset] = {
    # reference modules/layers_ours.py: transformer attribution ("Ours")
    "ours": RulePreset(name="ours", linear=linear_rules.LinearAlphaBetaJoint, add=rules.AddRescaled),
    # reference modules/layers_lrp.py: the LRP and partial-LRP baselines
    "lrp": RulePreset(name="lrp", linear=linear_rules.LinearAlphaBetaSeparate, add=rules.AddZ),
    # AttnLRP (lxt's efficient rules), Gradient x Input form
    "attnlrp": RulePreset(
        name="attnlrp", scores=attnlrp_rules.UniformProduct, context=attnlrp_rules.UniformProduct, **_GRADIENT
    ),
    # CP-LRP: attention held constant
    "cp_lrp": RulePreset(
        name="cp_lrp", scores=attnlrp_rules.NoRelevance, context=attnlrp_rules.ConstantAttention, **_GRADIENT
    ),
}


def get_preset(preset: str | RulePreset) -> RulePreset:
    """Look a preset up by name (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``) or pass a
    :class:`RulePreset` through."""
    if isinstance(preset, RulePreset):
        return preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown LRP rule preset {preset!r}; supported: {sorted(PRESETS)}")
    return PRESETS[preset]
