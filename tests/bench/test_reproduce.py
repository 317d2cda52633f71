"""``make reproduce-cvpr21`` on small stand-ins: the experiment configs, the data checks, the whole pipeline.

Stand-ins: a data folder holding the golden six-image ``synthetic_gtsegs.mat`` as ``gtsegs_ijcv.mat``, a
four-image ImageNet-val-style class-folder tree, and the golden ERASER reviews as ``movies/``; models
``vit_tiny`` and ``bert_small`` (golden, random weights) instead of ``vit_base`` and ``bert_movies``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from helpers import golden_dir
from xaibench.apps import reproduce, reproduce_plan
from xaibench.core.checks import check_compatible
from xaibench.core.config import CONF_DIR, LoopConfig

EXPERIMENTS = sorted(
    str(p.relative_to(Path(CONF_DIR) / "experiment"))[: -len(".yaml")]
    for p in (Path(CONF_DIR) / "experiment").rglob("*.yaml")
)
CVPR21 = [e for e in EXPERIMENTS if e.startswith("cvpr21/")]
WNIDS = ("n01440764", "n01443537")  # ImageNet-1k classes 0 and 1
STANDIN_MODELS = {"image": "vit_tiny", "text": "bert_small"}
STANDIN_DATASETS = ["imagenet_val.num_classes=2"]
QUIET = ["logger=none", "cache_dir=null"]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src, target_is_directory=src.is_dir())
    except OSError:
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder laid out like ``$XAIBENCH_DATA`` with small stand-ins of every asset."""
    golden = golden_dir()
    root = tmp_path_factory.mktemp("data")
    _link_or_copy(golden / "synthetic_gtsegs.mat", root / "gtsegs_ijcv.mat")
    _link_or_copy(golden / "eraser_synthetic" / "data", root / "movies")
    number = 1
    for c, wnid in enumerate(WNIDS):
        (root / "imagenet" / "val" / wnid).mkdir(parents=True)
        for i in range(2):
            rng = np.random.default_rng(10 * c + i)
            image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
            image.save(root / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG", quality=95)
            number += 1
    return root


def standin_args(data_dir: Path, out: Path) -> list[str]:
    args = ["--data-dir", str(data_dir), "--output-dir", str(out / "outputs"), "--results-dir", str(out / "results")]
    args += ["--image-model", STANDIN_MODELS["image"], "--text-model", STANDIN_MODELS["text"]]
    for item in STANDIN_DATASETS:
        args += ["--dataset-set", item]
    return [*args, *QUIET]


# -- the configs ----------------------------------------------------------------------------------------


def test_every_cvpr21_experiment_is_run_by_reproduce() -> None:
    assert sorted(f"cvpr21/{name}" for name, _ in reproduce.EXPERIMENTS) == CVPR21


@pytest.mark.parametrize("experiment", CVPR21)
def test_cvpr21_config_files(experiment: str) -> None:
    text = (Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert f"xaibench -m experiment={experiment}" in text  # the run command, as a comment
    raw = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / f"{experiment}.yaml"))
    assert raw["hydra"]["sweeper"]["params"]["method"]
    assert raw["hydra"]["sweep"]["dir"].startswith("${paths.output_dir}/cvpr21/")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment: str, data_dir: Path) -> None:
    """Each experiment with stand-in data and models: dataset, model, every method of the sweep and the
    metrics instantiate, and each job passes the loop's compatibility check (or is one that reproduce
    leaves out, saying why)."""
    from xaibench.core.types import DatasetAdapter

    base = [f"experiment={experiment}", f"paths.data_dir={data_dir}", *QUIET]
    cfg = reproduce_plan.compose(base)
    dataset_cls = reproduce_plan._target_class(cfg.dataset)
    assert dataset_cls is not None and issubclass(dataset_cls, DatasetAdapter)
    dataset_overrides = ["dataset.num_classes=2"] if dataset_cls.__name__ == "ImageNetVal" else []
    base += [f"model={STANDIN_MODELS[dataset_cls.modality]}", *dataset_overrides]
    cfg = reproduce_plan.compose(base)
    assert not reproduce_plan.missing_assets(cfg), reproduce_plan.missing_assets(cfg)
    dataset = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    metrics = {name: instantiate(spec) for name, spec in cfg.metrics.items()}
    assert len(dataset) > 0 and metrics
    methods = reproduce_plan._sweep_methods(cfg, [])
    assert methods
    for name in methods:
        method_cfg = reproduce_plan.compose([*base, f"method={name}"])
        method = instantiate(method_cfg.method)
        reason = reproduce_plan.method_support(name, dataset.modality)
        if reason is not None:
            assert dataset.modality not in method.modalities, reason
            continue
        check_compatible(dataset, model, method, metrics, LoopConfig(target=str(cfg.target), limit=2))


