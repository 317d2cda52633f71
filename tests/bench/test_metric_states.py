"""Every metric runner's state round-trips through state()/load_state() and shards add up exactly."""

from __future__ import annotations

import pytest
import torch

from xaibench.core.types import merge_states
from xaibench.metrics.faithfulness import AOPC, TokenAUPRC
from xaibench.metrics.perturbation import Perturbation
from xaibench.metrics.segmentation import Segmentation
from xaibench.metrics.token_f1 import TokenF1

RUNNERS = {
    "aopc": AOPC,
    "auprc": TokenAUPRC,
    "token_f1": TokenF1,
    "perturbation": Perturbation,
    "segmentation": Segmentation,
}


def _fill(state, seed):
    g = torch.Generator().manual_seed(seed)

    def fill(v):
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, torch.Tensor):
            return torch.randint(0, 50, v.shape, generator=g).to(v.dtype)
        if isinstance(v, list):
            return [fill(x) for x in v]
        return int(torch.randint(0, 50, (1,), generator=g))

    return fill(state)


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_state_round_trip_and_merge(name: str) -> None:
    a, b, merged = RUNNERS[name](), RUNNERS[name](), RUNNERS[name]()
    a.load_state(_fill(a.state(), 1))
    b.load_state(_fill(b.state(), 2))
    merged.load_state(merge_states([a.state(), b.state()]))
    flat = lambda s: torch.cat([torch.as_tensor(v, dtype=torch.float64).flatten() for v in _leaves(s)])  # noqa: E731
    torch.testing.assert_close(flat(merged.state()), flat(a.state()) + flat(b.state()))
    again = RUNNERS[name]()
    again.load_state(merged.state())
    torch.testing.assert_close(flat(again.state()), flat(merged.state()))


def _leaves(state):
    for key in sorted(state):
        value = state[key]
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value
