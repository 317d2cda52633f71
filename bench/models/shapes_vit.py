"""A small timm ViT trained on ``synthetic_shapes``: the demo's model that actually solves its task.

Trained once on CPU (about a minute on 2 cores), deterministically, and cached under
``cache_dir`` keyed by a hash of the training recipe, so every later run loads it in milliseconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xaibench.datasets.synthetic import CLASSES, SyntheticShapes
from xaibench.models.demo_cache import build_once, recipe_digest
from xaibench.models.timm_vit import TimmViT

log = logging.getLogger(__name__)

DEFAULT_RECIPE: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "train_size": 6000,
    "train_offset": 1_000_000,  # disjoint from the evaluation samples (offset 0)
    "epochs": 15,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "seed": 0,
}


def _kwargs(recipe: dict[str, Any]) -> dict[str, Any]:
    return {
        "img_size": recipe["image_size"],
        "patch_size": recipe["patch_size"],
        "num_classes": len(CLASSES),
        "embed_dim": recipe["embed_dim"],
        "depth": recipe["depth"],
        "num_heads": recipe["num_heads"],
        "mlp_ratio": 2.0,
        "qkv_bias": True,
    }


def train_shapes_vit(recipe: dict[str, Any]) -> tuple[torch.nn.Module, float]:
    """Train the ViT of ``recipe`` on generated shapes; returns ``(model, held-out accuracy)``."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(recipe["seed"])
    model = VisionTransformer(**_kwargs(recipe))
    train = SyntheticShapes(
        recipe["train_size"], recipe["image_size"], seed=recipe["seed"], offset=recipe["train_offset"]
    )
    images, labels = train.arrays()
    images = (images - 0.5) / 0.5
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["epochs"] * ((len(train) + recipe["batch_size"] - 1) // recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), recipe["batch_size"]):
            idx = order[start : start + recipe["batch_size"]]
            x = images[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # shapes are left-right symmetric
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.info("shapes ViT epoch %d/%d: loss %.4f", epoch + 1, recipe["epochs"], total / len(train))
    model.eval()
    test = SyntheticShapes(500, recipe["image_size"], seed=recipe["seed"] + 1)
    timages, tlabels = test.arrays()
    with torch.inference_mode():
        accuracy = float((model((timages - 0.5) / 0.5).argmax(-1) == tlabels).float().mean())
    return model, accuracy


def shapes_vit(cache_dir: str, recipe: dict[str, Any] | None = None, retrain: bool = False) -> TimmViT:
    """The trained demo ViT, loaded from ``cache_dir`` or trained and cached on first use."""
    recipe, digest = recipe_digest(DEFAULT_RECIPE, recipe)
    weights = Path(cache_dir).expanduser() / "models" / f"shapes_vit-{digest}.pt"

    def build(tmp: Path) -> None:
        model, accuracy = train_shapes_vit(recipe)
        torch.save(model.state_dict(), tmp)
        weights.with_suffix(".json").write_text(json.dumps({"recipe": recipe, "heldout_accuracy": accuracy}, indent=2))
        log.info("synthetic_shapes ViT held-out accuracy: %.3f", accuracy)

    build_once(weights, build, weights, retrain, "synthetic_shapes ViT")
    return TimmViT(
        timm_kwargs=_kwargs(recipe),
        checkpoint_path=str(weights),
        name=f"shapes_vit-{digest}",
        class_names=CLASSES,
    )
