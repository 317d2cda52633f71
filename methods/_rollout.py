"""Attention rollout: the one product of ``I + M_b`` over blocks that every rollout-style method reads.

Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020 (attention rollout); Chefer,
Gur & Wolf, CVPR 2021 Eq. 15 (transformer attribution) and ICCV 2021 Eq. 6 (Generic Attention-model
Explainability: ``R ← R + Ā_b R`` from ``R = I``, the same product unnormalised).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rollout(mats: Sequence[torch.Tensor], *, normalize: bool = False, row: int | None = None) -> torch.Tensor:
    """``C = Â_last ⋯ Â_first`` with ``Â_b = I + M_b``, or one row of it.

    Args:
        mats: per-block ``[B, n, n]`` matrices ``M_b`` (heads already fused), first block first.
        normalize: divide each ``I + M_b`` by its row sums (the reference's ``Baselines.generate_rollout``
            and its BERT generator, REFERENCE §3.1-3.2); ``False``: unnormalised (the reference's
            ``ViT_LRP.compute_rollout_attention``, GAE).
        row: ``None``: the whole ``[B, n, n]`` matrix. An index ``i``: row ``i`` of ``C`` ``[B, n]``,
            computed as the row vector ``e_iᵀ Â_last ⋯ Â_first`` (``O(n²)`` per block instead of
            ``O(n³)``): with ``d = rowsum(I + M)``, ``r Â = r/d + (r/d) M``.

    Returns:
        ``[B, n, n]`` or ``[B, n]``.
    """
    if not mats:
        raise ValueError("rollout needs at least one block")
    first = mats[0]
    if row is None:
        eye = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device)
        joint = None
        for m in mats:
            a = m + eye
            if normalize:
                a = a / a.sum(dim=-1, keepdim=True)
            joint = a if joint is None else a @ joint
        return joint
    r = torch.zeros(first.shape[0], 1, first.shape[-1], dtype=first.dtype, device=first.device)
    r[:, :, row] = 1
    for m in reversed(mats):
        if normalize:
            r = r / (m.sum(dim=-1) + 1)[:, None, :]
        r = torch.baddbmm(r, r, m)
    return r[:, 0]
