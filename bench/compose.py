"""Compose xaibench's Hydra configs outside the ``xaibench`` app (for ``xaibench-explain``,
``xaibench-train-probe`` and notebooks): the same ``conf/`` tree, groups and resolvers as the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

import xaibench.conf

CONF_DIR = str(Path(xaibench.conf.__file__).resolve().parent)


def config_names(group: str) -> list[str]:
    """The option names of a config group (``model`` -> ``["bert_small", "vit_base", ...]``)."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed root config for Hydra ``overrides`` (e.g. ``["model=vit_tiny", "method=rollout"]``).

    Raises:
        ValueError: an unknown option or a malformed override, with Hydra's message (it lists the
            available options).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import xaibench.cli  # noqa: F401  (registers the ${xaibench_root:} and ${abspath:} resolvers)

    try:  # the context saves and restores any Hydra state around it (e.g. when called inside a Hydra app)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=[*overrides, "logger=none"])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(str(exc).strip()) from None
