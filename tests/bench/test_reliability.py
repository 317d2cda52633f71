"""Reliability, round two (issue 19): no result served from the wrong sample, weights or data; no run lost to
a clash, a full disk or a second process. Each test reproduces the failure it guards against."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import golden_dir, tiny_vit
from xaibench.apps.cli import USER_ERRORS, run_from_config
from xaibench.core import records
from xaibench.core.config import LoopConfig, compose_config
from xaibench.core.loop import JobWriteError, run_job
from xaibench.core.types import DatasetAdapter, Sample
from xaibench.datasets.imagenet_val import ImageNetVal
from xaibench.methods.attention import Rollout
from xaibench.metrics.segmentation import Segmentation

IMAGE = ["model=vit_micro", "method=rollout", "batch_size=2", "dataset.size=4", "spot_check=0"]


def _compose(tmp: Path, overrides: list[str]):
    return compose_config([*overrides, f"paths.output_dir={tmp}/out", f"cache_dir={tmp}/cache"])


def _mount_tmpfs(path: Path, options: str) -> bool:
    """A tmpfs at ``path`` (``ro`` or ``size=...``) where this process may mount one (root in a sandbox)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def mounts():
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> bool:
        ok = _mount_tmpfs(path, options)
        if ok:
            mounted.append(path)
        return ok

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- 1. sample identity -----------------------------------------------------------------------------------
def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path, format="JPEG")


def test_imagenet_ids_are_unique_across_class_folders(tmp_path) -> None:
    wnids = ["n01440764", "n01443537"]
    for k, wnid in enumerate(wnids):
        _image(tmp_path / "val" / wnid / "same_name.JPEG", seed=k)
    ds = ImageNetVal(root=str(tmp_path / "val"), wnids=wnids, image_size=32)
    ids = [ds[i].id for i in range(len(ds))]
    assert ids == ["n01440764/same_name", "n01443537/same_name"]
    assert [ds.sample_id(i) for i in range(len(ds))] == ids


class _Repeating(DatasetAdapter):
    """Four images, the last with the id of the first (ids known only by reading, or cheaply)."""

    modality = "image"
    provides = frozenset({"label", "mask"})

    def __init__(self, cheap_ids: bool) -> None:
        self.cheap = cheap_ids

    def __len__(self) -> int:
        return 4

    def sample_id(self, index: int) -> str | None:
        return f"s{index % 3}" if self.cheap else None

    def __getitem__(self, index: int) -> Sample:
        g = torch.Generator().manual_seed(index)
        return Sample(
            id=f"s{index % 3}", label=0, image=torch.rand(3, 32, 32, generator=g), mask=torch.ones(32, 32).bool()
        )


@pytest.mark.parametrize("cheap_ids", [True, False], ids=["checked-before", "checked-while-running"])
def test_repeated_ids_are_refused_naming_two(tmp_path, cheap_ids) -> None:
    config = LoopConfig(batch_size=2, spot_check=0, device="cpu")
    with pytest.raises(ValueError, match=r"samples 0 and 3 the same id 's0'"):
        run_job(_Repeating(cheap_ids), tiny_vit(), Rollout(), {"segmentation": Segmentation()}, tmp_path, config)
    assert not (tmp_path / "metrics.json").exists()


# -- 2. stale records and maps ----------------------------------------------------------------------------
def test_checkpoint_overwritten_in_place_is_not_served_from_old_records(tmp_path) -> None:
    """Same path, new weights: the finished-job index must not hand back the old record."""
    net = tiny_vit(img_size=32, num_classes=4, seed=0)
    ckpt = tmp_path / "w.pt"
    torch.save(net.model.state_dict(), ckpt)
    overrides = [
        "model=vit_micro",
        f"+model.checkpoint_path={ckpt}",
        "method=rollout",
        "dataset.size=4",
        "spot_check=0",
        "batch_size=4",
    ]
    first = run_from_config(_compose(tmp_path, overrides), tmp_path / "a")
    again = run_from_config(_compose(tmp_path, overrides), tmp_path / "b")
    assert json.loads((tmp_path / "b" / "timing.json").read_text()).get("reused_from"), "unchanged: reused"
    torch.save(tiny_vit(img_size=32, num_classes=4, seed=1).model.state_dict(), ckpt)  # overwrite in place
    third = run_from_config(_compose(tmp_path, overrides), tmp_path / "c")
    assert "reused_from" not in json.loads((tmp_path / "c" / "timing.json").read_text())
    assert third["job"]["weights_sha256_16"] != first["job"]["weights_sha256_16"] == again["job"]["weights_sha256_16"]


