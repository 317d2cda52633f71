"""The CVPR 2021 reproduction: tables and figures from run records, next to the published numbers.

Chefer, Gur & Wolf, *Transformer Interpretability Beyond Attention Visualization*, CVPR 2021. The sweeps
in ``conf/experiment/cvpr21/`` write one record per job; :func:`build_tables` turns the records into

* ``table1_perturbation.{md,csv}``: positive / negative perturbation AUC on ImageNet val (paper Table 1),
* ``table2_segmentation.{md,csv}``: pixel accuracy, mIoU, mAP on ImageNet-segmentation (Table 2),
* ``table3_ablation.{md,csv}``: the ablation variants, segmentation and perturbation (Table 3),
* ``eraser_token_f1.{md,csv}``: token-F1 vs k on ERASER movies (the paper's plot; no published numbers),
* figures: perturbation accuracy curves, token-F1 vs k, example heatmaps per method,
* ``README.md``: everything on one page.

Each number is ours, the paper's (``paper.yaml``) and ``Δ = ours − paper`` (percentage points), with the
sample count, whether the run was partial (``limit``) and the unperturbed top-1 accuracy. A table cell is
found by content: metric runner, dataset config (``imagenet_val``, ``imagenet_seg``, ``eraser_movies``),
method config and explained class; when several records fill one cell the newest wins (and the older
ones are counted in the notes), so re-running a sweep updates the tables.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xaibench.tables import RunRecord, example_figure

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
ERASER_KS = (5, 10, 20, 40, 80)

DASH = "–"


def default_paper_path(out_dir: str | Path) -> Path:
    """``<out_dir>/paper.yaml`` when present, else the checkout's ``results/cvpr21/paper.yaml``."""
    own = Path(out_dir) / "paper.yaml"
    if own.is_file():
        return own
    return Path(__file__).resolve().parent.parent / "results" / "cvpr21" / "paper.yaml"


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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


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


def table1(b: _Builder) -> Table:
    """Perturbation AUC on ImageNet val, predicted and target class (paper Table 1)."""
    name = "table1_perturbation"
    values = b.spec(name).get("values") or {}
    methods = [
        *MAIN_METHODS,
        *_extra_methods(b.index, "perturbation", PERTURBATION_DATASET, MAIN_METHODS, ABLATION_METHODS),
    ]
    header = [
        "method",
        "class",
        "pos. AUC ↓ ours",
        "paper",
        "Δ",
        "neg. AUC ↑ ours",
        "paper",
        "Δ",
        "pos. 11-pt",
        "neg. 11-pt",
        "base top-1 %",
        "n",
        "partial",
    ]
    md_rows, long_rows, cells = [], [], []
    for method in methods:
        for target in TARGETS:
            cell = b.index.cell("perturbation", PERTURBATION_DATASET, method, target)
            published = (values.get(method) or {}).get(target)
            if cell.record is None and published is None:
                continue  # the paper has no such row (class-agnostic methods on the target class)
            cells.append(cell)
            row = [b.name(method), TARGET_NAMES[target]]
            for direction in ("positive", "negative"):
                ours = cell.value("perturbation", f"{direction}_auc_{AUC}")
                paper = _paper_value(published, direction)
                row += [_ours(cell, ours), _fmt(paper), _fmt(_delta(ours, paper), signed=True)]
                long_rows.append(b.long_row(name, method, target, f"{direction}_auc", cell, ours, paper))
                eleven = cell.value("perturbation", f"{direction}_auc_{AUC_11}")
                long_rows.append(b.long_row(name, method, target, f"{direction}_auc_11pt", cell, eleven, None))
            row += [_fmt(cell.value("perturbation", f"{d}_auc_{AUC_11}")) for d in ("positive", "negative")]
            row += _facts(cell)
            md_rows.append(row)
    base = b.spec(name).get("base_top1")
    extra = [AUC_TEXT]
    if base is not None:
        extra.append(f"Paper's (authors') unperturbed top-1 accuracy: {base:.2f} % (issues #31, #52).")
    title = b.spec(name).get("title", "Table 1: perturbation AUC")
    md = f"## {title}\n\n{_markdown(header, md_rows)}\n\n{b.notes(name, cells, extra)}\n"
    return Table(name, title, md, long_rows, cells)


