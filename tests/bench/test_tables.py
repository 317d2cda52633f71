"""``xaibench-tables``: the CVPR 2021 tables come from the run records (and follow them when they change)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import ROOT
from xaibench.apps.tables import main
from xaibench.metrics.perturbation import DEFAULT_STEPS, perturbation_auc, step_label
from xaibench.report import cvpr21

PAPER = ROOT / "results" / "cvpr21" / "paper.yaml"


def perturbation_metrics(base: float, positive: list[float], negative: list[float]) -> dict:
    """A perturbation runner's results for accuracy curves ``positive`` / ``negative`` (fractions)."""
    out = {"n": 10, "base_accuracy": base, "auc_definition": "trapezoid_0_to_0.9"}
    for direction, accs in (("positive", positive), ("negative", negative)):
        for definition in ("trapezoid_0_to_0.9", "eleven_point"):
            out[f"{direction}_auc_{definition}"] = perturbation_auc(accs, base, DEFAULT_STEPS, definition)
        out[f"{direction}_auc"] = out[f"{direction}_auc_trapezoid_0_to_0.9"]
        for step, acc in zip(DEFAULT_STEPS, accs, strict=True):
            out[f"{direction}_acc_{step_label(step)}"] = acc
    return out


def write_record(
    root: Path,
    name: str,
    *,
    method: str,
    dataset: str,
    metric: str,
    metrics: dict,
    target: str = "predicted",
    model: str = "vit_base",
    n: int = 10,
    n_available: int = 10,
    top1: float | None = None,
) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "choices": {"method": method, "dataset": dataset, "model": model, "metric": metric},
        "method": method,
        "dataset": dataset,
        "model": model,
        "target": target,
        "n": n,
        "n_available": n_available,
        "partial": n < n_available,
        "top1_accuracy": top1,
    }
    (run_dir / "metrics.json").write_text(json.dumps({"metrics": {metric: metrics}, "job": job}))
    return run_dir


def write_examples(run_dir: Path, method: str, ids=("a", "b"), mask: bool = True) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "ids": np.array(list(ids)),
        "images": rng.integers(0, 256, (len(ids), 3, 16, 16), dtype=np.uint8),
        "heatmaps": rng.random((len(ids), 16, 16)).astype(np.float16),
        "method": np.array(method),
    }
    if mask:
        arrays["masks"] = (rng.random((len(ids), 16, 16)) > 0.5).astype(np.uint8)
    np.savez_compressed(run_dir / "examples.npz", **arrays)


