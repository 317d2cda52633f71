"""Train-once caching of the demo models: a recipe's digest names the cached artefact, which is built
into a temporary sibling and renamed into place, so a killed training never leaves a half-written model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def recipe_digest(defaults: dict[str, Any], recipe: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The full recipe (``defaults`` updated by ``recipe``) and the first 12 hex digits of its SHA-256."""
    full = {**defaults, **(recipe or {})}
    return full, hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]


def build_once(target: Path, build: Callable[[Path], None], done: Path, retrain: bool, what: str) -> None:
    """Unless ``done`` exists (and not ``retrain``), run ``build(tmp)`` to write a file or folder at a
    temporary sibling of ``target`` and rename it to ``target`` (replacing an old one)."""
    if done.exists() and not retrain:
        return
    log.info("training the %s once (cached at %s)", what, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(tmp, target)
