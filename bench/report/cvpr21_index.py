"""The CVPR 2021 tables' building blocks: protocol constants, the published numbers, and the index of run
records by (runner, dataset, method, target) with the newest record per cell."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xaibench.core.io import rows_to_csv
from xaibench.core.records import RunRecord

log = logging.getLogger(__name__)

#: dataset config of each protocol, and the model the paper used on it
PERTURBATION_DATASET = "imagenet_val"
SEGMENTATION_DATASET = "imagenet_seg"
ERASER_DATASET = "eraser_movies"
PAPER_MODELS = {PERTURBATION_DATASET: "vit_base", SEGMENTATION_DATASET: "vit_base", ERASER_DATASET: "bert_movies"}

#: method configs in the paper's column order
MAIN_METHODS = ("rollout", "raw_attention", "attn_gradcam", "full_lrp", "partial_lrp", "transformer_attribution")
ABLATION_METHODS = ("lrp_rollout", "partial_lrp_grad_block1", "partial_lrp_grad", "transformer_attribution")
ERASER_METHODS = (
    "rollout_bert",
    "raw_attention",
    "attn_gradcam",
    "full_lrp",
    "partial_lrp",
    "transformer_attribution_bert",
)
TARGETS = ("predicted", "label")
TARGET_NAMES = {"predicted": "predicted", "label": "target"}  # the paper calls the ground-truth class "target"

AUC = "trapezoid_0_to_0.9"
AUC_11 = "eleven_point"
AUC_TEXT = (
    "AUC = 100 · trapezoidal area under top-1 accuracy vs removed fraction x = 0, 0.1, …, 0.9, where x = 0 is "
    "the unperturbed accuracy (the author's definition, issue #31). The 11-pt columns add the point x = 1 "
    "with accuracy 0 (a public script's variant: + 0.05 · acc(0.9)). Positive perturbation removes the most "
    "relevant pixels first (lower is better), negative the least relevant first (higher is better); "
    "removed pixels are set to 0 in the [0, 1] image and accuracy is against the ground-truth label."
)
SEGMENTATION_TEXT = (
    "Heatmaps of the predicted class, upsampled bilinearly, min-max scaled and thresholded at their mean per "
    "image; pixel accuracy and mIoU pooled over the dataset, mAP = mean of per-image AP."
)
#: the k columns the ERASER table shows (a subset of xaibench.core.text.ERASER_KS, all of which are scored)
TABLE_KS = (5, 10, 20, 40, 80)

DASH = "–"


def default_paper_path(out_dir: str | Path) -> Path:
    """``<out_dir>/paper.yaml`` when present, else the checkout's ``results/cvpr21/paper.yaml``."""
    own = Path(out_dir) / "paper.yaml"
    if own.is_file():
        return own
    return Path(__file__).resolve().parents[2] / "results" / "cvpr21" / "paper.yaml"


def load_paper(path: str | Path | None) -> dict[str, Any]:
    """The published numbers (``results/cvpr21/paper.yaml``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not the expected mapping.
    """
    if path is None:
        return {"methods": {}, "tables": {}}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published numbers {path} not found (expected results/cvpr21/paper.yaml)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise ValueError(f"{path}: expected a mapping with a `tables` section")
    data.setdefault("methods", {})
    return data


# -- finding records ------------------------------------------------------------------------------------


@dataclass
class Cell:
    """The record of one table cell (newest wins) and how many older records it replaced."""

    record: RunRecord | None = None
    older: int = 0

    @property
    def ok(self) -> bool:
        return self.record is not None and not self.record.failed

    def value(self, runner: str, key: str, scale: float = 1.0) -> float | None:
        """``metrics[runner][key] · scale``, or ``None`` when missing, failed or not a number."""
        if not self.ok:
            return None
        v = self.record.metrics.get(runner, {}).get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            return None
        return float(v) * scale


class RecordIndex:
    """Records by ``(runner, dataset config, method config, explained class)``."""

    def __init__(self, records: Iterable[RunRecord]) -> None:
        self._cells: dict[tuple[str, str, str, str], list[RunRecord]] = {}
        for rec in records:
            if rec.dataset is None or rec.method is None:
                continue  # made outside Hydra: no config names to place it by
            runners = list(rec.metrics) if not rec.failed else _as_list(rec.choices.get("metric"))
            for runner in runners:
                key = (str(runner), str(rec.dataset), str(rec.method), str(rec.target or "predicted"))
                self._cells.setdefault(key, []).append(rec)

    def cell(self, runner: str, dataset: str, method: str, target: str = "predicted") -> Cell:
        found = sorted(self._cells.get((runner, dataset, method, target), []), key=lambda r: r.time)
        return Cell(found[-1], len(found) - 1) if found else Cell()

    def methods(self, runner: str, dataset: str, target: str | None = None) -> list[str]:
        """Method configs with a record for ``runner`` on ``dataset`` (and ``target``), sorted."""
        return sorted({m for r, d, m, t in self._cells if r == runner and d == dataset and target in (None, t)})

    def __len__(self) -> int:
        return len(self._cells)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# -- formatting -----------------------------------------------------------------------------------------


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _ours(cell: Cell, value: float | None) -> str:
    if cell.record is None:
        return "not run"
    if cell.record.failed:
        return "failed"
    return _fmt(value)


