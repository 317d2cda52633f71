"""Fine-tune a BERT sequence classifier on an ERASER-format split (the library behind ``xaibench-finetune``).

The reference fine-tunes ``bert-base-uncased`` on ERASER movies with stock Hugging Face
``BertForSequenceClassification`` (``BERT_params/movies_bert.json``: max_length 512, Adam lr 1e-5,
batch 10, 10 epochs, patience 10, grad-clip 1; REFERENCE §1); those are the defaults here. Training is
deterministic for a seed (shuffling, dropout and initialisation of the new classifier head draw from
seeded generators). The best epoch by validation accuracy (ties: lower validation loss) is saved as a
``save_pretrained`` directory with its tokenizer and ``xaibench_finetune.json`` (training configuration,
per-epoch history, accuracies), which ``HFBert(checkpoint=<dir>)`` loads.

Examples::

    xaibench-finetune --data-root data/movies --checkpoint bert-base-uncased --out checkpoints/movies_bert
    xaibench-finetune --data-root /tmp/synth --config golden/bert_small_config.json \\
        --state-dict golden/bert_small_state_dict.pt --vocab golden/eraser_synthetic/vocab.txt \\
        --out /tmp/bert_small_synth --epochs 3 --lr 1e-3 --device cpu
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from xaibench.core.types import DatasetAdapter
from xaibench.models.hf_bert import HFBert

log = logging.getLogger(__name__)

SUMMARY_FILE = "xaibench_finetune.json"


@dataclass
class FinetuneConfig:
    """Training hyperparameters (defaults: the reference's ``movies_bert.json``)."""

    epochs: int = 10
    lr: float = 1e-5
    batch_size: int = 10
    eval_batch_size: int = 32
    grad_clip: float = 1.0
    patience: int = 10
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def _batches(dataset: DatasetAdapter, order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


@torch.no_grad()
def evaluate(adapter: HFBert, dataset: DatasetAdapter, batch_size: int = 32) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``adapter`` on ``dataset`` (eval mode, no dropout)."""
    model = adapter.model
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for chunk in _batches(dataset, range(len(dataset)), batch_size):
        batch = adapter.batch_to(adapter.collate([dataset[i] for i in chunk]))
        logits = adapter.logits(batch.inputs)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == batch.labels).sum())
        n += len(chunk)
    model.train(was_training)
    return {"accuracy": correct / n if n else float("nan"), "loss": loss_sum / n if n else float("nan")}


def finetune(adapter: HFBert, train: DatasetAdapter, val: DatasetAdapter, config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``adapter.model`` in place and leave the best epoch's weights loaded.

    Args:
        adapter: the model and tokenizer to train (moved to ``config.device``).
        train, val: labelled text datasets (labels in ``0..num_labels-1``).
        config: hyperparameters.

    Returns:
        Summary: per-epoch ``history``, ``initial_val`` and ``best_val`` metrics, ``best_epoch``.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"empty split: {len(train)} training and {len(val)} validation documents")
    labels = {train[i].label for i in range(len(train))}
    if min(labels) < 0 or max(labels) >= adapter.num_classes:
        raise ValueError(f"training labels {sorted(labels)} do not fit a model with {adapter.num_classes} classes")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    adapter.to(device=config.device)
    model = adapter.model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    initial = evaluate(adapter, val, config.eval_batch_size)
    log.info("before fine-tuning: val accuracy %.4f, loss %.4f", initial["accuracy"], initial["loss"])
    best = {"epoch": 0, **initial}
    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    history, stale = [], 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        loss_sum, seen, start = 0.0, 0, time.perf_counter()
        chunks = _batches(train, order, config.batch_size)
        for chunk in tqdm(chunks, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None):
            batch = adapter.batch_to(adapter.collate([train[i] for i in chunk]))
            logits = model(**batch.inputs).logits
            loss = torch.nn.functional.cross_entropy(logits, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip and config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            loss_sum += loss.detach().item() * len(chunk)
            seen += len(chunk)
        val_metrics = evaluate(adapter, val, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "val_accuracy": val_metrics["accuracy"],
            "val_loss": val_metrics["loss"],
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        log.info(
            "epoch %d: train loss %.4f, val accuracy %.4f, val loss %.4f",
            epoch,
            record["train_loss"],
            record["val_accuracy"],
            record["val_loss"],
        )
        better = val_metrics["accuracy"] > best["accuracy"] or (
            val_metrics["accuracy"] == best["accuracy"] and val_metrics["loss"] < best["loss"]
        )
        if better:
            best = {"epoch": epoch, **val_metrics}
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                log.info("no improvement for %d epochs: stopping", stale)
                break
    model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "initial_val": initial, "best_val": best, "best_epoch": best["epoch"]}


def save(adapter: HFBert, out: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``save_pretrained`` model + tokenizer and the JSON summary to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return out
