"""The demo model: trained deterministically, cached by recipe, reloaded without retraining."""

from __future__ import annotations

import json

from xaibench.models.shapes_vit import shapes_vit

TINY = {"train_size": 48, "epochs": 1, "batch_size": 16, "embed_dim": 16, "depth": 2, "num_heads": 2, "image_size": 32}


def test_trains_once_caches_and_is_deterministic(tmp_path, monkeypatch) -> None:
    first = shapes_vit(str(tmp_path / "a"), recipe=TINY)
    (weights,) = (tmp_path / "a" / "models").glob("shapes_vit-*.pt")
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["recipe"]["train_size"] == 48 and 0 <= info["heldout_accuracy"] <= 1
    again = shapes_vit(str(tmp_path / "b"), recipe=TINY)
    assert first.weights_hash() == again.weights_hash()  # same recipe, same weights

    import xaibench.models.shapes_vit as sv

    def boom(recipe):
        raise AssertionError("must load from the cache, not retrain")

    monkeypatch.setattr(sv, "train_shapes_vit", boom)
    cached = shapes_vit(str(tmp_path / "a"), recipe=TINY)
    assert cached.weights_hash() == first.weights_hash()
    assert cached.grid_size == (4, 4) and cached.class_names()[0] == "square"
