"""The Hydra app end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from xaibench.core.config import CONF_DIR

QUICK = ["dataset=synthetic_shapes", "dataset.size=6", "model=vit_micro", "metric=segmentation", "batch_size=3"]


def xaibench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XAIBENCH_OUTPUT": str(cwd / "out"), "XAIBENCH_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "xaibench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_one_job(tmp_path) -> None:
    run_dir = tmp_path / "job"
    out = xaibench([*QUICK, "method=rollout", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["job"]["method"] == "rollout" and record["job"]["n"] == 6
    assert (run_dir / "scores.csv").read_text().count("\n") == 7
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_unknown_option_lists_the_choices(tmp_path) -> None:
    out = xaibench([*QUICK, "method=nope", "logger=none"], tmp_path)
    assert out.returncode != 0
    assert "Could not find 'method/nope'" in out.stderr and "rollout" in out.stderr


def test_incompatible_combination_is_one_clear_line(tmp_path) -> None:
    out = xaibench(
        [
            "dataset=synthetic_shapes",
            "model=vit_micro",
            "target=label",
            "metric=segmentation",
            "dataset._target_=xaibench.datasets.imagenet_seg.ImageNetSegmentation",
            "+dataset.path=/nonexistent.mat",
            "~dataset.size",
            "~dataset.seed",
            "logger=none",
        ],
        tmp_path,
    )
    assert out.returncode != 0
    assert "xaibench: error: FileNotFoundError" in out.stderr and "make data" in out.stderr
    assert "Traceback" not in out.stderr


def test_sweep_with_a_failing_job_records_it_and_exits_nonzero(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = xaibench(
        [
            "-m",
            *QUICK,
            "method=raw_attention,rollout",
            "precision=float32,fp16",
            "device=cpu",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert out.returncode != 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4
    done = [j for j in jobs if (j / "metrics.json").is_file()]
    failed = [j for j in jobs if (j / "error.json").is_file()]
    assert len(done) == 2 and len(failed) == 2
    assert "CUDA only" in json.loads((failed[0] / "error.json").read_text())["error"]
    summary = (sweep / "summary.md").read_text()
    assert "raw_attention" in summary and "Failed jobs" in summary


def test_multirun_is_mirrored_to_mlflow(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = xaibench(["-m", *QUICK, "method=raw_attention,attn_gradcam", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert out.returncode == 0, out.stderr
    import mlflow

    store = tmp_path / "out" / "mlflow"
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["xaibench"], output_format="pandas")
    jobs = runs[runs["tags.xaibench.kind"] == "job"]
    parents = runs[runs["tags.xaibench.kind"] == "sweep"]
    assert len(jobs) == 2 and len(parents) == 1
    assert set(jobs["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    assert set(jobs["params.method._target_"]) == {
        "xaibench.methods.attention.RawAttention",
        "xaibench.methods.attention.AttnGradCAM",
    }
    assert jobs["metrics.segmentation.miou"].between(0, 1).all()
    assert jobs["tags.weights_sha256_16"].str.len().eq(16).all()
    assert not (tmp_path / "mlruns").exists(), "artifacts must go under the output folder"
    artifacts = list((store / "artifacts").rglob("metrics.json"))
    assert len(artifacts) == 2


@pytest.mark.parametrize("config", sorted(str(p.relative_to(CONF_DIR)) for p in Path(CONF_DIR).rglob("*.yaml")))
def test_every_config_composes(config: str) -> None:
    import importlib.util

    from hydra import compose, initialize_config_dir

    plugins = {
        "launcher/ray.yaml": "hydra_plugins.hydra_ray_launcher",
        "launcher/submitit_slurm.yaml": "hydra_plugins.hydra_submitit_launcher",
        "launcher/submitit_local.yaml": "hydra_plugins.hydra_submitit_launcher",
    }
    if config in plugins and importlib.util.find_spec(plugins[config]) is None:
        pytest.skip(f"{config} needs the optional {plugins[config]} plugin (pip install 'xaibench[slurm]' / [ray])")

    group, _, name = config.removesuffix(".yaml").rpartition("/")
    overrides = (
        []
        if not group
        else [
            f"{group.split('/')[0]}={name}"
            if "/" not in group
            else f"{group.split('/')[0]}={'/'.join(group.split('/')[1:])}/{name}"
        ]
    )
    if group == "paths":
        overrides = [f"paths={name}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "logger=none"] if group != "logger" else overrides)
    assert cfg.paths.root_dir == str(ROOT)