def _facts(cell: Cell) -> list[str]:
    job = cell.record.job if cell.ok else {}
    partial = job.get("partial")
    return [
        _fmt(_top1(cell)),
        DASH if job.get("n") is None else str(job["n"]),
        DASH if partial is None else ("yes" if partial else "no"),
    ]


SEG_COLUMNS = (("pixel_accuracy", "pixel acc."), ("miou", "mIoU"), ("map", "mAP"))


def _segmentation_rows(b: _Builder, table: str, methods: Sequence[str], values: Mapping[str, Any], columns):
    md_rows, long_rows, cells = [], [], []
    for method in methods:
        cell = b.index.cell("segmentation", SEGMENTATION_DATASET, method, "predicted")
        cells.append(cell)
        row = [b.name(method)]
        for key, _ in columns:
            ours = cell.value("segmentation", key, 100.0)
            paper = _paper_value(values.get(method), key)
            row += [_ours(cell, ours), _fmt(paper), _fmt(_delta(ours, paper), signed=True)]
            long_rows.append(b.long_row(table, method, "predicted", key, cell, ours, paper))
        job = cell.record.job if cell.ok else {}
        row += [DASH if job.get("n") is None else str(job["n"]), _facts(cell)[2]]
        md_rows.append(row)
    header = ["method"]
    for _, label in columns:
        header += [f"{label} ours", "paper", "Δ"]
    return header + ["n", "partial"], md_rows, long_rows, cells


def table2(b: _Builder) -> Table:
    """Segmentation on ImageNet-segmentation (paper Table 2)."""
    name = "table2_segmentation"
    values = b.spec(name).get("values") or {}
    methods = [
        *MAIN_METHODS,
        *_extra_methods(b.index, "segmentation", SEGMENTATION_DATASET, MAIN_METHODS, ABLATION_METHODS),
    ]
    header, md_rows, long_rows, cells = _segmentation_rows(b, name, methods, values, SEG_COLUMNS)
    title = b.spec(name).get("title", "Table 2: segmentation")
    md = f"## {title}\n\n{_markdown(header, md_rows)}\n\n{b.notes(name, cells, [SEGMENTATION_TEXT])}\n"
    return Table(name, title, md, long_rows, cells)


def table3(b: _Builder) -> Table:
    """The ablation (paper Table 3): segmentation and perturbation (predicted class) of the variants."""
    name = "table3_ablation"
    values = b.spec(name).get("values") or {}
    seg_cols = (("pixel_accuracy", "pixel acc."), ("map", "mAP"), ("miou", "mIoU"))
    header, seg_rows, long_rows, cells = _segmentation_rows(b, name, ABLATION_METHODS, values, seg_cols)
    pert_header = ["method", "pos. AUC ↓ ours", "paper", "Δ", "neg. AUC ↑ ours", "paper", "Δ"]
    pert_header += ["pos. 11-pt", "neg. 11-pt", "base top-1 %", "n", "partial"]
    pert_rows = []
    for method in ABLATION_METHODS:
        cell = b.index.cell("perturbation", PERTURBATION_DATASET, method, "predicted")
        cells.append(cell)
        row = [b.name(method)]
        for direction in ("positive", "negative"):
            ours = cell.value("perturbation", f"{direction}_auc_{AUC}")
            paper = _paper_value(values.get(method), direction)
            row += [_ours(cell, ours), _fmt(paper), _fmt(_delta(ours, paper), signed=True)]
            long_rows.append(b.long_row(name, method, "predicted", f"{direction}_auc", cell, ours, paper))
            eleven = cell.value("perturbation", f"{direction}_auc_{AUC_11}")
            long_rows.append(b.long_row(name, method, "predicted", f"{direction}_auc_11pt", cell, eleven, None))
        row += [_fmt(cell.value("perturbation", f"{d}_auc_{AUC_11}")) for d in ("positive", "negative")]
        row += _facts(cell)
        pert_rows.append(row)
    title = b.spec(name).get("title", "Table 3: ablation")
    md = (
        f"## {title}\n\n### Segmentation, ImageNet-segmentation (percent)\n\n{_markdown(header, seg_rows)}\n\n"
        f"### Perturbation AUC, ImageNet validation, predicted class (percent)\n\n"
        f"{_markdown(pert_header, pert_rows)}\n\n"
        f"{b.notes(name, cells, ['The “Ours” row is the transformer_attribution job of Tables 1 and 2.', AUC_TEXT])}\n"
    )
    return Table(name, title, md, long_rows, cells)


