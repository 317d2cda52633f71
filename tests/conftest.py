"""Pytest hooks and fixtures: golden directory, GPU skipping, seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import golden_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def golden() -> Path:
    d = golden_dir()
    if not d.is_dir():
        pytest.fail(f"golden directory {d} not found (set XAIBENCH_GOLDEN_DIR)")
    return d
