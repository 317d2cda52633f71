"""make bench's machinery on a micro model: every image method timed against a forward, files written."""

from __future__ import annotations

import pandas as pd
import torch

from xaibench import perf


def test_bench_times_every_image_method_and_writes_results(tmp_path) -> None:
    frame = perf.run(["vit_micro"], [1, 2], repeats=1, device=torch.device("cpu"), methods=None, seq_len=16)
    image_methods = {n for n, c in perf.method_configs(None).items() if "image" in perf.instantiate(c).modalities}
    assert set(frame["method"]) == image_methods
    assert set(frame["batch"]) == {1, 2}
    assert (frame["ratio"] > 0).all() and (frame["s_per_image"] > 0).all()
    md = perf.write(frame, tmp_path, torch.device("cpu"))
    csv = pd.read_csv(md.with_suffix(".csv"))
    assert len(csv) == len(frame) and "rollout" in md.read_text()
