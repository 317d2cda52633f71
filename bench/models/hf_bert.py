"""Model adapter for stock Hugging Face BERT-family sequence classifiers (``BertForSequenceClassification``).

No model code is copied. The adapter loads a stock ``transformers`` model with **eager** attention
(``attn_implementation="eager"``): sdpa/flash attention never materialise the softmax probabilities and
``output_attentions=True`` then silently returns nothing. In transformers 5 the attention dropout is a
functional call (no module to hook), so the probabilities are taken from ``output_attentions=True``; in
eval mode these are exactly the tensors multiplied with ``V``, so ``∂y_c/∂A`` taken w.r.t. them is the
attention gradient the reference stores with ``attn.register_hook``.

Tokenisation follows the reference's ERASER pipeline (REFERENCE §6): ``[CLS] pieces [SEP]``, lower-cased
WordPiece, truncated to 512 pieces. The adapter tokenises the document's whitespace words with
``is_split_into_words=True`` (the same ids as ``encode_plus`` on the raw string for BERT's basic
tokenizer, which splits on whitespace first) so the tokenizer's ``word_ids`` map every piece to its
word; truncation is reported per document instead of silently dropping the tail.

Maps over word-pieces follow the reference's BERT conventions (REFERENCE §3.2): all ``n`` positions
including ``[CLS]``/``[SEP]``, the ``[CLS]`` entry set to 0, and (new here, batching) padding set to 0.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from xaibench.core.text import word_scores
from xaibench.core.types import Batch, RequiredAsset, Sample, TextModelAdapter, path_asset
from xaibench.models.bert_files import (
    _checkpoint_ok,
    _force_eager,
    _read_bert_config,
    bert_tokenizer_from_vocab,
    load_classifier_files,
    load_pretrained_classifier,
)

log = logging.getLogger(__name__)


class HFBert(TextModelAdapter):
    """A stock Hugging Face BERT-family sequence classifier on whitespace-tokenised documents.

    Give either ``checkpoint`` (a local ``save_pretrained`` directory or a hub id; the tokenizer is
    loaded from the same place) or ``config_path`` + ``state_dict_path`` + ``vocab_path`` (the golden
    small BERT: a BertConfig JSON, a ``torch.save`` state dict read with ``weights_only=True``, a
    WordPiece ``vocab.txt``), or an already built ``model`` + ``tokenizer``.

    Args:
        checkpoint: local directory or hub id for ``AutoModelForSequenceClassification.from_pretrained``.
        config_path: BertConfig JSON (plain, or ``{"bert_config": {...}}`` as in the golden files).
        state_dict_path: state dict for ``config_path``; the stale ``bert.embeddings.position_ids`` key is
            dropped, any other mismatch is an error naming the keys.
        vocab_path: WordPiece ``vocab.txt`` for ``config_path``.
        do_lower_case: lower-case before WordPiece (``bert-base-uncased`` and the reference: True).
        max_length: maximum pieces per document including ``[CLS]``/``[SEP]`` (reference: 512); capped at
            the model's ``max_position_embeddings``.
        name: id for cache keys and tables; defaults to the checkpoint name or the config file stem.
        model, tokenizer: prebuilt objects (tests, notebooks).
        class_names: human-readable class names (e.g. ``["NEG", "POS"]``).
        local_files_only: passed to ``from_pretrained`` (no network when True).

    Attributes:
        gradcam_weights: ``"all"``: the reference's BERT attention Grad-CAM averages the gradient over
            all ``n×n`` entries (REFERENCE §3.2).
    """

    modality = "text"

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        hint = "fine-tune one with `xaibench-finetune` (the reference's classifier is not public)"
        checkpoint = config.get("checkpoint")
        if checkpoint == "???":  # a mandatory value nobody set
            return [RequiredAsset("a BERT classifier fine-tuned on ERASER movies", None, hint, "finetuned_bert")]
        out = []
        if checkpoint is not None and not _checkpoint_ok(str(checkpoint)):
            out.append(RequiredAsset("the fine-tuned BERT classifier", str(checkpoint), hint, "finetuned_bert"))
        for key in ("config_path", "state_dict_path", "vocab_path"):
            out += path_asset(f"model.{key}", config.get(key), f"set model.{key} to an existing file")
        return out

    num_prefix_tokens = 1
    gradcam_weights = "all"

    def __init__(
        self,
        checkpoint: str | None = None,
        config_path: str | None = None,
        state_dict_path: str | None = None,
        vocab_path: str | None = None,
        do_lower_case: bool = True,
        max_length: int = 512,
        name: str | None = None,
        model: nn.Module | None = None,
        tokenizer: Any | None = None,
        class_names: Sequence[str] | None = None,
        local_files_only: bool = False,
    ) -> None:
        given = {
            "checkpoint": checkpoint is not None,
            "config_path/state_dict_path/vocab_path": config_path is not None,
            "model/tokenizer": model is not None,
        }
        if sum(given.values()) != 1:
            raise ValueError(
                "give exactly one of `checkpoint` (local directory or hub id), `config_path` + "
                "`state_dict_path` + `vocab_path`, or `model` + `tokenizer`; got "
                f"{[k for k, v in given.items() if v] or 'none'}"
            )
        if checkpoint is not None:
            model, tokenizer = load_pretrained_classifier(checkpoint, local_files_only)
            default_name = Path(checkpoint).name if Path(checkpoint).exists() else checkpoint
        elif config_path is not None:
            if state_dict_path is None or vocab_path is None:
                raise ValueError("`config_path` needs `state_dict_path` and `vocab_path` as well")
            model = load_classifier_files(config_path, state_dict_path)
            tokenizer = bert_tokenizer_from_vocab(vocab_path, do_lower_case=do_lower_case)
            default_name = Path(config_path).stem.removesuffix("_config")
        else:
            if tokenizer is None:
                raise ValueError("`model` needs a `tokenizer` as well")
            _force_eager(model)
            default_name = type(model).__name__
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(tokenizer).__name__} is a slow tokenizer; xaibench needs a fast (tokenizers-backed) one "
                "for the piece->word map (word_ids)"
            )
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        positions = int(getattr(model.config, "max_position_embeddings", max_length))
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self.max_length = min(int(max_length), positions)
        self._name = name or default_name
        if class_names is None:  # a fine-tuned checkpoint names its classes (xaibench-finetune writes them)
            id2label = getattr(model.config, "id2label", None) or {}
            names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(len(id2label))]
            if names and not all(n.startswith("LABEL_") for n in names):
                class_names = names
        self._class_names = list(class_names) if class_names is not None else None
        self._last_mask: torch.Tensor | None = None
        self._reported: set[str] = set()
        self.attention_layers()  # fail early on an unsupported architecture

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config_path: str, vocab_path: str, **kwargs: Any) -> HFBert:
        """A freshly initialised ``BertForSequenceClassification`` (Hugging Face init, from the global torch
        seed) for a BertConfig JSON and a vocabulary: for training from scratch (``xaibench-finetune``
        without ``--state-dict``), never for benchmarking."""
        from transformers import BertForSequenceClassification

        config = _read_bert_config(config_path)
        config._attn_implementation = "eager"
        tokenizer = bert_tokenizer_from_vocab(vocab_path, do_lower_case=kwargs.pop("do_lower_case", True))
        kwargs.setdefault("name", Path(config_path).stem.removesuffix("_config") + "_scratch")
        return cls(model=BertForSequenceClassification(config), tokenizer=tokenizer, **kwargs)

    # -- description ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_labels)

    def class_names(self) -> Sequence[str] | None:
        return self._class_names

    @property
    def base(self) -> nn.Module:
        """The encoder model under the classification head (``BertModel`` for BERT)."""
        return self.model.base_model

    @property
    def embeddings(self) -> nn.Module:
        """The embedding module (its output is the encoder input, where the reference's full LRP stops)."""
        return self.base.embeddings

    def encoder_layers(self) -> Sequence[nn.Module]:
        """The transformer layers (``BertLayer``), first to last."""
        base = self.base
        if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT, RoBERTa, ELECTRA, ...
            return list(base.encoder.layer)
        if hasattr(base, "transformer") and hasattr(base.transformer, "layer"):  # DistilBERT
            return list(base.transformer.layer)
        raise TypeError(
            f"{type(self.model).__name__} has no `encoder.layer` or `transformer.layer` list; xaibench's text "
            "adapter supports BERT-family encoders (BERT, RoBERTa, ELECTRA, DistilBERT)"
        )

    def attention_layers(self) -> Sequence[nn.Module]:
        """The self-attention modules that compute the probabilities (``BertSelfAttention``), first to last."""
        layers = []
        for i, layer in enumerate(self.encoder_layers()):
            attn = getattr(layer, "attention", None)
            attn = getattr(attn, "self", attn)
            if attn is None:
                raise TypeError(f"layer {i} of {type(self.model).__name__} has no `attention` module")
            layers.append(attn)
        return layers

    @contextlib.contextmanager
    def fused_attention(self) -> Iterator[None]:
        """transformers' ``sdpa`` attention inside the block, for forwards that read no attention probabilities;
        eager attention (which the methods need) is restored on exit. transformers < 4.48 stays eager."""
        switch = getattr(self.model, "set_attn_implementation", None)
        if callable(switch):
            switch("sdpa")
        try:
            yield
        finally:
            _force_eager(self.model)

    def layer_groups(self) -> Sequence[tuple[str, Sequence[nn.Module | nn.Parameter]]]:
        """``embeddings``, ``layer0`` … ``layer{L-1}``, ``head`` (pooler and classification head), input to output."""
        head = [getattr(self.base, "pooler", None), *(m for m in self.model.children() if m is not self.base)]
        layers = [(f"layer{i}", [layer]) for i, layer in enumerate(self.encoder_layers())]
        return [("embeddings", [self.embeddings]), *layers, ("head", [m for m in head if isinstance(m, nn.Module)])]

    # -- data -----------------------------------------------------------------------------------
    def collate(self, samples: Sequence[Sample]) -> Batch:
        """Tokenise whitespace-split documents into a padded batch.

        Returns:
            ``Batch`` with ``inputs`` = ``{"input_ids", "attention_mask"[, "token_type_ids"]}`` each
            ``[B, T]`` int64 (``T`` = longest document in the batch, at most ``max_length``) and
            ``extras``:

            - ``words``: tuple of the documents' word tuples;
            - ``num_words``: ``[B]`` int64 word counts;
            - ``word_index``: ``[B, T]`` int64, the word of each piece, ``-1`` for specials/padding;
            - ``rationales``: tuple of each sample's evidence spans (``None`` where unknown);
            - ``truncated``: ``[B]`` bool, whether pieces were cut at ``max_length`` (also logged as a
              warning with the id and the dropped piece and word counts, once per document id);
            - ``num_pieces``: ``[B]`` int64 pieces of the untruncated document incl. specials;
            - ``num_scored_words``: ``[B]`` int64 words with at least one piece in the window.
        """
        if not samples:
            raise ValueError("collate got no samples")
        if any(s.words is None for s in samples):
            raise TypeError(f"{self.name} is a text model; the dataset gave samples without `words`")
        words = [list(s.words) for s in samples]
        enc = self.tokenizer(
            words,
            is_split_into_words=True,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            padding="longest",
            return_tensors="pt",
        )
        bsz, length = enc["input_ids"].shape
        word_index = torch.full((bsz, length), -1, dtype=torch.long)
        num_pieces = enc["attention_mask"].sum(dim=1).long()
        num_scored = torch.zeros(bsz, dtype=torch.long)
        truncated = torch.zeros(bsz, dtype=torch.bool)
        for i in range(bsz):
            ids = enc.word_ids(i)
            word_index[i] = torch.tensor([-1 if w is None else w for w in ids], dtype=torch.long)
            seen = {w for w in ids if w is not None}
            num_scored[i] = len(seen)
            if int(num_pieces[i]) >= self.max_length:
                full = len(
                    self.tokenizer(words[i], is_split_into_words=True, add_special_tokens=True, verbose=False)[
                        "input_ids"
                    ]
                )
                if full > self.max_length:
                    truncated[i] = True
                    num_pieces[i] = full
                    # once per document: perturbation metrics re-collate the same (edited) documents
                    report = log.debug if samples[i].id in self._reported else log.warning
                    self._reported.add(samples[i].id)
                    report(
                        "document %s truncated to %d word-pieces: %d of %d pieces and %d of %d words dropped "
                        "(those words get no score)",
                        samples[i].id,
                        self.max_length,
                        full - self.max_length,
                        full,
                        len(words[i]) - (max(seen) + 1 if seen else 0),
                        len(words[i]),
                    )
        inputs = {k: enc[k].long() for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        return Batch(
            ids=tuple(s.id for s in samples),
            inputs=inputs,
            labels=torch.tensor([s.label for s in samples], dtype=torch.long),
            extras={
                "words": tuple(tuple(w) for w in words),
                "num_words": torch.tensor([len(w) for w in words], dtype=torch.long),
                "word_index": word_index,
                "rationales": tuple(s.rationale for s in samples),
                "truncated": truncated,
                "num_pieces": num_pieces,
                "num_scored_words": num_scored,
            },
        )

    def word_scores(self, maps: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-word scores ``[B, W]`` from word-piece maps ``[B, T]`` (max over a word's pieces, NaN = none).

        See :func:`xaibench.core.text.word_scores`.
        """
        return word_scores(maps, batch.extras["word_index"], batch.extras["num_words"])

    # -- forward --------------------------------------------------------------------------------
    def _check_inputs(self, inputs: Any) -> Mapping[str, torch.Tensor]:
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise TypeError(
                "text model inputs must be a mapping with 'input_ids' (and 'attention_mask'), as built by "
                f"{type(self).__name__}.collate; got {type(inputs).__name__}"
            )
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        self._last_mask = (torch.ones_like(ids) if mask is None else mask).bool()
        return inputs

    def token_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, n]`` bool, True at real (non-padding) positions."""
        mask = inputs.get("attention_mask")
        return torch.ones_like(inputs["input_ids"], dtype=torch.bool) if mask is None else mask.bool()

    def logits(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, C]`` logits for ``{"input_ids": [B, T], "attention_mask": [B, T], ...}``."""
        return self.model(**self._check_inputs(inputs)).logits

    def forward_with_attention(
        self, inputs: Mapping[str, torch.Tensor], layers: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Forward that also returns the softmax attention probabilities ``{layer: [B, h, n, n]}``.

        The tensors come from ``output_attentions=True`` with eager attention: in eval mode they are the
        probabilities multiplied with ``V`` (the functional dropout is the identity), so with autograd on,
        ``torch.autograd.grad(y_c, A)`` is ``∂y_c/∂A``. Padded key columns are exactly 0.

        Args:
            inputs: the batch's model inputs (``[B, T]`` tensors).
            layers: layer indices to return (negative counts from the end); ``None``: all.

        Raises:
            RuntimeError: the model returned no probabilities (it is not running eager attention).
        """
        depth = len(self.attention_layers())
        wanted = list(range(depth)) if layers is None else list(layers)
        bad = [b for b in wanted if not -depth <= b < depth]
        if bad:
            raise ValueError(f"attention layers {bad} out of range for a model with {depth} layers")
        out = self.model(**self._check_inputs(inputs), output_attentions=True)
        attentions = out.attentions
        if not attentions or len(attentions) != depth or any(a is None for a in attentions):
            raise RuntimeError(
                f"{type(self.model).__name__} returned no attention probabilities (got "
                f"{0 if not attentions else len(attentions)} of {depth}); it is not running eager attention "
                f"(attn_implementation={getattr(self.model.config, '_attn_implementation', None)!r}). Load it "
                "through HFBert, which sets attn_implementation='eager'."
            )
        return out.logits, {b % depth: attentions[b % depth] for b in wanted}

    def token_map(
        self, row: torch.Tensor, attention_mask: torch.Tensor | None = None, cls: Literal["zero", "min"] = "zero"
    ) -> torch.Tensor:
        """Read a per-token row ``[B, n]`` as a word-piece map ``[B, n]``.

        Keeps every position (incl. ``[SEP]``) as the reference's BERT generator does, zeroes padding and
        sets the ``[CLS]`` entry: ``cls="zero"`` (``[0, 0] = 0``: the reference's raw attention, rollout,
        Grad-CAM, partial and full LRP) or ``cls="min"`` (the row's minimum over real tokens, incl. the
        ``[CLS]`` entry itself: its transformer attribution, ``rollout[:, 0, 0] = rollout[:, 0].min()``;
        REFERENCE §3.2). The padding mask is ``attention_mask`` if given, else the one of this adapter's
        last forward pass (``logits`` or ``forward_with_attention``), which is what methods read rows from.
        """
        if cls not in ("zero", "min"):
            raise ValueError(f"cls must be 'zero' or 'min', got {cls!r}")
        mask = attention_mask if attention_mask is not None else self._last_mask
        if mask is None:
            raise RuntimeError("token_map needs the padding mask: run a forward pass first or pass attention_mask")
        if tuple(mask.shape) != tuple(row.shape):
            raise ValueError(
                f"row {tuple(row.shape)} does not match the padding mask {tuple(mask.shape)} of the last forward "
                "pass; pass attention_mask explicitly"
            )
        mask = mask.to(row.device).bool()
        out = torch.where(mask, row, torch.zeros((), dtype=row.dtype, device=row.device))
        if cls == "min":
            fill = torch.where(mask, row, torch.full((), float("inf"), dtype=row.dtype, device=row.device))
            out[:, 0] = fill.amin(dim=1)
        else:
            out[:, : self.num_prefix_tokens] = 0
        return out
