"""Tables and figures built from run records only (``metrics.json``, ``examples.npz``), so they
regenerate offline and change when the records change."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: the headline numbers of each metric runner, in table order, and whether they are shown in percent
HEADLINES: dict[str, list[tuple[str, str, bool]]] = {
    "segmentation": [("pixel_accuracy", "pixel acc. %", True), ("miou", "mIoU %", True), ("map", "mAP %", True)],
    "perturbation": [("positive_auc", "pos. AUC % (↓)", False), ("negative_auc", "neg. AUC % (↑)", False)],
    "token_f1": [
        ("micro_f1_mean", "token-F1 micro (mean over k)", False),
        ("macro_f1_mean", "token-F1 macro (mean over k)", False),
    ],
}


def collect_records(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``metrics.json`` (finished job) and ``error.json`` (failed job) under ``root``."""
    found = []
    for path in sorted(Path(root).rglob("metrics.json")):
        found.append((path.parent, json.loads(path.read_text())))
    for path in sorted(Path(root).rglob("error.json")):
        if not (path.parent / "metrics.json").is_file():
            found.append((path.parent, {"error": json.loads(path.read_text()).get("error", "failed")}))
    return found


def records_frame(records: list[tuple[Path, dict[str, Any]]]) -> pd.DataFrame:
    rows = []
    for run_dir, rec in records:
        if "error" in rec:
            rows.append({"run": run_dir.name, "status": "failed", "error": rec["error"]})
            continue
        job = rec["job"]
        row: dict[str, Any] = {
            "run": run_dir.name,
            "method": job.get("method"),
            "dataset": job.get("dataset"),
            "model": job.get("model"),
            "target": job.get("target"),
            "n": job.get("n"),
            "partial": job.get("partial"),
            "status": "ok",
        }
        for metric, values in rec["metrics"].items():
            for key, label, percent in HEADLINES.get(metric, []):
                if key in values and values[key] is not None:
                    row[label] = values[key] * 100.0 if percent else values[key]
        rows.append(row)
    return pd.DataFrame(rows)


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
    records = collect_records(sweep_dir)
    frame = records_frame(records)
    if frame.empty:
        log.warning("no run records under %s", sweep_dir)
        return 0
    ok = frame[frame["status"] == "ok"].drop(columns=["status"], errors="ignore")
    keep = [c for c in ok.columns if c not in ("run", "model", "partial", "error")]
    table = ok[keep].sort_values("method") if "method" in ok else ok
    failed = frame[frame["status"] == "failed"]
    text = to_markdown(table)
    if len(failed):
        text += "\n\nFailed jobs:\n" + "\n".join(f"- {r.run}: {r.error}" for r in failed.itertuples())
    (Path(sweep_dir) / "summary.md").write_text(text + "\n")
    frame.to_csv(Path(sweep_dir) / "summary.csv", index=False)
    print(f"\nxaibench summary ({sweep_dir}):\n\n{text}\n", flush=True)
    if figure:
        path = example_figure([d for d, rec in records if "error" not in rec], Path(sweep_dir) / "examples.png")
        if path:
            print(f"example heatmaps: {path}", flush=True)
    return int(len(failed))


def example_figure(run_dirs: list[Path], out_path: Path) -> Path | None:
    """A grid: one row per example image; input, ground-truth mask, then one heatmap per method."""
    items = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "examples.npz"
        if path.is_file():
            with np.load(path) as z:
                items.append({k: z[k] for k in z.files})
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items.sort(key=lambda it: str(it["method"]))
    first = items[0]
    n = len(first["ids"])
    has_mask = "masks" in first
    cols = 1 + int(has_mask) + len(items)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(first["images"][r].transpose(1, 2, 0))
        if has_mask:
            axes[r, 1].imshow(first["masks"][r], cmap="gray")
        for c, it in enumerate(items):
            ax = axes[r, 1 + int(has_mask) + c]
            ax.imshow(first["images"][r].transpose(1, 2, 0))
            ax.imshow(np.nan_to_num(it["heatmaps"][r].astype(np.float32)), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    titles = ["input"] + (["mask"] if has_mask else []) + [str(it["method"]) for it in items]
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
