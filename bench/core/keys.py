"""Canonical JSON and SHA-256 of configuration keys (the attribution cache and the finished-job index)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (str, bool, int, type(None))):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, Sequence):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    raise TypeError(
        f"cache key values must be JSON-like (str, number, bool, None, lists, mappings, paths, dtypes); got "
        f"{type(obj).__name__}: {obj!r}"
    )


def stable_json(key: Mapping[str, Any]) -> str:
    """Canonical JSON of a key: sorted keys, no whitespace, tuples as lists, paths/dtypes as strings."""
    return json.dumps(_jsonable(key), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def key_hash(key: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of :func:`stable_json`."""
    return hashlib.sha256(stable_json(key).encode()).hexdigest()


def key_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            name = f"{prefix}.{k}" if prefix else k
            if k not in old:
                out.append(f"{name}: (absent) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{name}: {old[k]!r} -> (absent)")
            else:
                out += key_diff(old[k], new[k], name)
        return out
    return [] if old == new else [f"{prefix or '<key>'}: {old!r} -> {new!r}"]
