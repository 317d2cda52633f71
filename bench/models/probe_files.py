"""Saving, reading and attaching linear probes (``probe.safetensors`` + ``probe.json``); :func:`load_probe`
is ``model=probe``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaibench.core.io import atomic_write_text, sha256_file
from xaibench.models.probe import (
    FORMAT,
    FORMAT_VERSION,
    JSON_FILE,
    WEIGHTS_FILE,
)
from xaibench.models.timm_vit import TimmViT

log = logging.getLogger(__name__)


# -- files ------------------------------------------------------------------------------------------
def save_probe(out_dir: str | Path, linear: nn.Linear, record: Mapping[str, Any]) -> Path:
    """Write ``probe.safetensors`` (``weight`` ``[K, D]``, ``bias`` ``[K]``) and ``probe.json`` into ``out_dir``.

    ``record`` holds everything else (backbone, training, accuracies); format name, version and the weights'
    file name and SHA-256 are added here. Both files are written to temporary names and renamed.

    Returns:
        the path of ``probe.json``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    tmp = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    tensors = {"weight": linear.weight.detach().float().cpu().contiguous(), "bias": linear.bias.detach().float().cpu()}
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    os.replace(tmp, weights)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(weights)},
        **dict(record),
    }
    path = out / JSON_FILE
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def read_probe(probe: str | Path) -> tuple[dict[str, Any], nn.Linear]:
    """Read ``probe.json`` (or a folder holding it) and its weights; checks format, version and SHA-256."""
    from safetensors.torch import load_file

    path = Path(probe).expanduser()
    if path.is_dir():
        path = path / JSON_FILE
    if not path.is_file():
        raise FileNotFoundError(f"probe {path} not found (expected the {JSON_FILE} xaibench-train-probe writes)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xaibench linear probe (format {FORMAT!r} expected)")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has probe format version {version!r}; this xaibench reads up to {FORMAT_VERSION} (upgrade it)"
        )
    weights = path.parent / doc["weights"]["file"]
    if not weights.is_file():
        raise FileNotFoundError(f"probe weights {weights} (named in {path}) not found")
    if sha256_file(weights) != doc["weights"]["sha256"]:
        raise ValueError(f"probe weights {weights} do not match the SHA-256 recorded in {path}")
    tensors = load_file(str(weights))
    if set(tensors) != {"weight", "bias"} or tensors["weight"].dim() != 2:
        raise ValueError(f"{weights} must hold 'weight' [K, D] and 'bias' [K]; got {sorted(tensors)}")
    k, d = tensors["weight"].shape
    linear = nn.Linear(d, k)
    with torch.no_grad():
        linear.weight.copy_(tensors["weight"])
        linear.bias.copy_(tensors["bias"])
    return doc, linear


def attach_probe(
    backbone: TimmViT, linear: nn.Linear, name: str | None = None, class_names: Sequence[str] | None = None
) -> TimmViT:
    """Set ``linear`` as the classifier of ``backbone``'s timm model and wrap it as a classifier adapter.

    ``reset_classifier(K)`` gives the model a fresh ``nn.Linear`` head (both heads for a distilled DeiT,
    whose output is their mean: the same linear map of the mean feature it was trained on), then the
    probe's weights are copied in. The backbone's other weights, pooling and normalisation are unchanged.

    Returns:
        a new ``TimmViT`` around the same (modified) timm model.
    """
    vit = backbone.model
    d = int(vit.embed_dim)
    if linear.in_features != d:
        raise ValueError(f"the probe takes {linear.in_features}-d features but {backbone.name} gives {d}-d features")
    param = next(vit.parameters())
    vit.reset_classifier(linear.out_features)
    heads = [vit.head] + ([vit.head_dist] if isinstance(getattr(vit, "head_dist", None), nn.Linear) else [])
    with torch.no_grad():
        for head in heads:
            head.to(device=param.device, dtype=param.dtype)
            head.weight.copy_(linear.weight)
            head.bias.copy_(linear.bias)
    return TimmViT(
        model=vit,
        name=name or f"{backbone.name}+probe",
        class_names=class_names,
        mean=backbone.mean.flatten().tolist(),
        std=backbone.std.flatten().tolist(),
    )


def _instantiate_backbone(config: Any) -> TimmViT:
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    target = str(cfg.get("_target_", ""))
    extra = {"require_head": False} if target.endswith("TimmViT") else {}
    from hydra.errors import InstantiationException

    try:
        backbone = instantiate(cfg, **extra)
    except InstantiationException as exc:  # report the user error (missing weights, bad option) itself
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise cause from None
        raise
    if not isinstance(backbone, TimmViT):
        raise TypeError(f"a probe backbone must be a timm ViT (TimmViT); {target} gave {type(backbone).__name__}")
    return backbone


def load_probe(probe: str, backbone: Mapping[str, Any] | None = None, check_backbone: bool = True) -> TimmViT:
    """The backbone a probe was trained on, with the probe as its classifier (``model=probe``).

    Args:
        probe: ``probe.json`` written by ``xaibench-train-probe`` (or its folder).
        backbone: overrides of the recorded backbone config (e.g. ``{"checkpoint_path": ...}`` when the
            weights moved).
        check_backbone: refuse a backbone whose weights hash differs from the recorded one (the probe only
            makes sense on the features it was fitted to).

    Raises:
        FileNotFoundError, ValueError: missing or corrupt probe files, a different backbone.
    """
    from omegaconf import OmegaConf

    doc, linear = read_probe(probe)
    record = doc["backbone"]
    cfg = OmegaConf.create(record["config"])
    if backbone:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(dict(backbone)))
    model = _instantiate_backbone(cfg)
    if check_backbone and record.get("weights_hash") and model.weights_hash() != record["weights_hash"]:
        raise ValueError(
            f"the backbone built for probe {probe} ({model.name}) has weights hash {model.weights_hash()}, but the "
            f"probe was trained on {record['weights_hash']}; point it at the right weights (model.backbone="
            "{checkpoint_path: ...}) or set model.check_backbone=false"
        )
    name = f"{record.get('name', model.name)}+probe-{doc['weights']['sha256'][:12]}"
    return attach_probe(model, linear, name=name, class_names=doc.get("class_names"))
