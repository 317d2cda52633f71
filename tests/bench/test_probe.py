"""Linear probes on feature backbones: training, the saved files, reloading, and methods on probed models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_timm_vit
from xaibench.apps.probe import main
from xaibench.core.types import Batch
from xaibench.datasets.image_folder import ImageFolder
from xaibench.datasets.synthetic import SyntheticShapes
from xaibench.methods.attention import AttnGradCAM, GradRollout, RawAttention, Rollout
from xaibench.methods.baselines import RandomAttribution
from xaibench.models.probe import FORMAT_VERSION, ProbeConfig, pooled_features, train_probe
from xaibench.models.probe_files import attach_probe, load_probe, read_probe, save_probe
from xaibench.models.timm_vit import TimmViT

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0}
BACKBONE_CONFIG = {"_target_": "xaibench.models.timm_vit.TimmViT", "timm_kwargs": TINY, "init_seed": 0, "name": "tiny"}
CONFIG = ProbeConfig(max_iter=100, val_fraction=0.25, batch_size=32, device="cpu")


def _backbone() -> TimmViT:
    return TimmViT(timm_kwargs=dict(TINY), init_seed=0, name="tiny", require_head=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A probe fitted on 96 synthetic shapes (72 train / 24 val) over a tiny random backbone, saved."""
    backbone = _backbone()
    linear, info = train_probe(backbone, SyntheticShapes(size=96, image_size=32, seed=3), None, CONFIG)
    record = {
        **{k: info[k] for k in ("num_classes", "feature_dim", "class_names", "counts", "accuracy")},
        "backbone": {"config": BACKBONE_CONFIG, "name": backbone.name, "weights_hash": backbone.weights_hash()},
        "training": {"max_iter": CONFIG.max_iter},
    }
    out = tmp_path_factory.mktemp("probe")
    path = save_probe(out, linear, record)
    return linear, info, path


def test_probe_beats_chance_on_an_easy_split(trained) -> None:
    _, info, _ = trained
    assert info["num_classes"] == 4 and info["class_names"] == ["square", "disk", "triangle", "cross"]
    assert info["counts"] == {"train": 72, "val": 24}
    assert info["feature_dim"] == 32
    assert info["accuracy"]["train"] > 0.5  # chance is 0.25
    assert 0.0 <= info["accuracy"]["val"] <= 1.0
    assert info["final_loss"] < math.log(4)  # below the loss of a uniform guess


def test_fitting_is_deterministic() -> None:
    a, _ = train_probe(_backbone(), SyntheticShapes(size=40, image_size=32, seed=5), None, CONFIG)
    b, _ = train_probe(_backbone(), SyntheticShapes(size=40, image_size=32, seed=5), None, CONFIG)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_saved_files_are_small_versioned_and_safe(trained) -> None:
    linear, _, path = trained
    doc = json.loads(path.read_text())
    assert doc["format"] == "xaibench-linear-probe" and doc["format_version"] == FORMAT_VERSION
    assert doc["backbone"]["name"] == "tiny" and len(doc["backbone"]["weights_hash"]) == 16
    assert doc["accuracy"]["train"] > 0.5 and doc["training"]["max_iter"] == 100
    weights = path.parent / doc["weights"]["file"]
    assert weights.stat().st_size < 10_000
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    assert torch.equal(tensors["weight"], linear.weight.detach()) and torch.equal(tensors["bias"], linear.bias.detach())
    read_doc, read_linear = read_probe(path.parent)  # the folder works too
    assert read_doc == doc and torch.equal(read_linear.weight, linear.weight)


def test_reload_gives_identical_logits(trained) -> None:
    linear, _, path = trained
    in_memory = attach_probe(_backbone(), linear, name="tiny+probe")
    reloaded = load_probe(str(path))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = in_memory.logits(x)
        assert torch.equal(reloaded.logits(x), want)
        # the head is the probe: logits = W f(x) + b on the pooled feature
        torch.testing.assert_close(want, linear(pooled_features(in_memory.model, x)))
    assert reloaded.num_classes == 4 and list(reloaded.class_names()) == ["square", "disk", "triangle", "cross"]
    assert reloaded.name.startswith("tiny+probe-")


def test_reload_through_the_model_config(trained) -> None:
    from hydra.utils import instantiate

    from xaibench.core.config import compose_config

    linear, _, path = trained
    cfg = compose_config(["model=probe", f"model.probe={path}"])
    model = instantiate(cfg.model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.logits(x), attach_probe(_backbone(), linear).logits(x))


def test_a_different_backbone_is_refused(trained) -> None:
    _, _, path = trained
    with pytest.raises(ValueError, match="weights hash"):
        load_probe(str(path), backbone={"init_seed": 1})
    load_probe(str(path), backbone={"init_seed": 1}, check_backbone=False)  # explicitly allowed