def test_edited_documents_are_never_served_from_the_old_cache(tmp_path) -> None:
    """ERASER documents edited in place (same length): ``force=true`` must recompute, not read old maps."""
    root = tmp_path / "movies"
    shutil.copytree(golden_dir() / "eraser_synthetic" / "data", root)
    overrides = [
        "dataset=eraser_synthetic",
        f"dataset.root={root}",
        "model=bert_small",
        "method=rollout_bert",
        "metric=token_f1",
        "target=label",
        "spot_check=0",
        "force=true",
    ]
    run_from_config(_compose(tmp_path, overrides), tmp_path / "a")
    run_from_config(_compose(tmp_path, overrides), tmp_path / "b")
    timing = json.loads((tmp_path / "b" / "timing.json").read_text())
    assert timing["attributions_computed"] == 0, "unchanged documents: maps come from the cache"
    doc = sorted((root / "docs").iterdir())[0]
    words = doc.read_text().split(" ")
    doc.write_text(" ".join(reversed(words)))  # same size, other content
    run_from_config(_compose(tmp_path, overrides), tmp_path / "c")
    timing = json.loads((tmp_path / "c" / "timing.json").read_text())
    assert timing["attributions_computed"] > 0 and timing["attributions_cached"] == 0


def test_cache_location_is_not_part_of_the_job_identity(tmp_path) -> None:
    a = compose_config([*IMAGE, f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path}/one"])
    b = compose_config([*IMAGE, f"paths.output_dir={tmp_path}", f"cache_dir={tmp_path}/two", "num_workers=1"])
    c = compose_config([*IMAGE, f"paths.output_dir={tmp_path}", "seed=3"])
    assert records.config_hash(a) == records.config_hash(b) != records.config_hash(c)


# -- 5. run and sweep folders never collide ---------------------------------------------------------------
def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XAIBENCH_OUTPUT": str(tmp / "out"), "XAIBENCH_CACHE": str(tmp / "cache")}


def test_two_runs_started_together_get_their_own_folders(tmp_path) -> None:
    cmd = [sys.executable, "-m", "xaibench", *IMAGE, "logger=none", "device=cpu"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


# -- 6. MLflow under concurrency --------------------------------------------------------------------------
LOG_JOBS = """
import sys
from pathlib import Path
from omegaconf import OmegaConf
from xaibench.report.tracking import MlflowLogger
store, tag = sys.argv[1], sys.argv[2]
logger = MlflowLogger(store)
for i in range(3):
    rec = {"metrics": {"m": {"v": float(i)}}, "job": {"weights_sha256_16": "x"}}
    logger.log_job(OmegaConf.create({"k": i}), Path(store), rec, overrides=[f"{tag}={i}"])
"""


def test_two_processes_on_a_new_mlflow_store_lose_no_run(tmp_path) -> None:
    store = tmp_path / "mlflow"
    procs = [
        subprocess.Popen([sys.executable, "-c", LOG_JOBS, str(store), tag], stderr=subprocess.PIPE) for tag in "ab"
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xaibench")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"{t}={i}" for t in "ab" for i in range(3)]
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"


@pytest.mark.slow
def test_sigint_ends_the_sweep_and_its_runs_as_killed(tmp_path) -> None:
    import signal

    cmd = [
        sys.executable,
        "-m",
        "xaibench",
        "-m",
        "model=vit_micro",
        "dataset.size=400",
        "batch_size=2",
        "method=attn_gradcam,rollout",
        "device=cpu",
        "spot_check=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "out" / "mlflow").glob("mlflow.db")):
        time.sleep(0.2)
    time.sleep(8)  # the first job is attributing
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    error = json.loads((tmp_path / "sweep" / "0" / "error.json").read_text())
    assert error["status"] == "interrupted" and error["choices"]["method"] == "attn_gradcam"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xaibench")
    statuses = {r.data.tags.get("xaibench.kind"): r.info.status for r in client.search_runs([exp.experiment_id])}
    assert statuses == {"sweep": "KILLED", "job": "KILLED"}


def test_a_parent_left_running_is_marked_killed_when_its_sweep_resumes(tmp_path) -> None:
    from xaibench.report.tracking import MlflowLogger

    logger = MlflowLogger(str(tmp_path / "mlflow"))
    stale = logger.start_parent("demo", [], tmp_path / "sweep")  # its process died (SIGKILL): never ended
    fresh = logger.start_parent("demo", [], tmp_path / "sweep")
    client, _ = logger._client()
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(fresh).info.status == "RUNNING"


# -- 7. full disk -----------------------------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_cache_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, mounts) -> None:
    cache = tmp_path / "cache"
    if not mounts(cache, "size=64k"):  # a real full file system where the test may mount one
        import builtins

        real_open = builtins.open

        def full_open(file, mode="r", *a, **k):
            if "w" in mode and ".chunk-" in str(file):
                return _FullFile(real_open(file, mode, *a, **k))
            return real_open(file, mode, *a, **k)

        monkeypatch.setattr(builtins, "open", full_open)
    net, ds = tiny_vit(img_size=32), _Images(64)
    config = LoopConfig(batch_size=32, spot_check=0, device="cpu", cache_dir=str(cache), cache_flush_seconds=1e-9)
    with pytest.raises(JobWriteError) as info:  # pixel maps of 64 images do not fit in 64 KiB
        run_job(ds, net, _PixelMaps(), {"segmentation": Segmentation()}, tmp_path / "out", config)
    message = str(info.value)
    assert "no space left on the device of" in message and "MiB" in message and "\n" not in message
    assert isinstance(info.value, USER_ERRORS)
    assert not list(cache.rglob("*.tmp")) and not (tmp_path / "out" / "metrics.json").exists()
    # the next run (space freed: no cache) recovers
    record = run_job(
        ds, net, _PixelMaps(), {"segmentation": Segmentation()}, tmp_path / "out", LoopConfig(spot_check=0)
    )
    assert record["job"]["n"] == 64


def test_full_output_disk_leaves_no_partial_record(tmp_path, monkeypatch) -> None:
    import xaibench.core.io as io_module

    real_fsync = io_module.os.fsync
    calls = {"n": 0}

    def fsync_fails_on_the_second_file(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # timing.json went to its temporary file; scores.csv does not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", fsync_fails_on_the_second_file)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"no space left on the device of .*out"):
        run_job(_Images(4), tiny_vit(), Rollout(), {"segmentation": Segmentation()}, out, LoopConfig(spot_check=0))
    assert sorted(p.name for p in out.iterdir()) == []  # nothing under a final name, no temporary file
    monkeypatch.setattr(io_module.os, "fsync", real_fsync)
    record = run_job(_Images(4), tiny_vit(), Rollout(), {"segmentation": Segmentation()}, out, LoopConfig(spot_check=0))
    assert record["job"]["n"] == 4 and (out / "metrics.json").is_file()


class _FullFile:
    """A file whose writes fail with ENOSPC (the simulated full disk where no tmpfs can be mounted)."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def __getattr__(self, name):
        return getattr(self.fh, name)


class _Images(DatasetAdapter):
    modality = "image"
    provides = frozenset({"label", "mask"})

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def sample_id(self, index: int) -> str:
        return f"img{index}"

    def __getitem__(self, index: int) -> Sample:
        g = torch.Generator().manual_seed(index)
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[8:24, 8:24] = True
        return Sample(id=f"img{index}", label=index % 4, image=torch.rand(3, 32, 32, generator=g), mask=mask)


class _PixelMaps(Rollout):
    """Rollout upsampled to pixel maps (bigger cache chunks)."""

    name = "pixel_rollout"

    def __call__(self, model, batch, target):
        from xaibench.core.heatmaps import upsample
        from xaibench.core.types import Attribution

        att = super().__call__(model, batch, target)
        maps = upsample(att.maps, "tokens", (32, 32))
        return Attribution(maps=maps, targets=att.targets, logits=att.logits, level="pixels")


# -- 14. names: figure titles, MLflow parent runs, --help ---------------------------------------------------
def test_example_titles_are_config_names_not_class_names(tmp_path, monkeypatch) -> None:
    from xaibench.report import summary

    for k, config_name in enumerate(("partial_lrp", "partial_lrp_grad", "partial_lrp_grad_block1")):
        run_dir = tmp_path / str(k)
        job = {"method": "partial_lrp", "choices": {"method": config_name}, "dataset": "d", "n": 1}
        examples = {
            "ids": np.array(["a"]),
            "images": np.zeros((1, 3, 4, 4), np.uint8),
            "method": np.array("partial_lrp"),
        }
        examples["heatmaps"] = np.zeros((1, 4, 4), np.float16)
        records.write_job(run_dir, {"metrics": {}, "job": job}, [{"id": "a"}], {}, examples)
    seen = {}
    monkeypatch.setattr(summary, "example_figure", lambda dirs, out, labels=None: seen.update(labels or {}))
    summary.summarize_sweep(tmp_path)
    assert sorted(seen.values()) == ["partial_lrp", "partial_lrp_grad", "partial_lrp_grad_block1"]


def test_sweep_parent_run_is_named_by_its_experiment(tmp_path) -> None:
    from omegaconf import OmegaConf

    from xaibench.report.tracking import SweepCallback

    cfg = OmegaConf.create(
        {
            "logger": {"_target_": "xaibench.report.tracking.MlflowLogger", "store_dir": str(tmp_path / "ml")},
            "hydra": {
                "sweep": {"dir": str(tmp_path / "sweep")},
                "runtime": {"choices": {"experiment": "demo"}},
                "overrides": {"task": []},
            },
        }
    )
    callback = SweepCallback()
    callback.on_multirun_start(cfg)
    try:
        logger, run_id = callback._parent
        client, _ = logger._client()
        run = client.get_run(run_id)
        assert run.info.run_name.startswith("demo ") and run.data.tags["sweep_dir"] == str(
            (tmp_path / "sweep").resolve()
        )
    finally:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.pop("XAIBENCH_MLFLOW_PARENT_RUN_ID", None)


def test_help_introduces_xaibench() -> None:
    out = subprocess.run([sys.executable, "-m", "xaibench", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    assert out.stdout.startswith("xaibench: benchmark explanation methods") and "powered by Hydra" not in out.stdout
    assert "xaibench -m method=" in out.stdout and "== Configuration groups ==" in out.stdout
