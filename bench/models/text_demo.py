"""A small BERT trained on ``synthetic_text``: the text demo's model that actually solves its task.

Built from a code-defined config and the synthetic vocabulary (no download, no shared files), trained
once on CPU with ``xaibench.models.finetune`` and cached under ``cache_dir`` keyed by a hash of the recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xaibench.datasets.synthetic_text import SyntheticText, write_vocab
from xaibench.models.demo_cache import build_once, recipe_digest
from xaibench.models.hf_bert import HFBert, bert_tokenizer_from_vocab

log = logging.getLogger(__name__)

DEFAULT_RECIPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "train_size": 256,
    "val_size": 64,
    "epochs": 8,
    "lr": 1e-3,
    "batch_size": 16,
    "seed": 0,
}


def new_demo_bert(
    recipe: dict[str, Any],
    vocab: Path,
    labels: Sequence[str],
    name: str,
    adapter_cls: type[HFBert] = HFBert,
    **config: Any,
) -> HFBert:
    """A randomly initialised (seeded) ``BertForSequenceClassification`` of ``recipe``'s size over the
    word-piece vocabulary ``vocab``, with one output per label, wrapped in ``adapter_cls``; ``config``
    adds ``BertConfig`` fields (e.g. ``problem_type``). Eager attention, as the attention methods read it."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(recipe["seed"])
    tokenizer = bert_tokenizer_from_vocab(vocab)
    bert_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe["hidden_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        intermediate_size=recipe["intermediate_size"],
        max_position_embeddings=recipe["max_position_embeddings"],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={t: i for i, t in enumerate(labels)},
        **config,
    )
    bert_config._attn_implementation = "eager"
    return adapter_cls(
        model=BertForSequenceClassification(bert_config),
        tokenizer=tokenizer,
        name=name,
        max_length=recipe["max_position_embeddings"],
    )


def train_text_bert(recipe: dict[str, Any], vocab: Path) -> tuple[HFBert, dict[str, Any]]:
    from xaibench.models.finetune import FinetuneConfig, finetune

    adapter = new_demo_bert(recipe, vocab, ("NEG", "POS"), "synthetic_text_bert")
    train = SyntheticText(recipe["train_size"], split="train", seed=recipe["seed"])
    val = SyntheticText(recipe["val_size"], split="val", seed=recipe["seed"])
    summary = finetune(
        adapter,
        train,
        val,
        FinetuneConfig(epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"], seed=recipe["seed"]),
    )
    return adapter, summary


def cached_bert(
    cache_dir: str,
    stem: str,
    defaults: dict[str, Any],
    recipe: dict[str, Any] | None,
    retrain: bool,
    vocab: Callable[[Path], Path],
    train: Callable[[dict[str, Any], Path], tuple[HFBert, dict[str, Any]]],
    what: str,
    adapter_cls: type[HFBert] = HFBert,
) -> HFBert:
    """A demo BERT, loaded from the folder ``<cache_dir>/models/<stem>-<digest>`` or trained and saved there on
    first use (``retrain``: train again): ``vocab(path)`` writes its word-piece vocabulary, ``train(recipe,
    vocab_path)`` returns the adapter and its held-out summary, saved with the recipe beside the weights."""
    recipe, digest = recipe_digest(defaults, recipe)
    folder = Path(cache_dir).expanduser() / "models" / f"{stem}-{digest}"

    def build(tmp: Path) -> None:
        from xaibench.models.finetune import save

        adapter, summary = train(recipe, vocab(tmp / "vocab_src.txt"))
        save(adapter, tmp, {"recipe": recipe, **summary})
        # saved whole; logged without fine-tuning's per-epoch history
        log.info("%s held-out: %s", what, {k: v for k, v in summary.items() if k != "history"})

    build_once(folder, build, folder / "config.json", retrain, what)
    return adapter_cls(
        checkpoint=str(folder),
        local_files_only=True,
        name=f"{stem}-{digest}",
        max_length=recipe["max_position_embeddings"],
    )


def synthetic_text_bert(cache_dir: str, recipe: dict[str, Any] | None = None, retrain: bool = False) -> HFBert:
    """The trained text-demo BERT, loaded from ``cache_dir`` or trained and cached on first use."""
    return cached_bert(
        cache_dir,
        "synthetic_text_bert",
        DEFAULT_RECIPE,
        recipe,
        retrain,
        write_vocab,
        train_text_bert,
        "synthetic_text BERT",
    )