def test_corrupt_or_newer_probe_files_are_refused(trained, tmp_path) -> None:
    _, _, path = trained
    copy = tmp_path / "p"
    copy.mkdir()
    doc = json.loads(path.read_text())
    (copy / "probe.safetensors").write_bytes((path.parent / "probe.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    (copy / "probe.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="SHA-256"):
        read_probe(copy)
    (copy / "probe.json").write_text(json.dumps({**doc, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="format version"):
        read_probe(copy)
    with pytest.raises(FileNotFoundError, match="probe.json"):
        read_probe(tmp_path / "nowhere")


def test_every_method_runs_on_a_probed_model(trained) -> None:
    linear, _, _ = trained
    model = attach_probe(_backbone(), linear).to(dtype=torch.float64)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    batch = Batch(ids=("a", "b", "c"), inputs=x, labels=torch.tensor([0, 1, 2]))
    methods = [RawAttention(), Rollout(), GradRollout(), AttnGradCAM(), RandomAttribution()]
    try:
        from xaibench.methods.lrp import TransformerAttribution
    except Exception:  # optional here; test_lrp.py tests the LRP methods themselves
        TransformerAttribution = None
    if TransformerAttribution is not None:
        methods.append(TransformerAttribution())
    for method in methods:
        out = method(model, batch, None)
        assert out.maps.shape == (3, 4, 4), type(method).__name__
        assert torch.isfinite(out.maps).all()


def test_distilled_backbone_probe_acts_on_the_mean_feature() -> None:
    from timm.models.deit import VisionTransformerDistilled

    backbone = tiny_timm_vit(
        VisionTransformerDistilled, img_size=32, patch_size=8, num_classes=0, require_head=False
    ).to(dtype=torch.float64)
    linear = torch.nn.Linear(32, 3).double()
    probed = attach_probe(backbone, linear)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        feats = probed.model.forward_features(x)
        torch.testing.assert_close(probed.logits(x), linear((feats[:, 0] + feats[:, 1]) / 2))
    assert probed.num_prefix_tokens == 2


def test_wrong_feature_size_is_refused() -> None:
    with pytest.raises(ValueError, match="32-d features"):
        attach_probe(_backbone(), torch.nn.Linear(16, 3))


# -- command line and image folders -----------------------------------------------------------------
def _write_image_folder(root, n_per_class: int = 12) -> None:
    """Two classes of 32x32 PNGs: bright squares on the left vs. on the right (an easy split)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["left", "right"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.uniform(0, 60, size=(32, 32, 3))
            x0 = 2 if label == 0 else 18
            img[8:24, x0 : x0 + 12] = 230
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i:03d}.png")


def test_cli_on_an_image_folder(tmp_path, capsys) -> None:
    data = tmp_path / "images"
    _write_image_folder(data)
    out = tmp_path / "probe"
    argv = ["--backbone", "vit_micro", "--data", str(data), "--out", str(out), "--device", "cpu", "--max-iter", "50"]
    code = main([*argv, "model.timm_kwargs.num_classes=0", "model.timm_kwargs.img_size=32"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "train accuracy" in printed and "model=probe" in printed
    doc = json.loads((out / "probe.json").read_text())
    assert doc["class_names"] == ["left", "right"] and doc["num_classes"] == 2
    assert doc["backbone"]["config_name"] == "vit_micro" and doc["backbone"]["global_pool"] == "token"
    assert doc["training"]["data"]["image_folder"] == str(data.resolve())
    assert doc["counts"] == {"train": 19, "val": 5}
    assert doc["accuracy"]["train"] > 0.5
    model = load_probe(str(out))
    assert model.num_classes == 2 and model.image_size == (32, 32)


def test_cli_on_synthetic_shapes_with_limit(tmp_path, capsys) -> None:
    out = tmp_path / "probe"
    argv = ["--backbone", "vit_micro", "--data", "synthetic_shapes", "--out", str(out), "--device", "cpu"]
    code = main([*argv, "--limit", "20", "--val-fraction", "0", "model.timm_kwargs.num_classes=0", "dataset.size=50"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "probe.json").read_text())
    assert doc["counts"] == {"train": 20, "val": 0} and doc["accuracy"]["val"] is None
    assert doc["training"]["data"]["config"]["image_size"] == 64  # set to the backbone's input size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "no_such_dataset"], "neither a folder nor a dataset config"),
        (["--data", "synthetic_shapes", "foo=1"], "overrides must start with model. or dataset."),
        (["--data", "synthetic_shapes", "--val-fraction", "1.5"], "val_fraction"),
        (["--data", "synthetic_text"], "image dataset"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message) -> None:
    code = main(["--backbone", "vit_micro", "--out", str(tmp_path / "p"), *args, "model.timm_kwargs.num_classes=0"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="hold no images"):
        ImageFolder(tmp_path)
    _write_image_folder(tmp_path / "ok", n_per_class=2)
    ds = ImageFolder(tmp_path / "ok", image_size=(16, 24))
    assert len(ds) == 4 and ds[0].image.shape == (3, 16, 24) and ds[3].label == 1 and ds[0].id == "left/000"
    with pytest.raises(ValueError, match="class folders"):
        ImageFolder(tmp_path / "ok", classes=["left", "up"])
