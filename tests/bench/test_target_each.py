"""target=each: a multi-label sample is explained once per class, in one process and across torchrun ranks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_vit
from xaibench.core.config import LoopConfig
from xaibench.core.loop import run_job
from xaibench.datasets.synthetic_pairs import SyntheticPairs
from xaibench.methods.attention import AttnGradCAM
from xaibench.metrics.class_sensitivity import ClassSensitivity
from xaibench.metrics.perturbation import Perturbation
from xaibench.metrics.segmentation import Segmentation
from xaibench.models.pairs_vit import MultiLabelViT


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _flat(tree, prefix=""):
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b.0": 1, "a.b.1": 2}`` (for approximate comparisons)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def _metrics():
    return {
        "class_sensitivity": ClassSensitivity(),
        "segmentation": Segmentation(),
        "perturbation": Perturbation(steps=[0.25, 0.5]),
    }


def test_rows_keyed_by_sample_and_class_and_batch_invariant(tmp_path) -> None:
    data = SyntheticPairs(size=3, image_size=32, seed=7)
    net = tiny_vit(img_size=32, patch_size=8, num_classes=4).model
    model = MultiLabelViT(model=net, name="tiny_multilabel")
    records = {}
    for bs in (1, 3):
        config = LoopConfig(device="cpu", target="each", spot_check=0, save_examples=4, batch_size=bs)
        records[bs] = run_job(data, model, AttnGradCAM(), _metrics(), tmp_path / f"bs{bs}", config)
    rows = _rows(tmp_path / "bs3" / "scores.csv")
    assert rows == _rows(tmp_path / "bs1" / "scores.csv")
    assert _flat(records[1]["metrics"]) == pytest.approx(_flat(records[3]["metrics"]))
    expected = [(data[i].id, c) for i in range(3) for c in data[i].labels]
    assert [(r["sample"], int(r["class"])) for r in rows] == expected
    assert [r["id"] for r in rows] == [f"{s}#{c}" for s, c in expected]
    for r in rows:  # each map explains its class; the class is the row's label
        assert int(r["label"]) == int(r["target"]) == int(r["class"])
    # a multi-label model: whether the explained class is detected (logit > 0) is the perturbation base hit
    logits = model.logits(model.normalize(torch.stack([data[i].image for i in range(3)])))
    detected = [bool(logits[i, c] > 0) for i in range(3) for c in data[i].labels]
    assert [r["detected"] == "True" for r in rows] == detected
    assert [int(r["perturbation/model_hit"]) for r in rows] == [int(d) for d in detected]
    assert records[3]["job"]["detection_rate"] == pytest.approx(sum(detected) / len(detected))
    assert records[3]["metrics"]["class_sensitivity"]["n_samples"] == 3
    # the saved examples are explained samples: both classes of the first two images, with their classes
    import numpy as np

    with np.load(tmp_path / "bs3" / "examples.npz") as z:
        assert list(z["ids"]) == [r["id"] for r in rows[:4]] and z["targets"].tolist() == [c for _, c in expected[:4]]


def test_each_needs_labels(tmp_path) -> None:
    from xaibench.core.types import DatasetAdapter, Sample

    class Unlabelled(DatasetAdapter):
        modality = "image"
        provides = frozenset({"mask"})

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> Sample:
            return Sample(id="x", image=torch.zeros(3, 32, 32), mask=torch.zeros(32, 32, dtype=torch.long))

    model = tiny_vit(img_size=32, patch_size=8, num_classes=4)
    with pytest.raises(ValueError, match="target=each explains every labelled class"):
        run_job(
            Unlabelled(), model, AttnGradCAM(), {"segmentation": Segmentation()}, tmp_path, LoopConfig(target="each")
        )
    with pytest.raises(ValueError, match="target="):
        LoopConfig(target="all")


ARGS = [
    "dataset=synthetic_pairs",
    "dataset.size=5",
    "dataset.image_size=64",
    "model=vit_micro",
    "method=attn_gradcam",
    "metric=[class_sensitivity,segmentation,perturbation]",
    "metrics.perturbation.steps=[0.3,0.6]",
    "target=each",
    "batch_size=1",
    "device=cpu",
    "precision=float64",
    "logger=none",
    "cache_dir=null",
    "force=true",
]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path) -> None:
    env = {
        **os.environ,
        "XAIBENCH_OUTPUT": str(tmp_path / "out"),
        "XAIBENCH_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }

    def run(prefix: list[str], folder: str) -> None:
        out = subprocess.run(
            [*prefix, "-m", "xaibench", *ARGS, f"hydra.run.dir={tmp_path / folder}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]

    run([sys.executable], "one")
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"], "two")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["metrics"]["class_sensitivity"]["n"] == 10 and one["metrics"]["class_sensitivity"]["n_samples"] == 5
    for runner in ("class_sensitivity", "segmentation", "perturbation"):
        a, b = _flat(one["metrics"][runner]), _flat(two["metrics"][runner])
        numbers = [k for k, v in a.items() if isinstance(v, (int, float))]
        assert {k: b[k] for k in numbers} == pytest.approx({k: a[k] for k in numbers}, rel=1e-9, abs=1e-12), runner
        assert {k: v for k, v in b.items() if k not in numbers} == {k: v for k, v in a.items() if k not in numbers}
    rows1, rows2 = _rows(tmp_path / "one" / "scores.csv"), _rows(tmp_path / "two" / "scores.csv")
    assert len(rows1) == 10 and [(r["sample"], r["class"]) for r in rows1] == [(r["sample"], r["class"]) for r in rows2]
    for a, b in zip(rows1, rows2, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            try:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-9, abs=1e-12, nan_ok=True), key
            except ValueError:
                assert a[key] == b[key], key
    assert json.loads((tmp_path / "two" / "timing.json").read_text())["world_size"] == 2
