"""Canonizer and relevance pass for stock Hugging Face ``BertForSequenceClassification`` models.

:class:`BertCanonizer` overrides ``forward`` on module *instances* inside a ``with`` block and
restores them in ``finally`` (nothing patched on classes, no hook registered). Inside the block the
model computes the stock eager values (every rule returns the stock op's output, in the stock op
order) and every operation on the relevance path carries its rule from a
:class:`~xaibench.methods._lrp.presets.RulePreset`. The relevance pass follows the reference's
``BERT.py`` relprops (REFERENCE §3.2); the rule named is the reference presets' one:

* classifier ``Linear`` (dropout: identity) → pooler: ``Tanh`` (activation rule: identity) →
  ``dense`` (Linear) → token-0 selection (pool rule: ``IndexSelect`` z-rule) → encoder layers, last to
  first;
* ``BertLayer``: ``output`` (LayerNorm: norm rule → sum [dense branch, residual] → dense) →
  ``intermediate`` (activation rule → dense) → fork of the attention output (``Clone`` sum);
* ``BertAttention``: ``BertSelfOutput`` (LayerNorm → sum → dense) → self-attention → fork of the
  layer input into [self-attention, residual] (``Clone`` sum);
* ``BertSelfAttention``: ``A @ V`` (context rule: bilinear z-rule, half per operand; the attention
  share is ``R^(A)``) → softmax and the additive attention mask (elementwise rule: identity; the mask
  gets no relevance, so padding changes nothing) → ``Q Kᵀ · 1/sqrt(d)`` (scores rule: bilinear z-rule
  on the *unscaled* product) → query/key/value ``Linear`` → three-way fork of the hidden states.

By default the embedding layer's relevance is never computed (as in the reference): the pass ends at
the encoder input, i.e. after the embedding LayerNorm; the embeddings run without autograd and the
encoder input is a fresh leaf (``canon.input``) when the whole encoder is differentiated. With
``through_embeddings=True`` (AttnLRP, as ``lxt`` explains BERT) the pass continues through the
embedding LayerNorm and the sum of word, position and token-type embeddings to the word-piece
embeddings, which the caller feeds as ``inputs_embeds`` (a leaf); the position and token-type
embeddings are constants and keep their share.

Unsupported configurations are refused by :mod:`.bert_support`; any module without a rule is named.
The attention is always computed on the eager path; a boolean (sdpa) mask is applied as the eager
additive mask. ``chunk_size_feed_forward`` is ignored: the feed-forward runs unchunked (same values
per token; the rescaled sum rule normalises per sample, so chunks would change it).

:func:`bert_relevance` is the BERT counterpart of :func:`~xaibench.methods._lrp.vit.vit_relevance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xaibench.methods._lrp.base import Canonizer, Relevance, block_index, leaf_forward, relevance_pass
from xaibench.methods._lrp.bert_support import (
    additive_mask,
    check_model,
    check_plain_inputs,
    is_bert,
    modeling_bert,
)
from xaibench.methods._lrp.presets import RulePreset

__all__ = ["BertCanonizer", "bert_relevance", "is_bert"]


class BertCanonizer(Canonizer):
    """Give every operation of a Hugging Face ``BertForSequenceClassification`` its LRP rule, inside ``with``.

    Args:
        model: a stock ``BertForSequenceClassification`` in eval mode (e.g. ``HFBert(...).model``).
        preset: rule preset name (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``) or a
            :class:`RulePreset`.
        through_embeddings: the relevance pass runs through the embedding layer to the word-piece
            embeddings (pass them as ``inputs_embeds``); otherwise it ends at the encoder input.
        grad_from_block: index of the first encoder layer whose tensors a backward pass will read;
            the earlier layers run without autograd. ``None``: the whole encoder is differentiable
            and its input is recorded as :attr:`input` (a leaf requiring grad) unless
            ``through_embeddings``.
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
        self, model: nn.Module, preset: str | RulePreset = "ours", *, through_embeddings: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(model, preset, **kwargs)
        if through_embeddings and self.grad_from_block is not None:
            raise ValueError("through_embeddings=True needs grad_from_block=None (the whole encoder differentiable)")
        self.through_embeddings = through_embeddings
        self.input: torch.Tensor | None = None

    def check(self) -> None:
        """Refuse models outside the supported configuration (:func:`~.bert_support.check_model`)."""
        check_model(self.model)

    def depth(self) -> int:
        """Number of encoder layers."""
        return len(self.model.bert.encoder.layer)

    # -- what gets which rule -------------------------------------------------------------------
    def _plan(self) -> list[tuple[object, str, Callable]]:
        mb = modeling_bert()
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
        # containers whose stock forward only calls children (which carry the rules); with
        # through_embeddings the embedding layer's stock forward sums the three embeddings
        stock = (mb.BertForSequenceClassification, mb.BertModel, mb.BertIntermediate, nn.ModuleList)
        if self.through_embeddings:
            stock += (mb.BertEmbeddings, nn.Embedding)  # position / token-type lookups: constants
        plan: list[tuple[object, str, Callable]] = []
        embeddings = f"{model.base_model_prefix}.embeddings"
        for name, m in model.named_modules():
            if not self.through_embeddings and (name == embeddings or name.startswith(embeddings + ".")):
                if m is base.embeddings:
                    plan.append((m, "forward", self._embeddings_forward(m)))
                continue  # the reference never computes the embedding layer's relevance (REFERENCE §3.2)
            kind = type(m)
            if kind in overrides:
                plan.append((m, "forward", overrides[kind](m)))
            elif kind in stock:
                continue
            elif any(True for _ in m.children()):
                raise TypeError(f"module '{name}' ({kind.__name__}) has no LRP rule (not a supported container)")
            else:
                rule = self._leaf_rule(name, m, (nn.Dropout,))  # dropout: identity in eval mode
                if rule is not None:
                    plan.append((m, "forward", leaf_forward(m, rule)))
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
            hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
        ) -> Any:
            check_plain_inputs(args, kwargs)
            grad = torch.is_grad_enabled()
            x = hidden_states if self.through_embeddings else hidden_states.detach()
            if grad and start is None and not self.through_embeddings:
                self.input = x = x.requires_grad_(True)
            for i, layer in enumerate(encoder.layer):
                if grad and i == start:
                    x = x.detach().requires_grad_(True)
                with torch.set_grad_enabled(grad and (start is None or i >= start)):
                    x = layer(x, attention_mask)
            return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=x)

        return forward

    def _layer_forward(self, layer: nn.Module) -> Callable:
        def forward(
            hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
        ) -> torch.Tensor:
            check_plain_inputs(args, kwargs)
            attention_output, _ = layer.attention(hidden_states, attention_mask)
            # the attention output feeds the feed-forward and its residual (reference BertLayer clone)
            to_ffn, skip = self._fork(attention_output)
            return layer.output(layer.intermediate(to_ffn), skip)

        return forward

    def _attention_forward(self, attention: nn.Module) -> Callable:
        def forward(
            hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            check_plain_inputs(args, kwargs)
            to_self, skip = self._fork(hidden_states)
            context, probs = attention.self(to_self, attention_mask)
            return attention.output(context, skip), probs

        return forward

    def _self_attention_forward(self, attn: nn.Module, index: int) -> Callable:
        record = index in self.record_blocks

        def forward(
            hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            check_plain_inputs(args, kwargs)
            input_shape = hidden_states.shape[:-1]
            hidden_shape = (*input_shape, -1, attn.attention_head_size)
            # the hidden states feed query, key and value (reference: 3-way clone)
            hq, hk, hv = self._fork(hidden_states, 3)
            q = attn.query(hq).view(hidden_shape).transpose(1, 2)
            k = attn.key(hk).view(hidden_shape).transpose(1, 2)
            v = attn.value(hv).view(hidden_shape).transpose(1, 2)
            kt = k.transpose(2, 3)
            # the stock eager op order (q @ kᵀ, then * scaling); the rule sees the unscaled product
            scores = self._rule("scores", torch.matmul(q, kt) * attn.scaling, q, kt, attn.scaling)
            mask = additive_mask(attention_mask, scores)
            if mask is not None:
                scores = self._rule("elementwise", scores + mask, scores)
            probs = self._rule("elementwise", nn.functional.softmax(scores, dim=-1), scores)
            if record:
                self.attention[index] = probs
            context = self._rule("context", torch.matmul(probs, v), probs, v)
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
        def forward(hidden_states: torch.Tensor) -> torch.Tensor:
            first = self._rule("pool", hidden_states[:, 0], hidden_states, 0)
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
    through_embeddings: bool = False,
) -> Relevance:
    """One forward pass of a BERT classifier with LRP rules, then the backward passes asked for.

    Runs under ``torch.enable_grad()`` whatever the caller's mode; each backward pass stops at the
    lowest tensor read: layer ``min(blocks)``'s attention, the encoder input or the word-piece
    embeddings.

    Args:
        model: stock ``BertForSequenceClassification`` in eval mode.
        inputs: ``{"input_ids": [B, n], "attention_mask": [B, n], ...}`` (padding allowed).
        target: ``[B]`` int64 classes, or ``None`` for each sample's argmax.
        preset: rule preset (``"ours"``, ``"lrp"``, ``"attnlrp"``, ``"cp_lrp"``).
        blocks: encoder layers whose ``A_b`` and ``R^(A)_b`` (and ``∂y_c/∂A_b``) to return.
        gradients: also compute ``∂y_c/∂A_b`` (a true-gradient backward pass).
        input_relevance: also return the relevance at the encoder input ``[B, n, D]`` (after the
            embedding LayerNorm; the reference's full LRP), or with ``through_embeddings`` at the
            word-piece embeddings ``[B, n, D]``.
        through_embeddings: run the pass through the embedding layer to the word-piece embeddings
            (looked up here and fed as ``inputs_embeds``); needs ``input_relevance``.

    Returns:
        A :class:`~xaibench.methods._lrp.base.Relevance`.
    """
    check_model(model)
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError("inputs must be a mapping with 'input_ids' (and 'attention_mask'), as HFBert.collate builds")
    if through_embeddings and not input_relevance:
        raise ValueError(
            "through_embeddings=True reads the relevance at the word-piece embeddings: set input_relevance"
        )
    depth = len(model.bert.encoder.layer)
    wanted = sorted({block_index(b, depth) for b in blocks})
    if not wanted and not input_relevance:
        raise ValueError("nothing to compute: give `blocks` and/or input_relevance=True")
    start = None if input_relevance else wanted[0]
    with (
        torch.enable_grad(),
        BertCanonizer(
            model, preset, through_embeddings=through_embeddings, grad_from_block=start, record_blocks=wanted
        ) as canon,
    ):

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            if not through_embeddings:
                return model(**inputs).logits, canon.input
            words = model.bert.embeddings.word_embeddings(inputs["input_ids"]).detach().requires_grad_(True)
            rest = {k: v for k, v in inputs.items() if k != "input_ids"}
            return model(inputs_embeds=words, **rest).logits, words

        return relevance_pass(canon, run, target, gradients=gradients, input_relevance=input_relevance)
