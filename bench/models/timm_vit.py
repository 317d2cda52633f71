"""Model adapter for stock timm ``VisionTransformer`` models (ViT, DeiT, DINOv2, MAE, CLIP towers, ...).

No model code is copied: the adapter builds or loads a stock timm model, switches its attention
layers to the eager path on the *instance* (``fused_attn = False``) so the softmax probabilities
exist as a tensor, and reads the token geometry from the model (never a hard-coded 14 or 224).

Token layout. A timm ViT's sequence is ``[prefix tokens | patch tokens]``: the prefix is the class
token (CLS), then the distillation token (distilled DeiT, ``VisionTransformerDistilled``) or the
register tokens (DINOv2 with registers), ``num_prefix_tokens`` in all; the patch tokens follow in
row-major order of the ``(gh, gw)`` patch grid. :meth:`TimmViT.token_map` drops the prefix and
reshapes the rest to the grid. With ``dynamic_img_size=True`` the grid follows each input's size (timm
interpolates the position embedding on the fly); the adapter remembers the grid of its last forward
pass so maps always have the grid of the images they explain.

Which row the attention methods read. Raw attention, rollout and attention Grad-CAM read the **class
token's row** (CLS, token 0) of the attention matrices, because the classifier reads the class token
(``global_pool='token'``). A distilled DeiT's head averages two classifiers, one on the CLS token and
one on the distillation token (token 1); the methods still read the CLS row only, and the
distillation and register tokens are never part of a map (their columns are dropped). A model whose
head does not read the class token (``global_pool`` ``'avg'``/``'max'``/``'avgmax'``, attention
pooling ``'map'``, no class token) is refused by those methods with a message
(:meth:`TimmViT.check_cls_readout`): the CLS row says nothing about what such a head uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaibench.core.types import Batch, ImageModelAdapter, RequiredAsset, Sample, path_asset
from xaibench.models.vit_files import (
    _require_vit,
    has_classifier,
    load_vit_checkpoint,
    resolve_class_names,
)

log = logging.getLogger(__name__)


class TimmViT(ImageModelAdapter):
    """A stock timm ViT classifier.

    Args:
        arch: timm model id (``vit_base_patch16_224.orig_in21k_ft_in1k``); built with ``timm.create_model``.
        timm_config: path to a JSON file with ``{"timm_kwargs": {...}}`` for ``VisionTransformer(**kwargs)``
            (the golden models' format); alternative to ``arch``.
        timm_kwargs: the constructor kwargs directly (alternative to the two above).
        checkpoint_path: local state dict (``weights_only=True`` or safetensors), checked key by key; the
            position embedding is resampled to the model's grid as timm does (see
            :func:`load_vit_checkpoint`).
        pretrained: let timm fetch the hub weights of ``arch`` (needs network or a warm HF cache).
        mean, std: input normalisation; the reference uses 0.5 for ViT-B/16.
        name: id used in cache keys and tables; defaults to ``arch`` or the config file stem.
        model: an already built timm ViT to wrap (instead of building one).
        class_names: names of the classes, for tables and the explain command: a list, or the name of a
            label set timm ships (``"imagenet-1k"``: its 1000 descriptions, offline).
        init_seed: seed the random initialisation (models without a checkpoint).
        create_kwargs: extra keyword arguments for ``timm.create_model(arch, ...)``, e.g. ``img_size``
            (a DINOv2 at 224 px instead of 518), ``dynamic_img_size``, ``num_classes`` (0 drops the head),
            ``global_pool``. Only with ``arch``.
        require_head: refuse a model without a classifier (``num_classes=0``; DINOv2, MAE and a CLIP
            tower built with ``num_classes=0``), whose forward gives features, not logits. Linear probes
            (:mod:`xaibench.models.probe`) build their backbone with ``require_head=False``.

    Raises:
        TypeError: not a timm ``VisionTransformer`` (e.g. Swin), or blocks without timm's ``Attention``.
        ValueError: inconsistent arguments, a head-less model with ``require_head``, or
            ``global_pool=''`` (per-token outputs, no ``[B, C]`` logits).
    """

    modality = "image"

    @classmethod
    def required_assets(cls, config: Mapping[str, Any]) -> list[RequiredAsset]:
        arch = str(config.get("arch") or "")
        fetch = (
            "fetch it with `make data` (or `xaibench-data vit_base`)"
            if arch.startswith("vit_base_patch16_224")
            else "set model.checkpoint_path"
        )
        what = f"ViT weights ({arch or 'model.checkpoint_path'})"
        out = path_asset(what, config.get("checkpoint_path"), fetch)
        return out + path_asset("model.timm_config", config.get("timm_config"), "set model.timm_config to a file")

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
        class_names: Sequence[str] | str | None = None,
        init_seed: int | None = None,
        create_kwargs: dict[str, Any] | None = None,
        require_head: bool = True,
    ) -> None:
        if model is None:
            if init_seed is not None:  # reproducible random weights (tests, benchmarks)
                torch.manual_seed(init_seed)
            model = self._build(arch, timm_config, timm_kwargs, pretrained, create_kwargs)
        elif create_kwargs:
            raise ValueError("`create_kwargs` only applies when the adapter builds the model from `arch`")
        _require_vit(model)
        label = name or arch or type(model).__name__
        if getattr(model, "global_pool", "token") == "" and int(getattr(model, "num_classes", 0)) > 0:
            raise ValueError(
                f"{label} has global_pool='' (a classifier applied to every token, no [B, C] logits); "
                "build it with global_pool='token' (or 'avg')"
            )
        if require_head and not has_classifier(model):
            raise ValueError(
                f"{label} has no classification head (num_classes=0: a feature backbone such as DINOv2, MAE or "
                "a CLIP image tower), so there are no class logits to explain. Fit a linear probe on it: "
                "`xaibench-train-probe --backbone <model config> --data <image folder> --out <dir>`, then "
                "use model=probe model.probe=<dir>/probe.json"
            )
        if checkpoint_path:  # after the cheap checks: a wrong config fails before a large read
            load_vit_checkpoint(model, checkpoint_path, arch)
        model.eval()
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        self.model = model
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self._name = name or arch or (Path(timm_config).stem.removesuffix("_config") if timm_config else "vit")
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self._class_names = resolve_class_names(class_names)
        self._last_grid: tuple[int, int] | None = None

    @staticmethod
    def _build(
        arch: str | None,
        timm_config: str | None,
        timm_kwargs: dict[str, Any] | None,
        pretrained: bool,
        create_kwargs: dict[str, Any] | None = None,
    ) -> nn.Module:
        import timm
        from timm.models.vision_transformer import VisionTransformer

        given = [x is not None for x in (arch, timm_config, timm_kwargs)]
        if sum(given) != 1:
            raise ValueError("give exactly one of `arch` (a timm model id), `timm_config` or `timm_kwargs`")
        if create_kwargs and arch is None:
            raise ValueError("`create_kwargs` go with `arch`; put constructor arguments into `timm_kwargs` instead")
        if arch is not None:
            return timm.create_model(arch, pretrained=pretrained, **dict(create_kwargs or {}))
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
        """Patch-token grid ``(gh, gw)`` of the configured input size (``image_size``)."""
        return tuple(int(g) for g in self.model.patch_embed.grid_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(int(p) for p in self.model.patch_embed.patch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.patch_embed.img_size)

    @property
    def dynamic_img_size(self) -> bool:
        """Whether the model takes any input size (timm interpolates the position embedding per call)."""
        return bool(getattr(self.model, "dynamic_img_size", False))

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def class_names(self) -> Sequence[str] | None:
        return self._class_names

    def grid_for(self, image_size: Sequence[int]) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` for an input of ``(H, W)`` pixels (the configured grid unless dynamic)."""
        if not self.dynamic_img_size:
            return self.grid_size
        gh, gw = self.model.patch_embed.dynamic_feat_size((int(image_size[0]), int(image_size[1])))
        return int(gh), int(gw)

    def num_tokens(self, inputs: torch.Tensor | None = None) -> int:
        """Sequence length ``n`` = prefix tokens + patch tokens for ``inputs`` ``[B, 3, H, W]`` (or the
        configured size when ``None``)."""
        gh, gw = self.grid_size if inputs is None else self.grid_for(inputs.shape[-2:])
        return self.num_prefix_tokens + gh * gw

    # -- readout --------------------------------------------------------------------------------
    def cls_readout_problem(self) -> str | None:
        """Why the classifier does not read the class token (``None`` when it does).

        Methods that read the CLS row of the attention (raw attention, rollout, attention Grad-CAM) are
        meaningful only when the head reads the class token: ``global_pool='token'``. A distilled DeiT
        qualifies (its head averages the CLS and distillation classifiers; the CLS row is read).
        """
        vit = self.model
        if not getattr(vit, "has_class_token", getattr(vit, "cls_token", None) is not None):
            return f"{self.name} has no class token (class_token=False)"
        if getattr(vit, "attn_pool", None) is not None:
            return f"{self.name} pools with attention (global_pool={vit.global_pool!r}), not the class token"
        if vit.global_pool != "token":
            return (
                f"{self.name} pools global_pool={vit.global_pool!r} over the patch tokens, so its head never "
                "reads the class token"
            )
        return None

    def check_cls_readout(self, who: str) -> None:
        """Raise ``ValueError`` if a method reading the CLS row (``who``) cannot explain this model."""
        problem = self.cls_readout_problem()
        if problem:
            raise ValueError(
                f"{who} reads the class token's (CLS) attention row, but {problem}; its maps would not explain "
                "the prediction. Use a model with global_pool='token' (e.g. model.create_kwargs.global_pool=token "
                "or timm_kwargs.global_pool=token, and a probe trained on those features) or a method that "
                "does not read the CLS row"
            )

    # -- data -----------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> normalised float32 pixels (cast to the model dtype later)."""
        return (images.float() - self.mean) / self.std

    def collate(self, samples: Sequence[Sample]) -> Batch:
        if any(s.image is None for s in samples):
            raise TypeError(f"{self.name} is an image model; the dataset gave samples without images")
        images = torch.stack([s.image for s in samples])
        size = tuple(images.shape[-2:])
        if not self.dynamic_img_size:
            if size != self.image_size:
                raise ValueError(
                    f"images are {size} but {self.name} takes {self.image_size}; set the dataset's image_size to "
                    f"{self.image_size[0]}"
                )
        elif not self.model.patch_embed.dynamic_img_pad and (
            size[0] % self.patch_size[0] or size[1] % self.patch_size[1]
        ):
            raise ValueError(
                f"images are {size}, not a multiple of {self.name}'s patch size {self.patch_size}; resize them "
                "(the patch grid must cover the image)"
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
    def _remember_grid(self, inputs: torch.Tensor) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise TypeError(
                f"{self.name} takes a [B, 3, H, W] image tensor; got "
                f"{type(inputs).__name__}{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else ''}"
            )
        self._last_grid = self.grid_for(inputs.shape[-2:])

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits for normalised pixels ``[B, 3, H, W]``."""
        self._remember_grid(inputs)
        return self.model(inputs)

    #: attention Grad-CAM averages the gradient over the CLS row's patch entries (REFERENCE §3.1)
    gradcam_weights = "cls_row"

    def token_map(self, row: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """Read a per-token row ``[B, n]`` (e.g. the CLS row of an attention matrix) as a patch map.

        Drops the ``num_prefix_tokens`` prefix tokens (CLS, distillation, registers) and reshapes the
        patch tokens (row-major) to ``[B, gh, gw]``.

        Args:
            row: ``[B, n]`` with ``n = num_prefix_tokens + gh·gw``.
            grid: ``(gh, gw)``; default: the grid of this adapter's last forward pass (``logits`` or
                ``forward_with_attention``) if it fits ``n``, else the configured grid.

        Raises:
            ValueError: ``n`` does not fit the grid.
        """
        n = row.shape[-1]
        if grid is None:
            grid = self.grid_size
            if self._last_grid is not None and self.num_prefix_tokens + self._last_grid[0] * self._last_grid[1] == n:
                grid = self._last_grid
        gh, gw = (int(g) for g in grid)
        if n != self.num_prefix_tokens + gh * gw:
            raise ValueError(
                f"a row of {n} tokens does not fit {self.name}: {self.num_prefix_tokens} prefix tokens + a "
                f"{gh}x{gw} patch grid = {self.num_prefix_tokens + gh * gw}"
            )
        return row[:, self.num_prefix_tokens :].reshape(row.shape[0], gh, gw)

    def attention_layers(self) -> Sequence[nn.Module]:
        return [block.attn for block in self.model.blocks]

    @contextlib.contextmanager
    def fused_attention(self) -> Iterator[None]:
        """timm's fused attention (``F.scaled_dot_product_attention``) inside the block, for forwards that read
        no attention probabilities; every instance's eager setting is restored on exit."""
        modules = [m for m in self.model.modules() if hasattr(m, "fused_attn")]
        before = [m.fused_attn for m in modules]
        try:
            for m in modules:
                m.fused_attn = True
            yield
        finally:
            for m, flag in zip(modules, before, strict=True):
                m.fused_attn = flag

    def layer_groups(self) -> Sequence[tuple[str, Sequence[nn.Module | nn.Parameter]]]:
        """``embeddings`` (patch embedding, class/register/distillation tokens, position embedding), ``block0``
        … ``block{L-1}``, ``head`` (final norms, attention pooling, classifier), input to output."""
        vit = self.model
        tokens = [getattr(vit, k, None) for k in ("cls_token", "reg_token", "dist_token", "pos_embed")]
        head = [getattr(vit, k, None) for k in ("norm", "fc_norm", "attn_pool", "head", "head_dist")]
        return [
            ("embeddings", [vit.patch_embed, vit.norm_pre, *(t for t in tokens if isinstance(t, nn.Parameter))]),
            *((f"block{i}", [block]) for i, block in enumerate(vit.blocks)),
            ("head", [m for m in head if isinstance(m, nn.Module)]),
        ]

    def forward_with_attention(
        self, inputs: torch.Tensor, layers: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Forward that also returns the softmax attention probabilities ``{block: [B, h, n, n]}``.

        The returned tensors are the ones multiplied with ``v`` (eval mode), so when autograd is on,
        ``torch.autograd.grad(logit, attn)`` gives ``∂y_c/∂A`` and stops there (nothing below is computed).
        Token order: ``num_prefix_tokens`` prefix tokens (CLS first), then the patch grid row-major.
        """
        from xaibench.models._attention_hooks import record_timm_attention

        self._remember_grid(inputs)
        with record_timm_attention(self.model, layers) as recorded:
            logits = self.model(inputs)
        return logits, recorded
