"""The table a sweep prints at its end (called by the Hydra sweep callback), built from run records only
(:mod:`xaibench.core.records`), so it regenerates offline and changes when the records change."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaibench.core.records import RunRecord, load_run_records
from xaibench.report.figures import example_figure

log = logging.getLogger(__name__)

#: the headline numbers of each metric runner, in table order, and whether they are shown in percent
HEADLINES: dict[str, list[tuple[str, str, bool]]] = {
    "class_sensitivity": [
        ("mass_gap", "mass gap (↑)", False),
        ("pointing", "pointing %", True),
        ("both_point", "both point %", True),
    ],
    "segmentation": [("pixel_accuracy", "pixel acc. %", True), ("miou", "mIoU %", True), ("map", "mAP %", True)],
    "perturbation": [("positive_auc", "pos. AUC % (↓)", False), ("negative_auc", "neg. AUC % (↑)", False)],
    "token_f1": [
        ("micro_f1@10", "token-F1@10 micro", False),
        ("micro_f1@20", "token-F1@20 micro", False),
        ("micro_f1@40", "token-F1@40 micro", False),
        ("macro_f1@20", "token-F1@20 macro", False),
    ],
    "token_auprc": [("auprc", "token AUPRC", False)],
    "aopc": [("aopc_comprehensiveness", "comp. AOPC (↑)", False), ("aopc_sufficiency", "suff. AOPC (↓)", False)],
    "pointing_game": [("hit", "pointing hit %", True), ("energy", "energy PG %", True)],
    "relevance_mass": [("mass", "rel. mass %", True)],
    "relevance_rank": [("rank", "rel. rank %", True)],
    "insertion_deletion": [("insertion_auc", "insertion AUC (↑)", False), ("deletion_auc", "deletion AUC (↓)", False)],
    "road": [("morf_auc", "ROAD MoRF % (↓)", False), ("lerf_auc", "ROAD LeRF % (↑)", False)],
    "sanity": [
        ("spearman_last", "MPRT ρ last (↓)", False),
        ("ssim_last", "MPRT SSIM last (↓)", False),
        ("random_logit_ssim", "rand. logit SSIM (↓)", False),
    ],
}
#: the paper's metrics; a sweep with others as well gets a second table for those (readability)
PAPER_METRICS = ("segmentation", "perturbation", "token_f1")

#: runners whose numbers tell a class-specific explanation from a class-agnostic one: their columns come first
CLASS_SPECIFIC = ("class_sensitivity",)


def records_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per job: its config choices and the headline numbers of its runners (:data:`HEADLINES`)."""
    rows = []
    for rec in records:
        run = Path(rec.source).name
        if rec.failed:
            rows.append({"run": run, "status": "failed", "error": rec.error})
            continue
        job = rec.job
        row: dict[str, Any] = {
            "run": run,
            # the config name (e.g. rollout_bert) tells variants of one method class apart
            "method": rec.method,
            "dataset": job.get("dataset"),
            "model": job.get("model"),
            "target": job.get("target"),
            "n": job.get("n"),
            "partial": job.get("partial"),
            "skipped": job.get("skipped", 0),
            "status": "ok",
        }
        if job.get("truncated"):  # text cut at the model's maximum length (its tail gets no score)
            row["truncated"] = job["truncated"]
        for metric, values in sorted(rec.metrics.items(), key=lambda kv: kv[0] not in CLASS_SPECIFIC):
            for key, label, percent in HEADLINES.get(metric, []):
                if key in values and values[key] is not None:
                    row[label] = values[key] * 100.0 if percent else values[key]
        rows.append(row)
    return pd.DataFrame(rows)


def other_metrics_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """The headline numbers of the metrics beyond the paper's (:data:`PAPER_METRICS`), one row per finished
    job that has any (empty when none): ``xaibench-tables`` writes it beside the paper's tables."""
    frame = records_frame([r for r in records if not r.failed and set(r.metrics) - set(PAPER_METRICS)])
    others = [label for m, rows in HEADLINES.items() if m not in PAPER_METRICS for _, label, _ in rows]
    if frame.empty:
        return frame
    keep = ["method", "dataset", "model", "target", "n", "partial", *(c for c in others if c in frame.columns)]
    return frame[[c for c in keep if c in frame.columns]].sort_values(["dataset", "model", "method"])


def to_markdown(frame: pd.DataFrame) -> str:
    """A Markdown table (no extra dependency: pandas' ``to_markdown`` needs ``tabulate``)."""
    if frame.empty:
        return "(no records)"
    cols = list(frame.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.2f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summarize_sweep(sweep_dir: Path, figure: bool = True) -> int:
    """Print and write (``summary.md``, ``summary.csv``, ``examples.png``) a sweep's table.

    Returns:
        The number of failed jobs.
    """
    records = load_run_records([sweep_dir])
    frame = records_frame(records)
    if frame.empty:
        log.warning("no run records under %s", sweep_dir)
        return 0
    ok = frame[frame["status"] == "ok"].drop(columns=["status"], errors="ignore")
    keep = [c for c in ok.columns if c not in ("run", "model", "partial", "error")]
    table = ok[keep].sort_values("method") if "method" in ok else ok
    failed = frame[frame["status"] == "failed"]
    headline = {label for rows in HEADLINES.values() for _, label, _ in rows}
    # the class-specific columns lead the first table (records_frame puts them first); the rest follow
    others = [
        label for m, rows in HEADLINES.items() if m not in (*PAPER_METRICS, *CLASS_SPECIFIC) for _, label, _ in rows
    ]
    first = [c for c in table.columns if c not in others]
    second = [c for c in table.columns if c not in headline] + [c for c in others if c in table.columns]
    if any(c in headline for c in first) and any(c in others for c in second):  # two tables: paper, then the rest
        text = to_markdown(table[first]) + "\n\n" + to_markdown(table[second])
    else:
        text = to_markdown(table)
    if len(failed):
        text += "\n\nFailed jobs:\n" + "\n".join(f"- {r.run}: {r.error}" for r in failed.itertuples())
    (Path(sweep_dir) / "summary.md").write_text(text + "\n")
    frame.to_csv(Path(sweep_dir) / "summary.csv", index=False)
    print(f"\nxaibench summary ({sweep_dir}):\n\n{text}\n", flush=True)
    if figure:
        done = sorted((r for r in records if not r.failed and r.run_dir), key=lambda r: str(r.method))
        # columns titled by the method's config name (three configs may share one class, e.g. partial_lrp)
        labels = {r.run_dir: str(r.method) for r in done}
        path = example_figure([r.run_dir for r in done], Path(sweep_dir) / "examples.png", labels=labels)
        if path:
            print(f"example heatmaps: {path}", flush=True)
    return int(len(failed))
