"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def golden_dir() -> Path:
    """``XAIBENCH_GOLDEN_DIR`` or ``../shared/golden`` next to the checkout."""
    return Path(os.environ.get("XAIBENCH_GOLDEN_DIR", ROOT.parent / "shared" / "golden")).resolve()


def golden_stems(prefix: str) -> list[str]:
    """Model cases present in the golden directory, e.g. ``["vit_tiny"]`` for ``prefix="vit_"``."""
    d = golden_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len("_golden.npz")] for p in d.glob(f"{prefix}*_golden.npz"))


def load_golden_vit(stem: str, dtype: torch.dtype = torch.float64):
    from xaibench.models.timm_vit import TimmViT

    d = golden_dir()
    model = TimmViT(
        timm_config=str(d / f"{stem}_config.json"), checkpoint_path=str(d / f"{stem}_state_dict.pt"), name=stem
    )
    return model.to(dtype=dtype)


def tiny_vit(img_size: int = 32, patch_size: int = 8, depth: int = 2, num_classes: int = 4, seed: int = 0, **kw):
    """A small random timm ViT adapter with a non-default geometry (nothing may assume 14/16/224)."""
    from timm.models.vision_transformer import VisionTransformer

    from xaibench.models.timm_vit import TimmViT

    torch.manual_seed(seed)
    net = VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=32, depth=depth, num_heads=4, num_classes=num_classes, **kw
    )
    with torch.no_grad():  # spread weights so attention is peaky, not flat
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    return TimmViT(model=net, name=f"tiny_vit_{img_size}_{patch_size}")


def assert_golden_close(ours, ref, what: str) -> None:
    """The golden tolerance: ``|ours − ref| ≤ 1e-4·max|ref| + 1e-5·|ref|`` elementwise, NaN == NaN."""
    import numpy as np

    ours = np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.size == ref.size, f"{what}: {ours.shape} vs reference {ref.shape}"
    ours, ref = ours.reshape(ref.shape), ref
    nan_ref, nan_ours = np.isnan(ref), np.isnan(ours)
    assert (nan_ref == nan_ours).all(), f"{what}: NaN pattern differs ({nan_ours.sum()} vs {nan_ref.sum()})"
    finite = ~nan_ref
    if not finite.any():
        return
    scale = np.abs(ref[finite]).max()
    err = np.abs(ours[finite] - ref[finite])
    bound = 1e-4 * scale + 1e-5 * np.abs(ref[finite])
    worst = float((err / np.maximum(bound, 1e-300)).max())
    assert (err <= bound).all(), f"{what}: max error {err.max():.3g} (max|ref| {scale:.3g}), {worst:.2f}× tolerance"


def golden_cases(npz) -> list[tuple[str, str]]:
    """``(input, mode)`` pairs of a golden npz, from its keys (``in{i}__{mode}__{name}``)."""
    cases = set()
    for key in npz.files:
        parts = key.split("__")
        if len(parts) == 3:
            cases.add((parts[0], parts[1]))
    return sorted(cases)


def mode_target(mode: str):
    """``top`` -> None (the argmax), ``cls243`` -> tensor([243])."""
    import re

    if mode == "top":
        return None
    m = re.fullmatch(r"cls(\d+)", mode)
    if not m:
        raise ValueError(f"unknown golden class mode {mode!r}")
    return torch.tensor([int(m.group(1))])


def tiny_timm_vit(vit_cls=None, seed: int = 0, name: str | None = None, require_head: bool = True, **kw):
    """A small random timm ViT of any family, wrapped in ``TimmViT``, with peaky attention.

    ``vit_cls`` is ``VisionTransformer`` (default) or a subclass such as ``VisionTransformerDistilled``;
    ``kw`` go to its constructor over small defaults (``embed_dim=32, depth=2, num_heads=4,
    num_classes=4``), e.g. ``img_size=(28, 42), patch_size=14, reg_tokens=4, no_embed_class=True`` for a
    DINOv2-with-registers layout or ``dynamic_img_size=True``.
    """
    from timm.models.vision_transformer import VisionTransformer

    from xaibench.models.timm_vit import TimmViT

    vit_cls = vit_cls or VisionTransformer
    args = {"embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 4, **kw}
    torch.manual_seed(seed)
    net = vit_cls(**args)
    with torch.no_grad():  # spread weights so attention is peaky, not flat
        for pname, p in net.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    return TimmViT(model=net, name=name or f"tiny_{vit_cls.__name__}", require_head=require_head)
