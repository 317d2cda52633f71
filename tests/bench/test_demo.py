"""The demo experiments run end to end (with tiny training recipes) and tabulate every method."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from xaibench.core.config import CONF_DIR

TINY_VIT = "+model.recipe={train_size:32,epochs:1,batch_size:16,embed_dim:16,depth:2,num_heads:2,image_size:32}"
TINY_BERT = "+model.recipe={train_size:16,val_size:8,epochs:1,hidden_size:16,num_hidden_layers:2,intermediate_size:32}"


def _sweep_methods(experiment: str) -> set[str]:
    text = Path(CONF_DIR, "experiment", f"{experiment}.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("method:"))
    return set(line.split(":", 1)[1].strip().split(","))


def _run(tmp_path, args):
    env = {**os.environ, "XAIBENCH_OUTPUT": str(tmp_path / "out"), "XAIBENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "xaibench", "-m", *args, "logger=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_image_demo_tabulates_every_method_with_random(tmp_path) -> None:
    methods = _sweep_methods("demo")
    assert "random" in methods and {"raw_attention", "rollout", "attn_gradcam"} <= methods
    sweep = tmp_path / "sweep"
    out = _run(
        tmp_path, ["experiment=demo", TINY_VIT, "dataset.size=4", "dataset.image_size=32", f"hydra.sweep.dir={sweep}"]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = (sweep / "summary.md").read_text()
    for method in methods:
        assert f"| {method} |" in summary
    assert "mIoU" in summary and "pos. AUC" in summary and "neg. AUC" in summary
    assert (sweep / "examples.png").is_file()


def test_text_demo_tabulates_token_f1(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    out = _run(tmp_path, ["experiment=demo_text", TINY_BERT, "dataset.num_samples=4", f"hydra.sweep.dir={sweep}"])
    assert out.returncode == 0, out.stderr[-3000:]
    summary = (sweep / "summary.md").read_text()
    for method in _sweep_methods("demo_text"):
        assert f"| {method} |" in summary
    assert "token-F1@10 micro" in summary
