"""Reference points every benchmark table needs: a random map."""

from __future__ import annotations

import hashlib
from typing import ClassVar

import torch

from xaibench.core.types import Attribution, AttributionMethod, Batch, ModelAdapter, TextModelAdapter
from xaibench.methods.attention import select_logit


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
            if isinstance(model, TextModelAdapter):  # one token per word-piece position
                logits, n = model.logits(batch.inputs), int(batch.inputs["input_ids"].shape[1])
            else:  # the token count follows the input size (dynamic_img_size): read it off one attention map
                logits, attn = model.forward_with_attention(batch.inputs, layers=[-1])
                n = int(next(iter(attn.values())).shape[-1])
            targets, _ = select_logit(logits, target)
        rows = torch.stack([self._row(sid, n) for sid in batch.ids]).to(device=logits.device, dtype=logits.dtype)
        return Attribution(maps=model.token_map(rows), targets=targets.clone(), logits=logits.clone())
