"""Canonizer and relevance pass for stock Hugging Face ``BertForSequenceClassification`` models.

:class:`BertCanonizer` overrides ``forward`` on module *instances* inside a ``with`` block and
restores them in ``finally`` (nothing patched on classes, no hook registered). Inside the block the
model computes the stock eager values (every rule returns the stock op's output, in the stock op
order) and every operation on the relevance path carries its rule from a
:class:`~xaibench.methods._lrp.presets.RulePreset`. The relevance pass follows the reference's
``BERT.py`` relprops (REFERENCE §3.2):

* classifier ``Linear`` (dropout: identity) → pooler: ``Tanh`` (identity) → ``dense`` (Linear) →
  token-0 selection (``IndexSelect`` z-rule) → encoder layers, last to first;
* ``BertLayer``: ``output`` (LayerNorm identity → sum [dense branch, residual] → dense) →
  ``intermediate`` (activation identity → dense) → fork of the attention output (``Clone`` sum);
* ``BertAttention``: ``BertSelfOutput`` (LayerNorm identity → sum → dense) → self-attention →
  fork of the layer input into [self-attention, residual] (``Clone`` sum);
* ``BertSelfAttention``: ``A @ V`` (bilinear z-rule, half per operand; the attention share is
  ``R^(A)``) → softmax (identity) → additive attention mask (identity: the mask gets no relevance,
  so padding changes nothing) → ``Q Kᵀ · 1/sqrt(d)`` (bilinear z-rule on the *unscaled* product,
  half per operand) → query/key/value ``Linear`` → three-way fork of the hidden states (``Clone``).

The embedding layer's relevance is never computed (as in the reference): the pass ends at the
encoder input, i.e. after the embedding LayerNorm. The embeddings run without autograd and the
encoder input is a fresh leaf (``canon.input``) when the whole encoder is differentiated.

Refused with a message: decoders and cross-attention, caches (``past_key_values``), relative
position embeddings, training mode, non-module activation functions, classifier heads other than
``nn.Linear``, subclasses (RoBERTa, ELECTRA, ... have their own classes and are refused by type),
and any module without a rule (named). The attention is always computed on the eager path; a
boolean (sdpa) mask is applied as the eager additive mask. ``chunk_size_feed_forward`` is ignored:
the feed-forward runs unchunked (same values per token; the rescaled sum rule normalises per
sample, so chunks would change it).

:func:`bert_relevance` is the BERT counterpart of :func:`~xaibench.methods._lrp.vit.vit_relevance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xaibench.methods._lrp import rules
from xaibench.methods._lrp.base import Canonizer, Relevance, block_index, leaf_forward, relevance_pass
from xaibench.methods._lrp.presets import RulePreset

__all__ = ["BertCanonizer", "bert_relevance", "is_bert"]

#: transformers' GELU variants (elementwise; the reference's GELU relprop is the identity)
_HF_GELU_NAMES = (
    "GELUActivation",
    "NewGELUActivation",
    "FastGELUActivation",
    "QuickGELUActivation",
    "GELUTanh",
    "PytorchGELUTanh",
    "AccurateGELUActivation",
)


def _bert() -> Any:
    from transformers.models.bert import modeling_bert

    return modeling_bert


def is_bert(model: object) -> bool:
    """Whether ``model`` is a ``BertForSequenceClassification`` (without importing transformers if absent)."""
    try:
        return isinstance(model, _bert().BertForSequenceClassification)
    except ImportError:
        return False


def _identity_types(preset: RulePreset) -> tuple[type[nn.Module], ...]:
    from transformers import activations

    hf = tuple(getattr(activations, n) for n in _HF_GELU_NAMES if hasattr(activations, n))
    return (*preset.identity, *hf)


def _refuse(what: str) -> None:
    raise ValueError(
        f"LRP on BERT: {what} is not supported (supported: an encoder-only Hugging Face "
        "BertForSequenceClassification with absolute position embeddings, in eval mode)"
    )


def _check_model(model: nn.Module) -> None:
    mb = _bert()
    if type(model) is not mb.BertForSequenceClassification:
        raise TypeError(
            "the BERT LRP canonizer supports transformers BertForSequenceClassification instances; got "
            f"{type(model).__name__} (other BERT-family classes have their own heads and modules)"
        )
    if any(m.training for m in model.modules()):
        raise ValueError("relevance methods need the model in eval mode (dropout active); call model.eval() first")
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        _refuse("a decoder configuration or cross-attention (is_decoder / add_cross_attention)")
    position = getattr(config, "position_embedding_type", None)
    if position not in (None, "absolute"):
        _refuse(f"position_embedding_type={position!r} (relative position embeddings)")
    base = model.bert
    if type(base) is not mb.BertModel or type(base.encoder) is not mb.BertEncoder:
        _refuse(f"a {type(base).__name__} base model (only BertModel with a BertEncoder)")
    if type(base.pooler) is not mb.BertPooler:
        _refuse("a model without the pooler (add_pooling_layer=False)")
    if not isinstance(model.classifier, nn.Linear):
        _refuse(f"a {type(model.classifier).__name__} classifier (need nn.Linear)")
    for i, layer in enumerate(base.encoder.layer):
        if type(layer) is not mb.BertLayer:
            _refuse(f"encoder layer {i} of type {type(layer).__name__} (only BertLayer)")
        if hasattr(layer, "crossattention"):
            _refuse(f"cross-attention in encoder layer {i}")
        if type(layer.attention) is not mb.BertAttention or type(layer.attention.self) is not mb.BertSelfAttention:
            _refuse(f"encoder.layer.{i}.attention of type {type(layer.attention.self).__name__}")
        for name, sub in (("intermediate", mb.BertIntermediate), ("output", mb.BertOutput)):
            if type(getattr(layer, name)) is not sub:
                _refuse(f"encoder.layer.{i}.{name} of type {type(getattr(layer, name)).__name__}")
        if type(layer.attention.output) is not mb.BertSelfOutput:
            _refuse(f"encoder.layer.{i}.attention.output of type {type(layer.attention.output).__name__}")
        if not isinstance(layer.intermediate.intermediate_act_fn, nn.Module):
            _refuse(
                f"a plain-function activation in encoder.layer.{i}.intermediate (hidden_act given as a callable); "
                "give hidden_act by name so the activation is a module"
            )


def _additive_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor | None:
    """The attention mask as the eager path adds it to the scores (``None``: no padding)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        _refuse(f"an attention mask of type {type(mask).__name__} (need a 4-D tensor; use eager or sdpa attention)")
    if mask.dtype == torch.bool:  # sdpa's boolean mask: True = attend
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        low = torch.full((), torch.finfo(scores.dtype).min, dtype=scores.dtype, device=scores.device)
        return torch.where(mask, zero, low)
    return mask


