"""``xaibench-finetune``: fine-tune a BERT sequence classifier on an ERASER-format split
(:mod:`xaibench.models.finetune` does the training; this is the command line)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields

import torch

from xaibench.models.finetune import (
    FinetuneConfig,
    finetune,
    save,
)
from xaibench.models.hf_bert import HFBert

log = logging.getLogger(__name__)


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
    # every training option has a command-line flag of the same name
    config = FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if hasattr(args, f.name)})
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
