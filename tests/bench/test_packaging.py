"""The distribution installs one import package, `xaibench`, and nothing named datasets/methods/bench."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from helpers import ROOT


def test_wheel_has_only_the_xaibench_package(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("xaibench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"xaibench"}, top
    for must in (
        "xaibench/core/loop.py",
        "xaibench/methods/attention.py",
        "xaibench/datasets/synthetic.py",
        "xaibench/conf/config.yaml",
        "xaibench/core/data/assets.yaml",
        "xaibench/conf/method/rollout.yaml",
    ):
        assert must in names, must
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "xaibench = xaibench.apps.cli:main" in entry
    assert "xaibench-data = xaibench.apps.data_fetch:main" in entry


def test_installed_xaibench_does_not_shadow_hugging_face_datasets(tmp_path) -> None:
    """Outside the checkout, `datasets`, `methods` and `bench` resolve to nothing of ours."""
    code = (
        "import importlib.util as u, sys, xaibench.datasets, xaibench.methods\n"
        "for n in ('datasets', 'methods', 'bench'):\n"
        "    s = u.find_spec(n)\n"
        "    print(n, 'ours' if s and str(s.origin or s.submodule_search_locations).find(sys.argv[1]) >= 0 else 'ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["datasets", "ok", "methods", "ok", "bench", "ok"]
