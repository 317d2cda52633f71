"""The evaluation loop: dataset -> model -> attribution method -> metric runners -> run records.

No Hydra here: everything arrives as instantiated objects, so the loop is usable from Python, tests and
the Hydra CLI alike. It checks that the pieces fit before any compute, runs batched with tqdm progress,
and writes the job's source of truth into ``out_dir``: ``scores.csv`` (one row per sample) and
``metrics.json`` (dataset-level numbers plus what produced them), and ``timing.json``. Files are written to a temporary
name and renamed, so a killed run never leaves a half-written record under the final name.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from xaibench.types import AttributionMethod, DatasetAdapter, MetricRunner, ModelAdapter

log = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "float64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class LoopConfig:
    """Options of one job.

    Attributes:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available).
        precision: model dtype for the attribution pass: float32, float64 (parity), bf16/fp16 (CUDA).
        batch_size: samples per batch.
        limit: evaluate only the first ``limit`` samples (``None``: all).
        seed: seeds Python, NumPy and torch before the run.
        target: explain the ``predicted`` class or the ground-truth ``label``.
        num_workers: DataLoader worker processes.
        save_examples: heatmaps of the first N images saved to ``examples.npz`` (for figures).
    """

    device: str = "auto"
    precision: str = "float32"
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    target: str = "predicted"
    num_workers: int = 0
    save_examples: int = 4


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device=cpu or device=auto")
    return dev


def check_compatible(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    metrics: Mapping[str, MetricRunner],
    config: LoopConfig,
) -> None:
    """Fail before any compute when the pieces do not fit, naming what is supported."""
    if config.target not in TARGETS:
        raise ValueError(f"target={config.target!r}; supported: {', '.join(TARGETS)}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision={config.precision!r}; supported: {', '.join(PRECISIONS)}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"limit must be >= 1 or null, got {config.limit}")
    if dataset.modality != model.modality:
        raise ValueError(
            f"dataset {dataset.name} is {dataset.modality} data but model {model.name} takes {model.modality}"
        )
    if dataset.modality not in method.modalities:
        raise ValueError(f"method {method.name} supports {sorted(method.modalities)} inputs, not {dataset.modality}")
    if config.target == "label" and "label" not in dataset.provides:
        raise ValueError(
            f"target=label needs ground-truth labels, but dataset {dataset.name} provides "
            f"{sorted(dataset.provides)}; use target=predicted"
        )
    if not metrics:
        raise ValueError("no metric configured; choose one, e.g. metric=segmentation")
    for name, metric in metrics.items():
        if dataset.modality not in metric.modalities:
            raise ValueError(
                f"metric {name} supports {sorted(metric.modalities)} data, not {dataset.modality} "
                f"(dataset {dataset.name})"
            )
        missing = set(metric.requires) - set(dataset.provides)
        if missing:
            raise ValueError(
                f"metric {name} needs {sorted(missing)} but dataset {dataset.name} provides {sorted(dataset.provides)}"
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


def run_job(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    metrics: Mapping[str, MetricRunner],
    out_dir: str | Path,
    config: LoopConfig = LoopConfig(),
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one job and write ``scores.csv`` and ``metrics.json`` into ``out_dir``.

    Returns:
        The content of ``metrics.json``: ``{"metrics": {runner: {...}}, "job": {...}}``.
    """
    check_compatible(dataset, model, method, metrics, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    dtype = PRECISIONS[config.precision]
    if dtype in (torch.bfloat16, torch.float16) and device.type != "cuda":
        raise ValueError(f"precision={config.precision} is supported on CUDA only; use float32 or float64 on CPU")
    model.to(device=device, dtype=dtype)
    for metric in metrics.values():
        metric.reset()

    n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    loader = DataLoader(
        Subset(dataset, range(n)),
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=model.collate,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    started = time.perf_counter()
    attribution_seconds = 0.0
    for batch in tqdm(loader, desc=f"{method.name}", unit="batch", disable=None):
        batch = model.batch_to(batch)
        target = batch.labels if config.target == "label" else None
        t0 = time.perf_counter()
        attribution = method(model, batch, target)
        attribution_seconds += time.perf_counter() - t0
        predicted = attribution.logits.argmax(dim=-1).cpu()
        batch_rows = [
            {"id": sid, "label": int(lab), "target": int(tgt), "predicted": int(pred)}
            for sid, lab, tgt, pred in zip(
                batch.ids,
                batch.labels.cpu().tolist(),
                attribution.targets.cpu().tolist(),
                predicted.tolist(),
                strict=True,
            )
        ]
        for name, metric in metrics.items():
            metric_rows = metric.update(batch, attribution, model)
            if len(metric_rows) != len(batch_rows):
                raise RuntimeError(f"metric {name} returned {len(metric_rows)} rows for {len(batch_rows)} samples")
            for row, extra in zip(batch_rows, metric_rows, strict=True):
                row.update({f"{name}/{k}": v for k, v in extra.items()})
        rows.extend(batch_rows)
        if batch.images is not None and len(examples) < config.save_examples:
            examples.extend(_examples(batch, attribution, config.save_examples - len(examples)))

    labels = [r["label"] for r in rows]
    hits = [r["predicted"] == r["label"] for r in rows if r["label"] >= 0]
    record = {
        "metrics": {name: metric.compute() for name, metric in metrics.items()},
        "job": {
            "dataset": dataset.name,
            "model": model.name,
            "method": method.name,
            "target": config.target,
            "precision": config.precision,
            "device": str(device),
            "n": len(rows),
            "n_available": len(dataset),
            "partial": n < len(dataset),
            "top1_accuracy": (sum(hits) / len(hits)) if hits else None,
            "labelled": sum(lab >= 0 for lab in labels),
            "weights_sha256_16": model.weights_hash(),
            "seed": config.seed,
            **dict(meta or {}),
        },
    }
    timing = {"seconds": time.perf_counter() - started, "attribution_seconds": attribution_seconds}
    # timings live apart from the records so two identical runs give byte-identical records
    atomic_write_text(out / "timing.json", json.dumps(timing, indent=2))
    atomic_write_text(out / "scores.csv", rows_to_csv(rows))
    if examples:
        _save_examples(out / "examples.npz", examples, method.name)
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2, sort_keys=True, default=_json_default))
    log.info("wrote %s (%d samples)", out / "metrics.json", len(rows))
    return record


def _examples(batch: Any, attribution: Any, count: int) -> list[dict[str, Any]]:
    from xaibench.metrics.heatmaps import pixel_heatmaps

    heat = pixel_heatmaps(attribution, tuple(batch.images.shape[-2:])).detach().float().cpu()
    out = []
    for i in range(min(count, len(batch))):
        item = {"id": batch.ids[i], "image": batch.images[i].numpy(), "heatmap": heat[i].numpy()}
        if batch.masks is not None:
            item["mask"] = batch.masks[i].numpy()
        out.append(item)
    return out


def _save_examples(path: Path, examples: list[dict[str, Any]], method: str) -> None:
    arrays = {
        "ids": np.array([e["id"] for e in examples]),
        "images": (np.stack([e["image"] for e in examples]) * 255).round().astype(np.uint8),
        "heatmaps": np.stack([e["heatmap"] for e in examples]).astype(np.float16),
        "method": np.array(method),
    }
    if all("mask" in e for e in examples):
        arrays["masks"] = np.stack([e["mask"] for e in examples]).astype(np.uint8)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