def _token_f1_curve(cell: Cell, average: str) -> list[tuple[int, float]]:
    if not cell.ok:
        return []
    out = []
    for key, value in cell.record.metrics.get("token_f1", {}).items():
        m = re.fullmatch(rf"{average}_f1@(\d+)", key)
        if m and isinstance(value, (int, float)):
            out.append((int(m.group(1)), 100.0 * float(value)))
    return sorted(out)


def eraser_table(b: _Builder) -> Table:
    """Token-F1 vs k on ERASER movies (the paper's plot: no published numbers)."""
    name = "eraser_token_f1"
    methods = [*ERASER_METHODS, *_extra_methods(b.index, "token_f1", ERASER_DATASET, ERASER_METHODS, ())]
    header = ["method", *(f"micro F1@{k}" for k in ERASER_KS), "micro mean over k", "macro mean over k", "n", "partial"]
    md_rows, long_rows, cells = [], [], []
    for method in methods:
        cell = b.index.cell("token_f1", ERASER_DATASET, method, "label")
        if cell.record is None and method not in ERASER_METHODS:
            continue
        cells.append(cell)
        micro = dict(_token_f1_curve(cell, "micro"))
        macro = dict(_token_f1_curve(cell, "macro"))
        row = [b.name(method)] + [_ours(cell, micro.get(k)) for k in ERASER_KS]
        row += [
            _ours(cell, sum(micro.values()) / len(micro) if micro else None),
            _ours(cell, sum(macro.values()) / len(macro) if macro else None),
        ]
        job = cell.record.job if cell.ok else {}
        row += [DASH if job.get("n") is None else str(job["n"]), _facts(cell)[2]]
        md_rows.append(row)
        for average, curve in (("micro", micro), ("macro", macro)):
            for k, v in sorted(curve.items()):
                long_rows.append(b.long_row(name, method, "label", f"token_f1_{average}@{k}", cell, v, None))
            if cell.record is None or cell.record.failed:
                long_rows.append(b.long_row(name, method, "label", f"token_f1_{average}", cell, None, None))
    title = b.spec(name).get("title", "ERASER movies: token-F1")
    extra = [
        "Token-F1 (percent) of the k highest-scoring words (word score = max over its word-pieces of the "
        "map clamped at 0) against every evidence token, explaining the ground-truth class; micro: pooled over "
        "documents, macro: mean of per-document F1 (REFERENCE §6).",
    ]
    md = f"## {title}\n\n{_markdown(header, md_rows)}\n\n{b.notes(name, cells, extra)}\n"
    return Table(name, title, md, long_rows, cells)


# -- figures --------------------------------------------------------------------------------------------


