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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xaibench.core.records import RunRecord
from xaibench.report.cvpr21_figures import (
    eraser_figure,
    examples_grid,
    perturbation_figure,
)
from xaibench.report.cvpr21_index import (
    ABLATION_METHODS,
    ERASER_DATASET,
    ERASER_METHODS,
    LONG_COLUMNS,
    MAIN_METHODS,
    PERTURBATION_DATASET,
    SEGMENTATION_DATASET,
    TARGETS,
    RecordIndex,
    _Builder,
    _csv,
    _extra_methods,
    default_paper_path,
    load_paper,
)
from xaibench.report.cvpr21_tables import (
    eraser_table,
    table1,
    table2,
    table3,
)
from xaibench.report.summary import other_metrics_frame, to_markdown

__all__ = ["build_tables", "default_paper_path", "load_paper", "MAIN_METHODS"]


# -- everything -----------------------------------------------------------------------------------------


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.write_text(text, encoding="utf-8")
    written.append(path)


def build_tables(
    records: Sequence[RunRecord], out_dir: str | Path, paper: Mapping[str, Any], figures: bool = True
) -> list[Path]:
    """Write the CVPR 2021 tables, figures and ``README.md`` into ``out_dir``.

    Args:
        records: job records (:func:`xaibench.core.records.load_run_records`, ``load_mlflow_records``).
        out_dir: output folder (created).
        paper: the published numbers (:func:`load_paper`).
        figures: also draw the figures (matplotlib, Agg backend).

    Returns:
        The files written; empty (and nothing written) when no record belongs to any table.
    """
    b = _Builder(RecordIndex(records), paper)
    tables = [table1(b), table2(b), table3(b), eraser_table(b)]
    others = other_metrics_frame(records)  # the metrics beyond the paper, beside its tables
    if not any(t.has_records for t in tables) and others.empty:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for t in tables:
        _write(out / f"{t.name}.md", t.markdown, written)
        _write(out / f"{t.name}.csv", _csv(t.rows, LONG_COLUMNS), written)
    if not others.empty:
        _write(out / "other_metrics.md", to_markdown(others) + "\n", written)
        _write(out / "other_metrics.csv", others.to_csv(index=False), written)

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
