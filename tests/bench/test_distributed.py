"""torchrun data parallelism: 2 CPU processes (gloo) give the single-process records.

Batch size 1 on both sides, so each sample's map is computed the same way and the comparison checks the
sharding and merging exactly (batch-size invariance itself is tested in test_loop.py).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

ARGS = [
    "dataset=synthetic_shapes",
    "dataset.size=7",
    "dataset.image_size=64",
    "model=vit_micro",
    "method=attn_gradcam",
    "metric=segmentation",
    "batch_size=1",
    "device=cpu",
    "precision=float64",
    "logger=none",
    "cache_dir=null",  # both runs compute every map
    "force=true",  # and the second must not reuse the first one's finished record
]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_gloo_ranks_equal_one_process(tmp_path) -> None:
    env = {
        **os.environ,
        "XAIBENCH_OUTPUT": str(tmp_path / "out"),
        "XAIBENCH_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    single = subprocess.run(
        [sys.executable, "-m", "xaibench", *ARGS, f"hydra.run.dir={tmp_path / 'one'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "xaibench",
            *ARGS,
            f"hydra.run.dir={tmp_path / 'two'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    seg1, seg2 = one["metrics"]["segmentation"], two["metrics"]["segmentation"]
    for key in ("total_correct", "total_label", "total_inter", "total_union", "n", "nan_maps"):
        assert seg1[key] == seg2[key], key
    for key in ("pixel_accuracy", "miou", "map"):
        assert seg2[key] == pytest.approx(seg1[key], rel=1e-9, abs=1e-12), key
    rows1, rows2 = _rows(tmp_path / "one" / "scores.csv"), _rows(tmp_path / "two" / "scores.csv")
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2] and len(rows2) == 7
    for a, b in zip(rows1, rows2, strict=True):
        assert {k: v for k, v in a.items() if k != "segmentation/ap"} == {
            k: v for k, v in b.items() if k != "segmentation/ap"
        }
        assert float(b["segmentation/ap"]) == pytest.approx(float(a["segmentation/ap"]), rel=1e-9)
    assert json.loads((tmp_path / "two" / "timing.json").read_text())["world_size"] == 2
