"""Metric state held as float64 tensors of sums: shards merge by adding them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from xaibench.core.types import merge_states


class TensorSums:
    """Mixin for runners whose whole state is the float64 tensors named in ``sum_attrs``.

    ``state()`` returns copies keyed by the attribute names without the leading underscore;
    ``load_state`` replaces them (checking shapes); ``merge`` adds another shard's state.
    """

    sum_attrs: ClassVar[tuple[str, ...]] = ("_sums",)

    def state(self) -> dict[str, torch.Tensor]:
        return {attr.lstrip("_"): getattr(self, attr).clone() for attr in self.sum_attrs}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        loaded = {}
        for attr in self.sum_attrs:
            value = torch.as_tensor(state[attr.lstrip("_")], dtype=torch.float64).clone()
            own = getattr(self, attr)
            if value.shape != own.shape:
                raise ValueError(
                    f"state {attr.lstrip('_')!r} has shape {tuple(value.shape)}, this runner {tuple(own.shape)}"
                )
            loaded[attr] = value
        for attr, value in loaded.items():
            setattr(self, attr, value)

    def merge(self, state: Mapping[str, torch.Tensor]) -> None:
        """Add another shard's :meth:`state` (the same as an ``all_reduce`` of each tensor)."""
        self.load_state(merge_states([self.state(), state]))
