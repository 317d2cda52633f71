"""The evaluation loop: dataset -> model -> attribution method -> metric runners -> run records.

No Hydra here: everything arrives as instantiated objects, so the loop is usable from Python, tests and
the Hydra CLI alike. It checks that the pieces fit before any compute (:mod:`xaibench.core.checks`), runs
batched with tqdm progress, and writes the job's records (:mod:`xaibench.core.records`) into ``out_dir``.
Files are written to a temporary name and renamed, so a killed run never leaves a half-written record
under the final name.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xaibench.core import distributed, records, targets
from xaibench.core.checks import PRECISIONS, IdGuard, check_compatible, check_finite, check_unique_ids
from xaibench.core.config import LoopConfig
from xaibench.core.fingerprint import files_fingerprint
from xaibench.core.io import library_versions, resolve_device, seed_everything
from xaibench.core.loading import CollateSamples, GuardedSamples, collate_samples, failure_reason, skipped_row
from xaibench.core.precision import spot_check
from xaibench.core.types import (
    Attribution,
    AttributionMethod,
    Batch,
    DatasetAdapter,
    MetricRunner,
    ModelAdapter,
    merge_states,
)

__all__ = ["JobWriteError", "LoopConfig", "run_job", "describe"]


class JobWriteError(OSError):
    """Writing the job's maps or records failed (full or read-only disk): the job stops, whatever
    ``on_error`` says, and the message names the folder."""


log = logging.getLogger(__name__)


def run_job(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod,
    metrics: Mapping[str, MetricRunner],
    out_dir: str | Path,
    config: LoopConfig | None = None,
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
    config = config if config is not None else LoopConfig()
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
    check_unique_ids(dataset, n)
    started = time.perf_counter()
    spot = None
    if world.is_main:
        spot = spot_check(
            dataset,
            model,
            method,
            samples=min(config.spot_check, n),
            target_mode=config.target,
            threshold=config.spot_check_threshold,
            precision=config.precision,
            device=device,
            dtype=dtype,
        )
    cache = _open_cache(config, dataset, model, method, identity)
    try:
        rows, examples, stats = _evaluate(dataset, model, method, metrics, config, world.shard(n), device, cache)
    except BaseException:
        if cache is not None:
            try:
                cache.close()
            except OSError as exc:  # the job's own error is the one to report
                log.error("could not write the attribution cache: %s", exc)
        raise
    if cache is not None:
        try:
            cache.close()
        except OSError as exc:
            raise JobWriteError(exc.errno, f"attribution cache: {exc.strerror or exc}") from None

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
            **targets.job_fields(evaluated, model),
            "weights_sha256_16": model.weights_hash(),
            "seed": config.seed,
            "float64_spot_check": spot,
            "versions": library_versions(),
            **dict(meta or {}),
        },
    }
    stats = {k: sum(part[k] for part in distributed.gather(stats, world)) for k in stats}
    if not world.is_main:
        return record
    timing = {"seconds": time.perf_counter() - started, "world_size": world.size, **stats}
    names = dataset.class_names() if examples else None
    arrays = _example_arrays(examples[: config.save_examples], method.name, names) if examples else None
    records.write_job(out, record, rows, timing, arrays)
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
        GuardedSamples(dataset, indices, skip, config.target),
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=CollateSamples(model),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    rows: list[dict[str, Any]] = []
    ids_seen = IdGuard()  # datasets whose ids are only known once read
    examples: list[dict[str, Any]] = []
    stats = {"attribution_seconds": 0.0, "attributions_computed": 0, "attributions_cached": 0}
    allow_nan = method.allows_nan_maps

    def process(items: list[tuple[int, Any]], collated: Batch | None = None) -> list[dict[str, Any]]:
        """Attribute, check and score one batch (``collated``: already collated by the loader); raises on
        any failure (metrics restored first)."""
        batch = model.batch_to(collated if collated is not None else collate_samples(model, [s for _, s in items]))
        batch_index = [i for i, _ in items]
        ids_seen.check(batch_index, batch.ids, dataset.name)
        target = targets.target_classes(batch, config.target)
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
        check_finite(batch.ids, attribution, allow_nan)
        if computed and cache is not None:
            try:
                cache.put(batch.ids, attribution)
            except OSError as exc:  # a full or read-only disk stops the job: it is no sample's fault
                raise JobWriteError(exc.errno, f"attribution cache: {exc.strerror or exc}") from None
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
        for row, extra in zip(batch_rows, targets.row_columns(batch, attribution.logits, model), strict=True):
            row.update(extra)  # target=each: sample and class; multi-label models: whether the class is detected
        truncated = batch.extras.get("truncated")
        if truncated is not None:  # text cut at the model's maximum length: its tail gets no score
            for row, cut in zip(batch_rows, truncated.tolist(), strict=True):
                row["truncated"] = bool(cut)
        snapshot = {name: metric.state() for name, metric in metrics.items()} if skip else None
        try:
            for name, metric in metrics.items():
                extra_args = {"method": method} if metric.needs_method else {}  # sanity recomputes maps
                metric_rows = metric.update(batch, attribution, model, **extra_args)
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
        rows.extend(skipped_row(i, sid, reason) for i, sid, reason in failed)
        if not items:
            continue
        try:
            rows.extend(process(items, collated))
        except Exception as exc:
            if not skip or isinstance(exc, (KeyboardInterrupt, JobWriteError)):
                raise
            for index, group in groupby(items, key=lambda item: item[0]):  # isolate the failing samples
                group = list(group)  # (the explained samples of one dataset sample stay together)
                try:
                    rows.extend(process(group))
                except Exception as single:
                    log.warning("skipped sample %s: %s", group[0][1].id, failure_reason(single))
                    rows.append(skipped_row(index, group[0][1], failure_reason(single)))
    return rows, examples, stats


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
    from xaibench.core.cache import AttributionCache

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
    # a file changed in place (an edited document, an overwritten checkpoint) never serves old maps
    key["files"] = ident.get("files") or files_fingerprint(key["dataset"], key["model_config"])
    path = AttributionCache.path_for(Path(config.cache_dir).expanduser(), key)
    try:
        return AttributionCache(path, key, chunk_size=config.cache_chunk_size, flush_every_s=config.cache_flush_seconds)
    except OSError as exc:  # read-only or full file system, permissions
        raise JobWriteError(
            exc.errno,
            f"the attribution cache folder {path} is not writable ({exc.strerror or exc}); set cache_dir to a "
            "writable folder, or cache_dir=null to run without a cache",
        ) from None


def _examples(batch: Any, attribution: Any, count: int) -> list[dict[str, Any]]:
    from xaibench.core.heatmaps import pixel_heatmaps

    heat = pixel_heatmaps(attribution, tuple(batch.images.shape[-2:])).detach().float().cpu()
    out = []
    for i in range(min(count, len(batch))):
        item = {"id": batch.ids[i], "image": batch.images[i].numpy(), "heatmap": heat[i].numpy()}
        item["target"] = int(attribution.targets[i])
        if batch.masks is not None:
            item["mask"] = batch.masks[i].numpy()
        out.append(item)
    return out


def _example_arrays(examples: list[dict[str, Any]], method: str, names: Any = None) -> dict[str, np.ndarray]:
    arrays = {
        "ids": np.array([e["id"] for e in examples]),
        "images": (np.stack([e["image"] for e in examples]) * 255).round().astype(np.uint8),
        "heatmaps": np.stack([e["heatmap"] for e in examples]).astype(np.float16),
        "method": np.array(method),
        "targets": np.array([e["target"] for e in examples], dtype=np.int64),  # the class each map explains
    }
    if all("mask" in e for e in examples):
        arrays["masks"] = np.stack([e["mask"] for e in examples]).astype(np.uint8)
    if names:  # the explained classes' names, for the figures
        arrays["target_names"] = np.array([str(names[t]) if 0 <= t < len(names) else "" for t in arrays["targets"]])
    return arrays
