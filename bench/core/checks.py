"""Checks a job makes before and while it computes: do the pieces fit, are the numbers finite."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from xaibench.core.config import LoopConfig
from xaibench.core.targets import effective_provides
from xaibench.core.types import Attribution, AttributionMethod, DatasetAdapter, MetricRunner, ModelAdapter

#: the model dtype of each ``precision`` option
PRECISIONS = {"float32": torch.float32, "float64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_compatible(
    dataset: DatasetAdapter,
    model: ModelAdapter,
    method: AttributionMethod | None,
    metrics: Mapping[str, MetricRunner],
    config: LoopConfig,
) -> None:
    """Fail before any compute when the pieces do not fit, naming what is supported (``method=None``: a run
    that scores stored maps only, which the metrics that recompute maps refuse)."""
    for name, metric in metrics.items():
        if metric.needs_method and method is None:
            raise ValueError(
                f"metric {name} recomputes maps with the attribution method (on randomised copies of the model), "
                "but this run scores stored maps only; run it with a method (method=<name>)"
            )
    # the options themselves are validated by LoopConfig; here: do the pieces fit each other
    if dataset.modality != model.modality:
        raise ValueError(
            f"dataset {dataset.name} is {dataset.modality} data but model {model.name} takes {model.modality}"
        )
    if method is not None and dataset.modality not in method.modalities:
        raise ValueError(f"method {method.name} supports {sorted(method.modalities)} inputs, not {dataset.modality}")
    if config.target == "label" and "label" not in dataset.provides:
        raise ValueError(
            f"target=label needs ground-truth labels, but dataset {dataset.name} provides "
            f"{sorted(dataset.provides)}; use target=predicted"
        )
    if config.target == "each" and not {"label", "labels"} & set(dataset.provides):
        raise ValueError(
            f"target=each explains every labelled class, but dataset {dataset.name} provides "
            f"{sorted(dataset.provides)}; use target=predicted"
        )
    provides = effective_provides(dataset, config.target)
    if not metrics:
        raise ValueError("no metric configured; choose one, e.g. metric=segmentation")
    for name, metric in metrics.items():
        if dataset.modality not in metric.modalities:
            raise ValueError(
                f"metric {name} supports {sorted(metric.modalities)} data, not {dataset.modality} "
                f"(dataset {dataset.name})"
            )
        missing = set(metric.requires).union(metric.requires_by_modality.get(dataset.modality, ())) - provides
        if missing:
            raise ValueError(
                f"metric {name} needs {sorted(missing)} but dataset {dataset.name} provides {sorted(provides)}"
                f" with target={config.target}"
            )
        if config.target not in metric.target_modes:
            raise ValueError(
                f"metric {name} scores target={'|'.join(sorted(metric.target_modes))}, not target={config.target}"
            )
        metric.check_model(model)


class NonFiniteError(ValueError):
    """A map or the logits of a sample hold NaN or infinity."""


def check_finite(ids: tuple[str, ...], attribution: Attribution, allow_nan_maps: bool) -> None:
    """Refuse non-finite logits, and non-finite maps unless the method documents them (e.g. the
    reference's NaN for a constant Grad-CAM map, ``constant_map=nan``)."""
    logits_ok = torch.isfinite(attribution.logits).flatten(1).all(dim=1)
    maps_ok = torch.isfinite(attribution.maps).flatten(1).all(dim=1)
    if allow_nan_maps:
        maps_ok = maps_ok | ~torch.isinf(attribution.maps).flatten(1).any(dim=1)
    bad = [
        (sid, "logits" if not lo else "map")
        for sid, lo, mo in zip(ids, logits_ok.tolist(), maps_ok.tolist(), strict=True)
        if not (lo and mo)
    ]
    if bad:
        raise NonFiniteError(
            "non-finite values (NaN or inf) in "
            + ", ".join(f"the {what} of {sid}" for sid, what in bad)
            + "; they are never averaged in (on_error=skip records and counts such samples)"
        )


def check_unique_ids(dataset: DatasetAdapter, n: int) -> None:
    """Refuse a dataset whose first ``n`` sample ids repeat (maps and logits are cached and recorded by
    id, so two samples sharing one would receive each other's results), naming two of them. Datasets that
    cannot tell ids without reading samples are checked while the job runs (:class:`IdGuard`)."""
    ids = [dataset.sample_id(i) for i in range(n)]
    if any(i is None for i in ids):
        return
    IdGuard().check(range(n), ids, dataset.name)


class IdGuard:
    """Remembers the ids a job has seen and raises on the first repeat."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def check(self, indices: Iterable[int], ids: Iterable[str], dataset: str) -> None:
        for index, sid in zip(indices, ids, strict=True):
            first = self.seen.setdefault(sid, index)
            if first != index:
                raise ValueError(
                    f"dataset {dataset} gives samples {first} and {index} the same id {sid!r}; ids must be unique "
                    "within a dataset (they key the attribution cache and the rows of scores.csv)"
                )
