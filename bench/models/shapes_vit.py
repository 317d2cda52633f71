"""A small timm ViT trained on ``synthetic_shapes``: the demo's model that actually solves its task.

Trained once on CPU (about a minute on 2 cores), deterministically, and cached under
``cache_dir`` keyed by a hash of the training recipe, so every later run loads it in milliseconds.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from xaibench.datasets.synthetic import CLASSES, SyntheticShapes
from xaibench.models.timm_vit import TimmViT
from xaibench.models.vit_training import cached_vit, train_vit

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


def train_shapes_vit(recipe: dict[str, Any]) -> tuple[torch.nn.Module, float]:
    """Train the ViT of ``recipe`` on generated shapes; returns ``(model, held-out accuracy)``."""
    train = SyntheticShapes(
        recipe["train_size"], recipe["image_size"], seed=recipe["seed"], offset=recipe["train_offset"]
    )
    images, labels = train.arrays()
    model = train_vit(recipe, len(CLASSES), images, labels, F.cross_entropy, "shapes ViT")
    test = SyntheticShapes(500, recipe["image_size"], seed=recipe["seed"] + 1)
    timages, tlabels = test.arrays()
    with torch.inference_mode():
        accuracy = float((model((timages - 0.5) / 0.5).argmax(-1) == tlabels).float().mean())
    return model, accuracy


def shapes_vit(cache_dir: str, recipe: dict[str, Any] | None = None, retrain: bool = False) -> TimmViT:
    """The trained demo ViT, loaded from ``cache_dir`` or trained and cached on first use."""

    def train(r: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
        model, accuracy = train_shapes_vit(r)
        return model, {"heldout_accuracy": accuracy}

    return cached_vit(cache_dir, "shapes_vit", DEFAULT_RECIPE, recipe, retrain, train, CLASSES, "synthetic_shapes ViT")
