"""``make bench`` rows for the metric runners: seconds per image against a forward, and what fused attention saves.

For each metric runner (its ``conf/metric`` defaults unless changed here) on a model shape (``vit_base``:
ViT-B/16 at 224, random weights) and one batch, it times ``runner.update`` on a fixed map and records

* ``s/image`` and ``× forward``: the runner's seconds per image as a multiple of one eager forward of the
  same batch (the attribution path's forward);
* ``forwards``: the forwards per image the metric needs by definition (perturbation test ``1 + 2·9``,
  insertion/deletion ``2n + 1`` for ``n`` steps, ROAD ``2·len(fractions) + 1``; localisation 0);
* ``overhead %``: the time beyond those forwards (imputation solves, sorting, upsampling, softmax, ...) as a
  share of them, the forwards timed fused at the runner's forward batch (``batch_size``), as it runs them;
* ``eager s/image`` and ``fused saving %``: the runner with ``fused_attention=false``, and what the fused
  kernels save.

Insertion/deletion is timed with ``--id-step-pixels`` (default 3136: 16 steps at 224², 33 forwards) rather
than RISE's 224 (449 forwards): its cost is linear in the steps, so the overhead share carries over. Written
to ``results/bench/metrics_<device>.md/.csv``.

    python -m xaibench.apps.bench --models vit_base --metric-batch 16
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate

from xaibench.core.config import compose_config
from xaibench.core.io import device_label
from xaibench.core.types import Attribution, Batch, ImageModelAdapter, MetricRunner
from xaibench.report.summary import to_markdown

log = logging.getLogger(__name__)

METRICS = ("perturbation", "insertion_deletion", "road", "pointing_game", "relevance_mass", "relevance_rank")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options for these rows."""
    parser.add_argument("--metrics", default=",".join(METRICS), help="metric runners to time ('' to skip)")
    parser.add_argument("--metric-model", default="vit_base", help="model shape for the metric rows")
    parser.add_argument("--metric-batch", type=int, default=16, help="images in the timed batch")
    parser.add_argument("--id-step-pixels", type=int, default=3136, help="insertion/deletion step (pixels at 224²)")


def forwards_needed(runner: MetricRunner, height: int, width: int) -> int:
    """Forwards per image a runner needs by its definition (0: it reads no model)."""
    name = runner.name
    if name == "perturbation":
        return 1 + len(runner.directions) * len(runner.steps)
    if name == "insertion_deletion":
        return 2 * math.ceil(height * width / runner.step_size(height, width)) + 1
    if name == "road":
        return 1 + len(runner.orders) * len(runner.fractions)
    return 0


def _runner(name: str, changes: dict[str, Any]) -> MetricRunner:
    cfg = compose_config([f"metric={name}"])
    node = cfg.metrics[name]
    for key, value in changes.items():
        node[key] = value
    return instantiate(node)


