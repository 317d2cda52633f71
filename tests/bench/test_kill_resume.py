"""A job killed with SIGKILL during attribution, then restarted, gives the uninterrupted records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ARGS = [
    "dataset=synthetic_shapes",
    "dataset.size=24",
    "model=vit_micro",
    "method=attn_gradcam",
    "metric=segmentation",
    "batch_size=2",
    "device=cpu",
    "logger=none",
    "spot_check=0",
]


def _run(tmp_path, name, extra=()):
    env = {**os.environ, "XAIBENCH_OUTPUT": str(tmp_path / "out"), "XAIBENCH_CACHE": str(tmp_path / "cache")}
    return [sys.executable, "-m", "xaibench", *ARGS, *extra, f"hydra.run.dir={tmp_path / name}"], env


def test_sigkill_then_restart_gives_the_same_records(tmp_path) -> None:
    cmd, env = _run(tmp_path, "clean", ["cache_dir=null"])
    assert subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=600).returncode == 0
    cache = tmp_path / "cache" / "attributions"
    # the default cache options: the first batch is written at once, then every cache_flush_seconds (10 s)
    # force=true: the clean run's record has the same identity (the cache location is not part of it)
    cmd, env = _run(tmp_path, "killed", ["force=true"])
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(cache.rglob("chunk-*.h5")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert list(cache.rglob("chunk-*.h5")), "the job finished no chunk before the kill"
    assert not (tmp_path / "killed" / "metrics.json").exists()
    cmd, env = _run(tmp_path, "killed", ["force=true"])
    assert subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=600).returncode == 0
    for f in ("metrics.json", "scores.csv"):
        clean = (tmp_path / "clean" / f).read_text()
        resumed = (tmp_path / "killed" / f).read_text()
        if f == "metrics.json":  # the overrides differ (cache options); everything else is equal
            a, b = json.loads(clean), json.loads(resumed)
            for rec in (a, b):
                rec["job"].pop("overrides")
                rec["job"].pop("config_hash")
            assert a == b
        else:
            assert clean == resumed
    timing = json.loads((tmp_path / "killed" / "timing.json").read_text())
    assert timing["attributions_cached"] >= 2 and timing["attributions_computed"] <= 22