def falling(start: float) -> list[float]:
    return [max(start - 0.1 * i, 0.0) for i in range(1, 10)]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Records of every table: Table 1 (predicted and target), Table 2, Table 3 and ERASER."""
    root = tmp_path / "runs" / "cvpr21"
    for method in cvpr21.MAIN_METHODS:
        targets = ("predicted",) if method in ("rollout", "raw_attention") else ("predicted", "label")
        for target in targets:
            metrics = perturbation_metrics(0.8, falling(0.6), [0.8] * 9)
            d = write_record(
                root / "table1",
                f"{method}-{target}",
                method=method,
                dataset="imagenet_val",
                metric="perturbation",
                metrics=metrics,
                target=target,
                top1=0.8,
            )
            if target == "predicted":
                write_examples(d, method, mask=False)
    for i, method in enumerate([*cvpr21.MAIN_METHODS, "lrp_rollout", "partial_lrp_grad_block1", "partial_lrp_grad"]):
        seg = {"pixel_accuracy": 0.5 + 0.01 * i, "miou": 0.4, "map": 0.7, "n": 10}
        d = write_record(
            root / "table2", method, method=method, dataset="imagenet_seg", metric="segmentation", metrics=seg
        )
        write_examples(d, method)
    for method in ("lrp_rollout", "partial_lrp_grad_block1", "partial_lrp_grad"):
        metrics = perturbation_metrics(0.8, falling(0.7), [0.7] * 9)
        write_record(
            root / "table3", method, method=method, dataset="imagenet_val", metric="perturbation", metrics=metrics
        )
    for method in ("raw_attention", "rollout_bert", "attn_gradcam"):
        f1 = {f"{avg}_f1@{k}": 0.01 * k for avg in ("micro", "macro") for k in range(5, 85, 5)}
        write_record(
            root / "eraser",
            method,
            method=method,
            dataset="eraser_movies",
            metric="token_f1",
            metrics=f1,
            target="label",
            model="bert_movies",
            n=199,
            n_available=199,
        )
    return root


def build(runs: Path, out: Path, *extra: str) -> int:
    return main(["--runs", str(runs), "--out", str(out), *extra])


def row(markdown: str, start: str) -> list[str]:
    """The cells of the first Markdown row starting with ``| start``."""
    for line in markdown.splitlines():
        if line.startswith(f"| {start}"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {start!r} in\n{markdown}")


def test_every_table_and_figure_is_built_from_the_records(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert build(runs, out) == 0
    for name in ("table1_perturbation", "table2_segmentation", "table3_ablation", "eraser_token_f1"):
        assert (out / f"{name}.md").is_file() and (out / f"{name}.csv").is_file()
    for name in (
        "perturbation_curves.png",
        "table3_perturbation_curves.png",
        "eraser_token_f1.png",
        "examples_imagenet_seg.png",
        "examples_imagenet_val.png",
        "perturbation_curves.csv",
        "eraser_token_f1_curves.csv",
        "README.md",
    ):
        assert (out / name).is_file(), name

    t1 = (out / "table1_perturbation.md").read_text()
    ours = perturbation_auc(falling(0.6), 0.8, DEFAULT_STEPS, "trapezoid_0_to_0.9")
    eleven = perturbation_auc(falling(0.6), 0.8, DEFAULT_STEPS, "eleven_point")
    cells = row(t1, "Ours (`transformer_attribution`) | predicted")
    assert cells[2:5] == [f"{ours:.2f}", "17.03", f"{ours - 17.03:+.2f}"]
    assert cells[8] == f"{eleven:.2f}" and cells[10:] == ["80.00", "10", "no"]
    assert "trapezoidal" in t1 and "x = 0" in t1  # the AUC definition is stated
    assert "Rollout and raw attention are class-agnostic" in t1
    # class-agnostic methods have no target-class row
    assert "| rollout (`rollout`) | target" not in t1
    assert row(t1, "GradCAM (`attn_gradcam`) | target")[3] == "33.56"

    t2 = (out / "table2_segmentation.md").read_text()
    cells = row(t2, "rollout (`rollout`)")
    assert cells[1:4] == ["50.00", "73.54", "-23.54"]
    assert "lrp_rollout" not in t2  # ablation variants belong to Table 3

    t3 = (out / "table3_ablation.md").read_text()
    assert row(t3, "Ours w/o ∇A (`lrp_rollout`)")[1:4] == ["56.00", "77.66", "-21.66"]
    assert row(t3, "Ours (`transformer_attribution`)")[1:4] == ["55.00", "79.70", "-24.70"]

    eraser = (out / "eraser_token_f1.md").read_text()
    assert row(eraser, "rollout (`rollout_bert`)")[1:3] == ["5.00", "10.00"]
    assert row(eraser, "LRP (`full_lrp`)")[1] == "not run"
    assert "no numeric values are published" in eraser and "Δ" not in eraser.split("\n\n")[1]

    long = (out / "table2_segmentation.csv").read_text().splitlines()
    assert long[0].split(",")[:8] == ["table", "method", "paper_name", "class", "metric", "ours", "paper", "delta"]
    assert any(
        line.startswith("table2_segmentation,rollout,rollout,predicted,pixel_accuracy,50.0,73.54,-23.54")
        for line in long
    )


def test_tables_change_when_a_record_changes(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert build(runs, out, "--no-figures") == 0
    before = row((out / "table2_segmentation.md").read_text(), "Ours (`transformer_attribution`)")
    assert before[1] == "55.00"

    path = runs / "table2" / "transformer_attribution" / "metrics.json"
    record = json.loads(path.read_text())
    record["metrics"]["segmentation"]["pixel_accuracy"] = 0.8123
    path.write_text(json.dumps(record))
    assert build(runs, out, "--no-figures") == 0
    after = row((out / "table2_segmentation.md").read_text(), "Ours (`transformer_attribution`)")
    assert after[1:4] == ["81.23", "79.70", "+1.53"]
    assert "81.23" in (out / "README.md").read_text()
    assert (
        "table2_segmentation,transformer_attribution,Ours,predicted,pixel_accuracy,81.23,79.7,1.53"
        in (out / "table2_segmentation.csv").read_text()
    )


def test_newest_record_wins_and_a_newer_failure_is_shown(runs: Path, tmp_path: Path) -> None:
    newer = write_record(
        runs / "rerun",
        "rollout",
        method="rollout",
        dataset="imagenet_seg",
        metric="segmentation",
        metrics={"pixel_accuracy": 0.9, "miou": 0.5, "map": 0.6},
        n=2,
        n_available=10,
    )
    later = time.time() + 10
    os.utime(newer / "metrics.json", (later, later))
    # a re-run that failed over an old success: the old number must not be shown as current
    failed_dir = runs / "table2" / "raw_attention"
    (failed_dir / "error.json").write_text(
        json.dumps(
            {
                "status": "failed",
                "error": "ValueError: broken",
                "overrides": [],
                # error.json carries the job's choices and target (the records schema), no Hydra file is re-read
                "choices": {"method": "raw_attention", "dataset": "imagenet_seg", "metric": "segmentation"},
                "target": "predicted",
            }
        )
    )
    os.utime(failed_dir / "error.json", (later, later))
    (failed_dir / ".hydra").mkdir()
    (failed_dir / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "runtime": {
                        "choices": {"method": "raw_attention", "dataset": "imagenet_seg", "metric": "segmentation"}
                    }
                }
            }
        )
    )
    (failed_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"target": "predicted"}))

    out = tmp_path / "results"
    assert build(runs, out, "--no-figures") == 0
    t2 = (out / "table2_segmentation.md").read_text()
    assert row(t2, "rollout (`rollout`)")[1] == "90.00"
    assert row(t2, "rollout (`rollout`)")[-2:] == ["2", "yes"]
    assert row(t2, "raw attention (`raw_attention`)")[1] == "failed"
    assert "ValueError: broken" in t2 and "older record(s)" in t2 and "Partial runs" in t2


def test_no_records_writes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "results"
    assert build(tmp_path / "empty", out) == 1
    assert not out.exists()
    assert "make reproduce-cvpr21" in capsys.readouterr().err
    assert build(tmp_path / "nope", out) == 2  # an explicit folder that does not exist


def test_records_from_an_mlflow_store(runs: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from xaibench.report.tracking import MlflowLogger

    logger = MlflowLogger(store_dir=str(tmp_path / "mlflow"))
    for run_dir in (runs / "table2" / "transformer_attribution", runs / "table2" / "rollout"):
        record = json.loads((run_dir / "metrics.json").read_text())
        logger.log_job(OmegaConf.create({"method": {"x": 1}}), run_dir, record)
    out = tmp_path / "results"
    assert main(["--mlflow", logger.tracking_uri, "--out", str(out), "--no-figures"]) == 0
    t2 = (out / "table2_segmentation.md").read_text()
    assert row(t2, "Ours (`transformer_attribution`)")[1] == "55.00"
    assert row(t2, "GradCAM (`attn_gradcam`)")[1] == "not run"
    assert not list(out.glob("*.png"))


def test_paper_numbers_and_sources() -> None:
    paper = cvpr21.load_paper(PAPER)
    tables = paper["tables"]
    t1 = tables["table1_perturbation"]["values"]
    assert t1["transformer_attribution"]["predicted"] == {"negative": 54.16, "positive": 17.03}
    assert t1["transformer_attribution"]["label"] == {"negative": 55.04, "positive": 16.04}
    assert "label" not in t1["rollout"] and "label" not in t1["raw_attention"]
    assert tables["table2_segmentation"]["values"]["partial_lrp"] == {
        "pixel_accuracy": 76.31,
        "miou": 57.94,
        "map": 84.67,
    }
    assert tables["table3_ablation"]["values"]["partial_lrp_grad"]["negative"] == 37.42
    assert tables["eraser_token_f1"]["values"] is None  # published only as a plot
    for name, spec in tables.items():
        assert spec["source"] and spec["caption"], name
        for method in spec["values"] or {}:
            assert method in paper["methods"], method
            assert (ROOT / "conf" / "method" / f"{method}.yaml").is_file(), method
    assert "issue #31" in tables["table1_perturbation"]["auc"]
