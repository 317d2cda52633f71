"""Tables and figures built from run records only (``metrics.json``, ``examples.npz``), so they
regenerate offline and change when the records change.

Two users: :func:`summarize_sweep` (the table a sweep prints at its end, called by the Hydra sweep
callback) and ``xaibench-tables`` (:func:`main`, ``make tables``), which builds the CVPR 2021 tables and
figures of :mod:`xaibench.cvpr21` from run directories or an MLflow store.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: the headline numbers of each metric runner, in table order, and whether they are shown in percent
HEADLINES: dict[str, list[tuple[str, str, bool]]] = {
    "segmentation": [("pixel_accuracy", "pixel acc. %", True), ("miou", "mIoU %", True), ("map", "mAP %", True)],
    "perturbation": [("positive_auc", "pos. AUC % (↓)", False), ("negative_auc", "neg. AUC % (↑)", False)],
    "token_f1": [
        ("micro_f1@10", "token-F1@10 micro", False),
        ("micro_f1@20", "token-F1@20 micro", False),
        ("micro_f1@40", "token-F1@40 micro", False),
        ("macro_f1@20", "token-F1@20 macro", False),
    ],
}


def collect_records(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``metrics.json`` (finished job) and ``error.json`` (failed job) under ``root``."""
    found = []
    for path in sorted(Path(root).rglob("metrics.json")):
        found.append((path.parent, json.loads(path.read_text())))
    for path in sorted(Path(root).rglob("error.json")):
        if not (path.parent / "metrics.json").is_file():
            found.append((path.parent, {"error": json.loads(path.read_text()).get("error", "failed")}))
    return found


def records_frame(records: list[tuple[Path, dict[str, Any]]]) -> pd.DataFrame:
    rows = []
    for run_dir, rec in records:
        if "error" in rec:
            rows.append({"run": run_dir.name, "status": "failed", "error": rec["error"]})
            continue
        job = rec["job"]
        row: dict[str, Any] = {
            "run": run_dir.name,
            # the config name (e.g. rollout_bert) tells variants of one method class apart
            "method": (job.get("choices") or {}).get("method") or job.get("method"),
            "dataset": job.get("dataset"),
            "model": job.get("model"),
            "target": job.get("target"),
            "n": job.get("n"),
            "partial": job.get("partial"),
            "skipped": job.get("skipped", 0),
            "status": "ok",
        }
        if job.get("truncated"):  # text cut at the model's maximum length (its tail gets no score)
            row["truncated"] = job["truncated"]
        for metric, values in rec["metrics"].items():
            for key, label, percent in HEADLINES.get(metric, []):
                if key in values and values[key] is not None:
                    row[label] = values[key] * 100.0 if percent else values[key]
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """A Markdown table (no extra dependency: pandas' ``to_markdown`` needs ``tabulate``)."""
    if frame.empty:
        return "(no records)"
    cols = list(frame.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.2f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summarize_sweep(sweep_dir: Path, figure: bool = True) -> int:
    """Print and write (``summary.md``, ``summary.csv``, ``examples.png``) a sweep's table.

    Returns:
        The number of failed jobs.
    """
    records = collect_records(sweep_dir)
    frame = records_frame(records)
    if frame.empty:
        log.warning("no run records under %s", sweep_dir)
        return 0
    ok = frame[frame["status"] == "ok"].drop(columns=["status"], errors="ignore")
    keep = [c for c in ok.columns if c not in ("run", "model", "partial", "error")]
    table = ok[keep].sort_values("method") if "method" in ok else ok
    failed = frame[frame["status"] == "failed"]
    text = to_markdown(table)
    if len(failed):
        text += "\n\nFailed jobs:\n" + "\n".join(f"- {r.run}: {r.error}" for r in failed.itertuples())
    (Path(sweep_dir) / "summary.md").write_text(text + "\n")
    frame.to_csv(Path(sweep_dir) / "summary.csv", index=False)
    print(f"\nxaibench summary ({sweep_dir}):\n\n{text}\n", flush=True)
    if figure:
        path = example_figure([d for d, rec in records if "error" not in rec], Path(sweep_dir) / "examples.png")
        if path:
            print(f"example heatmaps: {path}", flush=True)
    return int(len(failed))


def example_figure(
    run_dirs: Sequence[Path],
    out_path: Path,
    labels: Mapping[Path, str] | None = None,
    title: str | None = None,
) -> Path | None:
    """A grid: one row per example image; input, ground-truth mask, then one heatmap per method.

    Args:
        run_dirs: job folders; those with an ``examples.npz`` are shown.
        out_path: the PNG to write.
        labels: column title per run folder, in the order to show (default: the records' method names,
            sorted).
        title: figure title.

    Returns:
        ``out_path``, or ``None`` when no folder holds examples. Runs whose examples show other images
        than the first run's (another dataset or limit) are left out with a warning.
    """
    items = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "examples.npz"
        if path.is_file():
            with np.load(path) as z:
                item = {k: z[k] for k in z.files}
            item["label"] = labels[run_dir] if labels is not None else str(item["method"])
            items.append(item)
    if not items:
        return None
    if labels is None:
        items.sort(key=lambda it: it["label"])
    first = items[0]
    same = [it for it in items if list(it["ids"]) == list(first["ids"])]
    for it in items:
        if not any(it is s for s in same):
            log.warning(
                "examples of %s show other images than %s; left out of %s", it["label"], first["label"], out_path
            )
    items = same
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(first["ids"])
    has_mask = "masks" in first
    cols = 1 + int(has_mask) + len(items)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + (0.3 if title else 0)), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(first["images"][r].transpose(1, 2, 0))
        if has_mask:
            axes[r, 1].imshow(first["masks"][r], cmap="gray")
        for c, it in enumerate(items):
            ax = axes[r, 1 + int(has_mask) + c]
            ax.imshow(first["images"][r].transpose(1, 2, 0))
            ax.imshow(np.nan_to_num(it["heatmaps"][r].astype(np.float32)), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    titles = ["input"] + (["mask"] if has_mask else []) + [it["label"] for it in items]
    for c, name in enumerate(titles):
        axes[0, c].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


# -- run records for xaibench-tables ------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One job as the tables see it: its ``metrics.json`` content, or the error of a failed job.

    Attributes:
        source: where it came from (the run folder, or ``mlflow:<run id>``).
        run_dir: the job folder (``None`` when unknown or gone); ``examples.npz`` is read from it.
        job: the ``job`` section of ``metrics.json`` (for a failed job: what is known, e.g. ``choices``).
        metrics: runner name -> dataset-level results (empty for a failed job).
        time: when the record was written (file modification or MLflow start time, seconds since the
            epoch); the newest record of a table cell wins.
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
        """The dataset's config name (``imagenet_seg``); ``None`` for records made outside Hydra."""
        return self.choices.get("dataset")

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


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _failed_job(run_dir: Path, error: Mapping[str, Any]) -> dict[str, Any]:
    """What is known about a failed job: its choices and target from the Hydra files, its overrides."""
    hydra_cfg = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    choices = {k: v for k, v in choices.items() if not str(k).startswith("hydra/")}
    config = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    return {"choices": choices, "target": config.get("target"), "overrides": list(error.get("overrides") or [])}


def load_run_records(roots: Iterable[str | Path]) -> list[RunRecord]:
    """Every job record under ``roots`` (folders holding ``metrics.json`` or ``error.json``).

    A folder whose ``error.json`` is newer than its ``metrics.json`` (a re-run that failed over an old
    success) counts as failed, so a stale number is never shown as current.

    Raises:
        FileNotFoundError: a root does not exist.
    """
    records = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"run folder {root} does not exist")
        dirs = sorted({p.parent for name in ("metrics.json", "error.json") for p in root.rglob(name)})
        for run_dir in dirs:
            ok, err = run_dir / "metrics.json", run_dir / "error.json"
            try:
                if err.is_file() and (not ok.is_file() or err.stat().st_mtime >= ok.stat().st_mtime):
                    error = json.loads(err.read_text())
                    records.append(
                        RunRecord(
                            source=str(run_dir),
                            run_dir=run_dir,
                            job=_failed_job(run_dir, error),
                            time=err.stat().st_mtime,
                            error=str(error.get("error", "failed")),
                        )
                    )
                else:
                    rec = json.loads(ok.read_text())
                    records.append(
                        RunRecord(str(run_dir), run_dir, rec["job"], rec["metrics"], time=ok.stat().st_mtime)
                    )
            except (OSError, ValueError, KeyError) as exc:
                log.warning("skipping unreadable record in %s: %s", run_dir, exc)
    return records


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
                    overrides = (tags.get("mlflow.runName") or "").split()
                    choices = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("+", "~")))
                    job = {"choices": choices, "target": choices.get("target"), "overrides": overrides}
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


