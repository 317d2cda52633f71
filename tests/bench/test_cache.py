"""AttributionCache: round trips, config hashing, resume, and survival of killed writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import torch

from xaibench.core.cache import AttributionCache, CacheKeyMismatch, key_hash, stable_json
from xaibench.core.types import Attribution

KEY = {
    "model": "vit_tiny",
    "weights": "0123abcd",
    "method": {"name": "transformer_attribution", "start_layer": 1},
    "target": "predicted",
    "precision": "float64",
}


def make_attr(n: int, shape: tuple[int, ...], dtype: torch.dtype, level: str = "tokens", seed: int = 0) -> Attribution:
    g = torch.Generator().manual_seed(seed)
    return Attribution(
        maps=torch.randn(n, *shape, generator=g).to(dtype),
        targets=torch.randint(0, 1000, (n,), generator=g),
        logits=torch.randn(n, 1000, generator=g).to(dtype),
        level=level,
    )


def ids(n: int, start: int = 0) -> list[str]:
    return [f"ILSVRC2012_val_{i:08d}" for i in range(start, start + n)]


@pytest.mark.parametrize(
    ("shape", "dtype", "level"),
    [
        ((14, 14), torch.float32, "tokens"),
        ((14, 14), torch.float64, "tokens"),
        ((32, 32), torch.float32, "pixels"),
        ((32, 32), torch.float64, "pixels"),
        ((23,), torch.float32, "tokens"),  # text: [T]
        ((4, 4), torch.bfloat16, "tokens"),
    ],
)
def test_round_trip_exact(tmp_path: Path, shape, dtype, level) -> None:
    attr = make_attr(5, shape, dtype, level)
    with AttributionCache(tmp_path / "c", KEY) as cache:
        assert cache.put(ids(5), attr) == 5
        assert len(cache) == 5  # buffered entries count and are readable before a flush
    reopened = AttributionCache(tmp_path / "c", KEY)
    assert len(reopened) == 5 and reopened.level == level
    got = reopened.get(ids(5))
    for b, sid in enumerate(ids(5)):
        m, target, logits = got[sid]
        assert m.dtype == dtype and torch.equal(m, attr.maps[b])
        assert target == int(attr.targets[b])
        assert logits.dtype == dtype and torch.equal(logits, attr.logits[b])
    batch = reopened.get_batch(ids(5))
    assert batch is not None and batch.level == level
    assert torch.equal(batch.maps, attr.maps) and torch.equal(batch.targets, attr.targets)


def test_get_returns_present_only_and_skips_known(tmp_path: Path) -> None:
    cache = AttributionCache(tmp_path / "c", KEY, chunk_size=2)
    attr = make_attr(3, (14, 14), torch.float32)
    cache.put(ids(3), attr)
    assert cache.put(ids(3), make_attr(3, (14, 14), torch.float32, seed=1)) == 0  # already cached: kept
    assert torch.equal(cache.get([ids(3)[0]])[ids(3)[0]].map, attr.maps[0])
    assert set(cache.get(ids(5))) == set(ids(3))
    assert cache.missing(ids(5)) == ids(5)[3:]
    assert cache.get_batch(ids(5)) is None
    assert "nope" not in cache and ids(1)[0] in cache


def test_key_hash_is_stable_and_canonical() -> None:
    reordered = {k: KEY[k] for k in reversed(list(KEY))}
    assert key_hash(KEY) == key_hash(reordered)
    assert key_hash({"a": (1, 2)}) == key_hash({"a": [1, 2]})
    assert key_hash({"dtype": torch.float32}) == key_hash({"dtype": "torch.float32"})
    assert key_hash(KEY) != key_hash({**KEY, "target": "target"})
    assert json.loads(stable_json(KEY)) == KEY
    with pytest.raises(TypeError, match="JSON-like"):
        key_hash({"x": object()})


def test_hash_mismatch_raises_with_the_difference(tmp_path: Path) -> None:
    with AttributionCache(tmp_path / "c", KEY) as cache:
        cache.put(ids(2), make_attr(2, (14, 14), torch.float32))
    other = {**KEY, "method": {"name": "transformer_attribution", "start_layer": 0}}
    with pytest.raises(CacheKeyMismatch, match=r"method\.start_layer: 1 -> 0"):
        AttributionCache(tmp_path / "c", other)
    # opt-in: the old cache is moved aside, not reused and not deleted
    fresh = AttributionCache(tmp_path / "c", other, on_mismatch="new")
    assert len(fresh) == 0
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("c.stale-")]
    assert len(stale) == 1 and len(AttributionCache(stale[0], KEY, readonly=True)) == 2


def test_chunk_with_foreign_hash_is_ignored(tmp_path: Path) -> None:
    with AttributionCache(tmp_path / "a", KEY) as a:
        a.put(ids(2), make_attr(2, (14, 14), torch.float32))
    with AttributionCache(tmp_path / "b", {**KEY, "target": "target"}) as b:
        b.put(ids(2, 10), make_attr(2, (14, 14), torch.float32))
    for chunk in (tmp_path / "b").glob("chunk-*.h5"):  # a chunk copied between caches by hand
        os.link(chunk, tmp_path / "a" / chunk.name)
    assert set(AttributionCache(tmp_path / "a", KEY).ids()) == set(ids(2))


def test_not_a_cache_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="not an attribution cache"):
        AttributionCache(tmp_path / "d", KEY)
    (tmp_path / "f.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        AttributionCache(tmp_path / "f.h5", KEY)
    with pytest.raises(FileNotFoundError):
        AttributionCache(tmp_path / "none", KEY, readonly=True)


def test_resume_adds_to_existing(tmp_path: Path) -> None:
    with AttributionCache(tmp_path / "c", KEY, chunk_size=3) as cache:
        cache.put(ids(4), make_attr(4, (14, 14), torch.float32))
    resumed = AttributionCache(tmp_path / "c", KEY, chunk_size=3)
    todo = resumed.missing(ids(10))
    assert todo == ids(6, 4)
    resumed.put(todo, make_attr(6, (14, 14), torch.float32, seed=2))
    resumed.close()
    assert len(AttributionCache(tmp_path / "c", KEY)) == 10


def test_compact_merges_chunks_losslessly(tmp_path: Path) -> None:
    cache = AttributionCache(tmp_path / "c", KEY, chunk_size=2)
    attr = make_attr(7, (14, 14), torch.float64)
    for start in range(0, 7, 2):
        sl = slice(start, start + 2)
        cache.put(ids(7)[sl], Attribution(attr.maps[sl], attr.targets[sl], attr.logits[sl]))
    cache.close()
    assert len(list((tmp_path / "c").glob("chunk-*.h5"))) == 4
    cache.compact()
    assert len(list((tmp_path / "c").glob("chunk-*.h5"))) == 1
    again = AttributionCache(tmp_path / "c", KEY)
    got = again.get_batch(ids(7))
    assert torch.equal(got.maps, attr.maps) and torch.equal(got.logits, attr.logits)


def test_damaged_chunks_are_quarantined_not_fatal(tmp_path: Path) -> None:
    attr = make_attr(6, (14, 14), torch.float32)
    with AttributionCache(tmp_path / "c", KEY, chunk_size=2) as cache:
        for start in (0, 2, 4):
            sl = slice(start, start + 2)
            cache.put(ids(6)[sl], Attribution(attr.maps[sl], attr.targets[sl], attr.logits[sl]))
    chunks = sorted((tmp_path / "c").glob("chunk-*.h5"))
    assert len(chunks) == 3
    # a truncated chunk, a chunk with garbage appended, and a chunk never marked complete
    data = chunks[0].read_bytes()
    chunks[0].write_bytes(data[: len(data) // 2])
    with chunks[1].open("ab") as fh:
        fh.write(os.urandom(4096))
    with h5py.File(chunks[2], "r+") as f:
        f.attrs["complete"] = False
    # an interrupted write: only the hidden temporary exists
    (tmp_path / "c" / ".chunk-99-1-deadbeef.h5.tmp").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(100))
    cache = AttributionCache(tmp_path / "c", KEY)
    # every chunk whose bytes differ from what was written (its name carries their SHA-256) is set aside,
    # even garbage appended after a complete HDF5 file: no damaged file is ever handed to h5py
    assert set(cache.ids()) == set()
    assert len(list((tmp_path / "c").glob("*.corrupt"))) == 3
    # the lost samples are recomputed and the cache is whole again
    cache.put(cache.missing(ids(6)), make_attr(6, (14, 14), torch.float32))
    cache.close()
    assert len(AttributionCache(tmp_path / "c", KEY)) == 6


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from xaibench.core.cache import AttributionCache
    from xaibench.core.types import Attribution
    key = {"model": "m", "method": {"name": "full_lrp"}, "target": "predicted"}
    cache = AttributionCache(sys.argv[1], key, chunk_size=1, fsync=False)
    i = 0
    while True:
        cache.put([f"s{i}"], Attribution(torch.full((1, 64, 64), float(i)), torch.tensor([i]),
                                          torch.zeros(1, 10), level="pixels"))
        if i == 0:
            print("started", flush=True)
        i += 1
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_mid_write_leaves_a_readable_cache(tmp_path: Path) -> None:
    key = {"model": "m", "method": {"name": "full_lrp"}, "target": "predicted"}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "c")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.3)  # the writer does nothing but write chunks: the kill lands inside one
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cache = AttributionCache(tmp_path / "c", key)
    assert len(cache) > 0
    for sid, entry in cache.get(cache.ids()).items():  # every sample that is there is whole
        assert torch.equal(entry.map, torch.full((64, 64), float(sid[1:])))
        assert entry.target == int(sid[1:])
    # and the run resumes where it stopped
    n = len(cache)
    todo = cache.missing([f"s{i}" for i in range(n + 2)])
    assert todo == [f"s{n}", f"s{n + 1}"]
    cache.put(todo, Attribution(torch.zeros(2, 64, 64), torch.zeros(2, dtype=torch.long), torch.zeros(2, 10), "pixels"))
    cache.close()
    assert len(AttributionCache(tmp_path / "c", key)) == n + 2


def test_path_for_is_readable_and_config_specific(tmp_path: Path) -> None:
    path = AttributionCache.path_for(tmp_path, KEY)
    assert path.relative_to(tmp_path).parts[:2] == ("vit_tiny", "transformer_attribution")
    assert path.name.startswith("predicted-") and path.name.endswith(key_hash(KEY)[:8])
    other = AttributionCache.path_for(tmp_path, {**KEY, "precision": "float32"})
    assert other != path and other.parent == path.parent
    hydra_style = {**KEY, "method": {"_target_": "xaibench.methods.attention.Rollout", "start_layer": 1}}
    assert AttributionCache.path_for(tmp_path, hydra_style).parent.name == "Rollout"
