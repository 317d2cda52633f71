"""Rules for the layers with weights: ``nn.Linear`` (α1β0, two normalisations) and the input convolution (z^B).

Same protocol as :mod:`.rules`: ``y = Rule.apply(state, out, x, weight, ...)`` returns the stock
output ``out``; in relevance mode the backward hands LRP relevance to ``x``. ``Rule.leaf(state, m)``
binds a rule to a module instance (``rule(x, out)``, the form the canonizers install). Equations follow
REFERENCE §2 (reference ``modules/layers_ours.py`` and ``layers_lrp.py``), Bach et al. 2015 (PLoS ONE
10(7), Eq. 60) and Montavon et al. 2017 (Pattern Recognition 65, z⁺ and z^B rules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from xaibench.methods._lrp.rules import EPS, RuleState, _setup, safe_divide


class _LinearLeaf:
    """``leaf(state, m)``: the rule bound to an ``nn.Linear`` (``apply(state, out, x, m.weight, m.bias)``)."""

    @classmethod
    def leaf(cls, state: RuleState, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, out: cls.apply(state, out, x, m.weight, m.bias)


class LinearAlphaBetaJoint(_LinearLeaf, Function):
    """LRP-α1β0 for ``y = x Wᵀ + b`` with signed inputs, positive and negative parts normalised jointly.

    Preset ``ours`` (reference ``layers_ours.Linear.relprop`` with ``alpha=1``; Bach et al. 2015,
    Eq. 60; Montavon et al. 2017 z⁺ rule extended to signed inputs), bias ignored::

        z_j  = Σ_i W⁺_ji x⁺_i + W⁻_ji x⁻_i            (≥ 0)
        s_j  = safe_divide(R_j, z_j)
        R_i  = x⁺_i Σ_j W⁺_ji s_j + x⁻_i Σ_j W⁻_ji s_j

    with ``W⁺ = max(W, 0)``, ``x⁻ = min(x, 0)``. Conserves ``Σ_i R_i = Σ_j R_j`` wherever ``z_j ≠ 0``.
    Computed with one extra matmul for ``z``, since ``z = (Wx + |W||x|) / 2`` and ``Wx = y − b`` is
    the forward output, and two for ``R_i = (x_i (Wᵀs)_i + |x_i| (|W|ᵀs)_i) / 2``.

    ``apply(state, out, x, weight, bias)``: ``x`` ``[..., in]``, ``weight`` ``[out, in]``, ``bias``
    ``[out]`` or ``None``, ``out`` ``[..., out]``.
    """

    @staticmethod
    def forward(
        ctx: Any, state: RuleState, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ):
        _setup(ctx, state, out, x, weight, bias)
        return out

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None, None, None
        out, x, weight, bias = ctx.saved_tensors
        shape = x.shape
        x, R = x.reshape(-1, shape[-1]), R.reshape(-1, R.shape[-1])
        xa, wa = x.abs(), weight.abs()
        # 2z = Wx + |W||x| = (out - b) + |x| |W|ᵀ (z ≥ 0; a true 0 may round slightly negative, and
        # both mean s = 0 as in the reference); s/2 = R / (2z + 2e-9), computed in z's buffer
        z2 = torch.addmm(out.reshape(-1, out.shape[-1]), xa, wa.T)
        if bias is None:
            zero = z2 <= 0
            z2.add_(2 * EPS)
        else:
            zero = z2 <= bias
            z2.sub_(bias - 2 * EPS)
        s = torch.div(R, z2, out=z2).masked_fill_(zero, 0)
        Rx = (s @ weight).mul_(x).addcmul_(s @ wa, xa)
        return None, None, Rx.reshape(shape), None, None


class LinearAlphaBetaSeparate(_LinearLeaf, Function):
    """LRP-α1β0 for ``y = x Wᵀ + b``, positive and negative parts normalised *separately*.

    Preset ``lrp`` (reference ``layers_lrp.Linear.relprop`` with ``alpha=1``, REFERENCE §2), bias
    ignored::

        R_i = x⁺_i Σ_j W⁺_ji R_j / (W⁺x⁺)_j + x⁻_i Σ_j W⁻_ji R_j / (W⁻x⁻)_j

    (divisions by ``safe_divide``). Each part redistributes the full ``R``, so a layer roughly
    doubles the total relevance: ``Σ_i R_i = 2 Σ_j R_j`` where both ``(W⁺x⁺)_j`` and ``(W⁻x⁻)_j`` are
    non-zero. This is what makes the reference's full LRP grow with depth.

    ``apply(state, out, x, weight, bias)``: ``x`` ``[..., in]``, ``weight`` ``[out, in]``, ``out``
    ``[..., out]`` (``bias`` unused).
    """

    @staticmethod
    def forward(
        ctx: Any, state: RuleState, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ):
        _setup(ctx, state, x, weight)
        return out

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None, None, None
        x, weight = ctx.saved_tensors
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        pos = x > 0
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        cp = safe_divide(R, F.linear(xp, wp), overwrite_b=True) @ wp
        cn = safe_divide(R, F.linear(xn, wn), overwrite_b=True) @ wn
        # x⁺ ⊙ c⁺ + x⁻ ⊙ c⁻, the two supports being disjoint
        return None, None, torch.where(pos, cp, cn).mul_(x), None, None


class Conv2dZBox(Function):
    """z^B rule (bounded inputs) for the input convolution, with per-sample data bounds.

    Montavon et al. 2017 (z^B rule for pixel layers); reference ``Conv2d.relprop`` for 3 input
    channels (REFERENCE §2, identical in both rule files), bias ignored. With ``L = min(x)`` and
    ``H = max(x)`` over ``(C, H, W)`` of each sample::

        Z = conv(x, W) − conv(L, W⁺) − conv(H, W⁻) + 1e-9
        S = R / Z
        R_x = x ⊙ convᵀ(S, W) − L ⊙ convᵀ(S, W⁺) − H ⊙ convᵀ(S, W⁻)

    ``apply(state, out, x, weight, stride, padding, dilation)``: ``x`` ``[B, C, H, W]``, ``weight``
    ``[D, C, kh, kw]``, ``out`` ``[B, D, gh, gw]``; groups must be 1.
    """

    @classmethod
    def leaf(cls, state: RuleState, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The rule bound to a ``Conv2d`` instance (its stride, padding and dilation)."""
        return lambda x, out: cls.apply(state, out, x, m.weight, m.stride, m.padding, m.dilation)

    @staticmethod
    def forward(
        ctx: Any,
        state: RuleState,
        out: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ):
        _setup(ctx, state, x, weight)
        ctx.conv = {"stride": stride, "padding": padding, "dilation": dilation}
        return out

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None, None, None, None, None
        x, weight = ctx.saved_tensors
        low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
        high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        # conv(x, W) - conv(L, W⁺) - conv(H, W⁻) as one convolution over 3C stacked channels
        z = F.conv2d(torch.cat([x, low, high], dim=1), torch.cat([weight, -wp, -wn], dim=1), **ctx.conv)
        s = R / (z + EPS)
        c = torch.nn.grad.conv2d_input(
            (x.shape[0], 3 * x.shape[1], *x.shape[2:]), torch.cat([weight, wp, wn], dim=1), s, **ctx.conv
        )
        cx, cl, ch = c.chunk(3, dim=1)
        return None, None, x * cx - low * cl - high * ch, None, None, None, None