def _delta(ours: float | None, paper: float | None) -> float | None:
    return None if ours is None or paper is None else ours - paper


def _paper_value(tree: Any, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if isinstance(tree, (int, float)) and not isinstance(tree, bool) else None


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    return rows_to_csv(rows, columns)


LONG_COLUMNS = (
    "table",
    "method",
    "paper_name",
    "class",
    "metric",
    "ours",
    "paper",
    "delta",
    "status",
    "base_top1",
    "n",
    "n_available",
    "partial",
    "model",
    "dataset",
    "record",
)


@dataclass
class Table:
    """One generated table: its Markdown section, long-format CSV rows and the records it used."""

    name: str
    title: str
    markdown: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    @property
    def has_records(self) -> bool:
        return any(c.record is not None for c in self.cells)


class _Builder:
    """Shared helpers of the four tables: names, paper lookups, record facts and notes."""

    def __init__(self, index: RecordIndex, paper: Mapping[str, Any]) -> None:
        self.index = index
        self.paper = paper
        self.names: Mapping[str, str] = paper.get("methods") or {}

    def name(self, method: str) -> str:
        paper_name = self.names.get(method)
        return f"{paper_name} (`{method}`)" if paper_name else f"`{method}`"

    def spec(self, table: str) -> Mapping[str, Any]:
        return (self.paper.get("tables") or {}).get(table) or {}

    def long_row(self, table: str, method: str, target: str, metric: str, cell: Cell, ours, paper) -> dict:
        rec = cell.record
        job = rec.job if rec is not None else {}
        return {
            "table": table,
            "method": method,
            "paper_name": self.names.get(method, ""),
            "class": TARGET_NAMES.get(target, target),
            "metric": metric,
            "ours": None if ours is None else round(ours, 6),
            "paper": paper,
            "delta": None if _delta(ours, paper) is None else round(_delta(ours, paper), 6),
            "status": "not run" if rec is None else ("failed" if rec.failed else "ok"),
            "base_top1": None if _top1(cell) is None else round(_top1(cell), 6),
            "n": job.get("n"),
            "n_available": job.get("n_available"),
            "partial": job.get("partial"),
            "model": (rec.choices.get("model") or job.get("model")) if rec is not None else None,
            "dataset": rec.dataset if rec is not None else None,
            "record": rec.source if rec is not None else None,
        }

    def notes(self, table: str, cells: Sequence[Cell], extra: Sequence[str] = ()) -> str:
        spec = self.spec(table)
        lines = []
        if spec.get("caption"):
            caption = " ".join(spec["caption"].split())
            lines.append(f"Paper caption: “{caption}” (source: {spec.get('source', 'the paper')})")
        lines += list(extra)
        lines += [" ".join(str(n).split()) for n in spec.get("notes") or []]
        lines += _provenance(cells)
        return "\n".join(f"- {line}" for line in lines)


def _top1(cell: Cell) -> float | None:
    if not cell.ok:
        return None
    base = cell.value("perturbation", "base_accuracy", 100.0)
    if base is not None:
        return base
    top1 = cell.record.job.get("top1_accuracy")
    return None if top1 is None else 100.0 * float(top1)


def _provenance(cells: Sequence[Cell]) -> list[str]:
    """Notes on what the numbers come from: models, sample counts, partial runs, failures, older records."""
    recs = [c.record for c in cells if c.record is not None]
    if not recs:
        return ["No run records for this table yet."]
    lines = []
    done = [r for r in recs if not r.failed]
    models = sorted({str(r.choices.get("model") or r.job.get("model")) for r in done})
    if models:
        expected = {PAPER_MODELS.get(str(r.dataset)) for r in done} - {None}
        line = f"Model: {', '.join(models)}"
        if expected and set(models) != expected:
            line += f" — **not the paper's model ({', '.join(sorted(expected))}): not comparable**"
        lines.append(line + ".")
    sizes = sorted({(r.job.get("n"), r.job.get("n_available")) for r in done}, key=str)
    if sizes:
        lines.append("Samples: " + ", ".join(f"{n} of {total}" for n, total in sizes) + ".")
    if any(r.job.get("partial") for r in done):
        lines.append("**Partial runs** (`limit`): numbers from a subset, not comparable to the paper's full-set ones.")
    for r in recs:
        if r.failed:
            lines.append(f"Failed: `{r.method}` ({r.target}): {' '.join(str(r.error).split())} [{r.source}]")
    older = sum(c.older for c in cells)
    if older:
        lines.append(f"{older} older record(s) of the same cells ignored (the newest wins).")
    return lines


# -- the four tables ------------------------------------------------------------------------------------


def _extra_methods(index: RecordIndex, runner: str, dataset: str, listed: Sequence[str], exclude: Sequence[str]):
    return [m for m in index.methods(runner, dataset) if m not in listed and m not in exclude]
