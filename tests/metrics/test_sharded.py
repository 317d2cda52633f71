"""torchrun, 2 gloo ranks, equals one process for every new metric runner (one job runs all of them).

Batch size 1 on both sides, so every sample is computed the same way; ROAD's noise and the sanity checks'
randomisation are seeded per sample id and per layer, so they do not depend on the rank either.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

METRICS = ["insertion_deletion", "road", "pointing_game", "relevance_mass", "relevance_rank", "sanity"]
ARGS = [
    "dataset=synthetic_shapes",
    "dataset.size=5",
    "model=vit_micro",
    "method=transformer_attribution",
    f"metric=[{','.join(METRICS)}]",
    "metrics.insertion_deletion.step_pixels=6272",  # 512 px (1/8 of the 64 x 64 image) per step
    "metrics.road.fractions=[0.2,0.5,0.8]",
    "batch_size=1",
    "device=cpu",
    "precision=float64",
    "logger=none",
    "cache_dir=null",
    "force=true",
]


def _run(tmp_path, prefix, folder):
    env = {
        **os.environ,
        "XAIBENCH_OUTPUT": str(tmp_path / "out"),
        "XAIBENCH_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, *prefix, "-m", "xaibench", *ARGS, f"hydra.run.dir={tmp_path / folder}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / folder / "scores.csv").open(newline="")))
    return json.loads((tmp_path / folder / "metrics.json").read_text()), rows


def _close(a, b) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9, abs=1e-12)


def test_two_gloo_ranks_equal_one_process_for_every_new_metric(tmp_path) -> None:
    one, rows1 = _run(tmp_path, [], "one")
    two, rows2 = _run(tmp_path, ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"], "two")
    for name in METRICS:
        m1, m2 = one["metrics"][name], two["metrics"][name]
        assert m1.keys() == m2.keys(), name
        for key in m1:
            assert _close(m1[key], m2[key]), (name, key, m1[key], m2[key])
        assert m1["n"] == 5, name
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2] and len(rows1) == 5
    for a, b in zip(rows1, rows2, strict=True):
        assert a.keys() == b.keys()
        assert all(_close(a[k], b[k]) for k in a), [k for k in a if not _close(a[k], b[k])]
    assert json.loads((tmp_path / "two" / "timing.json").read_text())["world_size"] == 2
