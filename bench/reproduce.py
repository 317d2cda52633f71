"""``make reproduce-cvpr21``: run the CVPR 2021 sweeps in the paper's order, then build the tables.

For each experiment of ``conf/experiment/cvpr21/`` (Table 1 predicted and target class, Table 2, Table 3
segmentation and perturbation, the ERASER token-F1 figure) this

1. composes its configuration (with the options below) and checks that its data and weights are present;
   a table whose data is missing is **skipped** with a message naming the asset and the command that
   fetches it (``make data``, ``xaibench-data imagenet_seg``, ``xaibench-data imagenet_val`` for the
   ImageNet instructions, ``xaibench-finetune`` for the BERT classifier);
2. leaves out methods that cannot run on the experiment's data (e.g. the LRP methods on BERT until the
   LRP engine supports it), saying so;
3. runs the sweep as a subprocess, ``python -m xaibench -m experiment=cvpr21/<name> ...`` (an argument
   list, never a shell string), into ``<output_dir>/cvpr21/<table>``;

and finally builds ``results/cvpr21/`` with :func:`xaibench.cvpr21.build_tables`. A failed sweep does not
stop the others. Small stand-ins (another data folder, ``--image-model vit_tiny``, ``--text-model
bert_small``, ``--dataset-set imagenet_val.num_classes=2``) run the whole pipeline in seconds.

Exit status: 0 when every sweep that ran succeeded (skipped tables are reported; ``--strict`` makes them
an error, status 3); 1 when a sweep failed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("xaibench.reproduce")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3

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
    """The job configuration for ``overrides`` (Hydra compose API, with the ``hydra`` node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xaibench.cli import CONF_DIR  # registers the config resolvers

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)


def _target_class(node: Any) -> type | None:
    from hydra.utils import get_class

    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    try:
        return get_class(str(target))
    except Exception:  # noqa: BLE001 - a bad _target_ is reported by the job itself
        return None


def _class_name(node: Any) -> str:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target or "").rsplit(".", 1)[-1]


def _is_missing(node: DictConfig, key: str) -> bool:
    """Whether ``key`` is set to ``???`` (``key in node`` is False for such keys)."""
    return key in node.keys() and OmegaConf.is_missing(node, key)


def _value(node: DictConfig, key: str) -> Any:
    if key not in node.keys() or OmegaConf.is_missing(node, key):
        return None
    return node[key]


def missing_assets(cfg: DictConfig) -> list[MissingAsset]:
    """The data and weights a composed job configuration needs that are not on disk.

    Known datasets and models get the command that provides them; other path-like settings
    (``path``, ``root``, ``checkpoint_path``, ...) are checked for existence only.
    """
    out: list[MissingAsset] = []
    dataset, model = cfg.dataset, cfg.model
    kind = _class_name(dataset)
    if kind == "ImageNetSegmentation":
        path = Path(str(dataset.path)).expanduser()
        if not path.is_file():
            out.append(
                MissingAsset(
                    "ImageNet-segmentation (gtsegs_ijcv.mat)",
                    str(path),
                    "fetch it with `make data` (or `xaibench-data imagenet_seg`)",
                )
            )
    elif kind == "ImageNetVal":
        root = Path(str(dataset.root)).expanduser()
        if not root.is_dir() or not any(root.iterdir()):
            out.append(
                MissingAsset(
                    "ImageNet validation images",
                    str(root),
                    "ImageNet cannot be redistributed: `xaibench-data imagenet_val` prints what to download "
                    "and where to put it",
                )
            )
    elif kind == "EraserMovies":
        root = Path(str(dataset.root)).expanduser()
        split = str(dataset.get("split", "test"))
        if not (root / f"{split}.jsonl").is_file() or not (root / "docs").exists():
            out.append(
                MissingAsset(
                    f"ERASER Movie Reviews ({split}.jsonl and docs/)",
                    str(root),
                    "fetch it with `make data` (or `xaibench-data eraser_movies`)",
                )
            )
    else:
        out += _missing_paths(dataset, ("path", "root"), "dataset")

    kind = _class_name(model)
    if kind == "TimmViT":
        checkpoint = _value(model, "checkpoint_path")
        if checkpoint is not None and not Path(str(checkpoint)).expanduser().is_file():
            arch = str(_value(model, "arch") or "")
            fetch = (
                "fetch it with `make data` (or `xaibench-data vit_base`)"
                if arch.startswith("vit_base_patch16_224")
                else "set model.checkpoint_path"
            )
            out.append(MissingAsset(f"ViT weights ({arch or 'model.checkpoint_path'})", str(checkpoint), fetch))
        out += _missing_paths(model, ("timm_config",), "model")
    elif kind == "HFBert":
        if _is_missing(model, "checkpoint"):
            out.append(MissingAsset("a BERT classifier fine-tuned on ERASER movies", None, _finetune_hint(cfg)))
        else:
            checkpoint = _value(model, "checkpoint")
            if checkpoint is not None and not _checkpoint_ok(str(checkpoint)):
                out.append(MissingAsset("the fine-tuned BERT classifier", str(checkpoint), _finetune_hint(cfg)))
            out += _missing_paths(model, ("config_path", "state_dict_path", "vocab_path"), "model")
    else:
        out += _missing_paths(model, ("checkpoint_path", "config_path", "state_dict_path"), "model")
    return out


def _missing_paths(node: DictConfig, keys: Sequence[str], group: str) -> list[MissingAsset]:
    out = []
    for key in keys:
        value = _value(node, key)
        if value is not None and not Path(str(value)).expanduser().exists():
            out.append(MissingAsset(f"{group}.{key}", str(value), f"set {group}.{key} to an existing path"))
    return out


