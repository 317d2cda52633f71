"""The float64 spot check flags maps dominated by rounding and stays quiet on well-conditioned ones."""

from __future__ import annotations

import json

from helpers import golden_dir, load_golden_vit
from xaibench.core.loop import LoopConfig, run_job
from xaibench.datasets.imagenet_seg import ImageNetSegmentation
from xaibench.methods.attention import Rollout
from xaibench.methods.lrp import FullLRP
from xaibench.metrics.segmentation import Segmentation


def _run(tmp_path, method, name):
    ds = ImageNetSegmentation(str(golden_dir() / "synthetic_gtsegs.mat"))
    model = load_golden_vit("vit_tiny")  # random weights: the ill-conditioned case of the golden README
    before = model.weights_hash()
    record = run_job(
        ds,
        model,
        method,
        {"segmentation": Segmentation()},
        tmp_path / name,
        LoopConfig(device="cpu", precision="float32", batch_size=2, limit=2, spot_check=2),
    )
    assert model.weights_hash() == before  # the float64 round trip leaves the weights as they were
    return record["job"]["float64_spot_check"]


def test_flags_full_lrp_on_random_weights_and_not_rollout(tmp_path, caplog) -> None:
    lrp = _run(tmp_path, FullLRP(), "lrp")
    assert lrp["flagged"] and lrp["max_rel_divergence"] > 0.05
    assert "dominated by rounding" in caplog.text
    caplog.clear()
    rollout = _run(tmp_path, Rollout(start_layer=1), "rollout")
    assert not rollout["flagged"] and rollout["max_rel_divergence"] < 1e-4
    assert "dominated by rounding" not in caplog.text
    stored = json.loads((tmp_path / "rollout" / "metrics.json").read_text())["job"]["float64_spot_check"]
    assert stored == rollout