def clock(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes, waiting for the GPU's queued work before and after on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def chunked_forward(model: Any, inputs: torch.Tensor, chunk: int, device: torch.device) -> float:
    """Seconds per image of a fused ``inference_mode`` forward of ``chunk`` inputs (the batch repeated)."""
    x = inputs.repeat((chunk + len(inputs) - 1) // len(inputs), 1, 1, 1)[:chunk]

    def once() -> None:
        with torch.inference_mode(), model.fused_attention():
            model.logits(x)

    once()
    return statistics.median(clock(once, device) for _ in range(3)) / chunk


def _time_runner(runner: MetricRunner, batch: Batch, att: Attribution, model: Any, device: torch.device) -> float:
    """Seconds per image of ``runner.update`` on the batch, after a warm-up on its first image."""
    one = Batch(
        ids=batch.ids[:1],
        inputs=batch.inputs[:1],
        labels=batch.labels[:1],
        images=batch.images[:1],
        masks=batch.masks[:1],
    )
    runner.update(one, Attribution(att.maps[:1], att.targets[:1], att.logits[:1]), model)
    runner.reset()
    return clock(lambda: runner.update(batch, att, model), device) / len(batch)


def run(
    model_name: str, batch_size: int, device: torch.device, metrics: list[str], id_step_pixels: int
) -> pd.DataFrame:
    """One row per metric runner (see the module docstring)."""
    from xaibench.apps.bench import build_model

    model, _ = build_model(model_name, 0)
    if not isinstance(model, ImageModelAdapter):
        raise ValueError(f"metric rows need an image model; {model_name} is not one")
    model.to(device=device)
    g = torch.Generator().manual_seed(0)
    height, width = model.image_size
    images = torch.rand(batch_size, 3, height, width, generator=g)
    masks = torch.zeros(batch_size, height, width, dtype=torch.long)
    masks[:, height // 4 : height // 2, width // 4 : 3 * width // 4] = 1
    batch = Batch(
        ids=tuple(f"b{i}" for i in range(batch_size)),
        inputs=model.normalize(images).to(device),
        labels=torch.zeros(batch_size, dtype=torch.long, device=device),
        images=images,
        masks=masks,
    )
    gh, gw = model.grid_size
    with torch.inference_mode():
        logits = model.logits(batch.inputs)
    att = Attribution(maps=torch.rand(batch_size, gh, gw, generator=g), targets=logits.argmax(1), logits=logits)

    def forward(fused: bool) -> float:
        def once() -> None:
            with torch.inference_mode():
                if fused:
                    with model.fused_attention():
                        model.logits(batch.inputs)
                else:
                    model.logits(batch.inputs)

        once()  # warm-up
        return statistics.median(clock(once, device) for _ in range(3)) / batch_size

    eager_fwd, fused_fwd = forward(False), forward(True)
    rows = []
    for name in metrics:
        changes = {"step_pixels": id_step_pixels} if name == "insertion_deletion" else {}
        runner = _runner(name, changes)
        needed = forwards_needed(runner, height, width)
        seconds = _time_runner(runner, batch, att, model, device)
        row: dict[str, Any] = {
            "metric": name,
            "model": model_name,
            "device": device_label(device),
            "batch": batch_size,
            "s/image": seconds,
            "× forward": seconds / eager_fwd,
            "forward s/image": eager_fwd,  # this row's eager forward (rows of a merged table keep their own)
            "forwards": needed,
        }
        if needed:  # the forwards timed fused at the runner's own forward batch (it streams in chunks of it)
            chunk = min(runner.batch_size, needed * batch_size)
            per_forward = chunked_forward(model, batch.inputs, chunk, device)
            row["overhead %"] = 100 * (seconds - needed * per_forward) / (needed * per_forward)
            eager_s = _time_runner(_runner(name, {**changes, "fused_attention": False}), batch, att, model, device)
            row["eager s/image"] = eager_s
            row["fused saving %"] = 100 * (eager_s - seconds) / eager_s
        rows.append(row)
        log.info("metric %s: %.3f s/image", name, seconds)
    frame = pd.DataFrame(rows)
    frame.attrs["forward"] = {"eager s/image": eager_fwd, "fused s/image": fused_fwd}
    return frame


def merge_rows(frame: pd.DataFrame, previous: Path, keys: list[str]) -> pd.DataFrame:
    """The rows of the csv ``previous`` (if it exists) that ``frame`` does not re-time (no row of ``frame``
    has the same ``keys``), then ``frame``: a run of a few measurements updates a committed table."""
    if not previous.is_file():
        return frame
    old = pd.read_csv(previous)
    now = set(map(tuple, frame[keys].astype(str).values.tolist())) if len(frame) else set()
    keep = old[[tuple(r) not in now for r in old[keys].astype(str).values.tolist()]]
    return pd.concat([keep, frame], ignore_index=True)


def write(frame: pd.DataFrame, out_dir: Path, device: torch.device, merge: bool = False) -> Path:
    """``metrics_<device>.csv`` and ``.md`` (with this run's forward times) under ``out_dir``; ``merge``
    keeps the rows of an existing csv that this run does not re-time (same metric, model and batch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label = device_label(device)
    if merge:
        attrs = frame.attrs
        frame = merge_rows(frame, out_dir / f"metrics_{label}.csv", ["metric", "model", "batch"])
        frame.attrs = attrs
    frame.to_csv(out_dir / f"metrics_{label}.csv", index=False)
    fwd = frame.attrs.get("forward", {})
    head = (
        f"Metric runners on {label}, one batch; forward (per image): eager {fwd.get('eager s/image', float('nan')):.4f} s, "
        f"fused {fwd.get('fused s/image', float('nan')):.4f} s.\n\n"
    )
    path = out_dir / f"metrics_{label}.md"
    path.write_text(head + to_markdown(frame) + "\n")
    return path


def main_rows(args: argparse.Namespace, devices: list[torch.device]) -> None:
    """Run and write the rows for ``args`` (from :func:`add_arguments`) on each device."""
    names = [m for m in args.metrics.split(",") if m]
    if not names:
        return
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise SystemExit(f"unknown --metrics {unknown}; supported: {', '.join(METRICS)}")
    for device in devices:
        frame = run(args.metric_model, args.metric_batch, device, names, args.id_step_pixels)
        print(write(frame, Path(args.out), device, merge=getattr(args, "merge", False)).read_text())
