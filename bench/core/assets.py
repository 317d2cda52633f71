"""What a dataset or model declares it needs on disk (part of the contracts, re-exported by
:mod:`xaibench.core.types`): checked before a sweep starts, so a missing file is named up front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RequiredAsset", "path_asset"]


@dataclass(frozen=True)
class RequiredAsset:
    """A file a dataset or model needs, and how the user gets it (checked before a sweep starts).

    Attributes:
        what: what it is (``gtsegs_ijcv.mat``, ``the ViT-B/16 weights``).
        path: where it is expected (``None``: not configured at all).
        hint: how to get it (``make data``, ``xaibench-data imagenet_seg``).
        kind: what kind of asset (``file``, or e.g. ``finetuned_bert`` for which a caller knows a better hint).
        present: whether it is there.
    """

    what: str
    path: str | None
    hint: str
    kind: str = "file"
    present: bool = False


def path_asset(what: str, path: Any, hint: str, *, folder: bool = False, kind: str = "file") -> list[RequiredAsset]:
    """``[RequiredAsset]`` when ``path`` (a file, or a non-empty folder) is missing, else ``[]``."""
    from pathlib import Path

    if path is None:
        return []
    p = Path(str(path)).expanduser()
    ok = (p.is_dir() and any(p.iterdir())) if folder else p.exists()
    return [] if ok else [RequiredAsset(what, str(p), hint, kind)]
