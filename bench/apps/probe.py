"""``xaibench-train-probe``: train a linear probe on a feature backbone (:mod:`xaibench.models.probe`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from xaibench.core.io import library_versions
from xaibench.core.types import DatasetAdapter
from xaibench.models.probe import (
    WEIGHTS_FILE,
    ProbeConfig,
    train_probe,
)
from xaibench.models.probe_files import (
    _instantiate_backbone,
    save_probe,
)

log = logging.getLogger(__name__)


# -- command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-train-probe",
        description=(
            "Fit a linear classifier on the frozen pooled features of a feature backbone (DINOv2, MAE, CLIP "
            "towers, ...) and save it as probe.safetensors + probe.json, for `xaibench model=probe "
            "model.probe=<out>/probe.json`."
        ),
    )
    parser.add_argument("--backbone", required=True, help="model config name (conf/model), e.g. dinov2_vits14")
    parser.add_argument(
        "--data",
        required=True,
        help="training images: a folder of class folders (root/<class>/<image>) or a dataset config name "
        "(conf/dataset) with labelled images, e.g. synthetic_shapes",
    )
    parser.add_argument("--val-data", default=None, help="held-out images (same forms as --data); default: split")
    parser.add_argument("--out", required=True, type=Path, help="output folder for probe.json + probe.safetensors")
    defaults = ProbeConfig()
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--max-iter", type=int, default=defaults.max_iter, help="L-BFGS iterations")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples only")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides of the backbone (model.*) and dataset (dataset.*) configs, e.g. "
        "model.checkpoint_path=/w.safetensors dataset.size=500",
    )
    return parser


def _dataset(spec: str, image_size: tuple[int, int], overrides: Sequence[str]) -> tuple[DatasetAdapter, Any]:
    """An image dataset from a folder path or a dataset config name, at the backbone's input size."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from xaibench.core.config import compose_config, config_names

    path = Path(spec).expanduser()
    size: Any = image_size[0] if image_size[0] == image_size[1] else list(image_size)
    if path.is_dir():
        from xaibench.datasets.image_folder import ImageFolder

        return ImageFolder(path, image_size=size), {"image_folder": str(path.resolve()), "image_size": size}
    if spec not in config_names("dataset"):
        raise ValueError(
            f"--data {spec!r} is neither a folder nor a dataset config; dataset configs: "
            f"{', '.join(config_names('dataset'))}"
        )
    dataset_overrides = [o for o in overrides if o.lstrip("+~").startswith("dataset.")]
    cfg = compose_config([f"dataset={spec}", *dataset_overrides])
    with open_dict(cfg):
        if "image_size" in cfg.dataset and not any(o.lstrip("+~").startswith("dataset.image_size") for o in overrides):
            cfg.dataset.image_size = size
    return instantiate(cfg.dataset), {"config_name": spec, "config": OmegaConf.to_container(cfg.dataset, resolve=True)}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``xaibench-train-probe``; returns the exit status (0 on success)."""
    from omegaconf import OmegaConf

    from xaibench.core.config import compose_config

    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    bad = [o for o in args.overrides if not o.lstrip("+~").startswith(("model.", "dataset."))]
    try:
        if bad:
            raise ValueError(f"overrides must start with model. or dataset.; got {bad}")
        config = ProbeConfig(
            max_iter=args.max_iter,
            weight_decay=args.weight_decay,
            val_fraction=args.val_fraction,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            seed=args.seed,
            device=args.device,
            limit=args.limit,
        )
        model_overrides = [o for o in args.overrides if o.lstrip("+~").startswith("model.")]
        cfg = compose_config([f"model={args.backbone}", *model_overrides])
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        torch.manual_seed(args.seed)
        backbone = _instantiate_backbone(model_cfg)
        image_size = backbone.image_size
        problem = backbone.cls_readout_problem()
        if problem:
            log.warning(
                "%s; the probe will be trained on those pooled features, and the methods that read the CLS "
                "attention row (raw_attention, rollout, grad_rollout, attn_gradcam) will refuse the probed model",
                problem,
            )
        train, train_spec = _dataset(args.data, image_size, args.overrides)
        val, val_spec = _dataset(args.val_data, image_size, args.overrides) if args.val_data else (None, None)
        linear, info = train_probe(backbone, train, val, config)
        import timm

        record = {
            "num_classes": info["num_classes"],
            "feature_dim": info["feature_dim"],
            "class_names": info["class_names"],
            "backbone": {
                "config_name": args.backbone,
                "overrides": model_overrides,
                "config": model_cfg,
                "name": backbone.name,
                "arch": type(backbone.model).__name__,
                "weights_hash": backbone.weights_hash(),
                "global_pool": getattr(backbone.model, "global_pool", None),
                "num_prefix_tokens": backbone.num_prefix_tokens,
                "image_size": list(image_size),
            },
            "features": "vit.forward_head(vit.forward_features(x), pre_logits=True)",
            "training": {
                **asdict(config),
                "method": "multinomial logistic regression, L-BFGS (strong Wolfe), standardised features",
                "data": train_spec,
                "val_data": val_spec,
            },
            "counts": info["counts"],
            "accuracy": info["accuracy"],
            "final_loss": info["final_loss"],
            "versions": {
                "xaibench": library_versions(("xaibench",))["xaibench"],
                "timm": timm.__version__,
                "torch": torch.__version__,
            },
        }
        path = save_probe(args.out, linear, record)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"xaibench-train-probe: error: {exc}", file=sys.stderr)
        return 2
    acc = info["accuracy"]
    val_text = "n/a" if acc["val"] is None else f"{acc['val']:.4f}"
    print(
        f"probe for {backbone.name}: {info['num_classes']} classes, {info['feature_dim']}-d features, "
        f"train accuracy {acc['train']:.4f} ({info['counts']['train']} images), val accuracy {val_text} "
        f"({info['counts']['val']} images); chance {info['chance']:.4f}"
    )
    print(f"wrote {path} and {path.parent / WEIGHTS_FILE}")
    print(f"use it: xaibench model=probe model.probe={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
