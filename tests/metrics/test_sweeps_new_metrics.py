"""The new metrics through the CLI: a sweep on synthetic_shapes where the random map is clearly worse than the
attention methods, and the sanity checks on the golden tiny ViT and the golden BERT.

Slow: the sweep needs the trained shapes ViT (``model=shapes_vit``), which it trains once into the model
cache (``XAIBENCH_CACHE``, default ``~/.cache/xaibench``; ``make demo`` trains the same one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOCALISATION = ("pointing_game", "relevance_mass", "relevance_rank")


def _xaibench(tmp_path: Path, *args: str, cache: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "XAIBENCH_OUTPUT": str(tmp_path / "out")}
    if not cache:
        env["XAIBENCH_CACHE"] = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "xaibench", *args, "logger=none", "cache_dir=null"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )


@pytest.mark.slow
def test_sweep_random_is_clearly_worse_than_attention_methods(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = _xaibench(
        tmp_path,
        "-m",
        "method=rollout,transformer_attribution,random",
        "metric=[road,insertion_deletion,pointing_game,relevance_mass,relevance_rank]",
        "dataset=synthetic_shapes",
        "model=shapes_vit",
        "limit=32",
        "metrics.insertion_deletion.step_pixels=784",  # 64 steps per 64 x 64 image
        f"hydra.sweep.dir={sweep}",
        cache=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = {}
    for path in sweep.glob("*/metrics.json"):
        record = json.loads(path.read_text())
        found[record["job"]["method"]] = record["metrics"]
    assert set(found) == {"rollout", "transformer_attribution", "random"}
    rand = found.pop("random")
    for method, m in found.items():
        for name, key in (("pointing_game", "hit"), ("pointing_game", "energy"), ("relevance_rank", "rank")):
            assert m[name][key] > rand[name][key] + 0.1, (method, name, key, m[name][key], rand[name][key])
        assert m["relevance_mass"]["mass"] > rand["relevance_mass"]["mass"] + 0.02, method
        assert m["insertion_deletion"]["insertion_auc"] > rand["insertion_deletion"]["insertion_auc"], method
        assert m["insertion_deletion"]["deletion_auc"] < rand["insertion_deletion"]["deletion_auc"], method
        assert m["road"]["morf_auc"] < rand["road"]["morf_auc"], method
    summary = (sweep / "summary.md").read_text()
    assert "pointing hit %" in summary and "ROAD MoRF % (↓)" in summary and "insertion AUC (↑)" in summary


@pytest.mark.slow
@pytest.mark.golden
def test_sanity_runs_on_the_golden_vit_and_bert(tmp_path) -> None:
    runs = {
        "vit": ["dataset=synthetic_shapes", "dataset.image_size=224", "model=vit_tiny", "method=attn_gradcam"],
        "bert": ["dataset=eraser_synthetic", "model=bert_small", "method=transformer_attribution_bert"],
    }
    for name, args in runs.items():
        out = _xaibench(tmp_path, *args, "metric=sanity", "limit=2", f"hydra.run.dir={tmp_path / name}")
        assert out.returncode == 0, out.stderr[-3000:]
        record = json.loads((tmp_path / name / "metrics.json").read_text())
        sanity = record["metrics"]["sanity"]
        assert sanity["n"] == 2 and sanity["layers"][0] == "head" and sanity["layers"][-1] == "embeddings"
