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
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xaibench import distributed
from xaibench.divergence import precision_divergence
from xaibench.types import (
    Attribution,
    AttributionMethod,
    Batch,
    DatasetAdapter,
    MetricRunner,
    ModelAdapter,
    merge_states,
)

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
        cache_dir: root of the attribution cache (``None``: no cache). Maps are stored per model, weights,
            method and its parameters, dataset, target mode and precision; a restarted job reuses every
            finished sample and a changed configuration never reuses old maps.
        cache_chunk_size: samples per cache chunk file (a kill loses at most the unwritten chunk).
        spot_check: recompute the maps of the first N samples with the model in float64 and compare them
            with the run's precision (0: off; skipped when the run is already float64). The relevance rules
            amplify rounding, so a float32 map can be dominated by it; the largest relative divergence is
            recorded in ``metrics.json`` and a warning is logged above ``spot_check_threshold``.
        spot_check_threshold: relative divergence (``max|m32 − m64| / max|m64|`` per sample) that warns.
        on_error: ``raise`` stops at the first failing sample; ``skip`` records it in ``scores.csv``
            (``skipped``, ``skip_reason``), counts it in ``metrics.json`` and goes on.
    """

    device: str = "auto"
    precision: str = "float32"
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    target: str = "predicted"
    num_workers: int = 0
    save_examples: int = 4
    cache_dir: str | None = None
    cache_chunk_size: int = 256
    on_error: str = "raise"
    spot_check: int = 0
    spot_check_threshold: float = 0.05


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
    if config.on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={config.on_error!r}; supported: raise, skip")
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
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one job and write ``scores.csv`` and ``metrics.json`` into ``out_dir``.

    Args:
        identity: what identifies the dataset, model and method for the attribution cache (the CLI passes
            their resolved configs); by default derived from the objects' public attributes.

    Returns:
        The content of ``metrics.json``: ``{"metrics": {runner: {...}}, "job": {...}}``.
    """
    check_compatible(dataset, model, method, metrics, config)
    world = distributed.current_world()
    out = Path(out_dir)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    dtype = PRECISIONS[config.precision]
    if dtype in (torch.bfloat16, torch.float16) and device.type != "cuda":
        raise ValueError(f"precision={config.precision} is supported on CUDA only; use float32 or float64 on CPU")
    for metric in metrics.values():
        metric.reset()
        if world.size > 1:
            metric.state()  # raises NotImplementedError before any compute if it cannot merge shards
    device = distributed.init(world, device)
    model.to(device=device, dtype=dtype)

    n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    started = time.perf_counter()
    spot = _spot_check(dataset, model, method, config, n, device, dtype) if world.is_main else None
    cache = _open_cache(config, dataset, model, method, identity)
    try:
        rows, examples, stats = _evaluate(dataset, model, method, metrics, config, world.shard(n), device, cache)
    finally:
        if cache is not None:
            cache.close()

    # merge the shards (a no-op in a single process): rows in dataset order, metric states added
    rows = sorted((r for part in distributed.gather(rows, world) for r in part), key=lambda r: r["_index"])
    examples = sorted((e for part in distributed.gather(examples, world) for e in part), key=lambda e: e["index"])
    if world.size > 1:
        merged = distributed.gather({name: m.state() for name, m in metrics.items()}, world)
        for name, metric in metrics.items():
            metric.load_state(merge_states([part[name] for part in merged]))
    for row in rows:
        del row["_index"]

    skipped = [r for r in rows if r.get("skipped")]
    evaluated = [r for r in rows if not r.get("skipped")]
    labels = [r["label"] for r in evaluated]
    hits = [r["predicted"] == r["label"] for r in evaluated if r["label"] >= 0]
    record = {
        "metrics": {name: metric.compute() for name, metric in metrics.items()},
        "job": {
            "dataset": dataset.name,
            "model": model.name,
            "method": method.name,
            "target": config.target,
            "precision": config.precision,
            "device": device.type,
            "n": len(evaluated),
            "n_available": len(dataset),
            "skipped": len(skipped),
            "skip_reasons": dict(Counter(r["skip_reason"] for r in skipped)),
            "partial": n < len(dataset),
            "truncated": sum(bool(r.get("truncated")) for r in evaluated),
            "top1_accuracy": (sum(hits) / len(hits)) if hits else None,
            "labelled": sum(lab >= 0 for lab in labels),
            "weights_sha256_16": model.weights_hash(),
            "seed": config.seed,
            "float64_spot_check": spot,
            "versions": _versions(),
            **dict(meta or {}),
        },
    }
    stats = {k: sum(part[k] for part in distributed.gather(stats, world)) for k in stats}
    if not world.is_main:
        return record
    out.mkdir(parents=True, exist_ok=True)
    timing = {"seconds": time.perf_counter() - started, "world_size": world.size, **stats}
    # timings live apart from the records so two identical runs give byte-identical records
    atomic_write_text(out / "timing.json", json.dumps(timing, indent=2))
    atomic_write_text(out / "scores.csv", rows_to_csv(rows))
    if examples:
        _save_examples(out / "examples.npz", examples[: config.save_examples], method.name)
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2, sort_keys=True, default=_json_default))
    log.info("wrote %s (%d samples)", out / "metrics.json", len(rows))
    return record


