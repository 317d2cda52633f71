"""Tiny Hugging Face BERTs and padded text batches for the method tests (importable as ``bert_helpers``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xaibench.core.types import Batch, Sample

WORDS = ("good", "bad", "plot", "film", "acting", "great", "boring", "story", "the", "a", "and", "was")


def tiny_bert_net(vocab_path: Path, layers: int = 3, seed: int = 0, attn: str = "eager", **config) -> nn.Module:
    """A random ``BertForSequenceClassification`` (hidden 32, 4 heads, 3 labels) with spread weights, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    from xaibench.models.hf_bert import bert_tokenizer_from_vocab

    vocab = len(bert_tokenizer_from_vocab(vocab_path).get_vocab())
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=3,
        **config,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    net = BertForSequenceClassification(cfg)
    with torch.no_grad():  # spread weights: peaky attention, structured maps
        for name, p in net.named_parameters():
            p.normal_(1.0, 0.1) if "LayerNorm.weight" in name else p.normal_(0.0, 0.3)
    return net.eval()


def tiny_bert(vocab_path: Path, dtype: torch.dtype = torch.float64, layers: int = 3, **config):
    """:func:`tiny_bert_net` in an ``HFBert`` adapter, in ``dtype``."""
    from xaibench.models.hf_bert import HFBert, bert_tokenizer_from_vocab

    net = tiny_bert_net(vocab_path, layers=layers, **config)
    return HFBert(model=net, tokenizer=bert_tokenizer_from_vocab(vocab_path), name="tiny_bert").to(dtype=dtype)


def text_samples(n: int = 4) -> list[Sample]:
    """``n`` documents of different lengths (a batch of them is padded)."""
    g = torch.Generator().manual_seed(7)
    lengths = [3, 11, 6, 17, 1, 9][:n]
    return [
        Sample(
            id=f"d{i}", label=i % 3, words=tuple(WORDS[int(j)] for j in torch.randint(len(WORDS), (k,), generator=g))
        )
        for i, k in enumerate(lengths)
    ]


def unpadded_row(batch: Batch, i: int) -> Batch:
    """Sample ``i`` of a padded text batch alone, without its padding."""
    n = int(batch.inputs["attention_mask"][i].sum())
    inputs = {k: v[i : i + 1, :n] for k, v in batch.inputs.items()}
    return Batch(ids=(batch.ids[i],), inputs=inputs, labels=batch.labels[i : i + 1])


def instance_overrides(model: nn.Module) -> list[str]:
    """Modules with a ``forward`` set on the instance (a canonizer left behind)."""
    return [name or "<model>" for name, m in model.named_modules() if "forward" in vars(m)]


def hook_counts(model: nn.Module) -> list[tuple[str, int]]:
    """Hooks per module (to compare before and after a method call)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [(name, sum(len(getattr(m, k)) for k in kinds)) for name, m in model.named_modules()]


def tiny_pairs_bert(tmp_path: Path, multi_label: bool = False):
    """A random 2-layer BERT over the synthetic_text_pairs vocabulary (4 topics), spread weights (peaky
    attention); ``multi_label``: the pairs model's adapter class (per-class log-odds)."""
    from transformers import BertConfig, BertForSequenceClassification

    from xaibench.datasets.synthetic_text_pairs import write_vocab
    from xaibench.models.bert_files import bert_tokenizer_from_vocab
    from xaibench.models.hf_bert import HFBert
    from xaibench.models.pairs_bert import MultiLabelBert

    tokenizer = bert_tokenizer_from_vocab(write_vocab(tmp_path / "vocab.txt"))
    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=4,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    net = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # spread weights: peaky attention
        for name, p in net.named_parameters():
            p.normal_(1.0, 0.1) if "LayerNorm.weight" in name else p.normal_(0.0, 0.3)
    cls = MultiLabelBert if multi_label else HFBert
    return cls(model=net, tokenizer=tokenizer, name="tiny_pairs_bert", max_length=128)
