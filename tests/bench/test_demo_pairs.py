"""The default demo (``xaibench`` with no arguments): the pair benchmarks, end to end with tiny training recipes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xaibench.apps.cli import DEMOS
from xaibench.core.config import CONF_DIR

TINY_VIT = "+model.recipe={train_size:32,epochs:1,batch_size:16,embed_dim:16,depth:2,num_heads:2,heldout_size:8}"
TINY_BERT = (
    "+model.recipe={train_size:16,epochs:1,hidden_size:16,num_hidden_layers:1,intermediate_size:32,heldout_size:8}"
)


def _sweep_methods(experiment: str) -> list[str]:
    text = Path(CONF_DIR, "experiment", f"{experiment}.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("method:"))
    return line.split(":", 1)[1].strip().split(",")


def _run(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "XAIBENCH_OUTPUT": str(tmp_path / "out"), "XAIBENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "xaibench", "-m", *args, "logger=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_the_default_demo_is_the_pair_benchmarks() -> None:
    assert DEMOS == ("experiment=demo_pairs", "experiment=demo_text_pairs")
    methods = {p.stem for p in Path(CONF_DIR, "method").glob("*.yaml")}
    image, text = _sweep_methods("demo_pairs"), _sweep_methods("demo_text_pairs")
    assert "random" in image and "random" in text
    # every image method configured, and every text method (the BERT conventions replace rollout and
    # transformer attribution; the Table 3 ablations read ViT-only reference variants)
    vit_only = {"rollout", "transformer_attribution", "lrp_rollout", "partial_lrp_grad", "partial_lrp_grad_block1"}
    assert set(image) == methods - {"rollout_bert", "transformer_attribution_bert"}
    assert set(text) == methods - vit_only


def _check_summary(sweep: Path, methods: list[str], image: bool) -> None:
    summary = (sweep / "summary.md").read_text()
    header = summary.splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    # the class-specific columns come before every other metric column
    assert columns.index("mass gap (↑)") < columns.index("pointing %") < columns.index("both point %")
    others = ["mIoU %", "pos. AUC % (↓)"] if image else ["token-F1@10 micro"]
    assert all(columns.index("both point %") < columns.index(c) for c in others)
    for method in methods:
        assert f"| {method} |" in summary
    rows = {r["method"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    for agnostic in ("raw_attention", "rollout" if image else "rollout_bert"):
        if agnostic in rows:  # the same map for both classes: the gaps cancel exactly
            assert float(rows[agnostic]["mass gap (↑)"]) == 0.0
            assert float(rows[agnostic]["pointing %"]) <= 50.0


def _image(tmp_path: Path, methods: list[str]) -> None:
    sweep = tmp_path / "image"
    args = ["experiment=demo_pairs", TINY_VIT, "dataset.size=3", f"hydra.sweep.dir={sweep}"]
    out = _run(tmp_path, [*args, f"method={','.join(methods)}"])
    assert out.returncode == 0, out.stderr[-3000:]
    _check_summary(sweep, methods, image=True)
    assert (sweep / "examples.png").is_file()


def _text(tmp_path: Path, methods: list[str]) -> None:
    sweep = tmp_path / "text"
    args = ["experiment=demo_text_pairs", TINY_BERT, "dataset.num_samples=3", f"hydra.sweep.dir={sweep}"]
    out = _run(tmp_path, [*args, f"method={','.join(methods)}"])
    assert out.returncode == 0, out.stderr[-3000:]
    _check_summary(sweep, methods, image=False)


def test_pair_demos_with_a_few_methods(tmp_path) -> None:
    _image(tmp_path, ["rollout", "gae"])
    _text(tmp_path, ["rollout_bert", "gae"])


@pytest.mark.slow
def test_pair_demos_with_every_method(tmp_path) -> None:
    _image(tmp_path, _sweep_methods("demo_pairs"))
    _text(tmp_path, _sweep_methods("demo_text_pairs"))
