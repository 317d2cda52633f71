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
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from xaibench.core.io import library_versions, make_dir
from xaibench.core.records import RunRecord

log = logging.getLogger(__name__)

PARENT_ENV = "XAIBENCH_MLFLOW_PARENT_RUN_ID"
#: the experiment tag that makes the MLflow UI open an experiment on its runs
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: tag prefix of a job's Hydra choices (``choice.method`` = ``rollout``): read back by :func:`load_mlflow_records`
CHOICE_TAG = "choice."


@contextmanager
def _file_lock(path: Path) -> Any:
    """An exclusive ``flock`` on ``path`` for the ``with`` block (POSIX; a no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class _Retrying:
    """An ``MlflowClient`` whose calls are retried (with back-off, up to about a minute) while SQLite
    reports ``database is locked``: several jobs of a sweep write to one store at once."""

    def __init__(self, client: Any, attempts: int = 60) -> None:
        self._client, self._attempts = client, attempts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            delay = 0.05
            for attempt in range(self._attempts):
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:
                    if "database is locked" not in str(exc) or attempt == self._attempts - 1:
                        raise
                    time.sleep(delay)
                    delay = min(2 * delay, 1.0)
            raise AssertionError("unreachable")

        return call


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

    def _client(self) -> tuple[Any, str]:
        """The client (retrying while SQLite is locked) and the experiment id; the store's schema and the
        experiment are created once, under a file lock, however many processes start at the same time."""
        from mlflow.tracking import MlflowClient

        make_dir(self.store_dir)
        with _file_lock(self.store_dir / ".xaibench-init.lock"):
            client = _Retrying(MlflowClient(tracking_uri=self.tracking_uri))
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                exp_id = client.create_experiment(
                    self.experiment,
                    artifact_location=(self.store_dir / "artifacts").as_uri(),
                    tags={EXPERIMENT_KIND_TAG: "custom_model_development"},  # the UI opens on the runs
                )
            else:
                exp_id = exp.experiment_id
        return client, exp_id

    def start_parent(self, name: str, overrides: list[str], sweep_dir: Path | None = None) -> str:
        """Create the parent run of a sweep; a parent of the same sweep folder left RUNNING (its process was
        killed) is marked KILLED first."""
        client, exp_id = self._client()
        tags = {"xaibench.kind": "sweep", "git_commit": git_commit()}
        if sweep_dir is not None:
            tags["sweep_dir"] = str(Path(sweep_dir).resolve())
            stale = client.search_runs(
                [exp_id],
                filter_string=f"tags.`xaibench.kind` = 'sweep' and tags.sweep_dir = '{tags['sweep_dir']}'",
                max_results=100,
            )
            for run in stale:
                if run.info.status == "RUNNING":
                    client.set_terminated(run.info.run_id, "KILLED")
                    log.warning(
                        "MLflow parent run %s of %s was left RUNNING; marked KILLED", run.info.run_id, sweep_dir
                    )
        run = client.create_run(exp_id, run_name=name, tags=tags)
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
        choices: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> str:
        """Create one (child) run for a finished or failed job (``status``: ``FINISHED``, ``FAILED`` or
        ``KILLED``; by default from ``error``); returns its run id."""
        from mlflow.entities import Metric, Param, RunTag

        client, exp_id = self._client()
        tags = {"xaibench.kind": "job", "git_commit": git_commit(), "run_dir": str(Path(out_dir).resolve())}
        tags.update({f"version.{k}": v for k, v in library_versions().items()})
        parent = os.environ.get(PARENT_ENV)
        if parent:
            tags["mlflow.parentRunId"] = parent
        if record is not None:
            tags["weights_sha256_16"] = str(record["job"].get("weights_sha256_16"))
        tags.update({f"{CHOICE_TAG}{k}": str(v) for k, v in (choices or {}).items()})
        if cfg.get("target") is not None:
            tags["target"] = str(cfg.get("target"))
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
        client.set_terminated(run_id, status or ("FAILED" if error else "FINISHED"))
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
        # named by the sweep's experiment (e.g. `demo`); the folder is a tag
        experiment = config.hydra.runtime.choices.get("experiment") or "sweep"
        name = f"{experiment} {sweep_dir.name}"
        self._parent = (logger, logger.start_parent(name, list(config.hydra.overrides.task), sweep_dir))
        os.environ[PARENT_ENV] = self._parent[1]
        previous = signal.getsignal(signal.SIGINT)

        def interrupted(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, previous)
            try:
                logger.end_parent(self._parent[1], "KILLED")
            finally:
                raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, interrupted)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from xaibench.report.summary import summarize_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        failed = summarize_sweep(sweep_dir)
        if getattr(self, "_parent", None):
            logger, run_id = self._parent
            logger.end_parent(run_id, "FAILED" if failed else "FINISHED")
            os.environ.pop(PARENT_ENV, None)
        if failed:
            raise SystemExit(f"xaibench: {failed} job(s) of the sweep failed; see error.json in {sweep_dir}")


def load_mlflow_records(tracking_uri: str, experiment: str = "xaibench") -> list[RunRecord]:
    """Job records mirrored to an MLflow store (the ``metrics.json`` artifact of each job run).

    Args:
        tracking_uri: e.g. ``sqlite:///outputs/mlflow/mlflow.db``.
        experiment: MLflow experiment name (``logger.experiment``).

    Raises:
        ValueError: the store has no such experiment.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"MLflow store {tracking_uri} has no experiment {experiment!r}; it has {names}")
    records, token = [], None
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            page = client.search_runs(
                [exp.experiment_id], filter_string="tags.`xaibench.kind` = 'job'", max_results=500, page_token=token
            )
            for run in page:
                tags = run.data.tags
                run_dir = Path(tags["run_dir"]) if tags.get("run_dir") else None
                when = run.info.start_time / 1000.0
                source = f"mlflow:{run.info.run_id}"
                if tags.get("error"):
                    choices = {k.removeprefix(CHOICE_TAG): v for k, v in tags.items() if k.startswith(CHOICE_TAG)}
                    job = {"choices": choices, "target": tags.get("target")}
                    records.append(RunRecord(source, run_dir, job, time=when, error=tags["error"]))
                    continue
                try:
                    local = client.download_artifacts(run.info.run_id, "metrics.json", tmp)
                    rec = json.loads(Path(local).read_text())
                except Exception as exc:  # a run without the artifact (e.g. killed while logging)
                    log.warning("MLflow run %s has no readable metrics.json: %s", run.info.run_id, exc)
                    continue
                records.append(RunRecord(source, run_dir, rec["job"], rec["metrics"], time=when))
            token = page.token
            if not token:
                break
    return records