def test_table1_sweeps_skip_the_class_agnostic_target_jobs() -> None:
    predicted = reproduce_plan._sweep_methods(reproduce_plan.compose(["experiment=cvpr21/table1_perturbation"]), [])
    label_cfg = reproduce_plan.compose(["experiment=cvpr21/table1_perturbation_target"])
    assert set(predicted) == {
        "raw_attention",
        "rollout",
        "attn_gradcam",
        "full_lrp",
        "partial_lrp",
        "transformer_attribution",
    }
    assert label_cfg.target == "label"
    assert set(reproduce_plan._sweep_methods(label_cfg, [])) == set(predicted) - {"raw_attention", "rollout"}


# -- data checks ----------------------------------------------------------------------------------------


def test_missing_data_skips_each_table_naming_the_asset_and_command(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "nodata"
    empty.mkdir()
    args = ["--data-dir", str(empty), "--output-dir", str(tmp_path / "out"), "--results-dir", str(tmp_path / "res")]
    assert reproduce.main([*args, *QUIET]) == reproduce.EXIT_OK
    out = capsys.readouterr().out
    for name, _ in reproduce.EXPERIMENTS:
        assert f"SKIP {name}" in out
    assert "gtsegs_ijcv.mat" in out and "`xaibench-data imagenet_seg`" in out and "`make data`" in out
    assert "ImageNet validation images" in out and "`xaibench-data imagenet_val`" in out
    assert "`xaibench-data eraser_movies`" in out and "`xaibench-data vit_base`" in out
    assert "xaibench-finetune" in out  # the BERT classifier
    assert "no run records yet" in out
    assert not (tmp_path / "res").exists() and not (tmp_path / "out").exists()
    assert reproduce.main([*args, "--strict", *QUIET]) == reproduce.EXIT_SKIPPED


def test_a_table_whose_data_is_present_runs_while_the_others_skip(tmp_path: Path, data_dir: Path, capsys) -> None:
    partial = tmp_path / "data"
    partial.mkdir()
    _link_or_copy(data_dir / "gtsegs_ijcv.mat", partial / "gtsegs_ijcv.mat")
    args = ["--data-dir", str(partial), "--image-model", "vit_tiny", "--dry-run", "--text-model", "bert_small"]
    assert reproduce.main([*args, "--limit", "2", *QUIET]) == 0
    out = capsys.readouterr().out
    assert "RUN  table2_segmentation" in out and "RUN  table3_ablation_segmentation" in out
    assert "SKIP table1_perturbation (" in out and "SKIP eraser_token_f1" in out
    command = next(line for line in out.splitlines() if "experiment=cvpr21/table2_segmentation" in line)
    assert " -m xaibench -m " in command and "limit=2" in command and "model=vit_tiny" in command


def test_text_methods_without_text_support_are_left_out_with_the_reason(data_dir: Path, tmp_path: Path) -> None:
    opts = reproduce_plan.Options(data_dir=str(data_dir), text_model="bert_small", overrides=list(QUIET))
    plan = reproduce_plan.plan_experiment("eraser_token_f1", "ERASER", opts)
    assert not plan.skipped
    assert {"raw_attention", "rollout_bert", "attn_gradcam"} <= set(plan.methods)
    sweep = reproduce_plan._sweep_methods(reproduce_plan.compose(["experiment=cvpr21/eraser_token_f1"]), [])
    assert sorted(plan.methods + list(plan.left_out)) == sorted(sweep)
    for method, reason in plan.left_out.items():  # e.g. relevance methods before the LRP engine has BERT
        assert "inputs only" in reason, (method, reason)
    assert plan.command[-1] == f"method={','.join(plan.methods)}"
    assert "supports ['image', 'text'] inputs only, not audio" in reproduce_plan.method_support(
        "raw_attention", "audio"
    )
    assert reproduce_plan.method_support("nope", "text") == "no method config conf/method/nope.yaml"


def test_bert_checkpoint_option_and_usage_errors(data_dir: Path, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    opts = reproduce_plan.Options(data_dir=str(data_dir), bert_checkpoint=str(checkpoint))
    plan = reproduce_plan.plan_experiment("eraser_token_f1", "ERASER", opts)
    assert not plan.missing and f"model.checkpoint={checkpoint}" in plan.command
    opts = reproduce_plan.Options(data_dir=str(data_dir), bert_checkpoint=str(tmp_path / "absent"))
    plan = reproduce_plan.plan_experiment("eraser_token_f1", "ERASER", opts)
    assert plan.missing and "xaibench-finetune" in str(plan.missing[0])
    assert reproduce.main(["--only", "table9"]) == reproduce.EXIT_USAGE
    assert reproduce.main(["--limit", "0"]) == reproduce.EXIT_USAGE
    assert reproduce.main(["--dataset-set", "num_classes=2"]) == reproduce.EXIT_USAGE
    assert "table1_perturbation" in capsys.readouterr().err


# -- end to end -----------------------------------------------------------------------------------------


def _cells(markdown: str, start: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {start}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_reproduce_one_table_on_standins(data_dir: Path, tmp_path: Path) -> None:
    """The fast variant: Table 2 with two methods, LIMIT=2, then the tables from its records."""
    args = [*standin_args(data_dir, tmp_path), "--limit", "2", "--only", "table2_segmentation"]
    assert reproduce.main([*args, "--methods", "raw_attention,transformer_attribution"]) == 0
    sweep = tmp_path / "outputs" / "cvpr21" / "table2_segmentation"
    record = json.loads((sweep / "transformer_attribution" / "metrics.json").read_text())
    assert record["job"]["n"] == 2 and record["job"]["partial"] and record["job"]["model"] == "vit_tiny"
    results = tmp_path / "results"
    table = (results / "table2_segmentation.md").read_text()
    ours = 100 * record["metrics"]["segmentation"]["pixel_accuracy"]
    assert _cells(table, "Ours (`transformer_attribution`)")[1:3] == [f"{ours:.2f}", "79.70"]
    assert _cells(table, "GradCAM (`attn_gradcam`)")[1] == "not run"
    assert "not the paper's model" in table and "Partial runs" in table
    assert (results / "examples_imagenet_seg.png").is_file() and (results / "README.md").is_file()


@pytest.mark.slow
def test_reproduce_everything_on_standins(data_dir: Path, tmp_path: Path) -> None:
    """Every experiment config on the stand-ins with LIMIT=2: every table and figure is produced."""
    assert reproduce.main([*standin_args(data_dir, tmp_path), "--limit", "2"]) == 0
    results = tmp_path / "results"
    for name in ("table1_perturbation", "table2_segmentation", "table3_ablation", "eraser_token_f1"):
        text = (results / f"{name}.md").read_text()
        assert "failed" not in text.split("\n\n")[1], name
    for name in (
        "perturbation_curves.png",
        "table3_perturbation_curves.png",
        "eraser_token_f1.png",
        "examples_imagenet_seg.png",
        "examples_imagenet_val.png",
        "README.md",
    ):
        assert (results / name).is_file(), name
    t1 = (results / "table1_perturbation.md").read_text()
    for method in ("rollout", "raw_attention", "attn_gradcam", "full_lrp", "partial_lrp", "transformer_attribution"):
        for target in ("predicted", "target"):
            line = [x for x in t1.splitlines() if f"(`{method}`) | {target} |" in x]
            if target == "target" and method in ("rollout", "raw_attention"):
                assert not line  # class-agnostic: no target-class row, no job
            else:
                assert line and "not run" not in line[0], (method, target)
    t3 = (results / "table3_ablation.md").read_text()
    assert "not run" not in "\n".join(x for x in t3.splitlines() if x.startswith("| "))
    eraser = (results / "eraser_token_f1.md").read_text()
    assert _cells(eraser, "rollout (`rollout_bert`)")[1] != "not run"
