"""Scoped hooks that record attention probabilities on stock models.

Every recorder is a context manager: hooks exist only inside the ``with`` block and are removed in
``finally``, so a method never leaves a hook behind, even when it raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def record_timm_attention(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Record ``A_b = softmax(q kᵀ · scale)`` of the chosen timm ViT blocks, ``{b: [B, h, n, n]}``.

    The probabilities are taken at the input of ``attn.attn_drop`` (identity in eval mode), i.e. the
    tensor multiplied with ``v``; they stay in the autograd graph so callers can differentiate w.r.t.
    them. Requires eager attention on the instance (``fused_attn = False``): a requested layer that
    records nothing raises instead of yielding a silently empty result.
    """
    blocks = list(model.blocks)
    wanted = range(len(blocks)) if layers is None else [b % len(blocks) for b in layers]
    recorded: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            recorded[index] = args[0]

        return hook

    try:
        for b in wanted:
            handles.append(blocks[b].attn.attn_drop.register_forward_hook(make_hook(b)))
        yield recorded
    finally:
        for h in handles:
            h.remove()
    missing = [b for b in wanted if b not in recorded]
    if missing:
        raise RuntimeError(
            f"attention blocks {missing} recorded no probabilities: the model uses fused attention "
            "(set `fused_attn = False` on each Attention instance; xaibench's TimmViT adapter does this)"
        )
