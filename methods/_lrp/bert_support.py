"""Which Hugging Face BERT classifiers the LRP rules cover, and the checks that say so.

The canonizer (:mod:`.bert`) gives rules to the modules of a stock ``BertForSequenceClassification``
in eval mode, encoder-only with absolute position embeddings. Everything else is refused here with a
message naming it: decoders and cross-attention, key/value caches, relative position embeddings,
training mode, non-module activation functions, classifier heads other than ``nn.Linear``, subclasses
(RoBERTa, ELECTRA, ... have their own classes and are refused by type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["additive_mask", "check_model", "check_plain_inputs", "is_bert", "modeling_bert", "refuse"]


def modeling_bert() -> Any:
    """``transformers.models.bert.modeling_bert`` (imported on first use)."""
    from transformers.models.bert import modeling_bert

    return modeling_bert


def is_bert(model: object) -> bool:
    """Whether ``model`` is a ``BertForSequenceClassification`` (without importing transformers if absent)."""
    try:
        return isinstance(model, modeling_bert().BertForSequenceClassification)
    except ImportError:
        return False


def refuse(what: str) -> None:
    """Raise the ``ValueError`` that names an unsupported configuration ``what``."""
    raise ValueError(
        f"LRP on BERT: {what} is not supported (supported: an encoder-only Hugging Face "
        "BertForSequenceClassification with absolute position embeddings, in eval mode)"
    )


def check_model(model: nn.Module) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``model`` is a supported BERT classifier in eval mode."""
    mb = modeling_bert()
    if type(model) is not mb.BertForSequenceClassification:
        raise TypeError(
            "the BERT LRP canonizer supports transformers BertForSequenceClassification instances; got "
            f"{type(model).__name__} (other BERT-family classes have their own heads and modules)"
        )
    if any(m.training for m in model.modules()):
        raise ValueError("relevance methods need the model in eval mode (dropout active); call model.eval() first")
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        refuse("a decoder configuration or cross-attention (is_decoder / add_cross_attention)")
    position = getattr(config, "position_embedding_type", None)
    if position not in (None, "absolute"):
        refuse(f"position_embedding_type={position!r} (relative position embeddings)")
    base = model.bert
    if type(base) is not mb.BertModel or type(base.encoder) is not mb.BertEncoder:
        refuse(f"a {type(base).__name__} base model (only BertModel with a BertEncoder)")
    if type(base.pooler) is not mb.BertPooler:
        refuse("a model without the pooler (add_pooling_layer=False)")
    if not isinstance(model.classifier, nn.Linear):
        refuse(f"a {type(model.classifier).__name__} classifier (need nn.Linear)")
    for i, layer in enumerate(base.encoder.layer):
        if type(layer) is not mb.BertLayer:
            refuse(f"encoder layer {i} of type {type(layer).__name__} (only BertLayer)")
        if hasattr(layer, "crossattention"):
            refuse(f"cross-attention in encoder layer {i}")
        if type(layer.attention) is not mb.BertAttention or type(layer.attention.self) is not mb.BertSelfAttention:
            refuse(f"encoder.layer.{i}.attention of type {type(layer.attention.self).__name__}")
        for name, sub in (("intermediate", mb.BertIntermediate), ("output", mb.BertOutput)):
            if type(getattr(layer, name)) is not sub:
                refuse(f"encoder.layer.{i}.{name} of type {type(getattr(layer, name)).__name__}")
        if type(layer.attention.output) is not mb.BertSelfOutput:
            refuse(f"encoder.layer.{i}.attention.output of type {type(layer.attention.output).__name__}")
        if not isinstance(layer.intermediate.intermediate_act_fn, nn.Module):
            refuse(
                f"a plain-function activation in encoder.layer.{i}.intermediate (hidden_act given as a callable); "
                "give hidden_act by name so the activation is a module"
            )


def check_plain_inputs(args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuse cross-attention inputs and key/value caches among the extra arguments of a layer forward.

    Args:
        args: positional arguments after ``(hidden_states, attention_mask)`` (the encoder passes
            ``encoder_hidden_states`` positionally).
        kwargs: keyword arguments (``encoder_hidden_states``, ``encoder_attention_mask``, ``cache`` /
            ``past_key_values``, ``use_cache``, and others that are ignored, e.g. ``position_ids``).
    """
    if any(a is not None for a in args) or any(
        kwargs.get(k) is not None for k in ("encoder_hidden_states", "encoder_attention_mask")
    ):
        refuse("cross-attention inputs (encoder_hidden_states)")
    if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None or kwargs.get("use_cache"):
        refuse("a key/value cache (past_key_values / cache, use_cache)")


def additive_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor | None:
    """The attention mask as the eager path adds it to the scores (``None``: no padding)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        refuse(f"an attention mask of type {type(mask).__name__} (need a 4-D tensor; use eager or sdpa attention)")
    if mask.dtype == torch.bool:  # sdpa's boolean mask: True = attend
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        low = torch.full((), torch.finfo(scores.dtype).min, dtype=scores.dtype, device=scores.device)
        return torch.where(mask, zero, low)
    return mask
