"""The ``xaibench`` command: a thin Hydra entry point around :func:`xaibench.core.loop.run_job`.

``xaibench`` with no arguments runs the default benchmarks (``-m experiment=demo_pairs``, then
``-m experiment=demo_text_pairs``); otherwise the arguments are Hydra overrides, e.g.
``xaibench dataset=synthetic_shapes method=rollout`` or ``xaibench -m method=raw_attention,rollout,attn_gradcam``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xaibench.core import records
from xaibench.core.config import CONF_DIR, loop_config
from xaibench.core.distributed import current_world
from xaibench.core.fingerprint import files_fingerprint
from xaibench.core.loop import run_job

log = logging.getLogger("xaibench")


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
USER_ERRORS = (ValueError, TypeError, KeyError, OSError)  # OSError: missing files, full or read-only disks


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def run_from_config(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job into ``out_dir``, or reuse the records of a finished job with the same config."""
    options = loop_config(cfg, device=job_device(str(cfg.device)))  # bad option values fail here, first
    identity = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("dataset", "model", "method")}
    # the files the job reads (data, checkpoints): a file changed in place is never served from old work
    identity["files"] = files_fingerprint(identity["dataset"], identity["model"])
    job_hash = records.config_hash(cfg, identity["files"])
    prior = None if options.force else records.find_complete(cfg.paths.output_dir, job_hash)
    if prior is not None:
        return records.reuse(prior, out_dir)
    dataset = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    method = instantiate(cfg.method)
    metrics = {name: instantiate(spec) for name, spec in (cfg.get("metrics") or {}).items()}
    choices = _choices()
    meta = {"overrides": list(overrides or []), "choices": choices, "config_hash": job_hash}
    record = run_job(
        dataset,
        model,
        method,
        metrics,
        out_dir,
        options,
        meta=meta,
        identity=identity,
    )
    if current_world().is_main:
        records.register(cfg.paths.output_dir, job_hash, out_dir)
    return record


def _choices() -> dict[str, Any]:
    try:
        runtime = HydraConfig.get().runtime.choices
    except ValueError:
        return {}
    return {k: v for k, v in runtime.items() if not k.startswith("hydra/")}


def _record_failure(
    cfg: DictConfig, out_dir: Path, overrides: list[str], logger: Any, message: str, status: str = "failed"
) -> None:
    """``error.json`` and the MLflow run of a failed or interrupted job (each best effort: a job whose
    output folder cannot be written still reports its error in one line)."""
    try:
        records.write_error(
            out_dir, message, overrides=overrides, choices=_choices(), target=cfg.get("target"), status=status
        )
    except OSError as exc:
        log.error("could not write error.json: %s", exc)
    if logger is not None:
        try:
            mlflow_status = "KILLED" if status == "interrupted" else "FAILED"
            logger.log_job(
                cfg, out_dir, None, overrides=overrides, error=message, choices=_choices(), status=mlflow_status
            )
        except Exception as exc:  # the mirror never hides the job's own error
            log.error("MLflow mirror failed: %s: %s", type(exc).__name__, exc)


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
    except KeyboardInterrupt:  # SIGINT: the job and its MLflow run end as interrupted, then the process stops
        _record_failure(cfg, out_dir, overrides, logger, "interrupted (SIGINT)", status="interrupted")
        raise
    except Exception as exc:  # recorded, then re-raised so the sweep (or the process) fails visibly
        cause = _root_cause(exc)
        message = f"{type(cause).__name__}: {cause}"
        _record_failure(cfg, out_dir, overrides, logger, message)
        log.error("job failed: %s", message)
        if multirun:
            # the other jobs go on; SweepCallback reports the failure and exits non-zero at the end
            return None
        if isinstance(cause, USER_ERRORS):
            sys.exit(f"xaibench: error: {message}")
        raise
    if logger is not None:
        try:
            logger.log_job(cfg, out_dir, record, overrides=overrides, choices=_choices())
        except Exception as exc:  # the records on disk are the source of truth; never lose them to the mirror
            log.error("MLflow mirror failed (records are in %s): %s: %s", out_dir, type(exc).__name__, exc)
    return record


#: ``xaibench`` with no arguments: the two-object image and two-topic text benchmarks (the single-object sets
#: stay reachable as ``experiment=demo`` and ``experiment=demo_text``)
DEMOS = ("experiment=demo_pairs", "experiment=demo_text_pairs")


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
