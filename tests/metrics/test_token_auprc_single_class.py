"""Token AUPRC on documents whose tokens are all one class (issue 19, item 11).

Ours (default, ``single_class_docs: skip``) leaves such documents (no evidence, or all evidence) out of both
averages. ERASER's scorer (``rationale_benchmark/metrics.py`` ``score_soft_tokens``) averages ``auprc`` over
*every* document, single-class ones included with whatever scikit-learn returns for them, and leaves them out
of ``average_precision`` only (``discard_single_class_answers=True``); ``single_class_docs: eraser``
reproduces that. The expected values below are the scorer's rules applied with scikit-learn in this test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from xaibench.core.config import compose_config
from xaibench.core.types import Attribution, Batch
from xaibench.metrics.faithfulness import TokenAUPRC

RNG = np.random.default_rng(3)
DOCS = [
    {"scores": RNG.normal(size=10).tolist(), "spans": [(2, 5)]},
    {"scores": [0.3, 0.1, 0.9, 0.5], "spans": []},  # no evidence: every token negative
    {"scores": RNG.normal(size=8).tolist(), "spans": [(0, 1), (6, 8)]},
    {"scores": [0.2, 0.7, 0.4], "spans": [(0, 3)]},  # all evidence: every token positive
]


def batch_of(docs: list[dict]) -> tuple[Batch, Attribution]:
    """One word-piece per word (``[CLS] w_0 … [SEP]``), the maps being the word scores."""
    width = max(len(d["scores"]) for d in docs) + 2
    word_index = torch.full((len(docs), width), -1, dtype=torch.long)
    maps = torch.zeros(len(docs), width, dtype=torch.float64)
    for i, d in enumerate(docs):
        n = len(d["scores"])
        word_index[i, 1 : n + 1] = torch.arange(n)
        maps[i, 1 : n + 1] = torch.tensor(d["scores"], dtype=torch.float64)
    batch = Batch(
        ids=tuple(f"doc{i}" for i in range(len(docs))),
        inputs={"attention_mask": (word_index >= 0).long()},
        labels=torch.zeros(len(docs), dtype=torch.long),
        extras={
            "word_index": word_index,
            "num_words": torch.tensor([len(d["scores"]) for d in docs]),
            "words": tuple(tuple(f"w{t}" for t in range(len(d["scores"]))) for d in docs),
            "rationales": tuple(tuple(d["spans"]) for d in docs),
        },
    )
    return batch, Attribution(maps=maps, targets=torch.zeros(len(docs), dtype=torch.long), logits=None)


def official(docs: list[dict]) -> tuple[list[float], list[float]]:
    """Per-document (auprc, average precision) under ERASER's ``score_soft_tokens`` rules: auprc for every
    document, AP only for documents with both classes."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    areas, aps = [], []
    for d in docs:
        truth = np.zeros(len(d["scores"]), dtype=int)
        for a, b in d["spans"]:
            truth[a:b] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns that a single-class curve is degenerate
            precision, recall, _ = precision_recall_curve(truth, d["scores"])
        areas.append(float(auc(recall, precision)))
        if 0 < truth.sum() < truth.size:
            aps.append(float(average_precision_score(truth, d["scores"])))
    return areas, aps


def test_single_class_documents_under_current_scikit_learn() -> None:
    """What the official scorer gives the two single-class documents (scikit-learn 1.9: 0.5 and 1.0)."""
    areas, _ = official(DOCS)
    assert areas[1] == 0.5 and areas[3] == 1.0  # no evidence: recall is set to 1, precision 0 -> 0.5


def test_default_leaves_single_class_documents_out() -> None:
    metric = TokenAUPRC()
    assert metric.single_class_docs == "skip"
    rows = metric.update(*batch_of(DOCS), None)
    areas, aps = official(DOCS)
    out = metric.compute()
    assert out["auprc"] == pytest.approx(np.mean([areas[0], areas[2]]), abs=1e-15)
    assert out["average_precision"] == pytest.approx(np.mean(aps), abs=1e-15)
    assert out["num_docs"] == 2 and out["num_skipped"] == 2
    assert math.isnan(rows[1]["auprc"]) and math.isnan(rows[3]["auprc"])


def test_eraser_option_reproduces_the_official_scorer() -> None:
    metric = TokenAUPRC(single_class_docs="eraser")
    rows = metric.update(*batch_of(DOCS[:2]), None)  # two batches: the sums merge like any shard
    rows += metric.update(*batch_of(DOCS[2:]), None)
    areas, aps = official(DOCS)
    out = metric.compute()
    assert out["auprc"] == pytest.approx(np.mean(areas), abs=1e-15)  # over all 4 documents
    assert out["average_precision"] == pytest.approx(np.mean(aps), abs=1e-15)  # over the 2 two-class ones
    assert out["num_docs"] == 4 and out["num_skipped"] == 2
    assert [r["auprc"] for r in rows] == pytest.approx(areas, abs=1e-15)
    assert math.isnan(rows[1]["average_precision"]) and math.isnan(rows[3]["average_precision"])
    # the conventions differ by the single-class documents' 0.5 and 1.0 in the auprc average only
    ours = TokenAUPRC()
    ours.update(*batch_of(DOCS), None)
    assert ours.compute()["average_precision"] == out["average_precision"]
    assert out["auprc"] == pytest.approx((2 * ours.compute()["auprc"] + areas[1] + areas[3]) / 4, abs=1e-15)


def test_option_is_a_config_key_and_checked() -> None:
    overrides = ["dataset=eraser_synthetic", "model=bert_small", "method=rollout_bert", "metric=faithfulness"]
    default = compose_config(overrides)
    assert default.metrics.token_auprc.single_class_docs == "skip"
    cfg = compose_config([*overrides, "metrics.token_auprc.single_class_docs=eraser"])
    assert instantiate(cfg.metrics.token_auprc).single_class_docs == "eraser"
    with pytest.raises(ValueError, match=r"single_class_docs must be 'skip' or 'eraser', got 'all'"):
        TokenAUPRC(single_class_docs="all")
