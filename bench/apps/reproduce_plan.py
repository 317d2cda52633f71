"""Planning ``make reproduce-cvpr21``: compose each experiment, find the assets it lacks, choose its models."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xaibench.core.config import compose_config

log = logging.getLogger("xaibench.apps.reproduce")

#: the sweeps in the paper's order: (config name under conf/experiment/cvpr21, what it produces)
EXPERIMENTS: tuple[tuple[str, str], ...] = (
    ("table1_perturbation", "Table 1, predicted class (perturbation, ImageNet val)"),
    ("table1_perturbation_target", "Table 1, target class (perturbation, ImageNet val)"),
    ("table2_segmentation", "Table 2 (segmentation, ImageNet-segmentation)"),
    ("table3_ablation_segmentation", "Table 3, segmentation columns"),
    ("table3_ablation_perturbation", "Table 3, perturbation columns"),
    ("eraser_token_f1", "ERASER movies token-F1 vs k (BERT)"),
)

BERT_CHECKPOINT_ENV = "XAIBENCH_BERT_CHECKPOINT"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class MissingAsset:
    """Something an experiment needs that is not there.

    Attributes:
        what: the asset in words.
        path: where it was looked for (``None``: no location is configured).
        fetch: the command (or steps) that provide it.
    """

    what: str
    path: str | None
    fetch: str

    def __str__(self) -> str:
        where = f"not found at {self.path}" if self.path is not None else "not configured"
        return f"{self.what} {where}; {self.fetch}"


@dataclass
class Plan:
    """One experiment: the command to run, or why it is skipped."""

    name: str
    description: str
    command: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    missing: list[MissingAsset] = field(default_factory=list)
    skip_reason: str | None = None
    output_dir: Path | None = None

    @property
    def skipped(self) -> bool:
        return bool(self.missing) or self.skip_reason is not None


# -- composing and checking -----------------------------------------------------------------------------


def compose(overrides: Sequence[str]) -> DictConfig:
    """The job configuration for ``overrides``, with the ``hydra`` node and the configured logger."""
    return compose_config(overrides, logger=None, hydra_node=True)


def _target_class(node: Any) -> type | None:
    from hydra.utils import get_class

    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    try:
        return get_class(str(target))
    except Exception:  # noqa: BLE001 - a bad _target_ is reported by the job itself
        return None


def _is_missing(node: DictConfig, key: str) -> bool:
    """Whether ``key`` is set to ``???`` (``key in node`` is False for such keys)."""
    return key in node.keys() and OmegaConf.is_missing(node, key)


def _value(node: DictConfig, key: str) -> Any:
    if key not in node.keys() or OmegaConf.is_missing(node, key):
        return None
    return node[key]


def missing_assets(cfg: DictConfig) -> list[MissingAsset]:
    """The data and weights a composed job configuration needs that are not on disk.

    Each adapter class declares what it reads (``required_assets`` of the dataset and model classes, from
    their config nodes, without building them); adapters that declare nothing get their path-like settings
    (``path``, ``root``, ``checkpoint_path``, ...) checked for existence.
    """
    out: list[MissingAsset] = []
    for group, keys in (
        ("dataset", ("path", "root")),
        ("model", ("checkpoint_path", "config_path", "state_dict_path")),
    ):
        node = cfg[group]
        cls = _target_class(node)
        declared = []
        if cls is not None and hasattr(cls, "required_assets"):  # a DatasetAdapter / ModelAdapter class
            values = {k: ("???" if _is_missing(node, k) else _value(node, k)) for k in node.keys()}
            declared = cls.required_assets(values)
        for asset in declared:
            hint = _finetune_hint(cfg) if asset.kind == "finetuned_bert" else asset.hint
            out.append(MissingAsset(asset.what, asset.path, hint))
        # path-like settings the class does not declare are still checked for existence
        seen = {a.path for a in declared}
        out += [m for m in _missing_paths(node, keys, group) if str(Path(m.path).expanduser()) not in seen]
    return out


def _missing_paths(node: DictConfig, keys: Sequence[str], group: str) -> list[MissingAsset]:
    out = []
    for key in keys:
        value = _value(node, key)
        if value is not None and not Path(str(value)).expanduser().exists():
            out.append(MissingAsset(f"{group}.{key}", str(value), f"set {group}.{key} to an existing path"))
    return out


def default_bert_checkpoint(data_dir: str | Path) -> Path:
    """Where ``make reproduce-cvpr21`` looks for the fine-tuned BERT: ``<data_dir>/checkpoints/bert_movies``."""
    return Path(data_dir).expanduser() / "checkpoints" / "bert_movies"


def _finetune_hint(cfg: DictConfig) -> str:
    data_dir = Path(str(cfg.paths.data_dir)).expanduser()
    return (
        "fine-tune one with `xaibench-finetune --checkpoint bert-base-uncased --data-root "
        f"{data_dir / 'movies'} --out {default_bert_checkpoint(data_dir)}` (the reference's classifier is not "
        f"public), or pass --bert-checkpoint DIR (or set ${BERT_CHECKPOINT_ENV})"
    )


def _sweep_methods(cfg: DictConfig, extra: Sequence[str]) -> list[str]:
    """The experiment's method sweep (``hydra.sweeper.params.method``), or a ``method=`` override."""
    for override in reversed(list(extra)):
        if override.startswith("method="):
            return [m.strip() for m in override.split("=", 1)[1].split(",") if m.strip()]
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    value = params.get("method") if hasattr(params, "get") else None
    if value is None:
        return [str(cfg.hydra.runtime.choices.get("method"))] if "runtime" in cfg.hydra else []
    return [m.strip() for m in str(value).split(",") if m.strip()]


