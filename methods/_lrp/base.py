"""What every canonizer shares: instance-scoped overrides, the rule switch, and the relevance pass.

A canonizer (:class:`Canonizer`) gives every operation of one model family its LRP rule inside a
``with`` block by overriding ``forward`` (and a few other methods) on module *instances*; it
restores them in ``finally``, patches no class and registers no hook. Family modules
(:mod:`.vit`, :mod:`.bert`) implement :meth:`Canonizer.check` (refuse what the rules do not cover),
:meth:`Canonizer.depth` and :meth:`Canonizer._plan` (which attribute of which object gets which
function); leaf modules get their rule from the preset by kind (:meth:`Canonizer._leaf_rule`).

:func:`relevance_pass` is the one driver used by every family: a forward pass inside an entered
canonizer, then a true-gradient backward pass (if asked for) and a relevance backward pass, both
stopping at the tensors read (recorded attention probabilities and/or the input leaf).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xaibench.methods._lrp import rules
from xaibench.methods._lrp.presets import RulePreset, get_preset, leaf_kind, leaf_types

#: models inside a canonizer right now (a second, nested canonizer would wrap the wrappers)
_ACTIVE: weakref.WeakSet = weakref.WeakSet()


def block_index(b: int, depth: int) -> int:
    """``b`` in ``[-depth, depth)`` as a non-negative block index (negative counts from the end)."""
    if not isinstance(b, int) or isinstance(b, bool):
        raise TypeError(f"block indices must be int; got {type(b).__name__}")
    if not -depth <= b < depth:
        raise ValueError(f"block index {b} out of range for a model with {depth} blocks")
    return b % depth


def check_targets(target: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64 classes on the logits' device: ``target``, or the argmax when ``None``."""
    if target is None:
        return logits.detach().argmax(dim=-1)
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"target must be a [B] int64 tensor of class indices or None; got {target!r:.80}")
    B, C = logits.shape
    if target.shape != (B,):
        raise ValueError(f"target must have shape [{B}] (one class per sample); got {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= C):
        raise ValueError(f"target classes must lie in [0, {C}); got {target.tolist()}")
    return target.to(device=logits.device, dtype=torch.int64)


def leaf_forward(module: nn.Module, rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """``forward(x) = rule(x, stock_forward(x))`` for a one-input leaf module."""
    stock = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        return rule(x, stock(x))

    return forward


@dataclass
class Relevance:
    """What one relevance pass returns (all detached).

    Attributes:
        logits: ``[B, C]`` logits of the forward pass (the stock model's, to rounding).
        targets: ``[B]`` int64 classes explained (one-hot relevance ``R = e_c`` at the logits).
        attention: ``{b: A_b}`` softmax attention probabilities ``[B, h, n, n]``.
        gradient: ``{b: ∂y_c/∂A_b}`` ``[B, h, n, n]`` (only when gradients were asked for).
        relevance: ``{b: R^(A)_b}`` ``[B, h, n, n]``, the LRP relevance of ``A_b`` (the halved
            ``attn @ v`` share, reference ``save_attn_cam``).
        input_relevance: relevance at the lowest tensor of the pass (only when asked for): the
            pixels ``[B, C_in, H, W]`` for a ViT; for BERT the encoder input ``[B, n, D]``, or the
            word-piece embeddings ``[B, n, D]`` when the pass runs through the embedding layer.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    gradient: dict[int, torch.Tensor] = field(default_factory=dict)
    relevance: dict[int, torch.Tensor] = field(default_factory=dict)
    input_relevance: torch.Tensor | None = None


class Canonizer:
    """Base of the family canonizers: override-and-restore, the rule switch, recorded attention.

    Args:
        model: the family's stock model in eval mode (checked by :meth:`check`; :meth:`depth` gives its
            number of blocks, for block indices where negative counts from the end).
        preset: rule preset name (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``) or a :class:`RulePreset`.
        grad_from_block: first block whose tensors a backward pass will read; everything below runs
            without autograd. ``None`` keeps the whole relevance path differentiable.
        record_blocks: blocks whose attention probabilities ``A_b`` ``[B, h, n, n]`` are recorded
            in :attr:`attention` (the tensors multiplied with ``V``, in the autograd graph).

    Attributes:
        state: the :class:`~xaibench.methods._lrp.rules.RuleState` switched by :meth:`relevance_mode`.
        attention: ``{block: A_b}`` filled by the forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        preset: str | RulePreset = "ours",
        *,
        grad_from_block: int | None = None,
        record_blocks: Sequence[int] = (),
    ) -> None:
        self.model = model
        self.check()
        depth = self.depth()
        self.preset = get_preset(preset)
        self.state = rules.RuleState()
        self.record_blocks = frozenset(block_index(b, depth) for b in record_blocks)
        self.grad_from_block = None if grad_from_block is None else block_index(grad_from_block, depth)
        self.attention: dict[int, torch.Tensor] = {}
        self._saved: list[tuple[object, str, bool, Any]] = []

    # -- to implement per family ----------------------------------------------------------------
    def check(self) -> None:
        """Raise if the model is not one the family's rules cover (called on creation and entry)."""
        raise NotImplementedError

    def depth(self) -> int:
        """Number of transformer blocks (encoder layers) of the model."""
        raise NotImplementedError

    def _plan(self) -> list[tuple[object, str, Callable]]:
        """``(object, attribute, function)`` overrides that give every operation its rule."""
        raise NotImplementedError

    # -- context management ---------------------------------------------------------------------
    def __enter__(self) -> Canonizer:
        self.check()
        if self.model in _ACTIVE:
            raise RuntimeError(f"this model is already inside a {type(self).__name__}; canonizers do not nest")
        plan = self._plan()
        _ACTIVE.add(self.model)
        try:
            for obj, attr, fn in plan:
                self._override(obj, attr, fn)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _override(self, obj: object, attr: str, fn: Callable) -> None:
        had = attr in vars(obj)
        self._saved.append((obj, attr, had, vars(obj).get(attr)))
        setattr(obj, attr, fn)

    def _restore(self) -> None:
        try:
            while self._saved:
                obj, attr, had, old = self._saved.pop()
                if had:
                    setattr(obj, attr, old)
                else:
                    delattr(obj, attr)
        finally:
            _ACTIVE.discard(self.model)

    @contextmanager
    def relevance_mode(self) -> Iterator[None]:
        """Backward passes started within the block propagate relevance instead of gradients."""
        with self.state.relevance_mode():
            yield

    # -- helpers for the family forwards -----------------------------------------------------------
    def _rule(self, kind: str, out: torch.Tensor, *inputs: Any) -> torch.Tensor:
        """``out`` of an inline operation carrying the preset's rule for ``kind`` (``"add"``, ``"scores"``,
        ``"context"``, ``"pool"``, ``"elementwise"``; none: the stock gradient)."""
        rule = getattr(self.preset, kind)
        return out if rule is None else rule.apply(self.state, out, *inputs)

    def _add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a + b`` carrying the preset's sum rule."""
        return self._rule("add", a + b, a, b)

    def _fork(self, x: torch.Tensor, n: int = 2) -> tuple[torch.Tensor, ...]:
        """``n`` aliases of ``x`` for its ``n`` users, carrying the preset's fork rule."""
        clone = self.preset.clone
        return (x,) * n if clone is None else clone.apply(self.state, x, n)

    def _leaf_rule(
        self,
        name: str,
        m: nn.Module,
        passthrough: tuple[type[nn.Module], ...],
        input_layer: nn.Module | None = None,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """``rule(x, out)`` of the preset for a leaf module (``None``: no override, the stock gradient).

        Args:
            name: the module's name in the model (for the error message).
            m: the leaf module.
            passthrough: types that are the identity in eval mode (dropout, ...): their gradient is the
                relevance.
            input_layer: the family's input convolution (the ViT patch embedding), given the input rule.

        Raises:
            TypeError: a module no rule covers, naming it and what is covered.
        """
        if type(m) in passthrough:
            return None
        if isinstance(m, nn.Linear):
            return self._bind("linear", m)
        if m is input_layer:
            return self._bind("input_conv", m)
        kind = leaf_kind(m)
        if kind is not None:
            return self._bind(kind, m)
        known = sorted({t.__name__ for types in leaf_types().values() for t in types})
        layer = "" if input_layer is None else f"the input {type(input_layer).__name__}, "
        raise TypeError(
            f"module '{name}' ({type(m).__name__}) has no LRP rule in preset '{self.preset.name}'; rules exist for "
            f"nn.Linear, {layer}{', '.join(known)} and {', '.join(t.__name__ for t in passthrough)} "
            "(eval-mode identity)"
        )

    def _bind(self, kind: str, m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """``rule(x, out)`` of the preset for a leaf module of ``kind`` (``"linear"``, ``"input_conv"``,
        ``"norm"``, ``"activation"``, ``"elementwise"``); ``None``: the stock gradient, no override."""
        rule = getattr(self.preset, kind)
        return None if rule is None else rule.leaf(self.state, m)


def relevance_pass(
    canon: Canonizer,
    run: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
    target: torch.Tensor | None,
    *,
    gradients: bool = False,
    input_relevance: bool = False,
) -> Relevance:
    """Forward pass, then the backward passes asked for; call inside ``with torch.enable_grad(), canon:``.

    Args:
        canon: an entered canonizer (its ``record_blocks`` are the blocks read).
        run: the forward pass, returning ``(logits [B, C], input leaf or None)``; the leaf is the
            tensor where input relevance is read (it must require grad when ``input_relevance``).
        target: ``[B]`` int64 classes, or ``None`` for each sample's argmax.
        gradients: also compute ``∂y_c/∂A_b`` for the recorded blocks (a true-gradient pass).
        input_relevance: also return the relevance at the input leaf.

    Returns:
        A :class:`Relevance`.
    """
    logits, leaf = run()
    targets = check_targets(target, logits)
    seed = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
    wanted = sorted(canon.record_blocks)
    attn = [canon.attention[b] for b in wanted]
    result = Relevance(
        logits=logits.detach(),
        targets=targets,
        attention={b: a.detach() for b, a in zip(wanted, attn, strict=True)},
    )
    if input_relevance and (leaf is None or not leaf.requires_grad):
        raise RuntimeError("input relevance was asked for but the forward pass gave no differentiable input leaf")
    if gradients and wanted:
        grads = torch.autograd.grad(logits, attn, grad_outputs=seed, retain_graph=True)
        result.gradient = dict(zip(wanted, grads, strict=True))
    read = attn + ([leaf] if input_relevance else [])
    with canon.relevance_mode():
        rel = torch.autograd.grad(logits, read, grad_outputs=seed)
    if canon.preset.gradient_x_input:  # the pass carried g; the relevance of a tensor t is t ⊙ g_t
        rel = [t.detach() * g for t, g in zip(read, rel, strict=True)]
    result.relevance = dict(zip(wanted, rel[: len(wanted)], strict=True))
    if input_relevance:
        result.input_relevance = rel[-1]
    return result
