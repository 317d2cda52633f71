"""ERASER soft-score and faithfulness metrics for text (DeYoung et al., ACL 2020, §4).

* :class:`TokenAUPRC` — soft per-word scores against the human rationale tokens: per document the area
  under the precision-recall curve (ERASER ``_auprc``: ``auc(recall, precision)`` of sklearn's
  ``precision_recall_curve``) and the average precision (``average_precision_score``), averaged over
  documents. Documents whose tokens are all or none rationale (no evidence, or all evidence) have no
  meaningful PR curve: by default (``single_class_docs="skip"``, our choice) they are left out of both
  averages (counted in ``num_skipped``). ERASER's scorer (``score_soft_tokens``) leaves them out of the
  average precision only (``discard_single_class_answers=True``) and averages ``auprc`` over every document,
  single-class ones included with scikit-learn's value for their degenerate curve (0.5 with no evidence, 1.0
  with all evidence under scikit-learn 1.9); ``single_class_docs="eraser"`` reproduces that exactly.
* :class:`AOPC` — comprehensiveness and sufficiency with ERASER's bins (1, 5, 10, 20, 50 % of the words):
  for bin ``q`` the top ``⌈q·n⌉`` words by score are removed (comprehensiveness,
  ``p_c(x) − p_c(x \\ r_q)``, higher is better) or kept alone in their original order (sufficiency,
  ``p_c(x) − p_c(r_q)``, lower is better), where ``c`` is the class predicted on the full document and
  ``p`` the softmax probability (a multi-label model's sigmoid probability). AOPC is the mean over bins
  (ERASER ``_instances_aopc``). The edited documents are re-tokenised by the model adapter, so removal works
  on words, not word-pieces.

Per-word scores are the max over a word's word-pieces (:func:`xaibench.core.text.word_scores`); words without
a score (beyond the model's truncation) rank below every scored word and are never removed or kept.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from xaibench.core.text import batch_word_scores, top_k_words
from xaibench.core.types import Attribution, Batch, MetricRunner, ModelAdapter, Sample
from xaibench.metrics.class_scores import class_probabilities
from xaibench.metrics.sums import TensorSums
from xaibench.metrics.token_f1 import rationale_tokens

#: ERASER's AOPC bins (fractions of the document's tokens)
ERASER_BINS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)


def _scores(batch: Batch, attribution: Attribution, metric: str) -> torch.Tensor:
    return batch_word_scores(batch, attribution, metric, ("words",)).to("cpu", torch.float64)


class TokenAUPRC(TensorSums, MetricRunner):
    """ERASER soft token scoring: AUPRC and average precision of per-word scores vs. rationale tokens.

    Args:
        single_class_docs: documents whose words are all rationale or all not: ``skip`` (default) leaves
            them out of both averages; ``eraser`` scores them as ERASER's ``score_soft_tokens`` does (in
            ``auprc`` with scikit-learn's value, out of ``average_precision``). Empty documents are left
            out either way.
    """

    name: ClassVar[str] = "token_auprc"
    requires: ClassVar[frozenset[str]] = frozenset({"rationale"})
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})
    higher_is_better: ClassVar[Mapping[str, bool]] = {"auprc": True, "average_precision": True}

    def __init__(self, single_class_docs: Literal["skip", "eraser"] = "skip") -> None:
        if single_class_docs not in ("skip", "eraser"):
            raise ValueError(f"single_class_docs must be 'skip' or 'eraser', got {single_class_docs!r}")
        self.single_class_docs = single_class_docs
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(5, dtype=torch.float64)  # Σauprc, Σap, n_auprc, n_ap, n_single_class

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """One row per document: ``auprc`` and ``average_precision`` (NaN where left out).

        Args:
            batch: text batch with ``extras["rationales"]``.
            attribution: ``maps`` ``[B, T]`` over word-pieces.
        """
        from sklearn.metrics import auc, average_precision_score, precision_recall_curve

        scores = _scores(batch, attribution, self.name)
        rows = []
        for i, sample_id in enumerate(batch.ids):
            spans = batch.extras["rationales"][i]
            if spans is None:
                raise ValueError(f"sample {sample_id} has no rationale; token_auprc needs human rationales")
            n = int(batch.extras["num_words"][i])
            truth = np.zeros(n, dtype=np.int64)
            truth[sorted(t for t in rationale_tokens(spans) if t < n)] = 1
            s = scores[i, :n].numpy().copy()
            scored = ~np.isnan(s)
            # unscored words (truncated away) rank below every scored word
            s[~scored] = (s[scored].min() - 1.0) if scored.any() else 0.0
            single = bool(truth.all() or not truth.any())
            if n == 0 or (single and self.single_class_docs == "skip"):
                self._sums[4] += 1
                rows.append({"auprc": float("nan"), "average_precision": float("nan")})
                continue
            with warnings.catch_warnings():  # a single-class curve is degenerate; ERASER scores it anyway
                warnings.simplefilter("ignore")
                precision, recall, _ = precision_recall_curve(truth, s)
            area = float(auc(recall, precision))
            ap = float("nan") if single else float(average_precision_score(truth, s))
            self._sums += torch.tensor(
                [area, 0.0 if single else ap, 1.0, 0.0 if single else 1.0, float(single)], dtype=torch.float64
            )
            rows.append({"auprc": area, "average_precision": ap})
        return rows

    def compute(self) -> dict[str, Any]:
        """``auprc`` and ``average_precision`` (means over the documents each includes), ``num_docs``
        (documents in the ``auprc`` mean) and ``num_skipped`` (single-class and empty documents: left out
        of both means by default, of ``average_precision`` only with ``single_class_docs="eraser"``)."""
        area, ap, n_area, n_ap, single = self._sums.tolist()
        return {
            "auprc": area / n_area if n_area else float("nan"),
            "average_precision": ap / n_ap if n_ap else float("nan"),
            "num_docs": int(n_area),
            "num_skipped": int(single),
        }


class AOPC(TensorSums, MetricRunner):
    """ERASER comprehensiveness and sufficiency, per bin and as AOPC (mean over bins).

    Args:
        bins: fractions of each document's words to remove/keep (ERASER: 1, 5, 10, 20, 50 %).
        target: ``predicted`` (ERASER: the class predicted on the full document) or ``explained``
            (the attribution's target class).
        clamp_min: clamp scores before ranking (``None``: rank the raw scores; 0 ranks like token-F1).
    """

    sum_attrs = ("_sums", "_count")

    name: ClassVar[str] = "aopc"
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})
    needs_model: ClassVar[bool] = True
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "aopc_comprehensiveness": True,
        "aopc_sufficiency": False,
        **{f"comprehensiveness@{q:g}": True for q in ERASER_BINS},
        **{f"sufficiency@{q:g}": False for q in ERASER_BINS},
    }

    def __init__(
        self,
        bins: Sequence[float] = ERASER_BINS,
        target: Literal["predicted", "explained"] = "predicted",
        clamp_min: float | None = None,
    ) -> None:
        bins = tuple(float(q) for q in bins)
        if not bins or any(not 0.0 < q <= 1.0 for q in bins):
            raise ValueError(f"bins must be fractions in (0, 1], got {list(bins)}")
        if target not in ("predicted", "explained"):
            raise ValueError(f"target must be 'predicted' or 'explained', got {target!r}")
        self.bins = bins
        self.target = target
        self.clamp_min = clamp_min
        if bins != ERASER_BINS:
            self.higher_is_better = {
                "aopc_comprehensiveness": True,
                "aopc_sufficiency": False,
                **{f"comprehensiveness@{q:g}": True for q in bins},
                **{f"sufficiency@{q:g}": False for q in bins},
            }
        self.reset()

    def reset(self) -> None:
        # rows: bins; columns: Σ comprehensiveness, Σ sufficiency; plus the document count
        self._sums = torch.zeros(len(self.bins), 2, dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.float64)

    def check_model(self, model: ModelAdapter) -> None:
        if self.target == "predicted" and model.multi_label:
            raise ValueError(
                f"aopc target=predicted scores the class predicted on the full document, but model {model.name} "
                "is multi-label (independent per-class probabilities, no single prediction); set "
                "metrics.aopc.target=explained to score the explained class"
            )

    @staticmethod
    def _probs(model: ModelAdapter, batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            logits = model.logits(model.batch_to(batch).inputs)
        return class_probabilities(logits.to(torch.float64), model.multi_label).cpu()

    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]:
        """Two extra forward passes per bin (edited documents, batched); one row per document."""
        scores = _scores(batch, attribution, self.name)
        words: Sequence[Sequence[str]] = batch.extras["words"]
        probs = self._probs(model, batch)  # [B, C]
        if self.target == "predicted":
            classes = probs.argmax(dim=-1)
        else:
            classes = attribution.targets.detach().cpu().long()
        full = probs.gather(1, classes[:, None])[:, 0]
        comp = torch.zeros(len(batch), len(self.bins), dtype=torch.float64)
        suff = torch.zeros_like(comp)
        for j, q in enumerate(self.bins):
            removed, kept = [], []
            for i, sample_id in enumerate(batch.ids):
                doc = list(words[i])
                k = max(1, math.ceil(q * len(doc))) if doc else 0
                top = set(top_k_words(scores[i, : len(doc)], k, clamp_min=self.clamp_min).tolist())
                removed.append(Sample(id=sample_id, words=tuple(w for t, w in enumerate(doc) if t not in top)))
                kept.append(Sample(id=sample_id, words=tuple(w for t, w in enumerate(doc) if t in top)))
            p_removed = self._probs(model, model.collate(removed)).gather(1, classes[:, None])[:, 0]
            p_kept = self._probs(model, model.collate(kept)).gather(1, classes[:, None])[:, 0]
            comp[:, j] = full - p_removed
            suff[:, j] = full - p_kept
        self._sums[:, 0] += comp.sum(dim=0)
        self._sums[:, 1] += suff.sum(dim=0)
        self._count += len(batch)
        rows = []
        for i in range(len(batch)):
            row: dict[str, Any] = {
                "class": int(classes[i]),
                "prob": float(full[i]),
                "aopc_comprehensiveness": float(comp[i].mean()),
                "aopc_sufficiency": float(suff[i].mean()),
            }
            for j, q in enumerate(self.bins):
                row[f"comprehensiveness@{q:g}"] = float(comp[i, j])
                row[f"sufficiency@{q:g}"] = float(suff[i, j])
            rows.append(row)
        return rows

    def compute(self) -> dict[str, Any]:
        n = float(self._count)
        if not n:
            return {"aopc_comprehensiveness": float("nan"), "aopc_sufficiency": float("nan"), "num_docs": 0}
        means = self._sums / n
        out: dict[str, Any] = {
            "aopc_comprehensiveness": float(means[:, 0].mean()),
            "aopc_sufficiency": float(means[:, 1].mean()),
        }
        for j, q in enumerate(self.bins):
            out[f"comprehensiveness@{q:g}"] = float(means[j, 0])
            out[f"sufficiency@{q:g}"] = float(means[j, 1])
        out["num_docs"] = int(n)
        return out
