"""Text-modality helpers shared by the text model adapters and the text metrics.

Attribution maps of text models are per word-piece (``[B, T]``); the ERASER rationales and the metrics
are per whitespace word. :func:`word_scores` turns piece scores into word scores the way the reference
does (``scores_per_word_from_scores_per_token``: a word gets the **max** over its pieces, REFERENCE §6),
but through the tokenizer's own piece→word map (``BatchEncoding.word_ids``) instead of re-aligning
characters, so ``[UNK]`` pieces and words the tokenizer rewrites do not break the alignment.

Words without any piece in the model window (beyond the truncation, or words the tokenizer drops
entirely) get **NaN** ("no score"); :func:`top_k_words` never selects them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: ERASER's k for token-F1 in the reference pipeline (``range(5, 85, 5)``, REFERENCE §6)
ERASER_KS: tuple[int, ...] = tuple(range(5, 85, 5))


def word_scores(
    piece_scores: torch.Tensor, word_index: torch.Tensor, num_words: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Per-word scores as the max over each word's word-pieces.

    Args:
        piece_scores: ``[B, T]`` scores per word-piece (an ``Attribution.maps`` of a text model).
        word_index: ``[B, T]`` int64, the word each piece belongs to, ``-1`` for special tokens and
            padding (``Batch.extras["word_index"]``).
        num_words: ``[B]`` number of words of each document (``Batch.extras["num_words"]``).

    Returns:
        ``[B, W]`` with ``W = max(num_words)``, the dtype of ``piece_scores``; NaN for words with no piece
        in the window (truncated away) and for positions beyond a document's length.
    """
    if piece_scores.dim() != 2 or piece_scores.shape != word_index.shape:
        raise ValueError(
            f"piece_scores {tuple(piece_scores.shape)} and word_index {tuple(word_index.shape)} must both "
            "be [B, T] (a text attribution map and the batch's extras['word_index'])"
        )
    num_words = torch.as_tensor(num_words, dtype=torch.long).reshape(-1)
    if num_words.numel() != piece_scores.shape[0]:
        raise ValueError(f"num_words has {num_words.numel()} entries for a batch of {piece_scores.shape[0]}")
    bsz = piece_scores.shape[0]
    width = int(num_words.max()) if bsz else 0
    word_index = word_index.to(piece_scores.device)
    if bool((word_index >= width).any()):
        raise ValueError("word_index points past the number of words; word_index and num_words disagree")
    # one spare column collects specials and padding (index -1) and is dropped
    out = torch.full((bsz, width + 1), float("nan"), dtype=piece_scores.dtype, device=piece_scores.device)
    index = torch.where(word_index >= 0, word_index, torch.full_like(word_index, width))
    out.scatter_reduce_(1, index, piece_scores, reduce="amax", include_self=False)
    return out[:, :width]


def top_k_words(scores: torch.Tensor, k: int, clamp_min: float | None = 0.0) -> torch.Tensor:
    """Indices of the ``k`` highest-scoring words of one document, in ``torch.topk`` order.

    As the reference (``cam = out[0].clamp(min=0)`` before the per-word max, then
    ``word_scores.topk(k)``): scores are clamped at ``clamp_min`` first (``None``: no clamp), cast to
    float64, and ranked with ``torch.topk`` over the scored words only (NaN = no score). When fewer than
    ``k`` words have a score, all of them are returned.

    Args:
        scores: ``[W]`` per-word scores of one document.
        k: number of words.
        clamp_min: lower clamp applied before ranking (ties among clamped words follow ``torch.topk``).

    Returns:
        ``[min(k, #scored)]`` int64 word indices.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scores = scores.detach().to("cpu", torch.float64)
    valid = torch.nonzero(~torch.isnan(scores)).flatten()
    picked = scores[valid]
    if clamp_min is not None:
        picked = picked.clamp(min=clamp_min)
    k = min(k, picked.numel())
    _, order = torch.topk(picked, k)
    return valid[order]


def batch_word_scores(batch: Any, attribution: Any, metric: str, needs: Sequence[str]) -> torch.Tensor:
    """Per-word scores ``[B, W]`` of a text batch's word-piece maps, after checking that the batch carries
    what ``metric`` reads (``needs``: keys of ``batch.extras`` built by a text adapter's collate)."""
    extras = batch.extras
    for key in ("word_index", "num_words", *needs):
        if key not in extras:
            raise ValueError(f"{metric} needs batch.extras[{key!r}] (built by a text model adapter's collate)")
    if attribution.level != "tokens":
        raise ValueError(f"{metric} scores word-piece maps (level='tokens'), got level={attribution.level!r}")
    return word_scores(attribution.maps.detach(), extras["word_index"], extras["num_words"])