def _checkpoint_ok(checkpoint: str) -> bool:
    """A local checkpoint folder that exists, or something that can only be a hub id."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return True
    looks_local = checkpoint.startswith((".", "/", "~")) or os.sep in checkpoint.strip("/").replace("/", "", 1)
    return not looks_local and _HUB_ID.match(checkpoint) is not None


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
    from xaibench.cli import CONF_DIR

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
    if _class_name(cfg.model) == "HFBert" and _is_missing(cfg.model, "checkpoint"):
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


def run(opts: Options, *, dry_run: bool = False, tables: bool = True, results_dir: Path | None = None) -> int:
    """Plan, run and tabulate (see the module docstring). Returns the exit status."""
    from xaibench import cvpr21
    from xaibench.tables import load_run_records

    plans = plan_all(opts)
    print("xaibench reproduce-cvpr21: plan")
    for plan in plans:
        print("  " + _describe(plan).replace("\n", "\n  "))
    if dry_run:
        for plan in plans:
            if not plan.skipped:
                print("  $ " + " ".join(plan.command))
        return EXIT_OK

    failed: list[str] = []
    for plan in plans:
        if plan.skipped:
            continue
        print(f"\n==> {plan.name}: {plan.description}\n$ {' '.join(plan.command)}", flush=True)
        status = subprocess.run(plan.command, check=False).returncode
        if status != 0:
            failed.append(plan.name)
            print(f"xaibench reproduce-cvpr21: {plan.name} failed (exit status {status}); going on", flush=True)

    skipped = [p for p in plans if p.skipped]
    if tables:
        output_dirs = sorted({p.output_dir for p in plans if p.output_dir is not None})
        runs = [d / "cvpr21" for d in output_dirs if (d / "cvpr21").is_dir()]
        out = Path(results_dir or "results/cvpr21")
        written = cvpr21.build_tables(load_run_records(runs), out, cvpr21.load_paper(cvpr21.default_paper_path(out)))
        if written:
            print(f"\ntables and figures: {out} ({len(written)} files; {out / 'README.md'})")
        else:
            print("\nno run records yet: no tables written")

    print("\nxaibench reproduce-cvpr21: summary")
    ran = [p.name for p in plans if not p.skipped and p.name not in failed]
    print(f"  ran:     {', '.join(ran) or '-'}")
    print(f"  failed:  {', '.join(failed) or '-'}")
    print(f"  skipped: {', '.join(p.name for p in skipped) or '-'}")
    for plan in skipped:
        for m in plan.missing:
            print(f"    {plan.name}: {m}")
        if plan.skip_reason:
            print(f"    {plan.name}: {plan.skip_reason}")
    if failed:
        return EXIT_FAILED
    return EXIT_SKIPPED if skipped and opts.strict else EXIT_OK


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-reproduce",
        description=(
            "Reproduce the CVPR 2021 tables (Chefer, Gur & Wolf): run the sweeps of conf/experiment/cvpr21 "
            "in the paper's order, skipping tables whose data is missing (with the command that fetches it), "
            "then build results/cvpr21. Extra Hydra overrides (e.g. device=cuda batch_size=32) go to every sweep."
        ),
    )
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides for every sweep")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples (limit=N)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this experiment (repeatable): {', '.join(n for n, _ in EXPERIMENTS)}",
    )
    parser.add_argument("--methods", default=None, help="comma-separated method configs to keep in every sweep")
    parser.add_argument("--data-dir", default=None, help="data folder (paths.data_dir; default $XAIBENCH_DATA)")
    parser.add_argument("--output-dir", default=None, help="run folder root (paths.output_dir; default outputs)")
    parser.add_argument("--results-dir", type=Path, default=Path("results/cvpr21"), help="tables (results/cvpr21)")
    parser.add_argument("--image-model", default=None, help="model config instead of vit_base (e.g. vit_tiny)")
    parser.add_argument("--text-model", default=None, help="model config instead of bert_movies (e.g. bert_small)")
    parser.add_argument(
        "--bert-checkpoint",
        default=None,
        help=f"fine-tuned BERT for model=bert_movies (default ${BERT_CHECKPOINT_ENV}, else "
        "<data_dir>/checkpoints/bert_movies)",
    )
    parser.add_argument(
        "--dataset-set",
        action="append",
        default=[],
        metavar="DATASET.KEY=VALUE",
        help="override dataset.KEY in the experiments using dataset config DATASET "
        "(e.g. imagenet_val.num_classes=100 for a 100-class subset); repeatable",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    parser.add_argument("--no-tables", action="store_true", help="run the sweeps only")
    parser.add_argument("--strict", action="store_true", help="exit with status 3 when a table was skipped")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``xaibench-reproduce``, ``make reproduce-cvpr21``); returns the exit status."""
    args = _build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print(f"xaibench-reproduce: error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return EXIT_USAGE
    bad = [s for s in args.dataset_set if not re.match(r"^[\w-]+\.[\w.]+=", s)]
    if bad:
        print(f"xaibench-reproduce: error: --dataset-set expects DATASET.KEY=VALUE, got {bad}", file=sys.stderr)
        return EXIT_USAGE
    opts = Options(
        only=list(args.only),
        methods=[m.strip() for m in (args.methods or "").split(",") if m.strip()],
        limit=args.limit,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        image_model=args.image_model,
        text_model=args.text_model,
        bert_checkpoint=args.bert_checkpoint,
        dataset_set=list(args.dataset_set),
        overrides=list(args.overrides),
        strict=args.strict,
    )
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return run(opts, dry_run=args.dry_run, tables=not args.no_tables, results_dir=args.results_dir)
    except (ValueError, HydraException, OmegaConfBaseException) as exc:
        print(f"xaibench-reproduce: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
