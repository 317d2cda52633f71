"""Model adapter for stock timm ``VisionTransformer`` models (ViT, DeiT, ...).

No model code is copied: the adapter builds or loads a stock timm model, switches its attention
layers to the eager path on the *instance* (``fused_attn = False``) so the softmax probabilities
exist as a tensor, and reads the token geometry from the model (never a hard-coded 14 or 224).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaibench.models.checkpoints import load_state_dict_checked
from xaibench.types import Batch, ModelAdapter, Sample

log = logging.getLogger(__name__)


def _require_vit(model: nn.Module) -> None:
    from timm.models.vision_transformer import Attention, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"xaibench's ViT adapter supports timm VisionTransformer models (ViT, DeiT, DINOv2, MAE, CLIP "
            f"towers); got {type(model).__name__}. Hierarchical models such as Swin have no global token "
            "attention to explain with these methods."
        )
    bad = [i for i, b in enumerate(model.blocks) if not isinstance(getattr(b, "attn", None), Attention)]
    if bad:
        raise TypeError(f"blocks {bad} of {type(model).__name__} do not use timm's standard Attention module")


class TimmViT(ModelAdapter):
    """A stock timm ViT classifier.

    Args:
        arch: timm model id (``vit_base_patch16_224.orig_in21k_ft_in1k``); built with ``timm.create_model``.
        timm_config: path to a JSON file with ``{"timm_kwargs": {...}}`` for ``VisionTransformer(**kwargs)``
            (the golden models' format); alternative to ``arch``.
        timm_kwargs: the constructor kwargs directly (alternative to the two above).
        checkpoint_path: local state dict (loaded with ``weights_only=True``), checked key by key.
        pretrained: let timm fetch the hub weights of ``arch`` (needs network or a warm HF cache).
        mean, std: input normalisation; the reference uses 0.5 for ViT-B/16.
        name: id used in cache keys and tables; defaults to ``arch`` or the config file stem.
        model: an already built timm ViT to wrap (instead of building one).
        class_names: names of the classes, for tables and the explain command.
        init_seed: seed the random initialisation (models without a checkpoint).
    """

    modality = "image"

    def __init__(
        self,
        arch: str | None = None,
        timm_config: str | None = None,
        timm_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        pretrained: bool = False,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        name: str | None = None,
        model: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        init_seed: int | None = None,
    ) -> None:
        if model is None:
            if init_seed is not None:  # reproducible random weights (tests, benchmarks)
                torch.manual_seed(init_seed)
            model = self._build(arch, timm_config, timm_kwargs, pretrained)
            if checkpoint_path:
                load_state_dict_checked(model, checkpoint_path)
        _require_vit(model)
        model.eval()
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        self.model = model
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self._name = name or arch or (Path(timm_config).stem.removesuffix("_config") if timm_config else "vit")
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self._class_names = list(class_names) if class_names is not None else None

    @staticmethod
    def _build(
        arch: str | None, timm_config: str | None, timm_kwargs: dict[str, Any] | None, pretrained: bool
    ) -> nn.Module:
        import timm
        from timm.models.vision_transformer import VisionTransformer

        given = [x is not None for x in (arch, timm_config, timm_kwargs)]
        if sum(given) != 1:
            raise ValueError("give exactly one of `arch` (a timm model id), `timm_config` or `timm_kwargs`")
        if arch is not None:
            return timm.create_model(arch, pretrained=pretrained)
        if timm_config is not None:
            path = Path(timm_config)
            if not path.is_file():
                raise FileNotFoundError(f"timm config {path} not found (expected a JSON file with 'timm_kwargs')")
            timm_kwargs = json.loads(path.read_text()).get("timm_kwargs")
            if not isinstance(timm_kwargs, dict):
                raise ValueError(f"{path}: expected a JSON object with a 'timm_kwargs' object")
        return VisionTransformer(**dict(timm_kwargs))

    # -- geometry -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch-token grid ``(gh, gw)``."""
        return tuple(int(g) for g in self.model.patch_embed.grid_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(int(p) for p in self.model.patch_embed.patch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.patch_embed.img_size)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def class_names(self) -> Sequence[str] | None:
        return self._class_names

    # -- data -----------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> normalised float32 pixels (cast to the model dtype later)."""
        return (images.float() - self.mean) / self.std

    def collate(self, samples: Sequence[Sample]) -> Batch:
        if any(s.image is None for s in samples):
            raise TypeError(f"{self.name} is an image model; the dataset gave samples without images")
        images = torch.stack([s.image for s in samples])
        if tuple(images.shape[-2:]) != self.image_size and not getattr(self.model, "dynamic_img_size", False):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but {self.name} takes {self.image_size}; set the "
                f"dataset's image_size to {self.image_size[0]}"
            )
        masks = None
        if all(s.mask is not None for s in samples):
            masks = torch.stack([s.mask for s in samples])
        return Batch(
            ids=tuple(s.id for s in samples),
            inputs=self.normalize(images),
            labels=torch.tensor([s.label for s in samples], dtype=torch.long),
            images=images,
            masks=masks,
        )

    # -- forward --------------------------------------------------------------------------------
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    #: attention Grad-CAM averages the gradient over the CLS row's patch entries (REFERENCE §3.1)
    gradcam_weights = "cls_row"

    def token_map(self, row: torch.Tensor) -> torch.Tensor:
        """Read a per-token row ``[B, n]`` (e.g. the CLS row of an attention matrix) as a patch map.

        Drops the prefix tokens (CLS, distillation, registers) and reshapes to ``[B, gh, gw]``.
        """
        gh, gw = self.grid_size
        return row[:, self.num_prefix_tokens :].reshape(row.shape[0], gh, gw)

    def attention_layers(self) -> Sequence[nn.Module]:
        return [block.attn for block in self.model.blocks]

    def forward_with_attention(
        self, inputs: torch.Tensor, layers: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Forward that also returns the softmax attention probabilities ``{block: [B, h, n, n]}``.

        The returned tensors are the ones multiplied with ``v`` (eval mode), so when autograd is on,
        ``torch.autograd.grad(logit, attn)`` gives ``∂y_c/∂A`` and stops there (nothing below is computed).
        """
        from xaibench.methods._hooks import record_timm_attention

        with record_timm_attention(self.model, layers) as recorded:
            logits = self.model(inputs)
        return logits, recorded
