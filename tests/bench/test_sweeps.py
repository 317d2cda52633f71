"""Sweeps across processes: local-parallel and submitit launchers, Ray (when installed), resumable re-runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

QUICK = ["dataset=synthetic_shapes", "dataset.size=4", "model=vit_micro", "metric=segmentation", "batch_size=2"]


def xaibench(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "XAIBENCH_OUTPUT": str(cwd / "out"), "XAIBENCH_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "xaibench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _jobs(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").is_file())


def test_parallel_launcher_runs_jobs_in_processes_and_records_them(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = xaibench(
        ["-m", "launcher=parallel", *QUICK, "method=raw_attention,rollout", f"hydra.sweep.dir={sweep}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Joblib.Parallel" in out.stdout + out.stderr  # the joblib launcher ran the jobs
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    assert {json.loads((j / "metrics.json").read_text())["job"]["method"] for j in jobs} == {"raw_attention", "rollout"}
    assert all(json.loads((j / "metrics.json").read_text())["job"]["device"] == "cpu" for j in jobs)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["xaibench"])
    assert (runs["tags.xaibench.kind"] == "job").sum() == 2
    parent = runs[runs["tags.xaibench.kind"] == "sweep"]["run_id"].iloc[0]
    assert set(runs[runs["tags.xaibench.kind"] == "job"]["tags.mlflow.parentRunId"]) == {parent}


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher not installed (pip install 'xaibench[slurm]')",
)
def test_submitit_local_executor_runs_a_job(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = xaibench(
        ["-m", "launcher=submitit_local", *QUICK, "method=rollout", "logger=none", f"hydra.sweep.dir={sweep}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (job,) = _jobs(sweep)
    assert json.loads((job / "metrics.json").read_text())["metrics"]["segmentation"]["n"] == 4
    assert (sweep / ".submitit").is_dir()


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="hydra-ray-launcher not installed (pip install 'xaibench[ray]')",
)
def test_ray_launcher_runs_a_two_job_sweep(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = xaibench(
        ["-m", "launcher=ray", *QUICK, "method=rollout,raw_attention", "logger=none", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(_jobs(sweep)) == 2


def test_rerunning_a_finished_sweep_does_no_work(tmp_path) -> None:
    args = ["-m", *QUICK, "method=raw_attention,attn_gradcam", "logger=none"]
    first = xaibench([*args, f"hydra.sweep.dir={tmp_path / 'a'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = xaibench([*args, f"hydra.sweep.dir={tmp_path / 'b'}"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    for a, b in zip(_jobs(tmp_path / "a"), _jobs(tmp_path / "b"), strict=True):
        timing = json.loads((b / "timing.json").read_text())
        assert timing["reused_from"] == str(a.resolve())  # skipped: no attribution, no metric work
        for f in ("metrics.json", "scores.csv"):
            assert (a / f).read_bytes() == (b / f).read_bytes()
    forced = xaibench([*args, "force=true", f"hydra.sweep.dir={tmp_path / 'c'}"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    for job in _jobs(tmp_path / "c"):
        timing = json.loads((job / "timing.json").read_text())
        assert timing["attributions_computed"] == 0 and timing["attributions_cached"] == 4  # from the cache
    changed = xaibench([*args[:-1], "logger=none", "dataset.seed=1", f"hydra.sweep.dir={tmp_path / 'd'}"], tmp_path)
    assert changed.returncode == 0
    for job in _jobs(tmp_path / "d"):
        assert json.loads((job / "timing.json").read_text())["attributions_computed"] == 4
