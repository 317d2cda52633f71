"""AttnLRP and CP-LRP rules, in the Gradient × Input form.

AttnLRP: Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024 (the ε-rule, the identity rule Eq. 9 and the uniform rule Eq. 7, numbered as
in the docstrings of its authors' package ``lxt``). CP-LRP: Ali et al., "XAI for Transformers: Better
Explanations through Conservative Propagation", ICML 2022 (attention and normalisation held constant).

In these presets the relevance pass carries a *modified gradient* ``g`` instead of the relevance
itself: the relevance of any activation ``a`` is ``R_a = a ⊙ g_a``, and the method reads ``x ⊙ g_x``
at the input. This is how ``lxt.efficient`` computes AttnLRP, and it makes most rules free:

* ε-LRP on a linear map with the bias absorbing its share is the plain gradient,
  ``R_x = x ⊙ Wᵀ (R_y / y) = x ⊙ Wᵀ g_y`` (the ε-stabiliser is left out, as in ``lxt``), and so are
  sums (the z-rule), forks, token selection and reshapes: those ops keep their stock backward;
* the softmax keeps its stock backward too: ``x ⊙ ∂s/∂x ᵀ g_s = x ⊙ (R_s − s Σ R_s)``, AttnLRP's
  softmax rule (its linearisation at ``x`` with the bias absorbing the rest).

The rules below change the backward where the gradient is not the rule. Each keeps the stock forward
(``Rule.apply(state, out, *inputs)`` returns ``out``) and, in gradient mode, the stock backward;
``Rule.leaf(state, module)`` binds a rule to a module instance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function

from xaibench.methods._lrp.rules import RuleState, _setup

#: ``lxt``'s stabiliser of ``y / x`` in the implicit identity rule and of ``R / x`` after the γ-rule
EPS_IMPLICIT = 1e-10
#: zennit's default stabiliser of the γ-rule's denominator (``zennit.rules.Gamma``)
EPS_GAMMA = 1e-6


def _stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps·sign(z)`` with ``sign(0) = 1`` (zennit's ``stabilize``)."""
    return z + ((z == 0).to(z.dtype) + z.sign()) * eps


class IdentityImplicit(Function):
    """Identity rule ``R_x = R_y`` for an elementwise nonlinearity ``y = f(x)`` (GELU, tanh; AttnLRP Eq. 9).

    Gradient form (``lxt`` ``identity_rule_implicit``): ``g_x = g_y ⊙ y / (x + 1e-10)``, so that
    ``x ⊙ g_x = y ⊙ g_y``.

    ``apply(state, out, x)`` with ``out = f(x)``, any shape.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _setup(ctx, state, out, x)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None) -> tuple:
        if g is None or not ctx.state.relevance:
            return None, g, None
        out, x = ctx.saved_tensors
        return None, None, (out / (x + EPS_IMPLICIT)).mul_(g)

    @classmethod
    def leaf(cls, state: RuleState, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, out: cls.apply(state, out, x)


class LayerNormFrozenStd(Function):
    """LayerNorm with its standard deviation held constant (AttnLRP's identity rule on the normalisation).

    ``y = (x − μ) / σ ⊙ w + b`` with ``σ = sqrt(var(x) + eps)`` treated as a constant: the centring and
    the affine map stay linear (ε-rule, i.e. gradient × input) and no relevance flows through ``σ``
    (``lxt`` ``layer_norm_forward``, which detaches the standard deviation). Gradient form, over the
    last dimension ``D``::

        g_x = (w ⊙ g_y − mean_D(w ⊙ g_y)) / σ

    ``apply(state, out, x, weight, eps)``: ``x`` ``[..., D]``, ``weight`` ``[D]`` or ``None``.
    """

    @staticmethod
    def forward(
        ctx: Any, state: RuleState, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, eps: float
    ) -> torch.Tensor:
        _setup(ctx, state)
        # σ as lxt computes it (the biased variance about the mean): an intermediate, kept instead of x
        ctx.std = ((x - x.mean(dim=-1, keepdim=True)) ** 2).mean(dim=-1, keepdim=True).add_(eps).sqrt_()
        ctx.weight = weight
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None) -> tuple:
        if g is None or not ctx.state.relevance:
            return None, g, None, None, None
        wg = g if ctx.weight is None else g * ctx.weight
        return None, None, (wg - wg.mean(dim=-1, keepdim=True)).div_(ctx.std), None, None

    @classmethod
    def leaf(cls, state: RuleState, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if len(m.normalized_shape) != 1:
            raise ValueError(
                f"the AttnLRP LayerNorm rule normalises over the last dimension only; got normalized_shape "
                f"{tuple(m.normalized_shape)}"
            )
        return lambda x, out: cls.apply(state, out, x, m.weight, m.eps)


class UniformProduct(Function):
    """Uniform rule for a product of two activations ``Z = P @ Q`` (AttnLRP Eq. 7): half the relevance each.

    Gradient × input of a bilinear map gives each operand the whole ``Σ R_Z``; halving the gradient at
    ``Z`` (``lxt`` ``divide_gradient(·, 2)``) makes ``Σ R_P + Σ R_Q = Σ R_Z``. On ``A @ V`` and
    ``Q Kᵀ`` this is ``lxt``'s attention wrapper: relevance into ``q`` and ``k`` divided by 4 (two
    products on their path), into ``v`` by 2. A constant factor on the product (the attention scale)
    changes nothing.

    ``apply(state, out, p, q, scale=1.0)`` with ``out = (scale·p) @ q`` (the signature of
    :class:`~.rules.MatMulZ`).
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, p: torch.Tensor, q: torch.Tensor, scale: float = 1.0):
        _setup(ctx, state)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None) -> tuple:
        if g is None or not ctx.state.relevance:
            return None, g, None, None, None
        return None, g * 0.5, None, None, None


