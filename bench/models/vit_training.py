"""The training loop of the demo ViTs (``shapes_vit``, ``pairs_vit``): a small timm ViT trained from scratch
on generated images, deterministically (seeded model, order and flips), with AdamW and a one-cycle schedule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def vit_kwargs(recipe: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """timm ``VisionTransformer`` arguments of a demo recipe (image and patch size, width, depth, heads)."""
    return {
        "img_size": recipe["image_size"],
        "patch_size": recipe["patch_size"],
        "num_classes": num_classes,
        "embed_dim": recipe["embed_dim"],
        "depth": recipe["depth"],
        "num_heads": recipe["num_heads"],
        "mlp_ratio": 2.0,
        "qkv_bias": True,
    }


def train_vit(
    recipe: dict[str, Any],
    num_classes: int,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    what: str,
) -> torch.nn.Module:
    """Train a ViT of ``recipe`` on ``images`` ``[N, 3, S, S]`` in [0, 1] and ``targets`` (anything
    ``loss_fn(logits, targets[idx])`` takes), half of each batch flipped left-right (the shapes are
    symmetric); returns the model in eval mode. ``what`` names it in the per-epoch log lines."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(recipe["seed"])
    model = VisionTransformer(**vit_kwargs(recipe, num_classes))
    images = (images - 0.5) / 0.5
    n, bs = len(images), recipe["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["epochs"] * ((n + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            x = images[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = loss_fn(model(x), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.info("%s epoch %d/%d: loss %.4f", what, epoch + 1, recipe["epochs"], total / n)
    return model.eval()