def _evaluate(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    metrics: Mapping[str, MetricRunner],
    config: LoopConfig,
    indices: range,
    device: torch.device,
    cache: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """Attribute (or read from ``cache``) and score the samples at ``indices``.

    Rows carry their dataset index as ``_index``; the stats count computed and cached attributions.
    """
    skip = config.on_error == "skip"
    loader = DataLoader(
        _Guarded(dataset, indices, skip),
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=_Collate(model),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    stats = {"attribution_seconds": 0.0, "attributions_computed": 0, "attributions_cached": 0}
    allow_nan = bool(getattr(method, "allows_nan_maps", False))

    def process(items: list[tuple[int, Any]], collated: Batch | None = None) -> list[dict[str, Any]]:
        """Attribute, check and score one batch (``collated``: already collated by the loader); raises on
        any failure (metrics restored first)."""
        batch = model.batch_to(collated if collated is not None else model.collate([s for _, s in items]))
        batch_index = [i for i, _ in items]
        target = batch.labels if config.target == "label" else None
        attribution = cache.get_batch(batch.ids) if cache is not None else None
        if attribution is not None:
            attribution = Attribution(
                maps=attribution.maps.to(device),
                targets=attribution.targets.to(device),
                logits=attribution.logits.to(device),
                level=attribution.level,
            )
            stats["attributions_cached"] += len(batch)
            computed = False
        else:
            t0 = time.perf_counter()
            attribution = method(model, batch, target)
            stats["attribution_seconds"] += time.perf_counter() - t0
            stats["attributions_computed"] += len(batch)
            computed = True
        _check_finite(batch.ids, attribution, allow_nan)
        if computed and cache is not None:
            cache.put(batch.ids, attribution)
        predicted = attribution.logits.argmax(dim=-1).cpu()
        batch_rows = [
            {"_index": i, "id": sid, "label": int(lab), "target": int(tgt), "predicted": int(pred)}
            for i, sid, lab, tgt, pred in zip(
                batch_index,
                batch.ids,
                batch.labels.cpu().tolist(),
                attribution.targets.cpu().tolist(),
                predicted.tolist(),
                strict=True,
            )
        ]
        truncated = batch.extras.get("truncated")
        if truncated is not None:  # text cut at the model's maximum length: its tail gets no score
            for row, cut in zip(batch_rows, truncated.tolist(), strict=True):
                row["truncated"] = bool(cut)
        snapshot = {name: metric.state() for name, metric in metrics.items()} if skip else None
        try:
            for name, metric in metrics.items():
                metric_rows = metric.update(batch, attribution, model)
                if len(metric_rows) != len(batch_rows):
                    raise RuntimeError(f"metric {name} returned {len(metric_rows)} rows for {len(batch_rows)} samples")
                for row, extra in zip(batch_rows, metric_rows, strict=True):
                    row.update({f"{name}/{k}": v for k, v in extra.items()})
        except Exception:
            if snapshot is not None:  # never half-count a batch that is retried sample by sample
                for name, metric in metrics.items():
                    metric.load_state(snapshot[name])
            raise
        if batch.images is not None and len(examples) < config.save_examples:
            found = _examples(batch, attribution, config.save_examples - len(examples))
            examples.extend({**e, "index": batch_index[j]} for j, e in enumerate(found))
        return batch_rows

    for items, failed, collated in tqdm(loader, desc=f"{method.name}", unit="batch", disable=None):
        rows.extend(_skipped_row(i, sid, reason) for i, sid, reason in failed)
        if not items:
            continue
        try:
            rows.extend(process(items, collated))
        except Exception as exc:
            if not skip or isinstance(exc, KeyboardInterrupt):
                raise
            for index, sample in items:  # isolate the failing samples; the others count as usual
                try:
                    rows.extend(process([(index, sample)]))
                except Exception as single:
                    log.warning("skipped sample %s: %s", sample.id, _reason(single))
                    rows.append(_skipped_row(index, sample, _reason(single)))
    return rows, examples, stats


class _Guarded(torch.utils.data.Dataset):
    """Reads ``dataset[indices[j]]``; with ``skip``, a sample that fails to load becomes a recorded skip."""

    def __init__(self, dataset: DatasetAdapter, indices: range, skip: bool) -> None:
        self.dataset, self.indices, self.skip = dataset, indices, skip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, Any, str | None]:
        index = self.indices[j]
        try:
            return index, self.dataset[index], None
        except Exception as exc:
            if not self.skip:
                raise
            try:
                sample_id = self.dataset.sample_id(index)
            except Exception:  # the id is a courtesy; the index always identifies the sample
                sample_id = None
            return index, sample_id, _reason(exc)


class _Collate:
    """The loader's collate: loaded samples ``(index, sample)``, failed ones ``(index, id or None, reason)``
    and the model's batch of the loaded ones, made in the loader's workers (so tokenising and stacking
    overlap compute) and pinned by the loader on CUDA; ``None`` if collating fails (the main process
    collates again and reports or skips the failure)."""

    def __init__(self, model: ModelAdapter) -> None:
        self.model = model

    def __call__(
        self, items: list[tuple[int, Any, str | None]]
    ) -> tuple[list[tuple[int, Any]], list[tuple[int, str | None, str]], Batch | None]:
        loaded = [(i, s) for i, s, e in items if e is None]
        failed = [(i, s, e) for i, s, e in items if e is not None]
        try:
            batch = self.model.collate([s for _, s in loaded]) if loaded else None
        except Exception:
            batch = None
        return loaded, failed, batch


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _skipped_row(index: int, sample: Any, reason: str) -> dict[str, Any]:
    """A skipped sample's row; ``sample`` is the sample, its id (it failed to load) or ``None``."""
    if isinstance(sample, str) or sample is None:
        return {"_index": index, "id": sample or f"index_{index}", "label": -1, "skipped": True, "skip_reason": reason}
    return {
        "_index": index,
        "id": sample.id,
        "label": int(sample.label),
        "skipped": True,
        "skip_reason": reason,
    }


class NonFiniteError(ValueError):
    """A map or the logits of a sample hold NaN or infinity."""


def _check_finite(ids: tuple[str, ...], attribution: Attribution, allow_nan_maps: bool) -> None:
    """Refuse non-finite logits, and non-finite maps unless the method documents them (e.g. the
    reference's NaN for a constant Grad-CAM map, ``constant_map=nan``)."""
    logits_ok = torch.isfinite(attribution.logits).flatten(1).all(dim=1)
    maps_ok = torch.isfinite(attribution.maps).flatten(1).all(dim=1)
    if allow_nan_maps:
        maps_ok = maps_ok | ~torch.isinf(attribution.maps).flatten(1).any(dim=1)
    bad = [
        (sid, "logits" if not lo else "map")
        for sid, lo, mo in zip(ids, logits_ok.tolist(), maps_ok.tolist(), strict=True)
        if not (lo and mo)
    ]
    if bad:
        raise NonFiniteError(
            "non-finite values (NaN or inf) in "
            + ", ".join(f"the {what} of {sid}" for sid, what in bad)
            + "; they are never averaged in (on_error=skip records and counts such samples)"
        )


def _versions() -> dict[str, str]:
    """Versions of the libraries that determine the numbers (recorded with every run)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("xaibench", "torch", "timm", "transformers", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _spot_check(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    config: LoopConfig,
    n: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any] | None:
    """Maps of the first samples at the run's precision vs float64: is the run dominated by rounding?"""
    k = min(config.spot_check, n)
    if k < 1 or dtype == torch.float64:
        return None
    try:
        samples = [dataset[i] for i in range(k)]
        batch = model.collate(samples)
    except Exception as exc:  # the run itself reports unreadable samples
        log.info("float64 spot check skipped: %s", _reason(exc))
        return None
    target = batch.labels.to(device) if config.target == "label" else None
    divergence = precision_divergence(model, method, batch, target, dtype)
    divergence = divergence[torch.isfinite(divergence)]
    worst = float(divergence.max()) if divergence.numel() else 0.0
    flagged = worst > config.spot_check_threshold
    if flagged:
        log.warning(
            "%s at %s differs from float64 by %.1f%% of the map's scale on the first %d samples: the maps are "
            "dominated by rounding; run with precision=float64",
            method.name,
            config.precision,
            100 * worst,
            k,
        )
    return {"samples": k, "max_rel_divergence": worst, "threshold": config.spot_check_threshold, "flagged": flagged}


def describe(obj: Any) -> dict[str, Any]:
    """A JSON-like identity of a dataset, model or method: its class and simple public attributes."""
    out: dict[str, Any] = {"_target_": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for key, value in sorted(vars(obj).items()):
        if key.startswith("_") or key in ("model",):
            continue
        if isinstance(value, (str, int, float, bool, type(None), Path)):
            out[key] = str(value) if isinstance(value, Path) else value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[key] = list(value)
        else:  # e.g. a rule preset: identify it by its name (or type), never silently drop it from the key
            out[key] = str(getattr(value, "name", type(value).__qualname__))
    return out


def _open_cache(
    config: LoopConfig,
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    identity: Mapping[str, Any] | None,
) -> Any:
    if config.cache_dir is None:
        return None
    from xaibench.cache import AttributionCache

    ident = dict(identity or {})
    key = {
        "model": model.name,
        "weights": model.weights_hash(),
        "model_config": ident.get("model", describe(model)),
        "method": {"name": method.name, **ident.get("method", describe(method))},
        "dataset": ident.get("dataset", describe(dataset)),
        "target": config.target,
        "precision": config.precision,
    }
    path = AttributionCache.path_for(Path(config.cache_dir).expanduser(), key)
    return AttributionCache(path, key, chunk_size=config.cache_chunk_size)


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
