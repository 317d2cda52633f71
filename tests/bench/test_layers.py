"""The layer contracts are enforced: `make lint` (.ci/lint_imports.py) passes on the tree and fails on a copy
with an upward import, naming it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "lint_imports.py"

pytestmark = pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None
    and shutil.which("lint-imports") is None,
    reason="import-linter is not installed",
)


def _copy_tree(dest: Path) -> Path:
    for name in ("bench", "methods", "datasets", "conf"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=300)


def test_contracts_hold_on_the_tree(tmp_path) -> None:
    result = _lint(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        (
            "bench/core/loop.py",
            "import xaibench.apps.cli  # noqa",
            "xaibench.core is not allowed to import xaibench.apps",
        ),
        (
            "bench/metrics/segmentation.py",
            "import xaibench.report.summary  # noqa",
            "not allowed to import xaibench.report",
        ),
        ("methods/attention.py", "import xaibench.datasets.synthetic  # noqa", "Plugin kinds are independent"),
    ],
)
def test_an_upward_import_breaks_lint(tmp_path, module, line, broken) -> None:
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = _lint(root)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout
