"""``xaibench-tables`` / ``make tables``: the CVPR 2021 tables and figures of :mod:`xaibench.report.cvpr21`
from run folders (:func:`xaibench.core.records.load_run_records`) and/or an MLflow store."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from xaibench.core.records import load_run_records
from xaibench.report import cvpr21
from xaibench.report.tracking import load_mlflow_records


def _default_runs_dir() -> Path:
    return Path(os.environ.get("XAIBENCH_OUTPUT") or "outputs") / "cvpr21"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-tables",
        description=(
            "Build the CVPR 2021 tables (Markdown, CSV) and figures from run records: the metrics.json of "
            "every job under --runs (default $XAIBENCH_OUTPUT/cvpr21, else outputs/cvpr21) and/or an "
            "MLflow store. Each cell shows ours, the published number and the difference."
        ),
    )
    parser.add_argument(
        "--runs", type=Path, action="append", default=None, metavar="DIR", help="folder of run records (repeatable)"
    )
    parser.add_argument("--mlflow", default=None, metavar="URI", help="also read job records from this MLflow store")
    parser.add_argument("--mlflow-experiment", default="xaibench", help="MLflow experiment name (default: xaibench)")
    parser.add_argument(
        "--out", type=Path, default=Path("results/cvpr21"), help="output folder (default: results/cvpr21)"
    )
    parser.add_argument(
        "--paper", type=Path, default=None, help="published numbers (default: <out>/paper.yaml, else the checkout's)"
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``xaibench-tables`` / ``make tables``: returns 0 when the tables were written, 1 when there was
    nothing to build them from (no file is written then), 2 for a usage error."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="xaibench-tables: %(message)s")
    if args.runs is not None:
        runs = list(args.runs)
    else:  # the default folder may not exist yet: that is "no records", not a usage error
        runs = [d for d in [_default_runs_dir()] if not args.mlflow and d.is_dir()]
    try:
        records = load_run_records(runs)
        if args.mlflow:
            records += load_mlflow_records(args.mlflow, args.mlflow_experiment)
        paper = cvpr21.load_paper(args.paper or cvpr21.default_paper_path(args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"xaibench-tables: error: {exc}", file=sys.stderr)
        return 2
    written = cvpr21.build_tables(records, args.out, paper, figures=not args.no_figures)
    if not written:
        searched = [str(r) for r in (args.runs or ([] if args.mlflow else [_default_runs_dir()]))]
        where = ", ".join(searched + ([args.mlflow] if args.mlflow else []))
        print(
            f"xaibench-tables: no CVPR 2021 run records in {where}; run `make reproduce-cvpr21` "
            "(or the sweeps in conf/experiment/cvpr21/) first",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {len(written)} files to {args.out}:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
