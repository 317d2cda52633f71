"""``make bench``: seconds per image of every attribution method against a plain forward pass.

For each model shape (``vit_base``: ViT-B/16 at 224; ``bert_base``: BERT-base), each method configured in
``conf/method/`` that supports the model's modality, and each batch size, it times the method and, in the
same rounds, an ``inference_mode`` forward of the same model and batch (``--repeats`` interleaved rounds
after one warm-up: forward, method, forward, method, ...), and records the medians, the median per-round
ratio and the peak memory. Interleaving keeps the ratio honest on a shared, noisy machine. Random weights: speed does not depend on them.
Results go to ``results/bench/<device>.csv`` and ``.md``.

    python -m xaibench.apps.bench --models vit_base --batch-sizes 1,16 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate

from xaibench.apps import bench_metrics
from xaibench.apps.bench_memory import memory_scaling
from xaibench.apps.bench_metrics import clock, merge_rows
from xaibench.core.config import method_configs
from xaibench.core.io import device_label, parse_devices
from xaibench.core.types import Batch, ModelAdapter
from xaibench.report.summary import to_markdown

log = logging.getLogger("xaibench.apps.bench")


def build_model(name: str, seq_len: int) -> tuple[ModelAdapter, Callable[[int], Batch]]:
    """A random-weight model of the given shape and a function making a batch of size B for it."""
    if name in ("vit_base", "vit_micro"):
        from xaibench.models.timm_vit import TimmViT

        if name == "vit_base":
            model = TimmViT(arch="vit_base_patch16_224", pretrained=False, init_seed=0, name=name)
        else:  # a seconds-fast stand-in for smoke tests
            kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 4}
            model = TimmViT(timm_kwargs=kwargs, init_seed=0, name=name)
        size = model.image_size

        def make(b: int) -> Batch:
            g = torch.Generator().manual_seed(b)
            x = torch.rand(b, 3, *size, generator=g) * 2 - 1
            return Batch(ids=tuple(f"s{i}" for i in range(b)), inputs=x, labels=torch.zeros(b, dtype=torch.long))

        return model, make
    if name == "bert_base":
        import tempfile

        from transformers import BertConfig, BertForSequenceClassification

        from xaibench.datasets.synthetic_text import write_vocab
        from xaibench.models.hf_bert import HFBert, bert_tokenizer_from_vocab

        torch.manual_seed(0)
        config = BertConfig(num_labels=2)  # bert-base-uncased shapes: 12 layers, hidden 768, 12 heads
        config._attn_implementation = "eager"
        with tempfile.TemporaryDirectory() as tmp:  # the tokenizer is unused: inputs are made as ids below
            tokenizer = bert_tokenizer_from_vocab(write_vocab(Path(tmp) / "vocab.txt"))
        model = HFBert(model=BertForSequenceClassification(config), tokenizer=tokenizer, name="bert_base")

        def make(b: int) -> Batch:
            g = torch.Generator().manual_seed(b)
            ids = torch.randint(1000, 20000, (b, seq_len), generator=g)
            ids[:, 0], ids[:, -1] = 101, 102
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            return Batch(ids=tuple(f"s{i}" for i in range(b)), inputs=inputs, labels=torch.zeros(b, dtype=torch.long))

        return model, make
    raise ValueError(f"unknown benchmark model {name!r}; supported: vit_base, vit_micro, bert_base")


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: reset the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, float | None]:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up, and the peak memory (MiB)."""
    fn()
    times = []
    _peak_reset()
    for _ in range(repeats):
        times.append(clock(fn, device))
    return statistics.median(times), _peak_mib(device)


def timed_pair(
    fn: Callable[[], Any], reference: Callable[[], Any], repeats: int, device: torch.device
) -> tuple[float, float, float, float | None]:
    """``fn`` against ``reference``, interleaved: each of ``repeats`` rounds (after one warm-up of both)
    times ``reference`` and then ``fn``, so both see the same machine load.

    Returns:
        median seconds of ``fn``, median seconds of ``reference``, median of the per-round ratios, and the
        peak memory (MiB) of ``fn``.
    """
    reference()
    fn()
    refs, secs, peaks = [], [], []
    for _ in range(repeats):
        refs.append(clock(reference, device))
        _peak_reset()
        secs.append(clock(fn, device))
        peaks.append(_peak_mib(device))
    known = [p for p in peaks if p is not None]
    ratio = statistics.median(s / r for s, r in zip(secs, refs, strict=True))
    return statistics.median(secs), statistics.median(refs), ratio, max(known) if known else None


