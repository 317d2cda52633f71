"""make bench's machinery on a micro model: every image method timed against a forward, files written."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from xaibench.apps import bench as perf


def test_bench_times_every_image_method_and_writes_results(tmp_path) -> None:
    frame = perf.run(["vit_micro"], [1, 2], repeats=1, device=torch.device("cpu"), methods=None, seq_len=16)
    image_methods = {n for n, c in perf.method_configs(None).items() if "image" in perf.instantiate(c).modalities}
    assert set(frame["method"]) == image_methods
    assert set(frame["batch"]) == {1, 2}
    assert (frame["ratio"] > 0).all() and (frame["s_per_image"] > 0).all()
    md = perf.write(frame, tmp_path, torch.device("cpu"))
    csv = pd.read_csv(md.with_suffix(".csv"))
    assert len(csv) == len(frame) and "rollout" in md.read_text()


def test_checks_compare_with_the_targets_and_batch_one() -> None:
    rows = [
        ("rollout", 1, 0.10, 1.0),
        ("rollout", 16, 0.05, 1.1),  # per image halves: batching pays; ratio 1.1 <= 1.2
        ("full_lrp", 1, 0.50, 5.0),
        ("full_lrp", 16, 0.60, 6.5),  # per image grows and the ratio misses its 6x target
        ("grad_rollout", 1, 0.2, 2.0),
        ("grad_rollout", 16, 0.1, 2.0),  # no target
    ]
    frame = pd.DataFrame(
        [
            {"model": "vit_base", "method": m, "batch": b, "s_per_image": s, "ratio": r, "device": "cpu-2cores"}
            for m, b, s, r in rows
        ]
    )
    got = perf.checks(frame).set_index("method")
    assert got.loc["rollout", "meets_target"] and got.loc["rollout", "batching_never_costs"]
    assert got.loc["rollout", "per_image_b16_over_b1"] == 0.5
    assert not got.loc["full_lrp", "meets_target"] and not got.loc["full_lrp", "batching_never_costs"]
    assert got.loc["grad_rollout", "target"] is None or pd.isna(got.loc["grad_rollout", "target"])
    cuda = perf.checks(frame.assign(device="cuda-H100")).set_index("method")
    assert not cuda.loc["rollout", "batching_never_costs"]  # on CUDA batching must cut per-image time to 1/4


def test_make_bench_entry_point_writes_every_table(tmp_path) -> None:
    """``python -m xaibench.apps.bench`` as make bench runs it: timing, checks, divergence and memory tables."""
    import subprocess
    import sys

    args = ["--models", "vit_micro", "--batch-sizes", "1,2", "--repeats", "1", "--methods", "rollout,full_lrp"]
    args += ["--devices", "cpu", "--divergence-models", "vit_micro", "--divergence-samples", "2"]
    args += ["--metrics", "road,pointing_game", "--metric-model", "vit_micro", "--metric-batch", "2"]
    args += ["--memory-sizes", "20,40", "--out", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "xaibench.apps.bench", *args], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("cpu-2cores", "cpu-2cores_checks", "divergence_cpu-2cores", "metrics_cpu-2cores"):
        name = name.replace("2cores", f"{perf.os.cpu_count()}cores")
        assert (tmp_path / f"{name}.csv").is_file(), name
    assert "batching_never_costs" in (tmp_path / f"cpu-{perf.os.cpu_count()}cores.md").read_text()
    metrics = pd.read_csv(tmp_path / f"metrics_cpu-{perf.os.cpu_count()}cores.csv")
    assert sorted(metrics["metric"]) == ["pointing_game", "road"] and (metrics["s/image"] > 0).all()
    memory = (tmp_path / "memory.md").read_text()
    assert "| 20 |" in memory and "| 40 |" in memory


def test_multi_pass_methods_are_checked_per_pass() -> None:
    """Integrated gradients and SmoothGrad are judged per step / noise sample; the total is reported too."""
    rows = [("integrated_gradients", 50, 110.0), ("smoothgrad", 25, 70.0), ("saliency", 1, 2.2)]
    frame = pd.DataFrame(
        [
            {"model": "vit_base", "method": m, "batch": 16, "s_per_image": 1.0, "ratio": r, "passes": p}
            | {"device": "cpu-2cores"}
            for m, p, r in rows
        ]
    )
    got = perf.checks(frame).set_index("method")
    assert got.loc["integrated_gradients", "ratio_b16"] == 110.0  # the total, and per step 2.2 <= 2.5
    assert got.loc["integrated_gradients", "ratio_per_pass_b16"] == pytest.approx(2.2)
    assert got.loc["integrated_gradients", "meets_target"] and got.loc["saliency", "meets_target"]
    assert not got.loc["smoothgrad", "meets_target"]  # 2.8 per noise sample
    assert perf.instantiate({"_target_": "xaibench.methods.gradients.SmoothGrad", "nt_samples": 7}).passes == 7


def test_method_set_changes_the_timed_config_and_merge_keeps_the_other_rows(tmp_path) -> None:
    cpu = torch.device("cpu")
    first = perf.run(["vit_micro"], [1], 1, cpu, ["rollout", "integrated_gradients"], 16)
    perf.write(first, tmp_path, cpu)
    changes = perf.parse_method_set(["integrated_gradients.n_steps=3"])
    assert changes == {"integrated_gradients": {"n_steps": 3}}
    again = perf.run(["vit_micro"], [1], 1, cpu, ["integrated_gradients"], 16, changes)
    assert again["passes"].tolist() == [3] and first.set_index("method").loc["integrated_gradients", "passes"] != 3
    merged = perf.merge_previous(again, tmp_path, cpu)
    # rollout's row comes from the earlier run, integrated gradients' from this one (not both)
    assert merged["method"].tolist() == ["integrated_gradients", "rollout"]
    assert merged.set_index("method").loc["integrated_gradients", "passes"] == 3
    with pytest.raises(ValueError, match="<method>.<option>=<value>"):
        perf.parse_method_set(["n_steps=3"])
    with pytest.raises(ValueError, match="has no option 'steps'"):
        perf.run(["vit_micro"], [1], 1, cpu, ["integrated_gradients"], 16, {"integrated_gradients": {"steps": 3}})
