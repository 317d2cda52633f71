"""Re-classification of many perturbed inputs, shared by the perturbation metrics.

The perturbation test, insertion/deletion and ROAD each classify many edited copies of a batch. They
stream the copies through the model in forwards of ``batch_size`` inputs (memory stays at about
``batch_size`` inputs however many steps there are) inside the adapter's
:meth:`~xaibench.core.types.ModelAdapter.fused_attention` block: these forwards read no attention
probabilities, so they use the fused kernels (timm ``fused_attn``, transformers ``sdpa``) instead of the
eager path the attribution methods need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from xaibench.core.types import ModelAdapter


@torch.no_grad()
def classify_images(
    model: ModelAdapter, tensors: Iterable[torch.Tensor], batch_size: int, fused: bool = True
) -> list[torch.Tensor]:
    """Logits for each ``[N_i, 3, H, W]`` tensor of model inputs in ``tensors``, in forwards of ``batch_size``.

    Args:
        model: the adapter; inputs are cast to its device and dtype.
        tensors: model-ready (normalised) image tensors, produced lazily by the caller.
        batch_size: inputs per forward (the last forward may be smaller).
        fused: run inside ``model.fused_attention()`` (``False``: the adapter's eager path).

    Returns:
        One ``[N_i, C]`` logits tensor (on CPU, the model's dtype) per input tensor, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes: list[int] = []
    queue: list[torch.Tensor] = []
    queued = 0
    outputs: list[torch.Tensor] = []

    def run(chunk: torch.Tensor) -> None:
        outputs.append(model.logits(chunk.to(device=model.device, dtype=model.dtype)).detach().to("cpu"))

    context = model.fused_attention() if fused else contextlib.nullcontext()
    with context:
        for tensor in tensors:
            sizes.append(tensor.shape[0])
            queue.append(tensor)
            queued += tensor.shape[0]
            if queued >= batch_size:
                pending = torch.cat(queue)
                full = (queued // batch_size) * batch_size
                for start in range(0, full, batch_size):
                    run(pending[start : start + batch_size])
                queue = [pending[full:]] if full < queued else []
                queued -= full
        if queued:
            run(torch.cat(queue))
    if not outputs:
        return [torch.empty(0) for _ in sizes]
    return list(torch.cat(outputs).split(sizes))