class NoRelevance(UniformProduct):
    """CP-LRP on ``Q Kᵀ``: the attention is a constant, so no relevance reaches ``q`` and ``k``.

    ``lxt`` ``cp_wrap_attention_forward`` (``stop_gradient`` on the query and key). ``apply(state, out,
    p, q, scale=1.0)`` as :class:`UniformProduct`.
    """

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None) -> tuple:
        return None, (g if not ctx.state.relevance else None), None, None, None


class ConstantAttention(Function):
    """CP-LRP on ``A @ V``: with ``A`` held constant the product is linear in ``V``, which gets all of it.

    Gradient form: ``g_V = Aᵀ g``, nothing to ``A`` (so the softmax and ``Q Kᵀ`` are never reached;
    ``lxt`` stops the gradient at ``q`` and ``k`` instead, which gives the same ``g_V``).

    ``apply(state, out, a, v, scale=1.0)``: ``a`` ``[..., n, m]``, ``v`` ``[..., m, d]``.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, a: torch.Tensor, v: torch.Tensor, scale: float = 1.0):
        _setup(ctx, state, a)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None) -> tuple:
        if g is None or not ctx.state.relevance:
            return None, g, None, None, None
        (a,) = ctx.saved_tensors
        return None, None, None, (a.transpose(-2, -1) @ g).mul_(ctx.scale), None


class LinearGamma(Function):
    """γ-rule for ``y = x Wᵀ + b`` (Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019).

    Positive contributions are favoured: with ``W_γ = W + γ W⁺`` and ``b_γ = b + γ b⁺`` (zennit's
    ``Gamma``, which ``lxt``'s ViT example applies to linear layers), ``z = x W_γᵀ + b_γ``::

        R_x = x ⊙ W_γᵀ (R_y / stab(z)),   R_y = y ⊙ g_y,   g_x = R_x / stab(x)

    where ``stab(z) = z + 1e-6·sign(z)`` and ``stab(x)`` uses 1e-10 (``lxt``'s zennit bridge back to the
    gradient form). ``γ = 0`` is the ε-rule. Subclasses made by :func:`linear_gamma` carry ``gamma``.

    ``apply(state, out, x, weight, bias, gamma)``: ``x`` ``[..., in]``, ``weight`` ``[out, in]``.
    """

    gamma: float = 0.0

    @staticmethod
    def forward(
        ctx: Any, state: RuleState, out: Tensor, x: Tensor, w: Tensor, b: Tensor | None, gamma: float
    ) -> Tensor:
        _setup(ctx, state, out, x, w, b)
        ctx.gamma = gamma
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None) -> tuple:
        if g is None or not ctx.state.relevance:
            return None, g, None, None, None, None
        out, x, weight, bias = ctx.saved_tensors
        w = weight + ctx.gamma * weight.clamp(min=0)
        b = None if bias is None else bias + ctx.gamma * bias.clamp(min=0)
        s = (g * out).div_(_stabilize(F.linear(x, w, b), EPS_GAMMA))
        return None, None, (s @ w).mul_(x).div_(_stabilize(x, EPS_IMPLICIT)), None, None, None

    @classmethod
    def leaf(cls, state: RuleState, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, out: cls.apply(state, out, x, m.weight, m.bias, cls.gamma)


@functools.cache
def linear_gamma(gamma: float) -> type[LinearGamma]:
    """The γ-rule with a fixed ``gamma > 0`` (a :class:`LinearGamma` subclass, one per value)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number; got {gamma!r}")
    return type(f"LinearGamma_{gamma:g}", (LinearGamma,), {"gamma": float(gamma), "__doc__": LinearGamma.__doc__})
