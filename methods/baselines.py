"""Reference points every benchmark table needs: a random map."""

from __future__ import annotations

import hashlib
from typing import ClassVar

import torch

from xaibench.methods.attention import select_logit
from xaibench.types import Attribution, AttributionMethod, Batch, ModelAdapter


class RandomAttribution(AttributionMethod):
    """Uniform random relevance per token, drawn from a generator seeded by ``(seed, sample id)``.

    A sample's map depends only on its id, so a batch of N equals N batches of 1 and a rerun gives
    the same numbers. Costs one forward pass (for the logits and predicted classes).
    """

    name: ClassVar[str] = "random"
    class_sensitive: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _row(self, sample_id: str, n: int) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}:{sample_id}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return torch.rand(n, generator=gen, dtype=torch.float64)

    def __call__(self, model: ModelAdapter, batch: Batch, target: torch.Tensor | None) -> Attribution:
        with torch.inference_mode():
            logits = model.logits(batch.inputs)
            targets, _ = select_logit(logits, target)
        n = self._num_tokens(model, batch)
        rows = torch.stack([self._row(sid, n) for sid in batch.ids]).to(device=logits.device, dtype=logits.dtype)
        return Attribution(maps=model.token_map(rows), targets=targets.clone(), logits=logits.clone())

    @staticmethod
    def _num_tokens(model: ModelAdapter, batch: Batch) -> int:
        count = getattr(model, "num_tokens", None)  # ViT: follows the input size (dynamic_img_size)
        if callable(count) and isinstance(batch.inputs, torch.Tensor):
            return int(count(batch.inputs))
        grid = getattr(model, "grid_size", None)
        if grid is not None:
            return model.num_prefix_tokens + int(grid[0]) * int(grid[1])
        return int(batch.inputs["input_ids"].shape[1])
