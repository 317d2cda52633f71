"""Files of a BERT classifier: WordPiece vocabularies, tokenizers, config JSON, checkpoints."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from xaibench.models.checkpoints import load_state_dict_checked

log = logging.getLogger(__name__)


def load_wordpiece_vocab(path: str | Path) -> dict[str, int]:
    """Read a WordPiece ``vocab.txt`` (one token per line, id = line number)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary {path} not found (expected a WordPiece vocab.txt, one token a line)")
    vocab: dict[str, int] = {}
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        token = line.rstrip("\n")
        if token in vocab:
            raise ValueError(f"{path}: token {token!r} appears twice (lines {vocab[token] + 1} and {index + 1})")
        vocab[token] = index
    if not vocab:
        raise ValueError(f"{path} is empty (expected a WordPiece vocab.txt)")
    return vocab


def bert_tokenizer_from_vocab(path: str | Path, do_lower_case: bool = True) -> Any:
    """A fast BERT WordPiece tokenizer built from a local ``vocab.txt``.

    transformers 5's ``BertTokenizer(vocab=...)`` takes the vocabulary as a mapping and silently ignores
    a ``vocab_file=`` keyword (it then builds a 5-token vocabulary); transformers 4 takes ``vocab_file``.
    Both are handled, and the resulting vocabulary size is checked.
    """
    import inspect

    from transformers import BertTokenizerFast

    vocab = load_wordpiece_vocab(path)
    params = inspect.signature(BertTokenizerFast.__init__).parameters
    if "vocab" in params:
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=do_lower_case)
    else:  # transformers 4
        tokenizer = BertTokenizerFast(vocab_file=str(path), do_lower_case=do_lower_case)
    if len(tokenizer.get_vocab()) != len(vocab):
        raise RuntimeError(
            f"tokenizer built from {path} has {len(tokenizer.get_vocab())} tokens, the file {len(vocab)}"
        )
    return tokenizer


def _read_bert_config(path: str | Path) -> Any:
    """``BertConfig`` from a JSON file: a plain HF ``config.json`` or the golden ``{"bert_config": {...}}``."""
    from transformers import BertConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BERT config {path} not found (expected a JSON BertConfig)")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (BertConfig kwargs or {{'bert_config': {{...}}}})")
    if "bert_config" in data:
        data = data["bert_config"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: 'bert_config' must be an object of BertConfig kwargs")
    return BertConfig(**data)


def _force_eager(model: nn.Module) -> None:
    """Switch an existing model instance to eager attention (the probabilities must exist as tensors)."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter("eager")
    else:  # older transformers: the implementation is read from the config at call time
        model.config._attn_implementation = "eager"
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        raise RuntimeError(f"could not switch {type(model).__name__} to eager attention")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _checkpoint_ok(checkpoint: str) -> bool:
    """A local checkpoint folder that exists, or something that can only be a hub id."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return True
    looks_local = checkpoint.startswith((".", "/", "~")) or os.sep in checkpoint.strip("/").replace("/", "", 1)
    return not looks_local and _HUB_ID.match(checkpoint) is not None


def load_pretrained_classifier(checkpoint: str, local_files_only: bool) -> tuple[nn.Module, Any]:
    """A sequence classifier (eager attention) and its tokenizer from a local folder or hub id."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # a local directory loads in moments: no per-load progress bar in every job's log (hub downloads keep it)
    quiet = Path(checkpoint).is_dir() and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, attn_implementation="eager", local_files_only=local_files_only
        )
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=local_files_only)
    return model, tokenizer


def load_classifier_files(config_path: str, state_dict_path: str) -> nn.Module:
    """``BertForSequenceClassification`` (eager attention) from a config JSON and a state dict file."""
    from transformers import BertForSequenceClassification

    config = _read_bert_config(config_path)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config)
    # drops the stale `bert.embeddings.position_ids` buffer; any other mismatch names the keys
    load_state_dict_checked(model, state_dict_path)
    return model
