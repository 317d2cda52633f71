"""Checks and files of a timm ViT: the architecture it must have, checkpoints, class-name lists."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from xaibench.models.checkpoints import load_state_checked, read_state_dict

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


def has_classifier(model: nn.Module) -> bool:
    """Whether a timm ViT ends in a classification layer (``num_classes > 0``), i.e. its forward gives logits."""
    return int(getattr(model, "num_classes", 0)) > 0 and not isinstance(getattr(model, "head", None), nn.Identity)


def _hub_hint(arch: str | None, path: str | Path) -> str:
    if arch is None:
        return ""
    repo = arch if "." in arch else f"{arch} (pick a pretrained tag)"
    return (
        f"; get the weights with `curl -L -o {path} https://huggingface.co/timm/{repo}/resolve/main/"
        "model.safetensors`, or set model.checkpoint_path=null model.pretrained=true to let timm fetch them "
        "(needs network or a warm Hugging Face cache)"
    )


def load_vit_checkpoint(model: nn.Module, path: str | Path, arch: str | None = None) -> None:
    """Load a state dict into a timm ViT, strictly, adapting it the way timm's pretrained loading does.

    A checkpoint that matches the model exactly is loaded as it is. Otherwise it goes through timm's
    ``checkpoint_filter_fn`` (conversion of original DINOv2 / OpenAI CLIP / ... key layouts, resampling
    of the position embedding to the model's patch grid, e.g. a 518-px DINOv2 checkpoint into a
    224-px model, and of the patch-embedding kernel), and classifier weights are dropped when the model
    has no classifier (``num_classes=0``: a backbone, e.g. CLIP's projection for its image tower). Any
    remaining mismatch is an error naming the keys.

    Args:
        model: a timm ``VisionTransformer`` (or subclass).
        path: ``.safetensors`` or a ``torch.save`` state dict (read with ``weights_only=True``).
        arch: timm model id, only used to make the missing-file message actionable.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found{_hub_hint(arch, path)}")
    state = read_state_dict(path)
    own = model.state_dict()
    if set(state) == set(own) and all(state[k].shape == own[k].shape for k in own):
        load_state_checked(model, state, path)
        return
    from timm.models import vision_transformer as vt

    try:
        state = vt.checkpoint_filter_fn(state, model)
    except Exception:  # timm cannot adapt it (e.g. a position embedding of no square grid): name the keys
        load_state_checked(model, state, path)
        raise
    if not has_classifier(model):
        dropped = sorted(k for k in state if k.split(".")[0] in ("head", "head_dist") and k not in own)
        if dropped:
            log.info("%s: model has no classifier, dropping checkpoint keys %s", path.name, dropped)
        state = {k: v for k, v in state.items() if k not in dropped}
    load_state_checked(model, state, path)


def resolve_class_names(class_names: Sequence[str] | str | None) -> list[str] | None:
    """A list of class names from a list, or from the name of a label set timm ships (``"imagenet-1k"``,
    ``"imagenet-21k"``, ...: timm's ``ImageNetInfo`` descriptions, read offline)."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        from timm.data import ImageNetInfo

        try:
            return list(ImageNetInfo(class_names).label_descriptions())
        except Exception as exc:  # timm raises assorted errors for unknown subsets
            raise ValueError(
                f"class_names={class_names!r} is not a label set timm knows (e.g. 'imagenet-1k'); give a list of "
                f"names instead ({type(exc).__name__}: {exc})"
            ) from None
    return [str(c) for c in class_names]
