"""A small timm ViT trained on ``synthetic_pairs`` with a multi-label loss: the pair benchmark's image model.

Trained once on CPU, deterministically, on images holding one or two objects (binary cross-entropy per
class, so a class is present when its logit is > 0 whatever the other classes do), and cached under
``cache_dir`` keyed by a hash of the recipe, like the other demo models (:mod:`xaibench.models.demo_cache`).
The held-out per-class accuracy (two-object images of another seed) is written next to the weights
(``pairs_vit-<digest>.json``) and logged.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from xaibench.datasets.synthetic_pairs import CLASSES, RADIUS, SyntheticPairs
from xaibench.models.timm_vit import TimmViT
from xaibench.models.vit_training import cached_vit, train_vit

log = logging.getLogger(__name__)

DEFAULT_RECIPE: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "radius": list(RADIUS),  # object radius range (fraction of the image side): synthetic_pairs' default
    "train_size": 8000,
    "train_offset": 1_000_000,  # disjoint from the evaluation samples (offset 0)
    "epochs": 16,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "seed": 0,
    "heldout_size": 500,
}


class MultiLabelViT(TimmViT):
    """A timm ViT whose logits are independent per-class log-odds (``multi_label``)."""

    multi_label: ClassVar[bool] = True


def heldout_accuracy(model: torch.nn.Module, data: SyntheticPairs, batch_size: int = 100) -> list[float]:
    """Per-class accuracy of the presence decision (``logit > 0``) on ``data``: ``[C]`` fractions."""
    images, targets = data.arrays()
    with torch.inference_mode():
        logits = torch.cat([model((x - 0.5) / 0.5) for x in images.split(batch_size)])
    return ((logits > 0).float() == targets).float().mean(dim=0).tolist()


def train_pairs_vit(recipe: dict[str, Any]) -> tuple[torch.nn.Module, list[float]]:
    """Train the ViT of ``recipe``; returns ``(model, held-out per-class accuracy)``."""
    train = SyntheticPairs(
        recipe["train_size"],
        recipe["image_size"],
        seed=recipe["seed"],
        offset=recipe["train_offset"],
        min_objects=1,
        max_objects=2,
        radius=recipe["radius"],
    )
    images, targets = train.arrays()
    model = train_vit(recipe, len(CLASSES), images, targets, F.binary_cross_entropy_with_logits, "pairs ViT")
    heldout = SyntheticPairs(
        recipe["heldout_size"], recipe["image_size"], seed=recipe["seed"] + 1, radius=recipe["radius"]
    )
    return model, heldout_accuracy(model, heldout)


def pairs_vit(cache_dir: str, recipe: dict[str, Any] | None = None, retrain: bool = False) -> MultiLabelViT:
    """The trained pair-benchmark ViT, loaded from ``cache_dir`` or trained and cached on first use."""

    def train(r: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
        model, accuracy = train_pairs_vit(r)
        return model, {"heldout_per_class_accuracy": dict(zip(CLASSES, accuracy, strict=True))}

    return cached_vit(
        cache_dir, "pairs_vit", DEFAULT_RECIPE, recipe, retrain, train, CLASSES, "synthetic_pairs ViT", MultiLabelViT
    )
