"""Which class each map explains (``target=predicted | label | each``) and what a multi-label sample becomes.

``target=each`` explains a sample once per labelled class: a sample whose ``labels`` name several classes
(e.g. two objects of ``synthetic_pairs``) becomes one *explained sample* per class, with that class as its
``label``, that class's evidence as its ``mask`` (images) or ``rationale`` (text) and the id
``"<sample id>#<class>"``, so every metric scores the map of a class against the evidence of that class.
The explained samples of one sample stay together in one batch and on one rank, and the batch carries the
other classes' evidence (``extras["other_masks"]`` / ``extras["other_rationales"]``) for the
class-sensitivity metric. A single-label sample is explained once, for its label (as ``target=label``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from xaibench.core.types import Batch, DatasetAdapter, ModelAdapter, Sample

TARGETS = ("predicted", "label", "each")


def sample_classes(sample: Sample) -> tuple[int, ...]:
    """The labelled classes of a sample: its ``labels``, else its ``label`` (``()`` when unknown)."""
    if sample.labels is not None:
        return tuple(int(c) for c in sample.labels)
    return (int(sample.label),) if sample.label >= 0 else ()


def explained_samples(sample: Sample, mode: str) -> list[Sample]:
    """The samples a job explains for ``sample``: itself, or with ``mode="each"`` one per labelled class.

    Raises:
        ValueError: ``mode="each"`` and the sample has no labelled class.
    """
    if mode != "each":
        return [sample]
    classes = sample_classes(sample)
    if not classes:
        raise ValueError(f"target=each explains every labelled class, but sample {sample.id} has no label")
    if sample.labels is None:
        return [sample]
    out = []
    for k, c in enumerate(classes):
        out.append(
            replace(
                sample,
                id=f"{sample.id}#{c}",
                label=c,
                mask=None if sample.class_masks is None else sample.class_masks[k],
                rationale=None if sample.class_rationales is None else tuple(sample.class_rationales[k]),
            )
        )
    return out


def base_id(sample: Sample) -> str:
    """The id of the dataset sample an explained sample came from (``"pair_000003#2"`` -> ``"pair_000003"``)."""
    suffix = f"#{sample.label}"
    return sample.id[: -len(suffix)] if sample.labels is not None and sample.id.endswith(suffix) else sample.id


def attach_evidence(batch: Batch, samples: Sequence[Sample]) -> Batch:
    """``batch`` (collated from ``samples``) with the class structure of multi-label samples in ``extras``.

    Adds, when any sample has ``labels``: ``samples`` (the dataset sample id of each row), ``other_masks``
    (per row a ``[K-1, H, W]`` int64 tensor of the other classes' masks, images) and ``other_rationales``
    (per row a tuple of the other classes' span tuples, text). Other batches are returned as they are.
    """
    if not any(s.labels is not None for s in samples):
        return batch
    extras: dict[str, Any] = dict(batch.extras)
    extras["samples"] = tuple(base_id(s) for s in samples)
    others = [[k for k, c in enumerate(sample_classes(s)) if c != s.label] for s in samples]
    if all(s.class_masks is not None for s in samples):
        extras["other_masks"] = tuple(
            torch.stack([s.class_masks[k] for k in ks]) if ks else s.class_masks[:0]
            for s, ks in zip(samples, others, strict=True)
        )
    if all(s.class_rationales is not None for s in samples):
        extras["other_rationales"] = tuple(
            tuple(tuple(s.class_rationales[k]) for k in ks) for s, ks in zip(samples, others, strict=True)
        )
    return replace(batch, extras=extras)


def target_classes(batch: Batch, mode: str) -> torch.Tensor | None:
    """The ``target`` a method gets: the labels (``label``, ``each``) or ``None`` (each sample's prediction)."""
    return batch.labels if mode in ("label", "each") else None


def row_columns(batch: Batch, logits: torch.Tensor, model: ModelAdapter) -> list[dict[str, Any]]:
    """Per-row ``scores.csv`` columns beyond id, label, target and prediction.

    ``sample`` and ``class`` (the dataset sample and the explained class) for explained samples of a
    multi-label sample; ``detected`` (the label's logit > 0, i.e. probability > 0.5) for a multi-label model.
    """
    rows: list[dict[str, Any]] = [{} for _ in range(len(batch))]
    if "samples" in batch.extras:
        for row, sample, label in zip(rows, batch.extras["samples"], batch.labels.tolist(), strict=True):
            row.update({"sample": sample, "class": int(label)})
    if model.multi_label:
        labels = batch.labels.to(logits.device)
        own = logits.gather(1, labels.clamp(min=0)[:, None])[:, 0]
        for row, lab, logit in zip(rows, labels.tolist(), own.tolist(), strict=True):
            if lab >= 0:
                row["detected"] = bool(logit > 0)
    return rows


def job_fields(rows: Sequence[Mapping[str, Any]], model: ModelAdapter) -> dict[str, Any]:
    """``metrics.json`` job fields of a multi-label model: ``detection_rate``, the share of explained rows
    whose class the model detects (probability > 0.5); nothing for a single-label model."""
    if not model.multi_label:
        return {}
    found = [bool(r["detected"]) for r in rows if "detected" in r]
    return {"detection_rate": sum(found) / len(found) if found else None}


def effective_provides(dataset: DatasetAdapter, mode: str) -> frozenset[str]:
    """What the explained samples provide: with ``each``, a multi-label set (``labels``) also gives each
    explained sample a ``label`` (and its ``class_evidence`` becomes its ``mask`` or ``rationale``)."""
    provides = set(dataset.provides)
    if mode == "each" and "labels" in provides:
        provides.add("label")
    return frozenset(provides)
