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

and finally builds ``results/cvpr21/`` with :func:`xaibench.report.cvpr21.build_tables`. A failed sweep does not
stop the others. Small stand-ins (another data folder, ``--image-model vit_tiny``, ``--text-model
bert_small``, ``--dataset-set imagenet_val.num_classes=2``) run the whole pipeline in seconds.

Exit status: 0 when every sweep that ran succeeded (skipped tables are reported; ``--strict`` makes them
an error, status 3); 1 when a sweep failed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from xaibench.apps.reproduce_plan import (
    BERT_CHECKPOINT_ENV,
    EXPERIMENTS,
    Options,
    _describe,
    plan_all,
)

log = logging.getLogger("xaibench.apps.reproduce")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3


def run(opts: Options, *, dry_run: bool = False, tables: bool = True, results_dir: Path | None = None) -> int:
    """Plan, run and tabulate (see the module docstring). Returns the exit status."""
    from xaibench.core.records import load_run_records
    from xaibench.report import cvpr21

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
