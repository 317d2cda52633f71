"""The loop: records written, batch size invariance, compatibility checked before compute."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import tiny_vit
from xaibench.core.loop import LoopConfig, run_job
from xaibench.core.types import AttributionMethod, DatasetAdapter, MetricRunner, Sample
from xaibench.datasets.synthetic import SyntheticShapes
from xaibench.methods.attention import AttnGradCAM, Rollout
from xaibench.metrics.segmentation import Segmentation


def _read(tmp_path):
    with open(tmp_path / "scores.csv", newline="") as f:
        return json.loads((tmp_path / "metrics.json").read_text()), list(csv.DictReader(f))


def test_job_writes_records_and_honours_limit(tmp_path) -> None:
    ds = SyntheticShapes(size=20, image_size=32)
    record = run_job(
        ds,
        tiny_vit(),
        Rollout(),
        {"segmentation": Segmentation()},
        tmp_path,
        LoopConfig(device="cpu", batch_size=3, limit=7),
    )
    metrics, rows = _read(tmp_path)
    assert metrics == json.loads(json.dumps(record))
    assert [r["id"] for r in rows] == [ds[i].id for i in range(7)]
    seg = metrics["metrics"]["segmentation"]
    assert seg["n"] == 7 and 0 <= seg["miou"] <= 1 and seg["total_label"] == 7 * 32 * 32
    assert metrics["job"]["partial"] is True and metrics["job"]["n"] == 7
    assert (tmp_path / "examples.npz").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("target", ["predicted", "label"])
def test_batch_size_does_not_change_records(tmp_path, target: str) -> None:
    ds = SyntheticShapes(size=9, image_size=32, seed=3)
    model = tiny_vit()
    outs = []
    for bs in (1, 4, 9):
        out = tmp_path / f"bs{bs}"
        run_job(
            ds,
            model,
            AttnGradCAM(),
            {"segmentation": Segmentation()},
            out,
            LoopConfig(device="cpu", precision="float64", batch_size=bs, target=target),
        )
        outs.append(_read(out))
    # maps agree to ~1e-15 across batch sizes (BLAS kernels differ); thresholded counts agree exactly,
    # while AP may move by ~1e-4 because sklearn breaks exact ties in the upsampled maps by value
    ref = outs[0][0]["metrics"]["segmentation"]
    for metrics, rows in outs[1:]:
        seg = metrics["metrics"]["segmentation"]
        for key in ("total_correct", "total_inter", "total_union", "n", "nan_maps"):
            assert seg[key] == ref[key]
        assert seg["map"] == pytest.approx(ref["map"], abs=1e-3)
        assert [(r["id"], r["target"], r["segmentation/correct"]) for r in rows] == [
            (r["id"], r["target"], r["segmentation/correct"]) for r in outs[0][1]
        ]
    rows = outs[0][1]
    if target == "label":
        assert all(r["target"] == r["label"] for r in rows)
    else:
        assert all(r["target"] == r["predicted"] for r in rows)


def test_two_runs_give_identical_records(tmp_path) -> None:
    ds = SyntheticShapes(size=6, image_size=32)
    for name in ("a", "b"):
        run_job(
            ds,
            tiny_vit(),
            Rollout(),
            {"segmentation": Segmentation()},
            tmp_path / name,
            LoopConfig(device="cpu", batch_size=4),
        )
    for f in ("metrics.json", "scores.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


class _NoMask(DatasetAdapter):
    modality = "image"
    provides = frozenset()

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Sample:
        raise AssertionError("the loop must fail before reading data")


class _TextOnly(AttributionMethod):
    name = "text_only"
    modalities = frozenset({"text"})

    def __call__(self, model, batch, target):
        raise AssertionError("never called")


class _Counting(MetricRunner):
    name = "counting"

    def __init__(self):
        self.reset()

    def reset(self):
        self.calls = 0

    def update(self, batch, attribution, model):
        self.calls += 1
        return [{} for _ in batch.ids]

    def compute(self):
        return {"calls": self.calls}


@pytest.mark.parametrize(
    "dataset, method, metrics, config, message",
    [
        (_NoMask(), Rollout(), {"segmentation": Segmentation()}, dict(), r"needs \['mask'\]"),
        (SyntheticShapes(4, 32), _TextOnly(), {"c": _Counting()}, dict(), "supports \\['text'\\]"),
        (_NoMask(), Rollout(), {"c": _Counting()}, dict(target="label"), "target=label needs"),
        (SyntheticShapes(4, 32), Rollout(), {}, dict(), "no metric"),
        (SyntheticShapes(4, 32), Rollout(), {"c": _Counting()}, dict(target="gt"), "supported: predicted"),
        (SyntheticShapes(4, 32), Rollout(), {"c": _Counting()}, dict(precision="fp8"), "supported: float32"),
        (
            SyntheticShapes(4, 32),
            Rollout(),
            {"c": _Counting()},
            dict(precision="fp16", device="cpu"),
            "CUDA only",
        ),
    ],
)
def test_incompatible_combinations_fail_before_compute(tmp_path, dataset, method, metrics, config, message) -> None:
    # bad option values are refused when the options are made, mismatched pieces when the job starts
    with pytest.raises(ValueError, match=message):
        run_job(dataset, tiny_vit(), method, metrics, tmp_path, LoopConfig(**config))
    assert not (tmp_path / "metrics.json").exists()


def test_wrong_image_size_is_explained(tmp_path) -> None:
    with pytest.raises(ValueError, match="set the dataset's image_size to 32"):
        run_job(SyntheticShapes(2, 48), tiny_vit(), Rollout(), {"c": _Counting()}, tmp_path, LoopConfig())


@pytest.mark.gpu
def test_cuda_job_matches_cpu(tmp_path) -> None:
    ds = SyntheticShapes(size=4, image_size=32)
    cpu = run_job(
        ds,
        tiny_vit(),
        Rollout(),
        {"segmentation": Segmentation()},
        tmp_path / "cpu",
        LoopConfig(device="cpu", precision="float64"),
    )
    gpu = run_job(
        ds,
        tiny_vit(),
        Rollout(),
        {"segmentation": Segmentation()},
        tmp_path / "gpu",
        LoopConfig(device="cuda", precision="float64"),
    )
    assert cpu["metrics"]["segmentation"]["total_inter"] == gpu["metrics"]["segmentation"]["total_inter"]
    assert torch.cuda.is_available()


class _Flaky(AttributionMethod):
    """Rollout that counts the samples it explains and can fail on a given call (a killed run)."""

    name = "rollout"

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.inner, self.calls, self.samples, self.fail_on_call = Rollout(), 0, 0, fail_on_call

    def __call__(self, model, batch, target):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        self.samples += len(batch)
        return self.inner(model, batch, target)


def test_interrupted_run_resumes_from_the_cache(tmp_path) -> None:
    ds = SyntheticShapes(size=10, image_size=32)
    # spot_check=0: the float64 spot check would call the counting method too
    config = LoopConfig(device="cpu", batch_size=3, cache_dir=str(tmp_path / "cache"), spot_check=0)
    ident = {"method": {"start_layer": 0}}
    run_job(
        ds,
        tiny_vit(),
        Rollout(),
        {"segmentation": Segmentation()},
        tmp_path / "clean",
        LoopConfig(device="cpu", batch_size=3, spot_check=0),
    )
    flaky = _Flaky(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_job(ds, tiny_vit(), flaky, {"segmentation": Segmentation()}, tmp_path / "resumed", config, identity=ident)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    assert flaky.samples == 6
    again = _Flaky()
    run_job(ds, tiny_vit(), again, {"segmentation": Segmentation()}, tmp_path / "resumed", config, identity=ident)
    assert again.samples == 4  # only the missing samples are attributed
    for f in ("metrics.json", "scores.csv"):
        assert (tmp_path / "clean" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes()
    timing = json.loads((tmp_path / "resumed" / "timing.json").read_text())
    assert timing["attributions_cached"] == 6 and timing["attributions_computed"] == 4
    rerun = _Flaky()
    run_job(ds, tiny_vit(), rerun, {"segmentation": Segmentation()}, tmp_path / "third", config, identity=ident)
    assert rerun.calls == 0  # a finished job is entirely served from the cache
    other = _Flaky()
    run_job(
        ds,
        tiny_vit(),
        other,
        {"segmentation": Segmentation()},
        tmp_path / "other",
        config,
        identity={"method": {"start_layer": 1}},
    )
    assert other.samples == 10  # a changed method config never reuses old maps


class _Broken(SyntheticShapes):
    """Sample 2 cannot be read (a corrupt file)."""

    def __getitem__(self, index: int) -> Sample:
        if index == 2:
            raise OSError("image file is truncated")
        return super().__getitem__(index)


class _NaNFor(AttributionMethod):
    """Rollout whose map is NaN for one sample id."""

    name = "rollout"

    def __init__(self, bad_id: str) -> None:
        self.inner, self.bad_id = Rollout(), bad_id

    def __call__(self, model, batch, target):
        out = self.inner(model, batch, target)
        for i, sid in enumerate(batch.ids):
            if sid == self.bad_id:
                out.maps[i] = float("nan")
        return out


def test_on_error_skip_records_and_counts_failures(tmp_path) -> None:
    ds = _Broken(size=8, image_size=32)
    bad = ds[5].id
    record = run_job(
        ds,
        tiny_vit(),
        _NaNFor(bad),
        {"segmentation": Segmentation()},
        tmp_path,
        LoopConfig(device="cpu", batch_size=3, on_error="skip"),
    )
    metrics, rows = _read(tmp_path)
    assert record["job"]["skipped"] == 2 and record["job"]["n"] == 6
    assert metrics["metrics"]["segmentation"]["n"] == 6 and metrics["metrics"]["segmentation"]["nan_maps"] == 0
    reasons = {r["id"]: r["skip_reason"] for r in rows if r.get("skipped") == "True"}
    assert set(reasons) == {"index_2", bad}
    assert "truncated" in reasons["index_2"] and "non-finite" in reasons[bad]
    assert sum(metrics["job"]["skip_reasons"].values()) == 2
    # the six good samples score exactly as a clean run over them
    good = [i for i in range(8) if i not in (2, 5)]
    clean = SyntheticShapes(size=8, image_size=32)

    class _Subset(SyntheticShapes):
        def __len__(self):
            return len(good)

        def __getitem__(self, j):
            return clean[good[j]]

    ref = run_job(
        _Subset(size=8, image_size=32),
        tiny_vit(),
        Rollout(),
        {"segmentation": Segmentation()},
        tmp_path / "ref",
        LoopConfig(device="cpu", batch_size=1),
    )
    assert ref["metrics"]["segmentation"]["total_inter"] == metrics["metrics"]["segmentation"]["total_inter"]


def test_on_error_raise_names_the_sample(tmp_path) -> None:
    ds = SyntheticShapes(size=4, image_size=32)
    with pytest.raises(ValueError, match=f"non-finite .* the map of {ds[1].id}"):
        run_job(
            ds,
            tiny_vit(),
            _NaNFor(ds[1].id),
            {"segmentation": Segmentation()},
            tmp_path,
            LoopConfig(device="cpu", batch_size=2),
        )
    with pytest.raises(OSError, match="truncated"):
        run_job(
            _Broken(size=4, image_size=32),
            tiny_vit(),
            Rollout(),
            {"segmentation": Segmentation()},
            tmp_path,
            LoopConfig(device="cpu", batch_size=2),
        )
    assert not (tmp_path / "metrics.json").exists()


def test_loader_workers_collate_and_give_the_same_records(tmp_path) -> None:
    """num_workers > 0: samples are read and collated in worker processes; the records do not change."""
    ds = SyntheticShapes(size=7, image_size=32)
    for workers in (0, 2):
        run_job(
            ds,
            tiny_vit(),
            Rollout(),
            {"segmentation": Segmentation()},
            tmp_path / str(workers),
            LoopConfig(batch_size=3, num_workers=workers, spot_check=0),
        )
    for name in ("metrics.json", "scores.csv"):
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


@pytest.mark.gpu
def test_batches_are_pinned_and_moved_without_blocking() -> None:
    model = tiny_vit()
    model.to(device=torch.device("cuda"))
    batch = model.collate([SyntheticShapes(size=2, image_size=32)[i] for i in range(2)]).pin_memory()
    assert batch.inputs.is_pinned() and batch.labels.is_pinned() and batch.images.is_pinned()
    moved = model.batch_to(batch)
    assert moved.inputs.device.type == "cuda" and torch.equal(moved.inputs.cpu(), batch.inputs)
