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

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xaibench.models.timm_vit import TimmViT
from xaibench.types import DatasetAdapter

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


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use cpu or auto")
    return torch.device(device)


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
    device = _device(config.device)
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


# -- files ------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_probe(out_dir: str | Path, linear: nn.Linear, record: Mapping[str, Any]) -> Path:
    """Write ``probe.safetensors`` (``weight`` ``[K, D]``, ``bias`` ``[K]``) and ``probe.json`` into ``out_dir``.

    ``record`` holds everything else (backbone, training, accuracies); format name, version and the weights'
    file name and SHA-256 are added here. Both files are written to temporary names and renamed.

    Returns:
        the path of ``probe.json``.
    """
    from safetensors.torch import save_file

    from xaibench.loop import atomic_write_text

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
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(weights)},
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
    if _sha256(weights) != doc["weights"]["sha256"]:
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


# -- command line -----------------------------------------------------------------------------------
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xaibench")
    except PackageNotFoundError:
        return "unknown"


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

    from xaibench.compose import compose_config, config_names

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

    from xaibench.compose import compose_config

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
            "versions": {"xaibench": _version(), "timm": timm.__version__, "torch": torch.__version__},
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