def run(
    models: list[str],
    batch_sizes: list[int],
    repeats: int,
    device: torch.device,
    methods: list[str] | None,
    seq_len: int,
    method_set: dict[str, dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Time each method of ``methods`` (default: all) on each model and batch size (see the module doc);
    ``method_set`` maps a method name to config values that replace its YAML's (``{"integrated_gradients":
    {"n_steps": 8}}``)."""
    rows = []
    configs = method_configs(methods)
    for name, changes in (method_set or {}).items():
        if name not in configs:
            raise ValueError(f"--method-set names method {name!r}, which is not timed; timed: {sorted(configs)}")
        for key, value in changes.items():
            if key not in configs[name]:
                raise ValueError(
                    f"--method-set {name}.{key}: {name} has no option {key!r}; it has {sorted(configs[name])}"
                )
            configs[name][key] = value
    for model_name in models:
        model, make = build_model(model_name, seq_len)
        model.to(device=device, dtype=torch.float32)
        for b in batch_sizes:
            batch = model.batch_to(make(b))

            def forward(model: ModelAdapter = model, batch: Batch = batch) -> None:
                with torch.inference_mode():
                    model.logits(batch.inputs)

            alone, fwd_mem = timed(forward, 1, device)  # the forward's own peak memory (and a log line)
            log.info("%s b=%d forward %.3f s/img", model_name, b, alone / b)
            for name, cfg in configs.items():
                method = instantiate(cfg)
                if model.modality not in method.modalities:
                    continue
                try:
                    sec, fwd, ratio, mem = timed_pair(
                        lambda m=method, x=model, bt=batch: m(x, bt, None), forward, repeats, device
                    )
                except (NotImplementedError, TypeError, ValueError) as exc:
                    log.warning("%s on %s skipped: %s", name, model_name, exc)
                    continue
                rows.append(
                    {
                        "model": model_name,
                        "method": name,
                        "batch": b,
                        "device": device_label(device),
                        "s_per_image": sec / b,
                        "forward_s_per_image": fwd / b,
                        "ratio": ratio,
                        "passes": method.passes,  # n_steps / noise samples: the per-pass ratio is ratio / passes
                        "peak_mib": mem,
                        "forward_peak_mib": fwd_mem,
                        "threads": torch.get_num_threads(),
                    }
                )
                log.info("%s b=%d %s %.3f s/img (%.2fx forward)", model_name, b, name, sec / b, ratio)
    return pd.DataFrame(rows)


#: the performance issue's targets: method time / plain forward time at the large batch (CPU)
TARGET_RATIOS = {
    "raw_attention": 1.1,
    "rollout": 1.2,
    "attn_gradcam": 1.6,
    "partial_lrp": 1.6,
    "transformer_attribution": 5.0,
    "full_lrp": 6.0,
    "gae": 2.2,
    "attnlrp": 2.5,
    "cp_lrp": 2.5,
    "saliency": 2.5,
    "input_x_gradient": 2.5,
    "integrated_gradients": 2.5,  # per integration step (the total is n_steps times that)
    "smoothgrad": 2.5,  # per noise sample
}


def checks(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and method: the ratio at the largest batch against its target, and whether batching
    pays: per-image time at the largest batch over that at batch 1 (<= 1 on CPU, <= 0.25 on CUDA)."""
    rows = []
    for (model, method), group in frame.groupby(["model", "method"], sort=True):
        by_batch = group.set_index("batch")
        big, small = by_batch.index.max(), by_batch.index.min()
        ratio = float(by_batch.loc[big, "ratio"])
        passes = by_batch.loc[big, "passes"] if "passes" in by_batch else 1
        passes = 1 if pd.isna(passes) else int(passes)  # rows timed before the column existed: one pass
        target = TARGET_RATIOS.get(method)
        batching = float(by_batch.loc[big, "s_per_image"] / by_batch.loc[small, "s_per_image"])
        bound = 0.25 if str(by_batch["device"].iloc[0]).startswith("cuda") else 1.0
        rows.append(
            {
                "model": model,
                "method": method,
                f"ratio_b{big}": ratio,
                "passes": passes,
                f"ratio_per_pass_b{big}": ratio / passes,
                "target": target,
                "meets_target": None if target is None else ratio / passes <= target,
                f"per_image_b{big}_over_b{small}": batching if big != small else None,
                "batching_never_costs": (batching <= bound) if big != small else None,
            }
        )
    return pd.DataFrame(rows)


#: the columns that name one measurement (a row of ``<device>.csv``)
KEYS = ["model", "method", "batch"]


