"""``xaibench-finetune``: fine-tune a BERT sequence classifier on an ERASER-format split.

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

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from xaibench.models.hf_bert import HFBert
from xaibench.types import DatasetAdapter

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-finetune",
        description="Fine-tune a BERT sequence classifier on an ERASER-format dataset (train split), "
        "evaluate on val, save a checkpoint directory that HFBert(checkpoint=...) loads.",
    )
    parser.add_argument("--data-root", required=True, help="ERASER layout: docs/ and {train,val,test}.jsonl")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    src = parser.add_argument_group(
        "model (give --checkpoint, or --config + --vocab [+ --state-dict]; without --state-dict the "
        "model is freshly initialised from --seed and trained from scratch)"
    )
    src.add_argument("--checkpoint", help="local save_pretrained directory or hub id (e.g. bert-base-uncased)")
    src.add_argument("--config", help="BertConfig JSON (plain or {'bert_config': {...}})")
    src.add_argument("--state-dict", help="state dict for --config (torch.save, read with weights_only=True)")
    src.add_argument("--vocab", help="WordPiece vocab.txt for --config")
    src.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    data = parser.add_argument_group("data")
    data.add_argument("--classes", nargs="+", default=["NEG", "POS"], help="class names in label order")
    data.add_argument("--train-split", default="train")
    data.add_argument("--val-split", default="val")
    data.add_argument("--limit-train", type=int, default=None, help="use the first N training annotations")
    data.add_argument("--limit-val", type=int, default=None, help="use the first N validation annotations")
    data.add_argument("--max-length", type=int, default=512, help="word-pieces per document incl. specials")
    train = parser.add_argument_group("training (defaults: the reference's movies_bert.json)")
    defaults = FinetuneConfig()
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    train.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="max grad norm; 0 = off")
    train.add_argument("--patience", type=int, default=defaults.patience, help="epochs without improvement")
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument(
        "--num-threads", type=int, default=None, help="torch CPU threads (small models: 1 is often fastest)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``xaibench-finetune``; returns the exit status (0 on success)."""
    from xaibench.datasets.eraser import EraserMovies

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if (args.checkpoint is None) == (args.config is None):
        parser.error("give either --checkpoint or --config + --vocab (+ --state-dict)")
    if args.config is not None and args.vocab is None:
        parser.error("--config needs --vocab (and --state-dict, unless training from scratch)")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)  # a new classifier head is initialised when the model is built
    train = EraserMovies(args.data_root, split=args.train_split, classes=args.classes, limit=args.limit_train)
    val = EraserMovies(args.data_root, split=args.val_split, classes=args.classes, limit=args.limit_val)
    if args.checkpoint is not None:
        adapter = HFBert(
            checkpoint=args.checkpoint,
            max_length=args.max_length,
            local_files_only=args.local_files_only,
            class_names=args.classes,
        )
    elif args.state_dict is None:
        log.warning("no --state-dict: training %s from a fresh initialisation (seed %d)", args.config, args.seed)
        adapter = HFBert.from_config(args.config, args.vocab, max_length=args.max_length, class_names=args.classes)
    else:
        adapter = HFBert(
            config_path=args.config,
            state_dict_path=args.state_dict,
            vocab_path=args.vocab,
            max_length=args.max_length,
            class_names=args.classes,
        )
    if adapter.num_classes != len(args.classes):
        parser.error(f"the model has {adapter.num_classes} classes but --classes names {len(args.classes)}")
    adapter.model.config.id2label = dict(enumerate(args.classes))
    adapter.model.config.label2id = {c: i for i, c in enumerate(args.classes)}
    config = FinetuneConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        grad_clip=args.grad_clip,
        patience=args.patience,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=args.device,
    )
    result = finetune(adapter, train, val, config)
    adapter.to(device="cpu")
    summary = {
        "source": args.checkpoint or {"config": args.config, "state_dict": args.state_dict, "vocab": args.vocab},
        "data_root": str(args.data_root),
        "splits": {"train": args.train_split, "val": args.val_split},
        "num_train": len(train),
        "num_val": len(val),
        "classes": list(args.classes),
        "max_length": adapter.max_length,
        "config": asdict(config),
        **result,
    }
    out = save(adapter, args.out, summary)
    sys.stdout.write(
        f"val accuracy {result['initial_val']['accuracy']:.4f} -> {result['best_val']['accuracy']:.4f} "
        f"(epoch {result['best_epoch']}); saved to {out}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
