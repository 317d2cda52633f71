"""examples.png of a target=each sweep: one row per image, each object's mask, each method's map per class."""

from __future__ import annotations

import numpy as np

from xaibench.report.figures import example_figure
from xaibench.report.pair_figure import class_groups


def _examples(folder, method: str, ids: list[str], targets: list[int]) -> None:
    n = len(ids)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    np.savez(
        folder / "examples.npz",
        ids=np.array(ids),
        images=rng.integers(0, 255, size=(n, 3, 8, 8), dtype=np.uint8),
        heatmaps=rng.random((n, 8, 8)).astype(np.float16),
        masks=rng.integers(0, 2, size=(n, 8, 8), dtype=np.uint8),
        targets=np.array(targets),
        method=np.array(method),
    )


def test_groups_of_explained_samples() -> None:
    item = {"ids": np.array(["pair_0#1", "pair_0#3", "pair_1#0", "pair_1#2", "pair_2#1"]), "targets": [1, 3, 0, 2, 1]}
    assert class_groups(item) == [[0, 1], [2, 3], [4]]
    # one map per image (target=predicted or label): the plain grid
    assert class_groups({"ids": np.array(["a", "b"]), "targets": [1, 1]}) is None
    assert class_groups({"ids": np.array(["a#1", "a#2"])}) is None  # records without targets
    # an id that merely contains '#' is not split unless its suffix is the explained class
    assert class_groups({"ids": np.array(["x#7", "x#8"]), "targets": [1, 1]}) is None


def test_pair_grid_is_drawn(tmp_path) -> None:
    import matplotlib.image

    ids, targets = ["p_0#0", "p_0#2", "p_1#1", "p_1#3"], [0, 2, 1, 3]
    methods = ("rollout", "gae", "random")
    for method in methods:
        _examples(tmp_path / method, method, ids, targets)
    dirs = [tmp_path / m for m in methods]
    out = example_figure(dirs, tmp_path / "examples.png", labels={d: d.name for d in dirs})
    assert out == tmp_path / "examples.png"
    image = matplotlib.image.imread(out)
    # a column per image and class (4), a row for the input, the masks and each method (5): taller than wide
    assert image.shape[0] > image.shape[1]
