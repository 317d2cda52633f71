"""Random byte corruption of the files xaibench reads gives a clear error naming the file (or a recorded
skip), never a hang or an unexplained exception."""

from __future__ import annotations

import random
import shutil

import pytest
import torch

from helpers import golden_dir
from xaibench.core.cache import AttributionCache
from xaibench.core.types import Attribution
from xaibench.datasets.eraser import EraserMovies
from xaibench.datasets.imagenet_seg import ImageNetSegmentation

SEEDS = range(6)


def _corrupt(path, seed: int, count: int = 40, start: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(count):
        data[rng.randrange(start, len(data))] = rng.randrange(256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_mat_gives_a_clear_error_or_valid_samples(tmp_path, seed: int) -> None:
    path = tmp_path / "gtsegs.mat"
    shutil.copyfile(golden_dir() / "synthetic_gtsegs.mat", path)
    _corrupt(path, seed)
    try:
        ds = ImageNetSegmentation(str(path))
        for i in range(len(ds)):
            s = ds[i]
            assert s.image.shape == (3, 224, 224) and s.mask.shape == (224, 224)
    except (ValueError, FileNotFoundError) as exc:
        assert str(path) in str(exc)


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_jsonl_gives_a_clear_error_or_valid_samples(tmp_path, seed: int) -> None:
    root = tmp_path / "movies"
    shutil.copytree(golden_dir() / "eraser_synthetic" / "data", root)
    _corrupt(root / "test.jsonl", seed, count=8)
    try:
        ds = EraserMovies(str(root), split="test")
        for i in range(len(ds)):
            s = ds[i]
            assert s.words and s.label in (0, 1)
    except (ValueError, FileNotFoundError) as exc:
        assert "test.jsonl" in str(exc) or "docs" in str(exc)


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_cache_chunk_is_set_aside_and_recomputed(tmp_path, seed: int) -> None:
    key = {"model": "m", "method": {"name": "x"}, "target": "predicted"}
    ids = tuple(f"s{i}" for i in range(6))
    maps = torch.rand(6, 4, 4, dtype=torch.float64)
    att = Attribution(maps=maps, targets=torch.arange(6), logits=torch.rand(6, 3))
    with AttributionCache(tmp_path / "c", key, chunk_size=6) as cache:
        cache.put(ids, att)
    (chunk,) = (tmp_path / "c").glob("chunk-*.h5")
    _corrupt(chunk, seed, count=200, start=0)
    with AttributionCache(tmp_path / "c", key) as cache:  # opens without raising
        got = cache.get(list(ids))
        for sid, entry in got.items():  # whatever is served is exactly what was written
            torch.testing.assert_close(entry.map, maps[ids.index(sid)], rtol=0, atol=0)
        missing = cache.missing(ids)
    assert len(got) + len(missing) == 6