def method_support(method: str, modality: str) -> str | None:
    """``None`` if method config ``method`` can run on ``modality`` data, else why not."""
    from xaibench.core.config import CONF_DIR

    path = Path(CONF_DIR) / "method" / f"{method}.yaml"
    if not path.is_file():
        return f"no method config conf/method/{method}.yaml"
    cls = _target_class(OmegaConf.load(path))
    if cls is None:
        return None  # let the job report a broken _target_
    modalities = getattr(cls, "modalities", None)
    if modalities is not None and modality not in modalities:
        return f"{cls.__name__} supports {sorted(modalities)} inputs only, not {modality}"
    return None


# -- planning -------------------------------------------------------------------------------------------


@dataclass
class Options:
    """What the user asked for (see :func:`_build_parser`)."""

    only: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    limit: int | None = None
    data_dir: str | None = None
    output_dir: str | None = None
    image_model: str | None = None
    text_model: str | None = None
    bert_checkpoint: str | None = None
    dataset_set: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    strict: bool = False


def _common_overrides(opts: Options) -> list[str]:
    out = []
    if opts.data_dir is not None:
        out.append(f"paths.data_dir={Path(opts.data_dir).expanduser().resolve()}")
    if opts.output_dir is not None:
        out.append(f"paths.output_dir={Path(opts.output_dir).expanduser().resolve()}")
    if opts.limit is not None:
        out.append(f"limit={opts.limit}")
    return out


def _dataset_overrides(opts: Options, dataset_choice: str) -> list[str]:
    out = []
    for item in opts.dataset_set:
        name, _, assignment = item.partition(".")
        if name == dataset_choice:
            out.append(f"dataset.{assignment}")
    return out


def plan_experiment(name: str, description: str, opts: Options) -> Plan:
    """Compose experiment ``name`` with the options, check its data and build its command."""
    plan = Plan(name, description)
    base = [f"experiment=cvpr21/{name}", *_common_overrides(opts)]
    cfg = compose([*base, *opts.overrides])
    dataset_cls = _target_class(cfg.dataset)
    modality = str(getattr(dataset_cls, "modality", "image"))
    dataset_choice = str(cfg.hydra.runtime.choices.get("dataset"))
    swap = opts.image_model if modality == "image" else opts.text_model
    overrides = [*base, *([f"model={swap}"] if swap else []), *_dataset_overrides(opts, dataset_choice)]
    cfg = compose([*overrides, *opts.overrides])
    if _is_missing(cfg.model, "checkpoint"):  # a text model whose classifier nobody has set
        checkpoint = opts.bert_checkpoint or os.environ.get(BERT_CHECKPOINT_ENV)
        if checkpoint is None:
            candidate = default_bert_checkpoint(str(cfg.paths.data_dir))
            checkpoint = str(candidate) if candidate.exists() else None
        if checkpoint is not None:
            overrides.append(f"model.checkpoint={checkpoint}")
            cfg = compose([*overrides, *opts.overrides])
    plan.output_dir = Path(str(cfg.paths.output_dir)).expanduser()
    plan.missing = missing_assets(cfg)

    methods = _sweep_methods(cfg, opts.overrides)
    if opts.methods:
        methods = [m for m in methods if m in opts.methods]
        if not methods:
            plan.skip_reason = f"none of --methods {','.join(opts.methods)} is in this sweep"
    for method in methods:
        reason = method_support(method, modality)
        if reason is None:
            plan.methods.append(method)
        else:
            plan.left_out[method] = reason
    if not plan.methods and plan.skip_reason is None:
        plan.skip_reason = "no method of the sweep can run on this data"
    extra = [o for o in opts.overrides if not o.startswith("method=")]
    plan.command = [
        sys.executable,
        "-m",
        "xaibench",
        "-m",
        *overrides,
        *extra,
        f"method={','.join(plan.methods)}",
    ]
    return plan


def plan_all(opts: Options) -> list[Plan]:
    """Plans of the selected experiments in the paper's order.

    Raises:
        ValueError: ``--only`` names an unknown experiment.
    """
    known = [n for n, _ in EXPERIMENTS]
    unknown = [n for n in opts.only if n not in known]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [plan_experiment(n, d, opts) for n, d in EXPERIMENTS if not opts.only or n in opts.only]


# -- running --------------------------------------------------------------------------------------------


def _describe(plan: Plan) -> str:
    if plan.missing:
        lines = [f"SKIP {plan.name} ({plan.description}): missing data"]
        lines += [f"       - {m}" for m in plan.missing]
        return "\n".join(lines)
    if plan.skip_reason:
        return f"SKIP {plan.name} ({plan.description}): {plan.skip_reason}"
    line = f"RUN  {plan.name} ({plan.description}): {', '.join(plan.methods)}"
    for method, reason in plan.left_out.items():
        line += f"\n       - leaving out {method}: {reason}"
    return line
