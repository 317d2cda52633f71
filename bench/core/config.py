"""The one home of xaibench's configuration: ``CONF_DIR``, the resolvers, composition, and the job options.

* ``CONF_DIR`` is the shipped ``conf/`` tree; :func:`compose_config` composes it outside the ``xaibench``
  app (for ``xaibench-explain``, ``xaibench-train-probe``, ``xaibench-reproduce``, the bench and notebooks)
  with the same groups and resolvers as the CLI.
* :class:`LoopConfig` holds every option of a job with its default, once. It is registered with Hydra's
  ConfigStore as ``loop_options`` (merged at the root by ``conf/config.yaml``'s defaults list, so the CLI
  keeps its ``batch_size=4``-style overrides) and :func:`loop_config` validates a composed config against
  it (``seed=abc`` or ``seed=1.5`` are refused with the option named, never coerced).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

import xaibench.conf

CONF_DIR = str(Path(xaibench.conf.__file__).resolve().parent)
#: the source checkout (conf/ sits at its root); used to find ../shared/golden next to it
ROOT_DIR = str(Path(CONF_DIR).parent)

PRECISIONS = ("float32", "float64", "bf16", "fp16")
TARGETS = ("predicted", "label", "each")
ON_ERROR = ("raise", "skip")


def _parallel_jobs() -> int:
    """One parallel job per visible GPU; without GPUs, one per two CPU cores."""
    import torch

    return torch.cuda.device_count() or max(1, (os.cpu_count() or 2) // 2)


def _unique_suffix() -> str:
    """``<pid>-<4 random hex>``: two runs or sweeps started in the same second get different folders."""
    import secrets

    return f"{os.getpid()}-{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """``${xaibench_root:}``, ``${xaibench_parallel_jobs:}``, ``${xaibench_unique:}`` and ``${abspath:p}``
    (idempotent)."""
    if not OmegaConf.has_resolver("xaibench_root"):
        OmegaConf.register_new_resolver("xaibench_root", lambda: ROOT_DIR)
    if not OmegaConf.has_resolver("xaibench_parallel_jobs"):
        OmegaConf.register_new_resolver("xaibench_parallel_jobs", lambda: _parallel_jobs())
    if not OmegaConf.has_resolver("xaibench_unique"):
        # cached: resolved once per config, so a sweep's jobs share their folder's suffix
        OmegaConf.register_new_resolver("xaibench_unique", _unique_suffix, use_cache=True)
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: os.path.abspath(os.path.expanduser(str(p))))


@dataclass(frozen=True)
class LoopConfig:
    """Options of one job (each default is stated here and nowhere else).

    Attributes:
        device: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` (CUDA when available) or, in a sweep, ``per_job``
            (job k on ``cuda:(k mod #GPUs)``).
        precision: model dtype for the attribution pass: float32, float64 (parity), bf16/fp16 (CUDA).
        batch_size: samples per batch.
        limit: evaluate only the first ``limit`` samples (``None``: all).
        seed: seeds Python, NumPy and torch before the run.
        target: explain the ``predicted`` class, the ground-truth ``label``, or ``each`` labelled class of a
            sample once (multi-label sets; rows keyed by sample and class, see :mod:`xaibench.core.targets`).
        num_workers: DataLoader worker processes.
        save_examples: heatmaps of the first N images saved to ``examples.npz`` (for figures).
        cache_dir: root of the attribution cache (``None``: no cache; the CLI caches under
            ``paths.cache_dir``). Maps are stored per model, weights, method and its parameters, dataset
            (with a fingerprint of its files), target mode and precision; a restarted job reuses every
            finished sample and a changed configuration or file never reuses old maps.
        cache_chunk_size: most samples per cache chunk file.
        cache_flush_seconds: after a batch, the maps computed so far are written as a chunk once this many
            seconds have passed since the last write, so a kill loses at most about this much work (and at
            most ``cache_chunk_size`` samples).
        on_error: ``raise`` stops at the first failing sample; ``skip`` records it in ``scores.csv``
            (``skipped``, ``skip_reason``), counts it in ``metrics.json`` and goes on.
        spot_check: recompute the maps of the first N samples with the model in float64 and compare them
            with the run's precision (0: off; skipped when the run is already float64). The relevance rules
            amplify rounding, so a float32 map can be dominated by it; the largest relative divergence is
            recorded in ``metrics.json`` and a warning is logged above ``spot_check_threshold``.
        spot_check_threshold: relative divergence (``max|m32 − m64| / max|m64|`` per sample) that warns.
        force: re-run a job even if a complete record of the same config exists (CLI only).
    """

    device: str = "auto"
    precision: str = "float32"
    batch_size: int = 16
    limit: Optional[int] = None  # noqa: UP045  (OmegaConf's structured configs read typing.Optional)
    seed: int = 0
    target: str = "predicted"
    num_workers: int = 0
    save_examples: int = 4
    cache_dir: Optional[str] = None  # noqa: UP045
    cache_chunk_size: int = 256
    cache_flush_seconds: float = 10.0
    on_error: str = "raise"
    spot_check: int = 2
    spot_check_threshold: float = 0.05
    force: bool = False

    def __post_init__(self) -> None:
        checks = (
            (self.precision in PRECISIONS, f"precision={self.precision!r}; supported: {', '.join(PRECISIONS)}"),
            (self.target in TARGETS, f"target={self.target!r}; supported: {', '.join(TARGETS)}"),
            (self.on_error in ON_ERROR, f"on_error={self.on_error!r}; supported: {', '.join(ON_ERROR)}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.limit is None or self.limit >= 1, f"limit must be >= 1 or null, got {self.limit}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.save_examples >= 0, f"save_examples must be >= 0, got {self.save_examples}"),
            (self.cache_chunk_size >= 1, f"cache_chunk_size must be >= 1, got {self.cache_chunk_size}"),
            (self.cache_flush_seconds > 0, f"cache_flush_seconds must be > 0, got {self.cache_flush_seconds}"),
            (self.spot_check >= 0, f"spot_check must be >= 0 (0 turns it off), got {self.spot_check}"),
            (self.spot_check_threshold > 0, f"spot_check_threshold must be > 0, got {self.spot_check_threshold}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(LoopConfig))
#: what the CLI changes of the Python defaults: jobs cache their maps under the project's cache folder
CLI_DEFAULTS = {"cache_dir": "${paths.cache_dir}/attributions"}


def register_loop_options() -> None:
    """Register the job options (``LoopConfig`` defaults plus :data:`CLI_DEFAULTS`) as the ConfigStore node
    ``loop_options``, merged at the root of ``conf/config.yaml``."""
    from hydra.core.config_store import ConfigStore

    node = {**dataclasses.asdict(LoopConfig()), **CLI_DEFAULTS}
    ConfigStore.instance().store(name="loop_options", node=node, package="_global_")


def loop_config(cfg: DictConfig, **changes: Any) -> LoopConfig:
    """The validated :class:`LoopConfig` of a composed config (``changes`` replace fields, e.g. the device a
    sweep job resolved). Raises ``ValueError`` naming the option when a value has the wrong type."""
    from omegaconf.errors import ValidationError

    values = {k: cfg[k] for k in LOOP_FIELDS if k in cfg}
    try:
        typed = OmegaConf.merge(OmegaConf.structured(LoopConfig), values)
    except ValidationError as exc:
        key = getattr(exc, "full_key", None) or "an option"
        field = next((f for f in dataclasses.fields(LoopConfig) if f.name == key), None)
        kind = str(field.type) if field is not None else ""  # annotations are strings here
        wanted = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
        optional = kind.startswith("Optional[")
        expected = wanted.get(kind.removeprefix("Optional[").removesuffix("]"), "a valid value")
        expected += " or null" if optional else ""
        raise ValueError(f"{key}={values.get(key)!r} is not valid: expected {expected}") from None
    data = {**OmegaConf.to_container(typed, resolve=True), **changes}
    return LoopConfig(**data)


def config_names(group: str) -> list[str]:
    """The option names of a config group (``model`` -> ``["bert_small", "vit_base", ...]``)."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def compose_config(
    overrides: Sequence[str] = (), *, logger: str | None = "none", hydra_node: bool = False
) -> DictConfig:
    """The composed root config for Hydra ``overrides`` (e.g. ``["model=vit_tiny", "method=rollout"]``).

    Args:
        logger: appended as ``logger=<name>`` (``None``: keep the configured logger).
        hydra_node: keep the ``hydra`` node (run and sweep folders, launcher) in the result.

    Raises:
        ValueError: an unknown option or a malformed override, with Hydra's message (it lists the
            available options).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    register_loop_options()
    extra = [f"logger={logger}"] if logger else []
    try:  # the context saves and restores any Hydra state around it (e.g. when called inside a Hydra app)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=[*overrides, *extra], return_hydra_config=hydra_node)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(str(exc).strip()) from None


def method_configs(names: list[str] | None) -> dict[str, Any]:
    """Every method YAML in conf/method (or the named ones)."""
    out = {}
    for path in sorted(Path(CONF_DIR, "method").glob("*.yaml")):
        if names and path.stem not in names:
            continue
        out[path.stem] = OmegaConf.load(path)
    if names and set(names) - set(out):
        raise ValueError(f"unknown methods {sorted(set(names) - set(out))}; available: {sorted(out)}")
    return out


register_resolvers()
register_loop_options()
