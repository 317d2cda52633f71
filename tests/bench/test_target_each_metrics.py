"""target=each with every metric: each metric configured in conf/metric/ that supports the modality runs on
the pair sets, one row per sample and class, and its evidence is the explained class's own."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from bert_helpers import tiny_pairs_bert
from hydra.utils import instantiate

from helpers import tiny_vit
from xaibench.core.config import CONF_DIR, LoopConfig, compose_config
from xaibench.core.loop import run_job
from xaibench.core.types import Attribution, AttributionMethod, Batch, ModelAdapter
from xaibench.datasets.synthetic_pairs import SyntheticPairs
from xaibench.datasets.synthetic_text_pairs import SyntheticTextPairs
from xaibench.methods.attention import AttnGradCAM
from xaibench.models.pairs_vit import MultiLabelViT

CONFIG = LoopConfig(device="cpu", target="each", spot_check=0, save_examples=0, batch_size=4)
METRICS = sorted(p.stem for p in Path(CONF_DIR, "metric").glob("*.yaml"))


def _metrics(modality: str) -> dict:
    out = {}
    for config in METRICS:  # a config may hold several runners (faithfulness: token_auprc and aopc)
        for name, node in compose_config([f"metric={config}"]).metrics.items():
            if name == "aopc":  # a multi-label model has no single prediction: score the explained class
                node.target = "explained"
            runner = instantiate(node)
            if modality in runner.modalities:
                out[name] = runner
    return out


def _check(out: Path, record: dict, metrics: dict, data) -> None:
    assert set(record["metrics"]) == set(metrics)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    expected = [(data[i].id, c) for i in range(len(data)) for c in data[i].labels]
    assert [(r["sample"], int(r["class"])) for r in rows] == expected
    assert all(int(r["target"]) == int(r["class"]) for r in rows)


def test_every_image_metric_on_synthetic_pairs(tmp_path) -> None:
    data = SyntheticPairs(size=2, image_size=32, seed=3)
    model = MultiLabelViT(model=tiny_vit(img_size=32, patch_size=8, num_classes=4).model, name="tiny_multilabel")
    metrics = _metrics("image")
    assert {"segmentation", "perturbation", "pointing_game", "road", "class_sensitivity"} <= set(metrics)
    record = run_job(data, model, AttnGradCAM(), metrics, tmp_path, CONFIG)
    _check(tmp_path, record, metrics, data)


class OtherObject(AttributionMethod):
    """The *other* object's mask as the map of each class: wrong for every explained sample."""

    name = "other_object"

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        with torch.no_grad():
            logits = model.logits(batch.inputs)
        maps = torch.stack([m[0] for m in batch.extras["other_masks"]]).to(logits.dtype)
        return Attribution(maps=maps, targets=target, logits=logits, level="pixels")


def test_localisation_metrics_read_the_explained_object_only(tmp_path) -> None:
    """A map on the other object misses: pointing 0 and mass 0 (the union of both masks would give 1)."""
    data = SyntheticPairs(size=3, image_size=32, seed=5)
    model = MultiLabelViT(model=tiny_vit(img_size=32, patch_size=8, num_classes=4).model, name="tiny_multilabel")
    metrics = {n: m for n, m in _metrics("image").items() if n in ("pointing_game", "relevance_mass", "segmentation")}
    config = LoopConfig(device="cpu", target="each", spot_check=0, save_examples=0, batch_size=6)
    record = run_job(data, model, OtherObject(), metrics, tmp_path, config)
    assert record["metrics"]["relevance_mass"]["mass"] == 0.0
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 6 and all(float(r["relevance_mass/mass"]) == 0.0 for r in rows)


def test_every_text_metric_on_synthetic_text_pairs(tmp_path) -> None:
    data = SyntheticTextPairs(3, seed=1)
    model = tiny_pairs_bert(tmp_path, multi_label=True)
    metrics = _metrics("text")
    assert {"token_f1", "aopc", "token_auprc", "relevance_mass", "class_sensitivity"} <= set(metrics)
    record = run_job(data, model, AttnGradCAM(), metrics, tmp_path / "run", CONFIG)
    _check(tmp_path / "run", record, metrics, data)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_pair_sets_give_each_metric_the_explained_class_evidence(modality) -> None:
    from xaibench.core.targets import explained_samples

    data = SyntheticPairs(1, 32) if modality == "image" else SyntheticTextPairs(1, seed=1)
    sample = data[0]
    parts = explained_samples(sample, "each")
    assert [p.label for p in parts] == list(sample.labels)
    for k, part in enumerate(parts):
        if modality == "image":
            assert part.mask.equal(sample.class_masks[k]) and not part.mask.equal(sample.mask)
        else:
            assert part.rationale == tuple(sample.class_rationales[k]) and part.rationale != sample.rationale


def test_aopc_on_the_predicted_class_of_a_multi_label_model_is_refused_before_compute(tmp_path) -> None:
    from xaibench.metrics.faithfulness import AOPC

    model = tiny_pairs_bert(tmp_path, multi_label=True)
    with pytest.raises(ValueError, match="metrics.aopc.target=explained"):
        run_job(SyntheticTextPairs(2, seed=1), model, AttnGradCAM(), {"aopc": AOPC()}, tmp_path / "run", CONFIG)
    assert not (tmp_path / "run" / "metrics.json").exists()