def _perturbation_curve(cell: Cell, direction: str) -> tuple[list[float], list[float]]:
    if not cell.ok:
        return [], []
    values = cell.record.metrics.get("perturbation", {})
    points = []
    for key, value in values.items():
        m = re.fullmatch(rf"{direction}_acc_([0-9.]+)", key)
        if m and isinstance(value, (int, float)):
            points.append((float(m.group(1)), 100.0 * float(value)))
    base = values.get("base_accuracy")
    if not points or not isinstance(base, (int, float)):
        return [], []
    points.sort()
    return [0.0] + [p for p, _ in points], [100.0 * float(base)] + [a for _, a in points]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def perturbation_figure(b: _Builder, methods: Sequence[str], targets: Sequence[str], path: Path, title: str):
    """Accuracy vs removed fraction, one panel per (class, direction), one line per method.

    Returns:
        ``(path, csv_rows)``; ``path`` is ``None`` when no record has a curve.
    """
    curves, rows = {}, []
    for target in targets:
        for method in methods:
            cell = b.index.cell("perturbation", PERTURBATION_DATASET, method, target)
            for direction in ("positive", "negative"):
                xs, ys = _perturbation_curve(cell, direction)
                if xs:
                    curves[(target, direction, method)] = (xs, ys)
                    rows += [
                        {
                            "method": method,
                            "class": TARGET_NAMES[target],
                            "direction": direction,
                            "removed": x,
                            "accuracy": y,
                        }
                        for x, y in zip(xs, ys, strict=True)
                    ]
    if not curves:
        return None, rows
    shown = [t for t in targets if any(k[0] == t for k in curves)]
    plt = _pyplot()
    fig, axes = plt.subplots(len(shown), 2, figsize=(9, 3.2 * len(shown)), squeeze=False)
    for r, target in enumerate(shown):
        for c, direction in enumerate(("positive", "negative")):
            ax = axes[r, c]
            for method in methods:
                if (target, direction, method) in curves:
                    xs, ys = curves[(target, direction, method)]
                    ax.plot(xs, ys, marker="o", markersize=3, label=b.names.get(method, method))
            ax.set_title(f"{direction} perturbation, {TARGET_NAMES[target]} class", fontsize=9)
            ax.set_xlabel("removed fraction of pixels")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


