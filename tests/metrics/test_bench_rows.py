"""The metric rows of ``make bench`` run end to end on a seconds-fast model (the lead runs ViT-B/16)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from xaibench.apps import bench_metrics


def test_metric_rows_on_a_micro_vit(tmp_path) -> None:
    frame = bench_metrics.run("vit_micro", 2, torch.device("cpu"), list(bench_metrics.METRICS), 3136)
    rows = frame.set_index("metric")
    assert list(rows.index) == list(bench_metrics.METRICS)
    # forwards by definition: 1 + 2 * 9 re-classifications; 2 * 16 + 1 (16 steps of 64 px at 32 x 32); 1 + 2 * 9
    assert rows.loc["perturbation", "forwards"] == 19
    assert rows.loc["insertion_deletion", "forwards"] == 33
    assert rows.loc["road", "forwards"] == 19
    assert rows.loc["relevance_rank", "forwards"] == 0
    assert (rows["s/image"] > 0).all() and rows.loc["road", "eager s/image"] > 0
    path = bench_metrics.write(frame, tmp_path, torch.device("cpu"))
    assert "fused saving %" in path.read_text() and (tmp_path / path.name.replace(".md", ".csv")).is_file()
    # --merge: re-timing one runner replaces its row and keeps the others
    again = bench_metrics.run("vit_micro", 2, torch.device("cpu"), ["pointing_game"], 3136)
    bench_metrics.write(again, tmp_path, torch.device("cpu"), merge=True)
    merged = pd.read_csv(tmp_path / path.name.replace(".md", ".csv")).set_index("metric")
    assert sorted(merged.index) == sorted(bench_metrics.METRICS)
    assert merged.loc["pointing_game", "s/image"] == pytest.approx(float(again["s/image"].iloc[0]))
    assert merged.loc["road", "s/image"] == pytest.approx(float(rows.loc["road", "s/image"]))


def test_new_metrics_reach_the_sweep_summary_and_xaibench_tables(tmp_path) -> None:
    from helpers import tiny_vit
    from xaibench.core.config import LoopConfig
    from xaibench.core.loop import run_job
    from xaibench.core.records import load_run_records
    from xaibench.datasets.synthetic import SyntheticShapes
    from xaibench.methods.attention import Rollout
    from xaibench.metrics.localisation import PointingGame, RelevanceRank
    from xaibench.report.cvpr21 import build_tables
    from xaibench.report.summary import other_metrics_frame, summarize_sweep

    config = LoopConfig(device="cpu", batch_size=2, spot_check=0, cache_dir=None, save_examples=0)
    runners = {"pointing_game": PointingGame(), "relevance_rank": RelevanceRank()}
    run_job(SyntheticShapes(size=2, image_size=32), tiny_vit(), Rollout(), runners, tmp_path / "sweep" / "0", config)
    frame = other_metrics_frame(load_run_records([tmp_path / "sweep"]))
    assert list(frame["method"]) == ["rollout"] and "pointing hit %" in frame and "rel. rank %" in frame
    written = build_tables(load_run_records([tmp_path / "sweep"]), tmp_path / "tables", {}, figures=False)
    assert tmp_path / "tables" / "other_metrics.md" in written
    assert "pointing hit %" in (tmp_path / "tables" / "other_metrics.md").read_text()
    summarize_sweep(tmp_path / "sweep", figure=False)
    assert "rel. rank %" in (tmp_path / "sweep" / "summary.md").read_text()
