"""LRP rules as small ``torch.autograd.Function`` s.

Every rule wraps one operation of the stock forward pass. The canonizer computes the operation with
the model's own code (``out = op(inputs)``) and passes ``out`` through the rule,
``y = Rule.apply(state, out, *inputs)``, which returns ``out`` unchanged. The forward values, and so
the logits, are therefore exactly the stock model's. The backward of a rule depends on the shared
:class:`RuleState`:

* gradient mode (default): the rule hands the incoming gradient to ``out``, so autograd continues
  through the stock operation's own backward and computes the true gradient;
* relevance mode: the rule hands LRP relevance to its inputs (and nothing to ``out``), so one
  ``torch.autograd.grad(logits, wanted, grad_outputs=one_hot)`` is a relevance pass that stops at the
  tensors asked for.

Rules of leaf modules also have ``Rule.leaf(state, module) -> rule(x, out)``, the rule bound to one
module instance (what a canonizer installs as that module's forward). The rules of the layers with
weights are in :mod:`.linear_rules`; the Gradient × Input rules of AttnLRP and CP-LRP in
:mod:`.attnlrp_rules`.

Ops that only move values around (reshape, permute, cat, slicing, dropout in eval mode) need no
rule: their vector-Jacobian product is exactly the redistribution LRP prescribes. A fork (one tensor
read twice, e.g. the residual stream) sums the relevance of its users, which is the reference's
``Clone`` rule up to its stabiliser; the residual stream's forks get the exact :class:`Clone`.

All rules work on a batch: relevance of sample ``i`` depends only on sample ``i`` (the reference's
rescaled ``Add`` sums over the whole batch tensor instead, REFERENCE §8 items 7-8), and on any float
dtype. Equations follow REFERENCE §2 (reference ``modules/layers_ours.py`` and ``layers_lrp.py``),
Bach et al. 2015 (LRP, PLoS ONE 10(7)) and Montavon et al. 2017 (deep Taylor decomposition, Pattern
Recognition 65).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd import Function

#: the reference's stabiliser (``safe_divide`` and the z^B denominator)
EPS = 1e-9


class RuleState:
    """Switch shared by the rules of one canonizer: gradient or relevance backward.

    Attributes:
        relevance: ``False`` (default) makes every rule behave like the stock op in backward (true
            gradients); ``True`` makes it propagate relevance.
    """

    def __init__(self) -> None:
        self.relevance = False

    @contextmanager
    def relevance_mode(self) -> Iterator[None]:
        """Within the block, backward passes through the rules compute relevance."""
        previous, self.relevance = self.relevance, True
        try:
            yield
        finally:
            self.relevance = previous


def safe_divide(a: torch.Tensor, b: torch.Tensor, eps: float = EPS, *, overwrite_b: bool = False) -> torch.Tensor:
    """``a / (b + eps)``, and ``0`` where ``b == 0`` (reference ``safe_divide``, REFERENCE §2).

    The stabiliser is added whatever the sign of ``b`` (not sign-matched). Works in any float dtype:
    where ``1e-9`` underflows (float16) the ``b == 0`` entries are still 0. (The reference also
    guards ``b == -1e-9`` exactly; that measure-zero case is left out.)

    Args:
        a: numerator, broadcastable with ``b``.
        b: denominator.
        eps: the stabiliser (1e-9 in the reference).
        overwrite_b: reuse ``b``'s memory for the result (a temporary the caller no longer needs);
            large temporaries are expensive on CPU, where every fresh allocation page-faults.

    Returns:
        The quotient, broadcast shape of ``a`` and ``b``.
    """
    zero = b == 0
    den = b.add_(eps) if overwrite_b else b + eps
    if den.shape == a.shape and den.dtype == a.dtype:
        return torch.div(a, den, out=den).masked_fill_(zero, 0)
    return (a / den).masked_fill_(zero, 0)


def _setup(ctx: Any, state: RuleState, *tensors: torch.Tensor) -> None:
    ctx.state = state
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*tensors)


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    """``[B, ...] -> [B, 1, ..., 1]`` sums over everything but the batch dimension."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


class Identity(Function):
    """Identity rule ``R_x = R_y`` for ``y = f(x)`` with ``f`` shape-preserving.

    REFERENCE §2: ``LayerNorm``, ``GELU``, ``Softmax``, ``Dropout``, ``ReLU``, ``Tanh`` return the
    relevance unchanged (``RelProp.relprop``); the attention scale and LayerScale are elementwise
    rescalings, for which the z-rule is the identity too.

    ``apply(state, out, x)`` with ``out = f(x)`` of the same shape as ``x``.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _setup(ctx, state)
        return out

    @classmethod
    def leaf(cls, state: RuleState, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The rule bound to a leaf module: ``rule(x, out)``."""
        return lambda x, out: cls.apply(state, out, x)

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None
        return None, None, R


