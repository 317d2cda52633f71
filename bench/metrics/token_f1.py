"""Token-level F1 of top-k word rationales against human rationales (ERASER; REFERENCE §6).

For each document the per-word scores (max over a word's word-pieces, clamped at 0 as the reference's
``cam = out[0].clamp(min=0)``) are ranked with ``torch.topk``; the top-k words are the hard rationale
prediction at k. Scoring follows ERASER's ``score_hard_rationale_predictions`` exactly: truth and
prediction are sets of ``(annotation_id, docid, token)``;

* micro: ``P = Σ|T∩P| / Σ|P|``, ``R = Σ|T∩P| / Σ|T|`` pooled over documents, ``F1 = 2PR/(P+R)``;
* macro: per document ``P_d``, ``R_d``, ``F1_d`` (``F1_d = 0`` when ``P_d`` or ``R_d`` is 0), then the
  means of the three over the documents that have a truth or a prediction.

``_f1(p, r)`` is 0 when either is 0, as ERASER's. Statistics are kept as sums (micro counts, macro sums
and the document count) so shards merge exactly (:meth:`TokenF1.state` / :meth:`TokenF1.merge`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from xaibench.core.text import ERASER_KS, batch_word_scores, top_k_words
from xaibench.core.types import Attribution, Batch, MetricRunner, ModelAdapter
from xaibench.metrics.sums import TensorSums

#: columns of the sum table, one row per k
_COLUMNS = ("tp", "n_pred", "n_truth", "macro_p", "macro_r", "macro_f1", "n_docs")


def _f1(p: float, r: float) -> float:
    return 0.0 if p == 0 or r == 0 else 2 * p * r / (p + r)


def _names(ks: Sequence[int]) -> dict[str, bool]:
    return {f"{avg}_{m}@{k}": True for k in ks for avg in ("micro", "macro") for m in ("p", "r", "f1")}


def rationale_tokens(spans: Sequence[Sequence[int]] | None) -> set[int]:
    """Token indices covered by ``(start, end)`` spans (end exclusive)."""
    return {t for start, end in spans or () for t in range(int(start), int(end))}


class TokenF1(TensorSums, MetricRunner):
    """ERASER token-level P/R/F1 of the top-k words, micro and macro, for every k.

    Args:
        ks: numbers of words; the reference uses ``5, 10, …, 80``.
        cumulative: the reference writes the top-k lists cumulatively (the k=10 prediction file repeats
            the top-5 entries; ERASER deduplicates), so the prediction at k is the union of the top-k' sets
            for all k' ≤ k in ``ks``. Identical to the plain top-k set unless ties make ``torch.topk``
            pick different members for different k. ``False``: the top-k set alone.
        clamp_min: scores are clamped at this value before ranking (reference: 0; ``None``: no clamp).
    """

    name: ClassVar[str] = "token_f1"
    requires: ClassVar[frozenset[str]] = frozenset({"rationale"})
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})
    higher_is_better: ClassVar[Mapping[str, bool]] = _names(ERASER_KS)

    def __init__(self, ks: Sequence[int] = ERASER_KS, cumulative: bool = True, clamp_min: float | None = 0.0) -> None:
        ks = tuple(int(k) for k in ks)
        if not ks or any(k <= 0 for k in ks) or len(set(ks)) != len(ks):
            raise ValueError(f"ks must be distinct positive integers, got {list(ks)}")
        self.ks = tuple(sorted(ks))
        self.cumulative = bool(cumulative)
        self.clamp_min = clamp_min
        if self.ks != ERASER_KS:
            self.higher_is_better = _names(self.ks)
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(self.ks), len(_COLUMNS), dtype=torch.float64)

    # -- streaming --------------------------------------------------------------------------------
    def predictions(self, scores: torch.Tensor) -> dict[int, list[int]]:
        """Top-k word indices of one document for each k, in ``torch.topk`` order.

        Args:
            scores: ``[W]`` per-word scores (NaN = no score).
        """
        return {k: top_k_words(scores, k, clamp_min=self.clamp_min).tolist() for k in self.ks}

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """Score a batch; returns one row per document with ``p@k``, ``r@k``, ``f1@k``.

        Args:
            batch: a text batch with ``extras["word_index"]`` ``[B, T]``, ``num_words`` and ``rationales``.
            attribution: ``maps`` ``[B, T]`` over word-pieces.
        """
        extras = batch.extras
        scores = batch_word_scores(batch, attribution, "token_f1", ("rationales",))
        rows = []
        for i, sample_id in enumerate(batch.ids):
            spans = extras["rationales"][i]
            if spans is None:
                raise ValueError(f"sample {sample_id} has no rationale; token_f1 needs human rationales")
            truth = rationale_tokens(spans)
            n = int(extras["num_words"][i])
            preds = self.predictions(scores[i, :n])
            row: dict[str, Any] = {}  # the loop adds the id and prefixes the columns with the metric name
            pred: set[int] = set()
            for j, k in enumerate(self.ks):
                pred = (pred | set(preds[k])) if self.cumulative else set(preds[k])
                tp = len(truth & pred)
                p = tp / len(pred) if pred else 0.0
                r = tp / len(truth) if truth else 0.0
                f1 = _f1(p, r)
                counted = 1.0 if (truth or pred) else 0.0  # ERASER keys instances by truth ∪ prediction
                self._sums[j] += torch.tensor(
                    [tp, len(pred), len(truth), p * counted, r * counted, f1 * counted, counted],
                    dtype=torch.float64,
                )
                row.update({f"p@{k}": p, f"r@{k}": r, f"f1@{k}": f1})
            rows.append(row)
        return rows

    # -- results ----------------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        """``micro_{p,r,f1}@k`` and ``macro_{p,r,f1}@k`` for every k, plus ``num_docs``."""
        out: dict[str, Any] = {}
        for j, k in enumerate(self.ks):
            tp, n_pred, n_truth, mp, mr, mf, n_docs = self._sums[j].tolist()
            p = tp / n_pred if n_pred else 0.0
            r = tp / n_truth if n_truth else 0.0
            out[f"micro_p@{k}"] = p
            out[f"micro_r@{k}"] = r
            out[f"micro_f1@{k}"] = _f1(p, r)
            out[f"macro_p@{k}"] = mp / n_docs if n_docs else 0.0
            out[f"macro_r@{k}"] = mr / n_docs if n_docs else 0.0
            out[f"macro_f1@{k}"] = mf / n_docs if n_docs else 0.0
        out["num_docs"] = int(self._sums[0, -1]) if len(self.ks) else 0
        return out