def eraser_figure(b: _Builder, methods: Sequence[str], path: Path):
    """Token-F1 vs k (micro and macro panels), one line per method. Returns ``(path or None, csv_rows)``."""
    curves, rows = {}, []
    for method in methods:
        cell = b.index.cell("token_f1", ERASER_DATASET, method, "label")
        for average in ("micro", "macro"):
            curve = _token_f1_curve(cell, average)
            if curve:
                curves[(average, method)] = curve
                rows += [{"method": method, "average": average, "k": k, "token_f1": v} for k, v in curve]
    if not curves:
        return None, rows
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    for c, average in enumerate(("micro", "macro")):
        ax = axes[0, c]
        for method in methods:
            if (average, method) in curves:
                ks, vs = zip(*curves[(average, method)], strict=True)
                ax.plot(ks, vs, marker="o", markersize=3, label=b.names.get(method, method))
        ax.set_title(f"token-F1 ({average})", fontsize=9)
        ax.set_xlabel("k (words)")
        ax.set_ylabel("token-F1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("ERASER Movie Reviews (test), ground-truth class", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


def examples_grid(b: _Builder, runner: str, dataset: str, methods: Sequence[str], path: Path, title: str):
    """Example heatmaps (``examples.npz`` of each method's newest predicted-class job) in one grid."""
    run_dirs, labels = [], {}
    for method in methods:
        cell = b.index.cell(runner, dataset, method, "predicted")
        if cell.ok and cell.record.run_dir is not None and (cell.record.run_dir / "examples.npz").is_file():
            run_dirs.append(cell.record.run_dir)
            labels[cell.record.run_dir] = b.names.get(method, method)
    if not run_dirs:
        return None
    return example_figure(run_dirs, path, labels=labels, title=title)


# -- everything -----------------------------------------------------------------------------------------


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.write_text(text, encoding="utf-8")
    written.append(path)


def build_tables(
    records: Sequence[RunRecord], out_dir: str | Path, paper: Mapping[str, Any], figures: bool = True
) -> list[Path]:
    """Write the CVPR 2021 tables, figures and ``README.md`` into ``out_dir``.

    Args:
        records: job records (:func:`xaibench.tables.load_run_records`, ``load_mlflow_records``).
        out_dir: output folder (created).
        paper: the published numbers (:func:`load_paper`).
        figures: also draw the figures (matplotlib, Agg backend).

    Returns:
        The files written; empty (and nothing written) when no record belongs to any table.
    """
    b = _Builder(RecordIndex(records), paper)
    tables = [table1(b), table2(b), table3(b), eraser_table(b)]
    if not any(t.has_records for t in tables):
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for t in tables:
        _write(out / f"{t.name}.md", t.markdown, written)
        _write(out / f"{t.name}.csv", _csv(t.rows, LONG_COLUMNS), written)

    figure_lines = []
    if figures:
        pert_methods = [
            *MAIN_METHODS,
            *_extra_methods(b.index, "perturbation", PERTURBATION_DATASET, MAIN_METHODS, ABLATION_METHODS),
        ]
        path, rows = perturbation_figure(
            b, pert_methods, TARGETS, out / "perturbation_curves.png", "Table 1: ImageNet val perturbation"
        )
        path3, rows3 = perturbation_figure(
            b, ABLATION_METHODS, ("predicted",), out / "table3_perturbation_curves.png", "Table 3: ablation"
        )
        curve_rows = [{"table": "table1_perturbation", **r} for r in rows]
        curve_rows += [{"table": "table3_ablation", **r} for r in rows3]
        if curve_rows:
            cols = ("table", "method", "class", "direction", "removed", "accuracy")
            _write(out / "perturbation_curves.csv", _csv(curve_rows, cols), written)
        eraser_methods = [*ERASER_METHODS, *_extra_methods(b.index, "token_f1", ERASER_DATASET, ERASER_METHODS, ())]
        path_e, rows_e = eraser_figure(b, eraser_methods, out / "eraser_token_f1.png")
        if rows_e:
            _write(out / "eraser_token_f1_curves.csv", _csv(rows_e, ("method", "average", "k", "token_f1")), written)
        seg_methods = [*MAIN_METHODS, *ABLATION_METHODS[:-1]]
        grids = [
            examples_grid(
                b,
                "segmentation",
                SEGMENTATION_DATASET,
                seg_methods,
                out / "examples_imagenet_seg.png",
                "ImageNet-segmentation, predicted class",
            ),
            examples_grid(
                b,
                "perturbation",
                PERTURBATION_DATASET,
                pert_methods + list(ABLATION_METHODS[:-1]),
                out / "examples_imagenet_val.png",
                "ImageNet validation, predicted class",
            ),
        ]
        for fig_path, caption in (
            (path, "Table 1: top-1 accuracy vs removed fraction (perturbation curves)"),
            (path3, "Table 3: perturbation curves of the ablation variants"),
            (path_e, "ERASER movies: token-F1 vs k"),
            (grids[0], "Example heatmaps per method, ImageNet-segmentation"),
            (grids[1], "Example heatmaps per method, ImageNet validation"),
        ):
            if fig_path is not None:
                written.append(fig_path)
                figure_lines.append(f"### {caption}\n\n![{caption}]({fig_path.name})\n")

    readme = [
        "# CVPR 2021 reproduction: Transformer Interpretability Beyond Attention Visualization",
        "",
        "Generated by `xaibench-tables` (`make tables`) from the run records; do not edit. Published numbers: "
        "`paper.yaml` (" + " ".join(str(paper.get("paper", "")).split()) + "). Cells: ours, the paper's "
        "number and Δ = ours − paper in percentage points; “not run”: no record; “failed”: the newest job "
        "for the cell failed (see the notes). Long-format CSVs beside each table.",
        "",
        *(t.markdown for t in tables),
    ]
    if figure_lines:
        readme += ["## Figures", "", *figure_lines]
    _write(out / "README.md", "\n".join(readme).rstrip() + "\n", written)
    return written