def _add_z(R: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    s = safe_divide(R, out)
    return a * s, s.mul_(b) if s.shape == b.shape else s * b


class AddZ(Function):
    """z-rule for a sum ``y = a + b``: ``R_a = a ⊙ R / (a + b)``, ``R_b = b ⊙ R / (a + b)``.

    Preset ``lrp`` (reference ``layers_lrp.Add``, a ``RelPropSimple``; Bach et al. 2015 Eq. 56);
    divisions by ``safe_divide``. Conserves ``R_a + R_b = R`` wherever ``a + b ≠ 0``. ``b`` may be
    broadcast (the position embedding ``[1, n, D]``); its relevance is then per sample.

    ``apply(state, out, a, b)`` with ``out = a + b`` ``[B, ...]``.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
        _setup(ctx, state, out, a, b)
        return out

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None, None
        out, a, b = ctx.saved_tensors
        Ra, Rb = _add_z(R, out, a, b)
        return None, None, Ra, Rb


class AddRescaled(AddZ):
    """z-rule for ``y = a + b`` followed by rescaling so each sample's total relevance is conserved.

    Preset ``ours`` (reference ``layers_ours.Add.relprop``, REFERENCE §2)::

        R_a = a ⊙ R / (a + b),   R_b = b ⊙ R / (a + b)                       (z-rule)
        R_a ← R_a · (|ΣR_a| / (|ΣR_a| + |ΣR_b|)) · ΣR / ΣR_a                 (same for b)

    so that ``ΣR_a + ΣR_b = ΣR``. The sums run over one sample (all dimensions but the first); the
    reference sums over the whole batch tensor, which mixes samples (REFERENCE §8 items 7-8). For a
    batch of one both agree. All divisions are ``safe_divide``.

    ``apply(state, out, a, b)`` with ``out = a + b`` ``[B, ...]``; ``b`` may be broadcast. The forward and
    the z-rule are :class:`AddZ`'s.
    """

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        grads = AddZ.backward(ctx, R)
        if R is None or not ctx.state.relevance:
            return grads
        _, _, Ra, Rb = grads
        sa, sb, sr = _sum_per_sample(Ra), _sum_per_sample(Rb), _sum_per_sample(R)
        total = sa.abs() + sb.abs()
        fa = safe_divide(sa.abs(), total) * sr
        fb = safe_divide(sb.abs(), total) * sr
        return None, None, Ra.mul_(safe_divide(fa, sa)), Rb.mul_(safe_divide(fb, sb))


class MatMulZ(Function):
    """z-rule for a bilinear product ``Z = P @ Q``, each operand keeping half.

    Reference ``einsum.relprop`` (a ``RelPropSimple``) gives each operand a full copy of the
    relevance, ``R_P = P ⊙ (S Qᵀ)``, ``R_Q = Q ⊙ (Pᵀ S)`` with ``S = safe_divide(R, Z)``; the callers
    (``Attention.relprop``, REFERENCE §2.1) then halve both, so ``ΣR_P + ΣR_Q = ΣR``. This rule
    returns the halved values, i.e. for ``attn @ v`` the attention relevance ``R^(A)`` of the paper.

    A constant factor on the product (the attention scale, ``out = (scale·P) @ Q``) passes relevance
    unchanged: the rule is applied to the unscaled ``Z = P @ Q = out / scale``, as in the reference,
    whose ``matmul1`` sees the unscaled ``q``. (Where ``+1e-9`` sits matters: applying it to the
    scaled scores moves the golden full-LRP maps by ~4e-4.)

    ``apply(state, out, p, q, scale)``: ``p`` ``[..., n, k]``, ``q`` ``[..., k, m]``, ``out``
    ``[..., n, m]``, ``scale`` a Python float.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, p: torch.Tensor, q: torch.Tensor, scale: float = 1.0):
        _setup(ctx, state, out, p, q)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None, None, None
        out, p, q = ctx.saved_tensors
        # S = R / (out/scale + eps), halved for each operand: one pass over S instead of two
        s = safe_divide(R, out, EPS * ctx.scale).mul_(0.5 * ctx.scale)
        Rp = (s @ q.transpose(-2, -1)).mul_(p)
        Rq = (p.transpose(-2, -1) @ s).mul_(q)
        return None, None, Rp, Rq, None


class Clone(Function):
    """Fork of one tensor into ``n`` users: ``R_x = x ⊙ Σ_i safe_divide(R_i, x)``.

    Reference ``Clone.relprop`` (REFERENCE §2): the sum of the users' relevance, zeroed where
    ``x == 0`` (``x / (x + 1e-9)`` differs from 1 by ~1e-9 relative). Used for the residual stream
    (two users) and for BERT's hidden states read by the query, key and value projections (three
    users). In gradient mode the gradients are summed, as autograd does for any fork.

    ``apply(state, x, n=2)`` returns ``n`` aliases of ``x`` ``[B, ...]``.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, x: torch.Tensor, n: int = 2):
        _setup(ctx, state, x)
        return tuple(x.view_as(x) for _ in range(n))

    @staticmethod
    def backward(ctx: Any, *R: torch.Tensor | None) -> tuple:
        given = [r for r in R if r is not None]
        if not given:
            return None, None, None
        total = given[0]
        for r in given[1:]:
            total = total + r
        if not ctx.state.relevance:
            return None, total, None
        (x,) = ctx.saved_tensors
        # x ⊙ Σ_i R_i/(x+ε) = x ⊙ (Σ_i R_i)/(x+ε)
        return None, safe_divide(total, x).mul_(x), None


class TokenSelect(Function):
    """Class-token pooling ``y = x[:, index]`` as the reference's ``IndexSelect`` z-rule.

    ``R_x[:, index] = x[:, index] ⊙ safe_divide(R, x[:, index])``, zero elsewhere (REFERENCE §2:
    relevance scattered back to the selected token).

    ``apply(state, out, x, index)``: ``x`` ``[B, n, D]``, ``out = x[:, index]`` ``[B, D]``.
    """

    @staticmethod
    def forward(ctx: Any, state: RuleState, out: torch.Tensor, x: torch.Tensor, index: int):
        _setup(ctx, state, out)
        ctx.index, ctx.shape = index, x.shape
        return out

    @staticmethod
    def backward(ctx: Any, R: torch.Tensor | None) -> tuple:
        if R is None or not ctx.state.relevance:
            return None, R, None, None
        (out,) = ctx.saved_tensors
        Rx = R.new_zeros(ctx.shape)
        Rx[:, ctx.index] = safe_divide(R, out).mul_(out)
        return None, None, Rx, None
