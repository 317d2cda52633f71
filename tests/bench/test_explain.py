"""``xaibench-explain`` on a real photograph (shipped with matplotlib) and on a text, offline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaibench.apps.explain import main, parse_target


def _photo() -> Path:
    import matplotlib.cbook

    path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    if not path.is_file():
        pytest.skip("matplotlib's sample photograph grace_hopper.jpg is not installed")
    return path


def _imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_descriptions())


def _require_lrp() -> None:
    try:
        import xaibench.methods.lrp  # noqa: F401
    except Exception as exc:  # optional here; test_lrp.py tests the LRP methods themselves
        pytest.skip(f"xaibench.methods.lrp is not importable: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def photo() -> Path:
    return _photo()


def test_photo_heatmap_has_the_photo_size(photo, tmp_path, capsys) -> None:
    out = tmp_path / "hopper"
    code = main([str(photo), "--model", "vit_tiny", "--method", "rollout", "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    with Image.open(photo) as original, Image.open(out.with_suffix(".png")) as heat:
        assert heat.size == original.size == (512, 600)
        assert heat.mode == "RGB" and heat.format == "PNG"
        assert np.asarray(heat).std() > 0
    raw = np.load(out.with_suffix(".npy"))
    assert raw.shape == (14, 14) and np.isfinite(raw).all()  # vit_tiny: 224 px, patch 16
    # top-5 with ImageNet names (vit_tiny has 1000 classes and no names of its own: timm's, offline)
    names = _imagenet_names()
    rows = re.findall(r"^\s+([\d.]+)%\s+(\d+)\s+(.+)$", printed.out, flags=re.M)
    assert len(rows) == 5
    for _, index, name in rows:
        assert name == names[int(index)]
    assert "rollout explains class" in printed.out


def test_target_by_index_and_by_name(photo, tmp_path, capsys) -> None:
    base = [str(photo), "--model", "vit_tiny", "--method", "attn_gradcam", "--device", "cpu"]
    assert main([*base, "--target", "243", "--out", str(tmp_path / "a")]) == 0
    assert "explains class 243 (bull mastiff)" in capsys.readouterr().out
    assert main([*base, "--target", "Bull Mastiff", "--out", str(tmp_path / "b")]) == 0
    assert "explains class 243" in capsys.readouterr().out
    # class-sensitive: a different class gives a different map
    assert main([*base, "--target", "1", "--out", str(tmp_path / "c")]) == 0
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "c.npy"))


def test_pixel_level_method_and_overrides(photo, tmp_path, capsys) -> None:
    _require_lrp()
    out = tmp_path / "full"
    code = main([str(photo), "--model", "vit_tiny", "--method", "full_lrp", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert np.load(out.with_suffix(".npy")).shape == (224, 224)
    with Image.open(out.with_suffix(".png")) as heat:
        assert heat.size == (512, 600)
    out = tmp_path / "gr"
    argv = [str(photo), "--model", "vit_tiny", "--method", "grad_rollout", "--out", str(out), "--device", "cpu"]
    assert main([*argv, "method.discard_ratio=0.5", "method.start_layer=1"]) == 0


def test_a_probed_backbone(photo, tmp_path, capsys) -> None:
    from xaibench.apps.probe import main as train_probe_main

    probe = tmp_path / "probe"
    argv = ["--backbone", "vit_micro", "--data", "synthetic_shapes", "--out", str(probe), "--device", "cpu"]
    assert train_probe_main([*argv, "--max-iter", "20", "model.timm_kwargs.num_classes=0", "dataset.size=24"]) == 0
    capsys.readouterr()
    out = tmp_path / "probed"
    argv = [str(photo), "--model", "probe", "--method", "rollout", "--out", str(out), "--device", "cpu"]
    assert main([*argv, f"model.probe={probe}", "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"(square|disk|triangle|cross)", printed)
    with Image.open(out.with_suffix(".png")) as heat:
        assert heat.size == (512, 600)
    assert np.load(out.with_suffix(".npy")).shape == (8, 8)  # vit_micro: 64 px, patch 8


def test_text_gives_html_and_a_terminal_highlight(tmp_path, capsys, monkeypatch) -> None:
    text = "a gripping and moving film , the acting is great"
    out = tmp_path / "review"
    argv = [text, "--model", "bert_small", "--method", "rollout", "--out", str(out), "--color", "never"]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0
    page = out.with_suffix(".html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<span") == len(text.split())
    assert "gripping" in page and "rollout" in page
    raw = np.load(out.with_suffix(".npy"))
    assert raw.ndim == 1 and raw.shape[0] >= len(text.split()) + 2  # word-pieces incl. [CLS] and [SEP]
    assert "[[" in printed and "bert_small predicts" in printed
    # a text file works the same; the default output name is <file stem>.<model>.<method> in the working folder
    path = tmp_path / "review.txt"
    path.write_text(text + "\n")
    monkeypatch.chdir(tmp_path)
    assert main([str(path), "--model", "bert_small", "--method", "attn_gradcam", "--target", "0"]) == 0
    assert (tmp_path / "review.bert_small.attn_gradcam.html").is_file()
    assert (tmp_path / "review.bert_small.attn_gradcam.npy").is_file()


def test_text_colours(tmp_path, capsys) -> None:
    argv = ["great film", "--model", "bert_small", "--method", "rollout", "--out", str(tmp_path / "t"), "--color"]
    assert main([*argv, "always"]) == 0
    assert "\x1b[48;2;" in capsys.readouterr().out
    assert main([*argv, "never"]) == 0
    assert "\x1b[" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x.jpg", "--model", "nope", "--method", "rollout"], "Could not find 'model/nope'"),
        (["missing.jpg", "--model", "vit_micro", "--method", "rollout"], "not found"),
        (["PHOTO", "--model", "vit_tiny", "--method", "rollout", "--target", "no such class"], "matches no class"),
        (["PHOTO", "--model", "vit_tiny", "--method", "rollout", "--target", "1000"], "out of range"),
        (["PHOTO", "--model", "vit_tiny", "--method", "rollout", "foo=1"], "model. or method."),
        (["PHOTO", "--model", "dinov2_vits14", "--method", "rollout"], "xaibench-train-probe"),
    ],
)
def test_errors_are_one_line(argv, message, photo, tmp_path, capsys) -> None:
    argv = [str(photo) if a == "PHOTO" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_method_for_another_modality_is_refused(tmp_path, capsys, monkeypatch) -> None:
    from xaibench.methods.attention import RawAttention

    monkeypatch.setattr(RawAttention, "modalities", frozenset({"image"}))
    argv = ["some text", "--model", "bert_small", "--method", "raw_attention", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "supports ['image'] models; bert_small is a text model" in err and "Traceback" not in err


def test_parse_target() -> None:
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark"]
    assert parse_target(None, names, 3) is None
    assert parse_target("2", names, 3) == 2
    assert parse_target("Tinca tinca", names, 3) == 0
    assert parse_target("goldfish", names, 3) == 1
    with pytest.raises(ValueError, match="several classes"):
        parse_target("sh", names + ["shark"], 4)
    with pytest.raises(ValueError, match="no class names"):
        parse_target("cat", None, 3)
