"""Per-sample random draws that do not depend on how a global batch is split over processes.

Under DDP each process holds the slice ``[rank * n, (rank + 1) * n)`` of the global batch (accelerate's
sharded dataloader deals consecutive batches of the one index stream to the ranks in turn). Every
process seeds the same global RNG (``set_seed(seed)``, not per device), draws the noise, timesteps
and guidance scales of the *whole* global batch, and keeps its slice. So sample i gets the same
numbers whether the run has one process or eight, and a 2 x B run follows the 1 x 2B run's training
noise (tests/test_distributed.py). The cost is ``world`` times the drawing, small next to a UNet call.

Draws are layout-independent (``torch.randn(shape)``, never ``randn_like`` of a channels-last tensor),
and with one process each function returns exactly what the plain torch call it replaces returns.
Draws with no batch dimension (e.g. the backward-simulation step index) stay plain torch calls: all
processes make them from the same stream, so they agree.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def batch_shard() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sliced(draw, n: int) -> torch.Tensor:
    rank, world = batch_shard()
    if world == 1:
        return draw(n)
    return draw(n * world)[rank * n:(rank + 1) * n]


def randn(n: int, *shape: int, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal ``[n, *shape]``: this process's rows of the global batch's draw."""
    return _sliced(lambda m: torch.randn(m, *shape, device=device, dtype=dtype), n)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal shaped like ``x`` (first dimension = batch), contiguous."""
    return randn(*x.shape, device=x.device, dtype=x.dtype)


def rand(n: int, device=None) -> torch.Tensor:
    """Uniform [0, 1) of shape ``[n]``."""
    return _sliced(lambda m: torch.rand(m, device=device), n)


def randint(low: int, high: int, n: int, device=None) -> torch.Tensor:
    """Integers uniform in [low, high) of shape ``[n]``."""
    return _sliced(lambda m: torch.randint(low, high, (m,), device=device), n)
