"""How far rounding moves each method's maps: float32 (and bf16/fp16 on CUDA) against float64.

The relevance rules divide by sums of products that can nearly cancel, so float32 rounding is amplified
(``../shared/golden/README.md``: on random weights the reference's own float32 and float64 full-LRP maps
differ by up to 99 %). The statistic is the run's float64 spot check: per sample,
``max |map_low - map_float64| / max |map_float64|``. ``make bench`` reports it for every method on the
demo's trained models and on a random-weight ViT-B/16 (``results/bench/divergence_<device>.md``)::

    python -m xaibench.apps.divergence --models shapes_vit,text_bert,vit_base --samples 8
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate

from xaibench.core.config import LoopConfig, method_configs
from xaibench.core.io import device_label, parse_devices
from xaibench.core.precision import precision_divergence
from xaibench.core.types import Batch, ModelAdapter

log = logging.getLogger("xaibench.apps.divergence")

#: model name -> the Hydra overrides that build it and the dataset its samples come from
SETUPS = {
    "shapes_vit": ["model=shapes_vit", "dataset=synthetic_shapes"],
    "text_bert": ["model=text_bert", "dataset=synthetic_text"],
    "vit_base": [
        "model=vit_base",
        "model.checkpoint_path=null",  # random weights (init_seed), no download
        "+model.init_seed=0",
        "dataset=synthetic_shapes",
        "dataset.image_size=224",
    ],
    "vit_micro": ["model=vit_micro", "dataset=synthetic_shapes"],  # a seconds-fast stand-in for tests
}

#: a method whose maps move by more than this share of their scale is dominated by rounding (the loop's default)
THRESHOLD = LoopConfig.spot_check_threshold


def build(name: str, samples: int) -> tuple[ModelAdapter, Batch]:
    from xaibench.core.config import compose_config

    if name not in SETUPS:
        raise ValueError(f"unknown divergence model {name!r}; supported: {', '.join(SETUPS)}")
    cfg = compose_config(SETUPS[name])
    dataset, model = instantiate(cfg.dataset), instantiate(cfg.model)
    if len(dataset) < samples:
        raise ValueError(f"{name}: the dataset has {len(dataset)} samples, fewer than --samples={samples}")
    return model, model.collate([dataset[i] for i in range(samples)])


def run(models: list[str], samples: int, device: torch.device, methods: list[str] | None) -> pd.DataFrame:
    low_dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [])
    rows = []
    configs = method_configs(methods)
    for name in models:
        model, batch = build(name, samples)
        model.to(device=device, dtype=torch.float32)
        for method_name, cfg in configs.items():
            method = instantiate(cfg)
            if model.modality not in method.modalities or method_name == "random":  # random: no rounding to see
                continue
            for low in low_dtypes:
                d = precision_divergence(model, method, batch, None, low)
                finite = d[torch.isfinite(d)]
                row = {
                    "model": name,
                    "method": method_name,
                    "precision": str(low).removeprefix("torch."),
                    "samples": len(d),
                    "median_rel_divergence": float(finite.median()) if len(finite) else float("nan"),
                    "max_rel_divergence": float(finite.max()) if len(finite) else float("nan"),
                    "non_finite": int((~torch.isfinite(d)).sum()),
                }
                row["dominated_by_rounding"] = bool(row["max_rel_divergence"] > THRESHOLD)
                rows.append(row)
                log.info(
                    "%s %s %s vs float64: median %.2e, max %.2e",
                    name,
                    method_name,
                    row["precision"],
                    row["median_rel_divergence"],
                    row["max_rel_divergence"],
                )
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, out_dir: Path, device: torch.device, samples: int) -> Path:
    from xaibench.report.summary import to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"divergence_{device_label(device)}"
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    shown = frame.copy()
    for col in ("median_rel_divergence", "max_rel_divergence"):
        shown[col] = shown[col].map(lambda v: f"{v:.1e}")
    header = (
        f"Maps at lower precision vs float64, first {samples} samples per model, explaining the predicted class: "
        f"max |map - map_float64| / max |map_float64| per sample (median and max over samples); "
        f"'dominated_by_rounding' = max above {THRESHOLD:.0%} (run such methods with precision=float64). "
        f"torch {torch.__version__}, {device_label(device)}.\n\n"
    )
    stem.with_suffix(".md").write_text(header + to_markdown(shown) + "\n")
    return stem.with_suffix(".md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shapes_vit,text_bert,vit_base", help=f"comma list of {list(SETUPS)}")
    parser.add_argument("--samples", type=int, default=8, help="samples per model")
    parser.add_argument("--methods", default="", help="comma list of conf/method names (default: all)")
    parser.add_argument("--devices", default="cpu,cuda", help="devices to run on (cuda skipped if absent)")
    parser.add_argument("--out", default="results/bench", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    for device in parse_devices(args.devices):
        methods = [m for m in args.methods.split(",") if m] or None
        frame = run([m for m in args.models.split(",") if m], args.samples, device, methods)
        print(write(frame, Path(args.out), device, args.samples).read_text())


if __name__ == "__main__":
    main()
