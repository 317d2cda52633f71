"""A small BERT trained on ``synthetic_text_pairs`` with a multi-label loss: the pair benchmark's text model.

Built from a code-defined config and the pair vocabulary (no download), trained once on CPU on documents
with one or two topics (binary cross-entropy per topic), deterministically, and cached under
``cache_dir`` keyed by a hash of the recipe (:mod:`xaibench.models.demo_cache`). The held-out per-topic
accuracy (two-topic documents of the ``val`` split) is saved with the checkpoint
(``xaibench_finetune.json``) and logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from xaibench.core.types import Sample
from xaibench.datasets.synthetic_text_pairs import TOPICS, SyntheticTextPairs, write_vocab
from xaibench.models.hf_bert import HFBert
from xaibench.models.text_demo import cached_bert, new_demo_bert

log = logging.getLogger(__name__)

DEFAULT_RECIPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    "train_size": 1200,
    "epochs": 8,
    "lr": 2e-3,
    "batch_size": 32,
    "seed": 0,
    "heldout_size": 400,
}


class MultiLabelBert(HFBert):
    """A Hugging Face BERT classifier whose logits are independent per-class log-odds (``multi_label``)."""

    multi_label: ClassVar[bool] = True


def _logits(adapter: HFBert, docs: list[tuple[str, ...]]) -> torch.Tensor:
    batch = adapter.collate([Sample(id=str(i), words=words) for i, words in enumerate(docs)])
    return adapter.model(**batch.inputs).logits


def heldout_accuracy(adapter: HFBert, data: SyntheticTextPairs, batch_size: int = 100) -> list[float]:
    """Per-topic accuracy of the presence decision (``logit > 0``) on ``data``: ``[C]`` fractions."""
    docs, topics = data.texts()
    targets = torch.zeros(len(docs), len(TOPICS))
    for i, present in enumerate(topics):
        targets[i, list(present)] = 1.0
    with torch.inference_mode():
        logits = torch.cat([_logits(adapter, docs[i : i + batch_size]) for i in range(0, len(docs), batch_size)])
    return ((logits > 0).float() == targets).float().mean(dim=0).tolist()


def train_pairs_bert(recipe: dict[str, Any], vocab: Path) -> tuple[MultiLabelBert, list[float]]:
    """Train the BERT of ``recipe``; returns ``(adapter, held-out per-topic accuracy)``."""
    adapter = new_demo_bert(
        recipe, vocab, TOPICS, "pairs_bert", MultiLabelBert, problem_type="multi_label_classification"
    )
    train = SyntheticTextPairs(recipe["train_size"], split="train", seed=recipe["seed"], min_topics=1, max_topics=2)
    docs, topics = train.texts()
    targets = torch.zeros(len(docs), len(TOPICS))
    for i, present in enumerate(topics):
        targets[i, list(present)] = 1.0
    # tokenised once (padded to the longest document; the attention mask hides the padding)
    inputs = adapter.collate([Sample(id=str(i), words=words) for i, words in enumerate(docs)]).inputs
    size = recipe["batch_size"]
    opt = torch.optim.AdamW(adapter.model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    steps = recipe["epochs"] * ((len(docs) + size - 1) // size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(recipe["seed"])
    adapter.model.train()
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(len(docs), generator=gen)
        total = 0.0
        for start in range(0, len(docs), size):
            idx = order[start : start + size]
            logits = adapter.model(**{k: v[idx] for k, v in inputs.items()}).logits
            loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.info("pairs BERT epoch %d/%d: loss %.4f", epoch + 1, recipe["epochs"], total / len(docs))
    adapter.model.eval()
    heldout = SyntheticTextPairs(recipe["heldout_size"], split="val", seed=recipe["seed"])
    return adapter, heldout_accuracy(adapter, heldout)


def pairs_bert(cache_dir: str, recipe: dict[str, Any] | None = None, retrain: bool = False) -> MultiLabelBert:
    """The trained pair-benchmark BERT, loaded from ``cache_dir`` or trained and cached on first use."""

    def train(r: dict[str, Any], vocab: Path) -> tuple[HFBert, dict[str, Any]]:
        adapter, accuracy = train_pairs_bert(r, vocab)
        return adapter, {"heldout_per_class_accuracy": dict(zip(TOPICS, accuracy, strict=True))}

    return cached_bert(
        cache_dir,
        "pairs_bert",
        DEFAULT_RECIPE,
        recipe,
        retrain,
        write_vocab,
        train,
        "synthetic_text_pairs BERT",
        MultiLabelBert,
    )
