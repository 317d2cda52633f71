"""Reading a job's samples: the DataLoader dataset that turns a sample's load error into a recorded skip
(``on_error=skip``), and the collate that builds model batches in the loader's workers."""

from __future__ import annotations

import logging
from typing import Any

import torch

from xaibench.core import targets
from xaibench.core.types import (
    Batch,
    DatasetAdapter,
    ModelAdapter,
)

log = logging.getLogger("xaibench.core.loop")


class GuardedSamples(torch.utils.data.Dataset):
    """Reads ``dataset[indices[j]]`` as the samples the job explains (one per class with ``target=each``);
    with ``skip``, a sample that fails to load becomes a recorded skip."""

    def __init__(self, dataset: DatasetAdapter, indices: range, skip: bool, target: str = "predicted") -> None:
        self.dataset, self.indices, self.skip, self.target = dataset, indices, skip, target

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, Any, str | None]:
        index = self.indices[j]
        try:
            return index, targets.explained_samples(self.dataset[index], self.target), None
        except Exception as exc:
            if not self.skip:
                raise
            try:
                sample_id = self.dataset.sample_id(index)
            except Exception:  # the id is a courtesy; the index always identifies the sample
                sample_id = None
            return index, sample_id, failure_reason(exc)


class CollateSamples:
    """The loader's collate: loaded samples ``(index, sample)``, failed ones ``(index, id or None, reason)``
    and the model's batch of the loaded ones, made in the loader's workers (so tokenising and stacking
    overlap compute) and pinned by the loader on CUDA; ``None`` if collating fails (the main process
    collates again and reports or skips the failure)."""

    def __init__(self, model: ModelAdapter) -> None:
        self.model = model

    def __call__(
        self, items: list[tuple[int, Any, str | None]]
    ) -> tuple[list[tuple[int, Any]], list[tuple[int, str | None, str]], Batch | None]:
        loaded = [(i, s) for i, group, e in items if e is None for s in group]
        failed = [(i, s, e) for i, s, e in items if e is not None]
        try:
            batch = collate_samples(self.model, [s for _, s in loaded]) if loaded else None
        except Exception:
            batch = None
        return loaded, failed, batch


def collate_samples(model: ModelAdapter, samples: list[Any]) -> Batch:
    return targets.attach_evidence(model.collate(samples), samples)


def failure_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def skipped_row(index: int, sample: Any, reason: str) -> dict[str, Any]:
    """A skipped sample's row; ``sample`` is the sample, its id (it failed to load) or ``None``."""
    if isinstance(sample, str) or sample is None:
        return {"_index": index, "id": sample or f"index_{index}", "label": -1, "skipped": True, "skip_reason": reason}
    return {
        "_index": index,
        "id": sample.id,
        "label": int(sample.label),
        "skipped": True,
        "skip_reason": reason,
    }
