"""The ``xaibench`` command: a thin Hydra entry point around :func:`xaibench.loop.run_job`.

``xaibench`` with no arguments runs the default benchmark (``-m experiment=demo``); otherwise the
arguments are Hydra overrides, e.g. ``xaibench dataset=synthetic_shapes method=rollout`` or
``xaibench -m method=raw_attention,rollout,attn_gradcam``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import xaibench.conf
from xaibench.distributed import current_world
from xaibench.loop import LoopConfig, atomic_write_text, run_job

log = logging.getLogger("xaibench")

CONF_DIR = str(Path(xaibench.conf.__file__).resolve().parent)
# the source checkout (conf/ sits at its root); used to find ../shared/golden next to it
ROOT_DIR = str(Path(CONF_DIR).parent)
if not OmegaConf.has_resolver("xaibench_root"):
    OmegaConf.register_new_resolver("xaibench_root", lambda: ROOT_DIR)
if not OmegaConf.has_resolver("xaibench_parallel_jobs"):
    OmegaConf.register_new_resolver("xaibench_parallel_jobs", lambda: _parallel_jobs())
if not OmegaConf.has_resolver("abspath"):
    OmegaConf.register_new_resolver("abspath", lambda p: os.path.abspath(os.path.expanduser(str(p))))


def _parallel_jobs() -> int:
    """One parallel job per visible GPU; without GPUs, one per two CPU cores."""
    import torch

    return torch.cuda.device_count() or max(1, (os.cpu_count() or 2) // 2)


def job_device(device: str) -> str:
    """``per_job``: sweep job k runs on ``cuda:(k mod #GPUs)`` (CPU without GPUs); others unchanged."""
    if device != "per_job":
        return device
    import torch

    count = torch.cuda.device_count()
    if not count:
        return "cpu"
    try:
        num = int(HydraConfig.get().job.num)
    except (ValueError, TypeError):
        num = 0
    return f"cuda:{num % count}"


#: errors that describe bad user input: reported as one line, not a traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError)


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def loop_config(cfg: DictConfig) -> LoopConfig:
    return LoopConfig(
        device=job_device(str(cfg.device)),
        precision=str(cfg.precision),
        batch_size=int(cfg.batch_size),
        limit=None if cfg.limit is None else int(cfg.limit),
        seed=int(cfg.seed),
        target=str(cfg.target),
        num_workers=int(cfg.num_workers),
        save_examples=int(cfg.save_examples),
        cache_dir=None if cfg.get("cache_dir") is None else str(cfg.cache_dir),
        cache_chunk_size=int(cfg.get("cache_chunk_size", 256)),
        on_error=str(cfg.get("on_error", "raise")),
        spot_check=int(cfg.get("spot_check", 0)),
        spot_check_threshold=float(cfg.get("spot_check_threshold", 0.05)),
    )


def run_from_config(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job into ``out_dir``, or reuse the records of a finished job with the same config."""
    from xaibench import records

    job_hash = records.config_hash(cfg)
    prior = None if cfg.get("force") else records.find_complete(cfg.paths.output_dir, job_hash)
    if prior is not None:
        return records.reuse(prior, out_dir)
    dataset = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    method = instantiate(cfg.method)
    metrics = {name: instantiate(spec) for name, spec in (cfg.get("metrics") or {}).items()}
    choices = _choices()
    meta = {"overrides": list(overrides or []), "choices": choices, "config_hash": job_hash}
    identity = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("dataset", "model", "method")}
    record = run_job(dataset, model, method, metrics, out_dir, loop_config(cfg), meta=meta, identity=identity)
    if current_world().is_main:
        records.register(cfg.paths.output_dir, job_hash, out_dir)
    return record


def _choices() -> dict[str, Any]:
    try:
        runtime = HydraConfig.get().runtime.choices
    except ValueError:
        return {}
    return {k: v for k, v in runtime.items() if not k.startswith("hydra/")}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def task(cfg: DictConfig) -> dict[str, Any] | None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    # under torchrun only rank 0 writes records and logs to MLflow
    main_rank = current_world().is_main
    logger = instantiate(cfg.logger) if cfg.get("logger") and main_rank else None
    try:
        record = run_from_config(cfg, out_dir, overrides)
    except Exception as exc:  # recorded, then re-raised so the sweep (or the process) fails visibly
        cause = _root_cause(exc)
        message = f"{type(cause).__name__}: {cause}"
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out_dir / "error.json", json.dumps({"status": "failed", "error": message, "overrides": overrides}, indent=2)
        )
        if logger is not None:
            logger.log_job(cfg, out_dir, None, overrides=overrides, error=message)
        log.error("job failed: %s", message)
        if multirun:
            # the other jobs go on; SweepCallback reports the failure and exits non-zero at the end
            return None
        if isinstance(cause, USER_ERRORS):
            sys.exit(f"xaibench: error: {message}")
        raise
    if logger is not None:
        try:
            logger.log_job(cfg, out_dir, record, overrides=overrides)
        except Exception as exc:  # the records on disk are the source of truth; never lose them to the mirror
            log.error("MLflow mirror failed (records are in %s): %s: %s", out_dir, type(exc).__name__, exc)
    return record


DEMOS = ("experiment=demo", "experiment=demo_text")


def main() -> None:
    """Console entry point: ``xaibench [hydra overrides]``; no arguments runs the demo benchmarks
    (the image sweep, then the text sweep), each in its own process."""
    if len(sys.argv) == 1:
        import subprocess

        codes = [subprocess.call([sys.executable, "-m", "xaibench", "-m", demo]) for demo in DEMOS]
        sys.exit(max(codes))
    task()


if __name__ == "__main__":
    main()
