"""The run-record schema, written and read here only.

A job's folder holds its source of truth:

* ``metrics.json``: ``{"metrics": {runner: {...}}, "job": {...}}`` (``job`` names the dataset, model, method,
  target, the Hydra ``choices``, ``config_hash``, library versions, ...); written last, so its presence
  marks a finished job;
* ``scores.csv``: one row per sample (per sample and class with ``target=each``);
* ``error.json``: a failed or interrupted job: ``status``, ``error``, ``overrides``, ``choices``, ``target``;
* ``timing.json``: wall time and cache statistics (apart from the records, so two identical runs give
  byte-identical records).

The finished-job index: a job's identity is the SHA-256 of its resolved config without the keys that do
not change its numbers (:data:`IGNORED_KEYS`: the logger, ``force``, worker counts, cache location and
chunking, ``paths``); the dataset and model configs carry their resolved file paths, and the job adds the
fingerprint of the files it read (weights and data), so a file changed in place is never served from old
work. When a job finishes, ``<output_dir>/records/<hash>.json`` points at its folder; a later job with the
same hash copies that folder's records instead of running (``force=true`` re-runs).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from xaibench.core.cache import key_hash
from xaibench.core.io import atomic_write_text, atomic_write_texts, dump_json, make_dir, rows_to_csv

log = logging.getLogger(__name__)

METRICS_FILE, SCORES_FILE, ERROR_FILE, TIMING_FILE, EXAMPLES_FILE = (
    "metrics.json",
    "scores.csv",
    "error.json",
    "timing.json",
    "examples.npz",
)
RECORD_FILES = (SCORES_FILE, EXAMPLES_FILE, METRICS_FILE)  # metrics.json last: it marks completion
IGNORED_KEYS = (
    "logger",
    "force",
    "num_workers",
    "paths",
    "hydra",
    "cache_dir",
    "cache_chunk_size",
    "cache_flush_seconds",
)


# -- writing ----------------------------------------------------------------------------------------------
def write_job(
    out_dir: Path,
    record: Mapping[str, Any],
    rows: list[dict[str, Any]],
    timing: Mapping[str, Any],
    examples: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write a finished job's ``timing.json``, ``scores.csv``, ``examples.npz`` (the arrays of the example
    heatmaps, when given) and, last, ``metrics.json``: all or nothing (a write that fails, e.g. on a full
    disk, leaves no new file under a final name)."""
    make_dir(out_dir)
    files: list[tuple[str, str | bytes]] = [(TIMING_FILE, json.dumps(dict(timing), indent=2))]
    files.append((SCORES_FILE, rows_to_csv(rows)))
    if examples:
        buf = io.BytesIO()
        np.savez_compressed(buf, **examples)
        files.append((EXAMPLES_FILE, buf.getvalue()))
    atomic_write_texts(out_dir, [*files, (METRICS_FILE, dump_json(record))])


def write_error(
    out_dir: Path,
    message: str,
    *,
    overrides: list[str] | None = None,
    choices: Mapping[str, Any] | None = None,
    target: str | None = None,
    status: str = "failed",
) -> None:
    """Write ``error.json`` for a job that ``failed`` or was ``interrupted``."""
    make_dir(out_dir)
    doc = {
        "status": status,
        "error": message,
        "overrides": list(overrides or []),
        "choices": dict(choices or {}),
        "target": target,
    }
    atomic_write_text(out_dir / ERROR_FILE, json.dumps(doc, indent=2))


