"""Contracts shared by datasets, models, methods and metrics.

Everything that crosses a plugin boundary is defined here: the raw ``Sample`` a dataset yields, the
model-ready ``Batch`` a model adapter builds, the ``Attribution`` a method returns, and the abstract
interfaces of the four plugin kinds. Hydra ``_target_`` paths are the registry; nothing here imports
Hydra.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from xaibench.core.assets import RequiredAsset, path_asset  # noqa: F401  (re-exported: part of the contracts)

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Sample:
    """One raw, model-agnostic example.

    Attributes:
        id: stable identifier (used as the cache key and the ``scores.csv`` row key).
        label: ground-truth class index, or ``-1`` when unknown.
        image: ``[3, H, W]`` float32 in ``[0, 1]`` (image datasets).
        mask: ``[H, W]`` int64 in ``{0, 1}``, the evidence pixels (segmentation datasets).
        words: whitespace tokens of a document (text datasets).
        rationale: evidence spans over ``words`` as ``(start, end)`` pairs, end exclusive.
        labels: every class present, for a multi-label sample (``label`` is then ``-1``); ``target=each``
            explains each of them (:mod:`xaibench.core.targets`).
        class_masks: ``[K, H, W]`` int64, the evidence pixels of each class of ``labels`` (in that order).
        class_rationales: per class of ``labels``, its evidence spans over ``words``.
    """

    id: str
    label: int = -1
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    words: tuple[str, ...] | None = None
    rationale: tuple[tuple[int, int], ...] | None = None
    labels: tuple[int, ...] | None = None
    class_masks: torch.Tensor | None = None
    class_rationales: tuple[tuple[tuple[int, int], ...], ...] | None = None


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to a tensor, or to every tensor value of a (nested) mapping; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class Batch:
    """A collated, model-ready batch of ``B`` samples.

    Attributes:
        ids: sample ids, length ``B``.
        inputs: what ``ModelAdapter.logits`` takes: ``[B, 3, H, W]`` normalised pixels for images, or a
            mapping of ``[B, T]`` tensors (``input_ids``, ``attention_mask``) for text.
        labels: ``[B]`` int64 ground-truth classes (``-1`` when unknown).
        images: ``[B, 3, H, W]`` un-normalised images in ``[0, 1]`` (image modality).
        masks: ``[B, H, W]`` int64 evidence masks aligned with ``images``, when the dataset has them.
        extras: modality-specific extras (text: ``words``, ``word_index``, ``rationales``).
    """

    ids: tuple[str, ...]
    inputs: Any
    labels: torch.Tensor
    images: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> Batch:
        """A copy with every CPU tensor in page-locked memory (the DataLoader calls this with
        ``pin_memory=True``), so the copy to the GPU can overlap compute."""
        pin = torch.Tensor.pin_memory
        return Batch(
            ids=self.ids,
            inputs=map_tensors(self.inputs, pin),
            labels=pin(self.labels),
            images=map_tensors(self.images, pin),
            masks=map_tensors(self.masks, pin),
            extras=map_tensors(self.extras, pin),
        )


@dataclass(frozen=True)
class Attribution:
    """What an attribution method returns for a whole batch.

    Attributes:
        maps: relevance per sample. ``level="tokens"``: ``[B, gh, gw]`` over the patch grid (images) or
            ``[B, T]`` over word-pieces (text); ``level="pixels"``: ``[B, H, W]`` at input resolution.
        targets: ``[B]`` int64, the class each map explains.
        logits: ``[B, C]`` logits of the forward pass the maps came from (detached).
        level: ``"tokens"`` or ``"pixels"``.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    level: Literal["tokens", "pixels"] = "tokens"


class DatasetAdapter(ABC):
    """A map-style dataset of :class:`Sample`.

    ``provides`` names the ground truth it carries (``"label"``, ``"mask"``, ``"rationale"``; multi-label
    sets: ``"labels"`` and ``"class_evidence"``, a mask or rationale per class); metric runners declare what
    they need in ``requires`` and the loop checks the two before any compute.
    """

    modality: ClassVar[Modality]
    provides: ClassVar[frozenset[str]] = frozenset({"label"})

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    @property
    def name(self) -> str:
        return type(self).__name__

    def class_names(self) -> Sequence[str] | None:
        """Human-readable class names, if known."""
        return None

    def sample_id(self, index: int) -> str | None:
        """The id ``self[index]`` would have, without reading the sample (names a sample that fails to load
        in ``scores.csv``); ``None`` if not known cheaply."""
        return None

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        """The files the dataset built from ``config`` (its resolved Hydra node) would read, so a sweep can
        name what is missing before it starts (without building the dataset)."""
        return []


