"""Tables 1-3 of the paper and the ERASER token-F1 table, each a :class:`Table` of ours, paper and Δ."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from xaibench.report.cvpr21_index import (
    ABLATION_METHODS,
    AUC,
    AUC_11,
    AUC_TEXT,
    DASH,
    ERASER_DATASET,
    ERASER_METHODS,
    MAIN_METHODS,
    PERTURBATION_DATASET,
    SEGMENTATION_DATASET,
    SEGMENTATION_TEXT,
    TABLE_KS,
    TARGET_NAMES,
    TARGETS,
    Cell,
    Table,
    _Builder,
    _delta,
    _extra_methods,
    _fmt,
    _markdown,
    _ours,
    _paper_value,
    _top1,
)


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
    header = ["method", *(f"micro F1@{k}" for k in TABLE_KS), "micro mean over k", "macro mean over k", "n", "partial"]
    md_rows, long_rows, cells = [], [], []
    for method in methods:
        cell = b.index.cell("token_f1", ERASER_DATASET, method, "label")
        if cell.record is None and method not in ERASER_METHODS:
            continue
        cells.append(cell)
        micro = dict(_token_f1_curve(cell, "micro"))
        macro = dict(_token_f1_curve(cell, "macro"))
        row = [b.name(method)] + [_ours(cell, micro.get(k)) for k in TABLE_KS]
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
