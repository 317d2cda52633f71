"""Finished-job index: a re-run sweep skips every job whose complete record exists for the same config.

A job's identity is the SHA-256 of its resolved config without the keys that do not change its numbers
(``logger``, ``force``, ``num_workers``, ``paths``: the dataset and model configs carry their resolved
paths themselves). When a job finishes, ``<output_dir>/records/<hash>.json`` points at its run folder; a
later job with the same hash copies that folder's records instead of running (``force=true`` re-runs).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xaibench.cache import key_hash
from xaibench.loop import atomic_write_text

log = logging.getLogger(__name__)

IGNORED_KEYS = ("logger", "force", "num_workers", "paths", "hydra")
RECORD_FILES = ("metrics.json", "scores.csv", "examples.npz")


def config_hash(cfg: DictConfig) -> str:
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return key_hash({k: v for k, v in tree.items() if k not in IGNORED_KEYS})


def _index(output_dir: str | Path, job_hash: str) -> Path:
    return Path(output_dir) / "records" / f"{job_hash}.json"


def find_complete(output_dir: str | Path, job_hash: str) -> Path | None:
    """The run folder of a finished job with this hash, if its records are still complete."""
    index = _index(output_dir, job_hash)
    if not index.is_file():
        return None
    try:
        run_dir = Path(json.loads(index.read_text())["run_dir"])
        record = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    if record.get("job", {}).get("config_hash") != job_hash or not (run_dir / "scores.csv").is_file():
        return None
    return run_dir


def reuse(prior: Path, out_dir: Path) -> dict[str, Any]:
    """Copy a finished job's records into ``out_dir``; returns its record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if prior.resolve() != out_dir.resolve():
        for name in RECORD_FILES:
            if (prior / name).is_file():
                tmp = out_dir / f".{name}.tmp"
                shutil.copyfile(prior / name, tmp)
                tmp.replace(out_dir / name)
    atomic_write_text(out_dir / "timing.json", json.dumps({"reused_from": str(prior.resolve())}, indent=2))
    log.info("skipped: a complete record of this config exists in %s (force=true re-runs)", prior)
    return json.loads((out_dir / "metrics.json").read_text())


def register(output_dir: str | Path, job_hash: str, run_dir: Path) -> None:
    index = _index(output_dir, job_hash)
    index.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(index, json.dumps({"run_dir": str(run_dir.resolve())}))