class ModelAdapter(ABC):
    """Wraps a stock classifier: preprocessing, logits, where attention lives, token geometry.

    Attributes:
        model: the stock ``nn.Module`` (timm ``VisionTransformer`` or HF sequence classifier).
        num_prefix_tokens: tokens before the patch tokens (CLS, distillation, registers).
    """

    modality: ClassVar[Modality]
    model: nn.Module
    num_prefix_tokens: int = 1

    @property
    @abstractmethod
    def name(self) -> str:
        """Stable model id used in cache keys and tables (e.g. ``vit_base_patch16_224.orig_in21k_ft_in1k``)."""

    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> Batch:
        """Turn raw samples into a model-ready batch (on CPU)."""

    @abstractmethod
    def logits(self, inputs: Any) -> torch.Tensor:
        """Forward pass; returns ``[B, C]`` logits."""

    @abstractmethod
    def attention_layers(self) -> Sequence[nn.Module]:
        """The attention modules of the blocks, first to last."""

    @abstractmethod
    def forward_with_attention(
        self, inputs: Any, layers: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Forward that also returns the softmax attention probabilities ``{block: [B, h, n, n]}`` (the
        tensors multiplied with ``v`` in eval mode, so ``autograd.grad(logit, attn)`` gives ``∂y_c/∂A``)."""

    @abstractmethod
    def token_map(self, row: torch.Tensor) -> torch.Tensor:
        """Read a per-token row ``[B, n]`` (e.g. the CLS row of an attention matrix) as the method's map:
        ``[B, gh, gw]`` patch maps for images, ``[B, n]`` word-piece maps for text (padding zeroed)."""

    #: which entries attention Grad-CAM averages the gradient over: ``cls_row`` (ViT, REFERENCE §3.1)
    #: or ``all`` (BERT, §3.2)
    gradcam_weights: ClassVar[str] = "cls_row"
    #: the logits are independent per-class log-odds (a multi-label classifier trained with a sigmoid loss):
    #: class c is present when ``logit_c > 0`` and its probability is ``sigmoid(logit_c)``, not a softmax
    multi_label: ClassVar[bool] = False

    def token_mask(self, inputs: Any) -> torch.Tensor | None:
        """``[B, n]`` bool, True at real (non-padding) tokens; ``None`` when every token is real."""
        return None

    def check_cls_readout(self, who: str) -> None:
        """Raise ``ValueError`` naming ``who`` when the classifier does not read the class token (e.g. a
        mean-pooled ViT), so a CLS-row method would explain the wrong thing; a no-op by default."""
        return None

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        """The files (weights, configs) the model built from ``config`` would read; see
        :meth:`DatasetAdapter.required_assets`."""
        return []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ModelAdapter:
        self.model.to(device=device, dtype=dtype)
        return self

    def batch_to(self, batch: Batch) -> Batch:
        """Move a batch's model inputs to the model's device (and float inputs to its dtype)."""
        device, dtype = self.device, self.dtype

        def to_device(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=t.is_pinned())
            return t.to(dtype) if t.is_floating_point() else t

        return Batch(
            ids=batch.ids,
            inputs=map_tensors(batch.inputs, to_device),
            labels=batch.labels.to(device),
            images=batch.images,
            masks=batch.masks,
            extras=batch.extras,
        )

    def weights_hash(self) -> str:
        """SHA-256 (first 16 hex digits) over the state dict, recorded with every run."""
        import hashlib

        h = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def class_names(self) -> Sequence[str] | None:
        return None

    def fused_attention(self) -> contextlib.AbstractContextManager[None]:
        """A ``with`` block in which :meth:`logits` may run fused attention kernels, for forwards that read no
        attention probabilities (the eager path is restored on exit). Default: a no-op."""
        return contextlib.nullcontext()

    def layer_groups(self) -> Sequence[tuple[str, Sequence[nn.Module | nn.Parameter]]]:
        """Named parameter groups from input to output (embeddings, blocks, head): the layers the sanity
        check randomises (Adebayo et al., NeurIPS 2018). Default: the whole model as one group."""
        return [("model", [self.model])]


class ImageModelAdapter(ModelAdapter):
    """A model of ``[B, 3, H, W]`` pixels with a patch-token grid."""

    modality: ClassVar[Modality] = "image"

    @property
    @abstractmethod
    def grid_size(self) -> tuple[int, int]:
        """``(gh, gw)`` patch grid of the configured image size."""

    @abstractmethod
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images in [0, 1] -> the model's normalised inputs."""


class TextModelAdapter(ModelAdapter):
    """A model of word-piece ids (``{"input_ids": [B, T], "attention_mask": [B, T], ...}``)."""

    modality: ClassVar[Modality] = "text"
    gradcam_weights: ClassVar[str] = "all"

    @abstractmethod
    def word_scores(self, maps: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-word scores ``[B, W]`` from word-piece maps ``[B, T]`` (NaN where a word got no piece)."""

    @abstractmethod
    def token_map(
        self, row: torch.Tensor, attention_mask: torch.Tensor | None = None, cls: Literal["zero", "min"] = "zero"
    ) -> torch.Tensor:
        """``[B, n]`` word-piece map of a per-token row: padding 0 (``attention_mask`` ``[B, n]``, True at real
        tokens; default: the mask of the adapter's last forward), the ``[CLS]`` entry 0 (``cls="zero"``) or the
        row's minimum over real tokens (``"min"``, the reference's BERT transformer attribution, REFERENCE §3.2).
        Methods that run the stock model themselves pass ``attention_mask``."""


class AttributionMethod(ABC):
    """``method(model, batch, target) -> Attribution`` for a whole batch.

    ``target`` is a ``[B]`` int64 tensor of classes to explain, or ``None`` to explain each sample's
    predicted class taken from the method's own forward pass (no extra forward). Hyperparameters are
    set in ``__init__``. A call leaves no hook or instance patch behind.
    """

    name: ClassVar[str]
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    #: whether the map depends on the target class (rollout and raw attention do not)
    class_sensitive: ClassVar[bool] = True
    #: whether NaN maps are a documented outcome (the reference's NaN for a constant Grad-CAM map), which
    #: the loop then accepts instead of refusing the sample
    allows_nan_maps: bool = False

    @property
    def passes(self) -> int:
        """Forward + backward evaluations per sample that the cost scales with (integrated gradients: its
        ``n_steps``; SmoothGrad: its noise samples); 1 for the single-pass methods. ``make bench`` reports the
        time per pass beside the total."""
        return 1

    @abstractmethod
    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution: ...


class MetricRunner(ABC):
    """Streams over batches; dataset-level statistics are kept as sums so shards merge exactly.

    ``update`` returns one row (a flat dict of scalars) per sample for ``scores.csv``; ``compute``
    returns the dataset-level numbers for ``metrics.json``.
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    higher_is_better: ClassVar[Mapping[str, bool]] = {}
    #: whether ``update`` needs the model (perturbation, faithfulness)
    needs_model: ClassVar[bool] = False
    #: the ``target`` modes it can score (``class_sensitivity`` needs ``each``: the maps of every class)
    target_modes: ClassVar[frozenset[str]] = frozenset({"predicted", "label", "each"})
    #: more requirements per modality, e.g. ``{"image": {"mask"}, "text": {"rationale"}}``
    requires_by_modality: ClassVar[Mapping[str, frozenset[str]]] = {}
    #: ``update(..., method=method)`` gets the attribution method (sanity checks); refused without one
    needs_method: ClassVar[bool] = False

    @abstractmethod
    def update(self, batch: Batch, attribution: Attribution, model: ModelAdapter) -> list[dict[str, Any]]: ...

    def check_model(self, model: ModelAdapter) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Raise ``ValueError`` before any compute when the runner's options cannot score ``model``."""

    @abstractmethod
    def compute(self) -> dict[str, Any]: ...

    @abstractmethod
    def reset(self) -> None: ...

    def state(self) -> dict[str, Any]:
        """The additive statistics behind ``compute()`` (numbers and lists of numbers).

        States of shards are merged by adding them leaf by leaf (:func:`merge_states`) and loaded back
        with :meth:`load_state`, so a data-parallel run gives the single-process numbers.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support merging shards")

    def load_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support merging shards")


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add metric states leaf by leaf: numbers add, lists add elementwise, nested mappings recurse."""

    def add(a: Any, b: Any) -> Any:
        if isinstance(a, Mapping):
            return {k: add(a[k], b[k]) for k in a}
        if isinstance(a, (list, tuple)):
            if len(a) != len(b):
                raise ValueError(f"cannot merge metric states of different lengths {len(a)} and {len(b)}")
            return [add(x, y) for x, y in zip(a, b, strict=True)]
        return a + b

    if not states:
        raise ValueError("no metric states to merge")
    merged: Any = states[0]
    for other in states[1:]:
        merged = add(merged, other)
    return dict(merged)