# -- reading ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """One job as readers see it: its ``metrics.json`` content, or the error of a failed job.

    Attributes:
        source: where it came from (the run folder, or ``mlflow:<run id>``).
        run_dir: the job folder (``None`` when unknown or gone); ``examples.npz`` is read from it.
        job: the ``job`` section of ``metrics.json`` (for a failed job: its choices, target, overrides).
        metrics: runner name -> dataset-level results (empty for a failed job).
        time: when the record was written (seconds since the epoch); the newest record of a cell wins.
        error: the error message of a failed job, else ``None``.
    """

    source: str
    run_dir: Path | None
    job: Mapping[str, Any]
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    time: float = 0.0
    error: str | None = None

    @property
    def choices(self) -> Mapping[str, Any]:
        """The job's Hydra config-group choices (``method``, ``dataset``, ``model``, ``metric``, ...)."""
        return self.job.get("choices") or {}

    @property
    def method(self) -> str | None:
        """The method's config name (``partial_lrp_grad``), else the method's own name."""
        return self.choices.get("method") or self.job.get("method")

    @property
    def dataset(self) -> str | None:
        """The dataset's config name (``imagenet_seg``), else the dataset's own name."""
        return self.choices.get("dataset") or self.job.get("dataset")

    @property
    def model(self) -> str | None:
        """The model's config name, else the model's own name."""
        return self.choices.get("model") or self.job.get("model")

    @property
    def target(self) -> str | None:
        """``predicted`` or ``label``."""
        return self.job.get("target")

    @property
    def failed(self) -> bool:
        return self.error is not None

    def has_runner(self, name: str) -> bool:
        """Whether the job ran metric runner ``name`` (for a failed job: whether it was configured to)."""
        if self.failed:
            metric = self.choices.get("metric")
            return name in (metric if isinstance(metric, list) else [metric])
        return name in self.metrics


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of a run folder, or ``None`` when there is none."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(run_dir: Path) -> RunRecord | None:
    """The record of one run folder; a folder whose ``error.json`` is newer than its ``metrics.json`` (a
    re-run that failed over an old success) is failed, so a stale number is never shown as current."""
    ok, err = run_dir / METRICS_FILE, run_dir / ERROR_FILE
    if err.is_file() and (not ok.is_file() or err.stat().st_mtime >= ok.stat().st_mtime):
        error = json.loads(err.read_text())
        job = {
            "choices": dict(error.get("choices") or {}),
            "target": error.get("target"),
            "overrides": list(error.get("overrides") or []),
            "status": error.get("status", "failed"),
        }
        return RunRecord(str(run_dir), run_dir, job, time=err.stat().st_mtime, error=str(error.get("error", "failed")))
    if not ok.is_file():
        return None
    rec = json.loads(ok.read_text())
    return RunRecord(str(run_dir), run_dir, rec["job"], rec["metrics"], time=ok.stat().st_mtime)


def load_run_records(roots: Iterable[str | Path]) -> list[RunRecord]:
    """Every job record under ``roots`` (folders holding ``metrics.json`` or ``error.json``), in path order.

    Raises:
        FileNotFoundError: a root does not exist.
    """
    records = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"run folder {root} does not exist")
        dirs = sorted({p.parent for name in (METRICS_FILE, ERROR_FILE) for p in root.rglob(name)})
        for run_dir in dirs:
            if run_dir.parent.name == "records" or "/.hydra" in str(run_dir):
                continue
            try:
                record = read_run(run_dir)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("skipping unreadable record in %s: %s", run_dir, exc)
                continue
            if record is not None:
                records.append(record)
    return records


# -- the finished-job index -------------------------------------------------------------------------------
def config_hash(cfg: DictConfig | Mapping[str, Any], fingerprint: Mapping[str, Any] | None = None) -> str:
    """The job's identity: its resolved config without :data:`IGNORED_KEYS`, plus the fingerprint of the
    files it reads (see :meth:`DatasetAdapter.fingerprint` and :meth:`ModelAdapter.weights_hash`)."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, DictConfig) else cfg
    ident = {k: v for k, v in dict(tree).items() if k not in IGNORED_KEYS}
    if fingerprint:
        ident["_files"] = dict(fingerprint)
    return key_hash(ident)


def _index(output_dir: str | Path, job_hash: str) -> Path:
    return Path(output_dir) / "records" / f"{job_hash}.json"


def find_complete(output_dir: str | Path, job_hash: str) -> Path | None:
    """The run folder of a finished job with this hash, if its records are still complete."""
    index = _index(output_dir, job_hash)
    if not index.is_file():
        return None
    try:
        run_dir = Path(json.loads(index.read_text())["run_dir"])
        record = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError, KeyError):
        return None
    if record.get("job", {}).get("config_hash") != job_hash or not (run_dir / SCORES_FILE).is_file():
        return None
    return run_dir


def reuse(prior: Path, out_dir: Path) -> dict[str, Any]:
    """Copy a finished job's records into ``out_dir``; returns its record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if prior.resolve() != out_dir.resolve():
        for name in RECORD_FILES:
            if (prior / name).is_file():
                tmp = out_dir / f".{name}.tmp"
                try:
                    shutil.copyfile(prior / name, tmp)
                    tmp.replace(out_dir / name)
                finally:
                    tmp.unlink(missing_ok=True)
    atomic_write_text(out_dir / TIMING_FILE, json.dumps({"reused_from": str(prior.resolve())}, indent=2))
    log.info("skipped: a complete record of this config exists in %s (force=true re-runs)", prior)
    return json.loads((out_dir / METRICS_FILE).read_text())


def register(output_dir: str | Path, job_hash: str, run_dir: Path) -> None:
    """Point the index entry of ``job_hash`` at the finished job in ``run_dir``."""
    index = _index(output_dir, job_hash)
    index.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(index, json.dumps({"run_dir": str(run_dir.resolve())}))