def parse_method_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["integrated_gradients.n_steps=8"]`` -> ``{"integrated_gradients": {"n_steps": 8}}`` (YAML values).

    Raises:
        ValueError: an item is not ``<method>.<option>=<value>``.
    """
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, option = key.partition(".")
        if not (sep and dot and method and option):
            raise ValueError(
                f"--method-set takes <method>.<option>=<value> (e.g. integrated_gradients.n_steps=8), got {item!r}"
            )
        out.setdefault(method, {})[option] = yaml.safe_load(value)
    return out


def merge_previous(frame: pd.DataFrame, out_dir: Path, device: torch.device) -> pd.DataFrame:
    """``frame`` plus the rows of the previous ``<device>.csv`` in ``out_dir`` that it does not re-time
    (same model, method and batch), so a run of a few methods updates the committed table."""
    path = (out_dir / device_label(device)).with_suffix(".csv")
    if not path.is_file():
        return frame
    return merge_rows(frame, path, KEYS).sort_values(KEYS, kind="stable", ignore_index=True)


def write(frame: pd.DataFrame, out_dir: Path, device: torch.device) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / device_label(device)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    shown = frame[["model", "method", "batch", "s_per_image", "forward_s_per_image", "ratio", "peak_mib"]]
    header = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {device_label(device)}; median of runs after a warm-up.\n\n"
    )
    checked = checks(frame)
    checked.to_csv(out_dir / f"{device_label(device)}_checks.csv", index=False)
    footer = (
        "\n\nTargets (method time / forward time at the largest batch, per pass for the multi-pass methods: "
        "integrated gradients per step, SmoothGrad per noise sample; the issues' CPU targets) and batching "
        "(per-image time at the largest batch / at batch 1):\n\n" + to_markdown(checked)
    )
    stem.with_suffix(".md").write_text(header + to_markdown(shown) + footer + "\n")
    return stem.with_suffix(".md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_base,bert_base", help="comma list: vit_base, bert_base")
    parser.add_argument("--batch-sizes", default="1,16", help="comma list of batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (after a warm-up)")
    parser.add_argument("--methods", default="", help="comma list of conf/method names (default: all)")
    parser.add_argument("--devices", default="cpu,cuda", help="devices to run on (cuda skipped if absent)")
    parser.add_argument("--seq-len", type=int, default=256, help="BERT sequence length")
    parser.add_argument(
        "--method-set",
        action="append",
        default=[],
        metavar="METHOD.OPTION=VALUE",
        help="replace a method's config value (repeatable), e.g. integrated_gradients.n_steps=8",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the existing <device>.csv that this run does not re-time (same model, method, batch)",
    )
    parser.add_argument("--out", default="results/bench", help="output folder")
    parser.add_argument(
        "--memory-sizes", default="200,2000", help="image counts for the memory-scaling check ('' to skip)"
    )
    parser.add_argument(
        "--divergence-models",
        default="shapes_vit,text_bert,vit_base",
        help="models for the float32 (bf16/fp16 on CUDA) vs float64 map divergence ('' to skip)",
    )
    parser.add_argument("--divergence-samples", type=int, default=8, help="samples per divergence model")
    bench_metrics.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    methods = [m for m in args.methods.split(",") if m] or None
    try:
        method_set = parse_method_set(args.method_set)
    except ValueError as exc:
        parser.error(str(exc))
    for device in parse_devices(args.devices):
        try:
            frame = run(
                [m for m in args.models.split(",") if m],
                [int(b) for b in args.batch_sizes.split(",")],
                args.repeats,
                device,
                methods,
                args.seq_len,
                method_set,
            )
        except ValueError as exc:
            parser.error(str(exc))
        if args.merge:
            frame = merge_previous(frame, Path(args.out), device)
        path = write(frame, Path(args.out), device)
        print(path.read_text())
        if args.divergence_models:
            from xaibench.apps import divergence

            models = [m for m in args.divergence_models.split(",") if m]
            found = divergence.run(models, args.divergence_samples, device, methods)
            print(divergence.write(found, Path(args.out), device, args.divergence_samples).read_text())
    bench_metrics.main_rows(args, parse_devices(args.devices))  # the metric runners' rows
    if args.memory_sizes:
        mem = memory_scaling(tuple(int(x) for x in args.memory_sizes.split(",")))
        path = Path(args.out) / "memory.md"
        path.write_text(
            "Peak RSS of a whole segmentation run (vit_micro, rollout, batch 50), fresh process each:\n\n"
            + to_markdown(mem)
            + "\n"
        )
        print(path.read_text())


if __name__ == "__main__":
    main()
