"""Check the layer contracts of ``pyproject.toml`` with import-linter (``make lint``).

import-linter (grimp) walks the root package's folder, but ``xaibench`` is assembled from several root
folders (``bench/`` -> ``xaibench``, ``methods/`` -> ``xaibench.methods``, ``datasets/`` ->
``xaibench.datasets``, ``conf/`` -> ``xaibench.conf``; see ``[tool.setuptools.package-dir]``). So the
package is staged as it is installed, in a temporary folder, and ``lint-imports`` runs on that copy.
Usage: ``python .ci/lint_imports.py [project root]``; the exit status is lint-imports'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib


def stage(root: Path, dest: Path) -> Path:
    """Copy the package folders of ``root`` into ``dest`` laid out as installed; returns ``dest``."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*package.split("."))
        shutil.copytree(root / folder, target, ignore=ignore, dirs_exist_ok=True)
    return dest


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parent.parent).resolve()
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="xaibench-lint-") as tmp:
        stage(root, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = [str(lint) if lint.exists() else "lint-imports", str(root / "pyproject.toml")]
        # run from the staged folder so the staged copy (not the editable install) is imported
        return subprocess.call(cmd, cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
