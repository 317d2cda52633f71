"""Linear probes: a classification head for a feature backbone (DINOv2, MAE, a CLIP image tower, ...).

Self-supervised and contrastive ViTs have no classifier, so there is no class logit to explain. A linear
probe fits one on frozen features: the pooled pre-head feature of the backbone,
``f(x) = vit.forward_head(vit.forward_features(x), pre_logits=True)`` (``[B, D]``; the class token after
the final norm for ``global_pool='token'``), then a multinomial logistic regression
``y = W f(x) + b`` (``W`` ``[K, D]``, ``b`` ``[K]``) trained full-batch with L-BFGS on cross-entropy
plus ``weight_decay/2 · ‖W‖²`` over standardised features (per-dimension mean and standard deviation of
the training set, folded back into ``W`` and ``b`` afterwards, so the saved layer acts on raw features).

The probe is saved as two small files: ``probe.safetensors`` (``weight``, ``bias``) and ``probe.json``
(format name and version, the backbone's config, name and weights hash, the training configuration,
class names and accuracies). :func:`load_probe` (``model=probe``) rebuilds the backbone, checks its
weights hash and sets the timm model's head to the trained ``nn.Linear`` (``reset_classifier`` then
load), so every method, metric and cache key works on it unchanged.

Command line (``xaibench-train-probe``)::

    xaibench-train-probe --backbone dinov2_vits14 --data /path/to/image_folder --out probes/dinov2
    xaibench-train-probe --backbone vit_micro --data synthetic_shapes --out /tmp/probe \\
        model.timm_kwargs.num_classes=0 dataset.size=200
    xaibench model=probe model.probe=probes/dinov2/probe.json dataset=image_folder dataset.root=...
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xaibench.core.io import resolve_device
from xaibench.core.types import DatasetAdapter
from xaibench.models.timm_vit import TimmViT

log = logging.getLogger(__name__)

FORMAT = "xaibench-linear-probe"
FORMAT_VERSION = 1
JSON_FILE = "probe.json"
WEIGHTS_FILE = "probe.safetensors"


@dataclass
class ProbeConfig:
    """How a probe is fitted.

    Attributes:
        max_iter: L-BFGS iterations (full batch).
        weight_decay: L2 penalty on the standardised weights (``weight_decay/2 · ‖W‖²``).
        val_fraction: share of the data held out for the validation accuracy when no separate validation
            set is given (seeded split); 0 keeps everything for training.
        batch_size: images per forward pass of the frozen backbone.
        num_workers: DataLoader workers for reading images.
        seed: seed of the split and of the head's initialisation.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        limit: use only the first N samples of the data (quick runs).
    """

    max_iter: int = 200
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def pooled_features(vit: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The pooled pre-head feature ``[B, D]`` of a timm ViT for normalised pixels ``[B, 3, H, W]``."""
    return vit.forward_head(vit.forward_features(inputs), pre_logits=True)


def extract_features(
    backbone: TimmViT, dataset: DatasetAdapter, indices: Sequence[int], config: ProbeConfig, desc: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features ``[N, D]`` (float32, CPU) and labels ``[N]`` of ``dataset[indices]``."""
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        collate_fn=backbone.collate,
    )
    feats, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 2):
            batch = backbone.batch_to(batch)
            feats.append(pooled_features(backbone.model, batch.inputs).float().cpu())
            labels.append(batch.labels.cpu())
    return torch.cat(feats), torch.cat(labels)


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ProbeConfig
) -> tuple[nn.Linear, float]:
    """Multinomial logistic regression on standardised features, folded back to raw features.

    Args:
        features: ``[N, D]`` training features.
        labels: ``[N]`` int64 in ``[0, num_classes)``.

    Returns:
        ``(linear, final training loss)``; ``linear`` maps raw features ``[*, D]`` to logits ``[*, K]``.
    """
    x = features.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant features: leave unscaled
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(config.seed)
    weight = (torch.randn(num_classes, z.shape[1], generator=gen, dtype=torch.float64) * 0.01).requires_grad_(True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=config.max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z @ weight.T + bias, labels)
        loss = loss + 0.5 * config.weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # returns the loss before the first iteration; the final one is computed below
    with torch.no_grad():
        final = (
            nn.functional.cross_entropy(z @ weight.T + bias, labels) + 0.5 * config.weight_decay * weight.pow(2).sum()
        )
    loss = float(final)
    with torch.no_grad():
        w = weight / std  # z = (x - mean) / std  =>  W z + b = (W / std) x + (b - (W / std) · mean)
        b = bias - w @ mean
    linear = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(w.float())
        linear.bias.copy_(b.float())
    return linear, loss


def _accuracy(linear: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float | None:
    if len(labels) == 0:
        return None
    with torch.no_grad():
        return float((linear(features).argmax(dim=-1) == labels).float().mean())


def _split(n: int, config: ProbeConfig) -> tuple[list[int], list[int]]:
    n_val = int(round(n * config.val_fraction))
    if n - n_val < 1:
        raise ValueError(f"val_fraction={config.val_fraction} leaves no training samples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def _num_classes(datasets: Sequence[DatasetAdapter], labels: torch.Tensor) -> tuple[int, list[str] | None]:
    names = datasets[0].class_names()
    if bool((labels < 0).any()):
        raise ValueError("the probe data has unlabelled samples (label -1); a probe needs class labels")
    k = int(labels.max()) + 1 if len(labels) else 0
    if names is not None:
        if k > len(names):
            raise ValueError(f"labels go up to {k - 1} but the dataset names {len(names)} classes")
        return len(names), [str(c) for c in names]
    if k < 2:
        raise ValueError(f"a probe needs at least 2 classes; the data has {k}")
    return k, None


def train_probe(
    backbone: TimmViT,
    train: DatasetAdapter,
    val: DatasetAdapter | None = None,
    config: ProbeConfig | None = None,
) -> tuple[nn.Linear, dict[str, Any]]:
    """Fit a linear probe on ``backbone``'s frozen pooled features.

    Args:
        backbone: the feature model (``TimmViT``, usually built with ``require_head=False``).
        train: labelled images (``Sample.image`` at the backbone's input size).
        val: held-out images; ``None`` splits ``config.val_fraction`` off ``train`` (seeded).
        config: hyperparameters.

    Returns:
        ``(linear, info)``: the probe (``[D] -> [K]``, on CPU, float32) and a JSON-able record of the data
        sizes, classes, accuracies and final loss.
    """
    config = config or ProbeConfig()
    if train.modality != "image":
        raise TypeError(f"linear probes need an image dataset; {train.name} is {train.modality}")
    device = resolve_device(config.device)
    original = backbone.device
    backbone.to(device=device)
    try:
        n = len(train) if config.limit is None else min(len(train), int(config.limit))
        if val is None:
            train_idx, val_idx = _split(n, config) if config.val_fraction > 0 else (list(range(n)), [])
            val_set: DatasetAdapter = train
        else:
            train_idx, val_set = list(range(n)), val
            m = len(val) if config.limit is None else min(len(val), int(config.limit))
            val_idx = list(range(m))
        x_train, y_train = extract_features(backbone, train, train_idx, config, "train features")
        x_val, y_val = (
            extract_features(backbone, val_set, val_idx, config, "val features")
            if val_idx
            else (x_train[:0], y_train[:0])
        )
    finally:
        backbone.to(device=original)
    num_classes, names = _num_classes([train], torch.cat([y_train, y_val]))
    linear, loss = fit_linear(x_train, y_train, num_classes, config)
    info = {
        "num_classes": num_classes,
        "class_names": names,
        "feature_dim": int(x_train.shape[1]),
        "counts": {"train": len(train_idx), "val": len(val_idx)},
        "accuracy": {"train": _accuracy(linear, x_train, y_train), "val": _accuracy(linear, x_val, y_val)},
        "final_loss": loss,
        "chance": 1.0 / num_classes,
    }
    log.info("probe: train accuracy %.4f, val accuracy %s", info["accuracy"]["train"], info["accuracy"]["val"])
    return linear, info
