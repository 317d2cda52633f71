"""``xaibench-finetune`` on the synthetic reviews with the small BERT architecture (CPU, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from xaibench.apps.finetune import main
from xaibench.datasets.eraser import EraserMovies
from xaibench.datasets.synthetic_text import SyntheticText
from xaibench.models.finetune import SUMMARY_FILE, FinetuneConfig, evaluate, finetune
from xaibench.models.hf_bert import HFBert


@pytest.fixture(autouse=True)
def one_thread():
    """A model this small trains several times faster on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_eraser")
    sizes = {"train": 128, "val": 64, "test": 8}
    return SyntheticText.write_eraser(root, sizes=sizes, seed=0, min_words=6, max_words=16, max_evidence=2)


def test_finetune_learns_and_saves_a_loadable_checkpoint(data_root, golden, tmp_path):
    out = tmp_path / "checkpoint"
    argv = [
        "--data-root", str(data_root), "--out", str(out),
        "--config", str(golden / "bert_small_config.json"), "--vocab", str(data_root / "vocab.txt"),
        "--epochs", "10", "--lr", "1e-3", "--batch-size", "16", "--max-length", "64", "--seed", "0",
        "--device", "cpu", "--num-threads", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    before, after = summary["initial_val"]["accuracy"], summary["best_val"]["accuracy"]
    assert before < 0.7 and after >= 0.85, summary["history"]
    assert summary["config"]["lr"] == 1e-3 and summary["num_train"] == 128 and summary["classes"] == ["NEG", "POS"]
    loaded = HFBert(checkpoint=str(out), local_files_only=True)
    assert loaded.class_names() == ["NEG", "POS"] and loaded.model.config._attn_implementation == "eager"
    assert evaluate(loaded, EraserMovies(data_root, split="val"))["accuracy"] == pytest.approx(after)


def test_finetune_is_deterministic(data_root, golden):
    train = EraserMovies(data_root, split="train", limit=32)
    val = EraserMovies(data_root, split="val", limit=16)
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = HFBert.from_config(str(golden / "bert_small_config.json"), str(data_root / "vocab.txt"), max_length=48)
        result = finetune(model, train, val, FinetuneConfig(epochs=1, lr=1e-3, batch_size=8, seed=3))
        states.append((result["history"][0]["train_loss"], model.model.state_dict()))
    assert states[0][0] == states[1][0]
    assert all(torch.equal(v, states[1][1][k]) for k, v in states[0][1].items())


def test_cli_argument_errors(data_root, tmp_path):
    with pytest.raises(SystemExit):
        main(["--data-root", str(data_root), "--out", str(tmp_path)])  # no model
    with pytest.raises(SystemExit):
        main(["--data-root", str(data_root), "--out", str(tmp_path), "--config", "c.json"])  # no vocab