class BertCanonizer(Canonizer):
    """Give every operation of a Hugging Face ``BertForSequenceClassification`` its LRP rule, inside ``with``.

    Args:
        model: a stock ``BertForSequenceClassification`` in eval mode (e.g. ``HFBert(...).model``).
        preset: rule preset name (``"ours"``, ``"lrp"``) or a :class:`RulePreset`.
        grad_from_block: index of the first encoder layer whose tensors a backward pass will read;
            the earlier layers run without autograd. ``None``: the whole encoder is differentiable
            and its input is recorded as :attr:`input` (a leaf requiring grad).
        record_blocks: encoder layers whose attention probabilities ``A_b`` ``[B, h, n, n]`` are
            recorded in :attr:`attention` (the tensors multiplied with ``V``, also returned as the
            ``output_attentions`` tensors).

    Attributes:
        state: the :class:`~xaibench.methods._lrp.rules.RuleState` switched by :meth:`relevance_mode`.
        attention: ``{layer: A_b}`` filled by the forward pass.
        input: the encoder input ``[B, n, D]`` of the last forward pass with autograd on and
            ``grad_from_block=None`` (where the reference's full LRP reads its relevance).

    Example::

        with torch.enable_grad(), BertCanonizer(bert, "lrp") as canon:
            logits = bert(input_ids=ids, attention_mask=mask).logits
            with canon.relevance_mode():
                (R,) = torch.autograd.grad(logits, canon.input, one_hot)
    """

    def __init__(
        self,
        model: nn.Module,
        preset: str | RulePreset = "ours",
        *,
        grad_from_block: int | None = None,
        record_blocks: Sequence[int] = (),
    ) -> None:
        _check_model(model)
        super().__init__(
            model,
            preset,
            depth=len(model.bert.encoder.layer),
            grad_from_block=grad_from_block,
            record_blocks=record_blocks,
        )
        self.input: torch.Tensor | None = None

    def check(self) -> None:
        """Refuse models outside the supported configuration (see the module docstring)."""
        _check_model(self.model)

    # -- what gets which rule -------------------------------------------------------------------
    def _plan(self) -> list[tuple[object, str, Callable]]:
        mb = _bert()
        model, base = self.model, self.model.bert
        layer_of = {id(layer.attention.self): i for i, layer in enumerate(base.encoder.layer)}
        overrides: dict[type, Callable[[nn.Module], Callable]] = {
            mb.BertEncoder: self._encoder_forward,
            mb.BertLayer: self._layer_forward,
            mb.BertAttention: self._attention_forward,
            mb.BertSelfAttention: lambda m: self._self_attention_forward(m, layer_of[id(m)]),
            mb.BertSelfOutput: self._output_forward,
            mb.BertOutput: self._output_forward,
            mb.BertPooler: self._pooler_forward,
        }
        # containers whose stock forward only calls children (which carry the rules)
        stock = (mb.BertForSequenceClassification, mb.BertModel, mb.BertIntermediate, nn.ModuleList)
        identity = _identity_types(self.preset)
        plan: list[tuple[object, str, Callable]] = []
        embeddings = f"{model.base_model_prefix}.embeddings"
        for name, m in model.named_modules():
            if name == embeddings or name.startswith(embeddings + "."):
                if m is base.embeddings:
                    plan.append((m, "forward", self._embeddings_forward(m)))
                continue  # the embedding layer's relevance is never computed (REFERENCE §3.2)
            kind = type(m)
            if kind in overrides:
                plan.append((m, "forward", overrides[kind](m)))
                continue
            if kind in stock:
                continue
            if any(True for _ in m.children()):
                raise TypeError(f"module '{name}' ({kind.__name__}) has no LRP rule (not a supported container)")
            if isinstance(m, nn.Dropout):
                continue  # identity in eval mode: the gradient is the relevance
            if isinstance(m, nn.Linear):
                plan.append((m, "forward", leaf_forward(m, self._linear_rule(m))))
            elif isinstance(m, identity):
                plan.append((m, "forward", leaf_forward(m, self._identity_rule())))
            else:
                raise TypeError(
                    f"module '{name}' ({kind.__name__}) has no LRP rule in preset '{self.preset.name}'; rules exist "
                    f"for nn.Linear, {', '.join(sorted({t.__name__ for t in identity}))} (identity) and "
                    "nn.Dropout (eval-mode identity)"
                )
        return plan

    # -- instance forwards ----------------------------------------------------------------------
    @staticmethod
    def _embeddings_forward(emb: nn.Module) -> Callable:
        stock = emb.forward

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            with torch.no_grad():  # the relevance pass ends at the encoder input
                return stock(*args, **kwargs)

        return forward

    def _encoder_forward(self, encoder: nn.Module) -> Callable:
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        start = self.grad_from_block

        def forward(
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            encoder_hidden_states: torch.Tensor | None = None,
            encoder_attention_mask: torch.Tensor | None = None,
            past_key_values: Any = None,
            use_cache: bool | None = None,
            **kwargs: Any,
        ) -> Any:
            if encoder_hidden_states is not None or encoder_attention_mask is not None:
                _refuse("cross-attention inputs (encoder_hidden_states)")
            if past_key_values is not None or use_cache:
                _refuse("a key/value cache (past_key_values, use_cache)")
            grad = torch.is_grad_enabled()
            x = hidden_states.detach()
            if grad and start is None:
                self.input = x = x.requires_grad_(True)
            for i, layer in enumerate(encoder.layer):
                if grad and i == start:
                    x = x.detach().requires_grad_(True)
                with torch.set_grad_enabled(grad and (start is None or i >= start)):
                    x = layer(x, attention_mask, **kwargs)
            return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=x)

        return forward

    def _layer_forward(self, layer: nn.Module) -> Callable:
        preset, state = self.preset, self.state

        def forward(
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            encoder_hidden_states: torch.Tensor | None = None,
            encoder_attention_mask: torch.Tensor | None = None,
            past_key_values: Any = None,
            **kwargs: Any,
        ) -> torch.Tensor:
            if encoder_hidden_states is not None or past_key_values is not None:
                _refuse("cross-attention inputs or a key/value cache")
            attention_output, _ = layer.attention(hidden_states, attention_mask, **kwargs)
            # the attention output feeds the feed-forward and its residual (reference BertLayer clone)
            to_ffn, skip = preset.clone.apply(state, attention_output)
            return layer.output(layer.intermediate(to_ffn), skip)

        return forward

    def _attention_forward(self, attention: nn.Module) -> Callable:
        preset, state = self.preset, self.state

        def forward(
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            encoder_hidden_states: torch.Tensor | None = None,
            encoder_attention_mask: torch.Tensor | None = None,
            past_key_values: Any = None,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if encoder_hidden_states is not None or past_key_values is not None:
                _refuse("cross-attention inputs or a key/value cache")
            to_self, skip = preset.clone.apply(state, hidden_states)
            context, probs = attention.self(to_self, attention_mask=attention_mask, **kwargs)
            return attention.output(context, skip), probs

        return forward

    def _self_attention_forward(self, attn: nn.Module, index: int) -> Callable:
        preset, state, record = self.preset, self.state, index in self.record_blocks

        def forward(
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            past_key_values: Any = None,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if past_key_values is not None:
                _refuse("a key/value cache (past_key_values)")
            if kwargs.get("encoder_hidden_states") is not None:
                _refuse("cross-attention inputs (encoder_hidden_states)")
            input_shape = hidden_states.shape[:-1]
            hidden_shape = (*input_shape, -1, attn.attention_head_size)
            # the hidden states feed query, key and value (reference: 3-way clone)
            hq, hk, hv = preset.clone.apply(state, hidden_states, 3)
            q = attn.query(hq).view(hidden_shape).transpose(1, 2)
            k = attn.key(hk).view(hidden_shape).transpose(1, 2)
            v = attn.value(hv).view(hidden_shape).transpose(1, 2)
            kt = k.transpose(2, 3)
            # the stock eager op order (q @ kᵀ, then * scaling); the rule sees the unscaled product
            scores = preset.matmul.apply(state, torch.matmul(q, kt) * attn.scaling, q, kt, attn.scaling)
            mask = _additive_mask(attention_mask, scores)
            if mask is not None:
                scores = rules.Identity.apply(state, scores + mask, scores)
            probs = rules.Identity.apply(state, nn.functional.softmax(scores, dim=-1), scores)
            if record:
                self.attention[index] = probs
            context = preset.matmul.apply(state, torch.matmul(probs, v), probs, v)
            context = context.transpose(1, 2).contiguous().reshape(*input_shape, -1).contiguous()
            return context, probs

        return forward

    def _output_forward(self, out: nn.Module) -> Callable:
        """``BertSelfOutput`` / ``BertOutput``: ``LayerNorm(dropout(dense(h)) + residual)``."""

        def forward(hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
            h = out.dropout(out.dense(hidden_states))
            return out.LayerNorm(self._add(h, input_tensor))

        return forward

    def _pooler_forward(self, pooler: nn.Module) -> Callable:
        preset, state = self.preset, self.state

        def forward(hidden_states: torch.Tensor) -> torch.Tensor:
            first = preset.pool.apply(state, hidden_states[:, 0], hidden_states, 0)
            return pooler.activation(pooler.dense(first))

        return forward


def bert_relevance(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    target: torch.Tensor | None,
    preset: str | RulePreset,
    *,
    blocks: Sequence[int] = (),
    gradients: bool = False,
    input_relevance: bool = False,
) -> Relevance:
    """One forward pass of a BERT classifier with LRP rules, then the backward passes asked for.

    Runs under ``torch.enable_grad()`` whatever the caller's mode; each backward pass stops at the
    lowest tensor read: layer ``min(blocks)``'s attention, or the encoder input.

    Args:
        model: stock ``BertForSequenceClassification`` in eval mode.
        inputs: ``{"input_ids": [B, n], "attention_mask": [B, n], ...}`` (padding allowed).
        target: ``[B]`` int64 classes, or ``None`` for each sample's argmax.
        preset: rule preset (``"ours"`` or ``"lrp"``).
        blocks: encoder layers whose ``A_b`` and ``R^(A)_b`` (and ``∂y_c/∂A_b``) to return.
        gradients: also compute ``∂y_c/∂A_b`` (a true-gradient backward pass).
        input_relevance: also return the relevance at the encoder input ``[B, n, D]`` (after the
            embedding LayerNorm; the reference's full LRP).

    Returns:
        A :class:`~xaibench.methods._lrp.base.Relevance`.
    """
    _check_model(model)
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError("inputs must be a mapping with 'input_ids' (and 'attention_mask'), as HFBert.collate builds")
    depth = len(model.bert.encoder.layer)
    wanted = sorted({block_index(b, depth) for b in blocks})
    if not wanted and not input_relevance:
        raise ValueError("nothing to compute: give `blocks` and/or input_relevance=True")
    start = None if input_relevance else wanted[0]
    with torch.enable_grad(), BertCanonizer(model, preset, grad_from_block=start, record_blocks=wanted) as canon:

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            return model(**inputs).logits, canon.input

        return relevance_pass(canon, run, target, gradients=gradients, input_relevance=input_relevance)
