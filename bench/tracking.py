"""MLflow mirror of the run records.

Every job's files stay the source of truth; MLflow gets a copy: params = the flattened resolved config,
metrics = the numeric leaves of ``metrics.json``, artifacts = the records, tags = git commit, library
versions and the model weights' hash. A Hydra multirun gets one parent run (created by
:class:`SweepCallback`) with each job as a child (``mlflow.parentRunId``), which works across launcher
processes because the parent id travels in an environment variable.

The store defaults to a SQLite file under the output folder; the experiment's artifact location is set
under the output folder too (MLflow would otherwise write ``./mlruns`` into the working directory).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PARENT_ENV = "XAIBENCH_MLFLOW_PARENT_RUN_ID"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as leaves."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def metric_name(key: str) -> str:
    """An MLflow-legal metric name (``token_f1.micro_f1@10`` -> ``token_f1.micro_f1_at_10``)."""
    return re.sub(r"[^0-9A-Za-z_\-. :/]", "_", key.replace("@", "_at_"))


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("xaibench", "torch", "timm", "transformers", "hydra-core", "numpy", "mlflow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


class MlflowLogger:
    """Mirror jobs into an MLflow store.

    Args:
        store_dir: folder of the default SQLite store and artifacts (under the output folder).
        experiment: MLflow experiment name.
        tracking_uri: another tracking URI (a server, a different database) instead of the SQLite file.
    """

    def __init__(self, store_dir: str, experiment: str = "xaibench", tracking_uri: str | None = None) -> None:
        self.store_dir = Path(store_dir).expanduser().resolve()
        self.experiment = experiment
        self.tracking_uri = tracking_uri or f"sqlite:///{self.store_dir / 'mlflow.db'}"

    def _client(self):
        from mlflow.tracking import MlflowClient

        self.store_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = client.create_experiment(
                self.experiment, artifact_location=(self.store_dir / "artifacts").as_uri()
            )
        else:
            exp_id = exp.experiment_id
        return client, exp_id

    def start_parent(self, name: str, overrides: list[str]) -> str:
        client, exp_id = self._client()
        run = client.create_run(exp_id, run_name=name, tags={"xaibench.kind": "sweep", "git_commit": git_commit()})
        client.log_param(run.info.run_id, "sweep_overrides", " ".join(overrides)[:6000])
        return run.info.run_id

    def end_parent(self, run_id: str, status: str = "FINISHED") -> None:
        client, _ = self._client()
        client.set_terminated(run_id, status)

    def log_job(
        self,
        cfg: DictConfig,
        out_dir: Path,
        record: Mapping[str, Any] | None,
        overrides: list[str] | None = None,
        error: str | None = None,
    ) -> str:
        """Create one (child) run for a finished or failed job; returns its run id."""
        from mlflow.entities import Metric, Param, RunTag

        client, exp_id = self._client()
        tags = {"xaibench.kind": "job", "git_commit": git_commit(), "run_dir": str(Path(out_dir).resolve())}
        tags.update({f"version.{k}": v for k, v in library_versions().items()})
        parent = os.environ.get(PARENT_ENV)
        if parent:
            tags["mlflow.parentRunId"] = parent
        if record is not None:
            tags["weights_sha256_16"] = str(record["job"].get("weights_sha256_16"))
        if error:
            tags["error"] = error[:5000]
        name = " ".join(overrides or []) or "job"
        run_id = client.create_run(exp_id, run_name=name[:250], tags=tags).info.run_id
        params = flatten(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
        params = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        now = int(time.time() * 1000)
        metrics = []
        if record is not None:
            for key, value in sorted(flatten(record["metrics"]).items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics.append(Metric(metric_name(key), float(value), now, 0))
        for i in range(0, max(len(params), len(metrics)), 100):
            client.log_batch(
                run_id,
                metrics=metrics[i : i + 100],
                params=params[i : i + 100],
                tags=[RunTag("xaibench.logged", "1")] if i == 0 else [],
            )
        for name in ("metrics.json", "scores.csv", "error.json", ".hydra/config.yaml"):
            path = Path(out_dir) / name
            if path.is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FAILED" if error else "FINISHED")
        return run_id


class SweepCallback(Callback):
    """Hydra callback: a parent MLflow run per multirun, and a summary table of the sweep at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._parent = None
        logger_cfg = config.get("logger")
        if not logger_cfg:
            return
        from hydra.utils import instantiate

        logger = instantiate(logger_cfg)
        sweep_dir = Path(config.hydra.sweep.dir)
        self._parent = (logger, logger.start_parent(sweep_dir.name, list(config.hydra.overrides.task)))
        os.environ[PARENT_ENV] = self._parent[1]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from xaibench.tables import summarize_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        failed = summarize_sweep(sweep_dir)
        if getattr(self, "_parent", None):
            logger, run_id = self._parent
            logger.end_parent(run_id, "FAILED" if failed else "FINISHED")
            os.environ.pop(PARENT_ENV, None)
        if failed:
            raise SystemExit(f"xaibench: {failed} job(s) of the sweep failed; see error.json in {sweep_dir}")


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None
