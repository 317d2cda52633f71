"""The training loop of the demo ViTs (``shapes_vit``, ``pairs_vit``): a small timm ViT trained from scratch
on generated images, deterministically (seeded model, order and flips), with AdamW and a one-cycle schedule."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xaibench.models.demo_cache import build_once, recipe_digest
from xaibench.models.timm_vit import TimmViT

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


def cached_vit(
    cache_dir: str,
    stem: str,
    defaults: dict[str, Any],
    recipe: dict[str, Any] | None,
    retrain: bool,
    train: Callable[[dict[str, Any]], tuple[torch.nn.Module, dict[str, Any]]],
    class_names: Sequence[str],
    what: str,
    adapter_cls: type[TimmViT] = TimmViT,
) -> TimmViT:
    """A demo ViT, loaded from ``<cache_dir>/models/<stem>-<digest>.pt`` or trained by ``train(recipe)`` and
    cached on first use (``retrain``: train again). ``train`` returns the model and its held-out summary,
    written with the recipe to the ``.json`` beside the weights; ``what`` names the model in the logs."""
    recipe, digest = recipe_digest(defaults, recipe)
    weights = Path(cache_dir).expanduser() / "models" / f"{stem}-{digest}.pt"

    def build(tmp: Path) -> None:
        model, summary = train(recipe)
        torch.save(model.state_dict(), tmp)
        weights.with_suffix(".json").write_text(json.dumps({"recipe": recipe, **summary}, indent=2))
        log.info("%s held-out: %s", what, summary)

    build_once(weights, build, weights, retrain, what)
    return adapter_cls(
        timm_kwargs=vit_kwargs(recipe, len(class_names)),
        checkpoint_path=str(weights),
        name=f"{stem}-{digest}",
        class_names=class_names,
    )