def _default_runs_dir() -> Path:
    return Path(os.environ.get("XAIBENCH_OUTPUT") or "outputs") / "cvpr21"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-tables",
        description=(
            "Build the CVPR 2021 tables (Markdown, CSV) and figures from run records: the metrics.json of "
            "every job under --runs (default $XAIBENCH_OUTPUT/cvpr21, else outputs/cvpr21) and/or an "
            "MLflow store. Each cell shows ours, the published number and the difference."
        ),
    )
    parser.add_argument(
        "--runs", type=Path, action="append", default=None, metavar="DIR", help="folder of run records (repeatable)"
    )
    parser.add_argument("--mlflow", default=None, metavar="URI", help="also read job records from this MLflow store")
    parser.add_argument("--mlflow-experiment", default="xaibench", help="MLflow experiment name (default: xaibench)")
    parser.add_argument(
        "--out", type=Path, default=Path("results/cvpr21"), help="output folder (default: results/cvpr21)"
    )
    parser.add_argument(
        "--paper", type=Path, default=None, help="published numbers (default: <out>/paper.yaml, else the checkout's)"
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``xaibench-tables`` / ``make tables``: returns 0 when the tables were written, 1 when there was
    nothing to build them from (no file is written then), 2 for a usage error."""
    from xaibench import cvpr21

    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="xaibench-tables: %(message)s")
    if args.runs is not None:
        runs = list(args.runs)
    else:  # the default folder may not exist yet: that is "no records", not a usage error
        runs = [d for d in [_default_runs_dir()] if not args.mlflow and d.is_dir()]
    try:
        records = load_run_records(runs)
        if args.mlflow:
            records += load_mlflow_records(args.mlflow, args.mlflow_experiment)
        paper = cvpr21.load_paper(args.paper or cvpr21.default_paper_path(args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"xaibench-tables: error: {exc}", file=sys.stderr)
        return 2
    written = cvpr21.build_tables(records, args.out, paper, figures=not args.no_figures)
    if not written:
        searched = [str(r) for r in (args.runs or ([] if args.mlflow else [_default_runs_dir()]))]
        where = ", ".join(searched + ([args.mlflow] if args.mlflow else []))
        print(
            f"xaibench-tables: no CVPR 2021 run records in {where}; run `make reproduce-cvpr21` "
            "(or the sweeps in conf/experiment/cvpr21/) first",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {len(written)} files to {args.out}:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
