"""Data-parallel jobs under ``torchrun``: shard the samples, merge the metric states on rank 0.

``torchrun --nproc_per_node=N -m xaibench ...`` starts N processes with ``RANK``/``WORLD_SIZE`` set. Each
rank evaluates the samples ``rank, rank + N, rank + 2N, ...`` (no duplicates, no padding), then the
per-sample rows and the additive metric states are gathered on every rank and merged, and only rank 0
writes records and logs to MLflow. ``nccl`` on GPUs (one per local rank), ``gloo`` on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's sample indices among ``range(n)``."""
        return range(self.rank, n, self.size)


def current_world() -> World:
    """The torchrun world from the environment (a single process when not under torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    if world.size <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if world.size <= 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
