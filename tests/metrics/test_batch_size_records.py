"""What batch size changes in the records (issue 19, item 4; README "Batch size and rounding").

Batching is per sample (one-hot, min-max, threshold and relevance rescaling per sample), so batch 1 and
batch 4 compute the same numbers up to floating-point summation order: the matrix products of a batch of 4
round differently from four products of 1 (BLAS blocking). For a rounding-sensitive relevance method
(transformer attribution, whose LRP rules amplify rounding) on a tiny ViT:

* float64: the maps move by ~1e-14 of their scale; every hit, pixel count, logit and probability
  difference is bit-identical; only the per-image segmentation AP can move (it ranks pixel values, and the
  bilinear upsampling makes many exactly tied values that such a change can split or join).
* float32: the maps move by ~1e-5 of their scale; hits and predictions stay identical, pixel counts move by
  at most a few pixels, perturbation logit/probability differences and AP by rounding (the perturbed
  pixels at the boundary of a step can swap).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from xaibench.apps.cli import run_from_config
from xaibench.core.config import compose_config

OVERRIDES = [
    "dataset=synthetic_shapes",
    "dataset.size=4",
    "model=vit_micro",
    "method=transformer_attribution",
    "metric=[segmentation,perturbation]",
    "cache_dir=null",
    "spot_check=0",
    "logger=none",
]
#: the stated float32 tolerance: |Δ| ≤ ATOL + RTOL·|value| for logit/probability differences and AP
ATOL, RTOL = 2e-3, 1e-2
#: AP in float64: tied pixel values split or joined by 1e-14-level changes
AP_TOL_FLOAT64 = 1e-3
COUNTS = ("correct", "labeled", "inter_bg", "inter_fg", "union_bg", "union_fg")


def records(tmp_path: Path, precision: str, batch_size: int) -> tuple[list[dict[str, str]], dict]:
    out = tmp_path / f"{precision}_{batch_size}"
    cfg = compose_config(
        [*OVERRIDES, f"precision={precision}", f"batch_size={batch_size}", f"paths.output_dir={tmp_path}/out"]
    )
    run_from_config(cfg, out)
    rows = list(csv.DictReader((out / "scores.csv").open(newline="")))
    return rows, json.loads((out / "metrics.json").read_text())["metrics"]


def flat(metrics: dict) -> dict[str, object]:
    return {f"{runner}/{k}": v for runner, values in metrics.items() for k, v in values.items()}


def test_float64_records_are_identical_but_for_ap(tmp_path: Path) -> None:
    rows1, metrics1 = records(tmp_path, "float64", 1)
    rows4, metrics4 = records(tmp_path, "float64", 4)
    assert len(rows1) == len(rows4) == 4 and rows1[0].keys() == rows4[0].keys()
    ap_moves = []
    for one, four in zip(rows1, rows4, strict=True):
        for key in one:
            if key == "segmentation/ap":
                ap_moves.append(abs(float(one[key]) - float(four[key])))
            else:  # bit-identical: the CSV holds repr() of every float
                assert one[key] == four[key], (one["id"], key, one[key], four[key])
    assert max(ap_moves) <= AP_TOL_FLOAT64, ap_moves
    m1, m4 = flat(metrics1), flat(metrics4)
    assert m1.keys() == m4.keys()
    assert {k for k in m1 if m1[k] != m4[k]} <= {"segmentation/map"}
    assert abs(m1["segmentation/map"] - m4["segmentation/map"]) <= AP_TOL_FLOAT64


def test_float32_records_agree_within_rounding(tmp_path: Path) -> None:
    rows1, metrics1 = records(tmp_path, "float32", 1)
    rows4, metrics4 = records(tmp_path, "float32", 4)
    pixels = int(rows1[0]["segmentation/labeled"])
    moved = 0
    for one, four in zip(rows1, rows4, strict=True):
        for key in one:
            a, b = one[key], four[key]
            name = key.split("/")[-1]
            if key in ("id", "label", "target", "predicted") or "_hit" in key or name in ("model_pred", "nan_map"):
                assert a == b, (one["id"], key, a, b)  # class decisions never move
            elif name in COUNTS:
                assert abs(int(a) - int(b)) <= max(1, pixels // 1000), (one["id"], key, a, b)
            else:
                x, y = float(a), float(b)
                assert math.isfinite(x) and abs(x - y) <= ATOL + RTOL * abs(x), (one["id"], key, x, y)
                moved += x != y
    print(f"float32, batch 1 vs 4: {moved} values moved by rounding")  # 0 where the BLAS rounds alike
    m1, m4 = flat(metrics1), flat(metrics4)
    for key, value in m1.items():
        if isinstance(value, float):
            assert value == pytest.approx(m4[key], abs=ATOL, rel=RTOL), key
        else:
            assert value == m4[key], key
