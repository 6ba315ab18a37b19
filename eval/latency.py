"""Wall-clock latency of a batch-generating callable.

The caller passes a closure that runs the *whole* generation of one batch (text encoding, every
denoiser step, VAE decode), so the number is what a user waits for, not a UNet microbenchmark.
Warm-up calls (allocator, cuDNN autotuning, lazy init, compilation) are excluded. The median of
the timed repeats is reported, since one slow repeat (another process, a GC pause) should not
move the figure; all repeats are returned as well.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def _default_sync() -> None:
    # Asynchronous accelerators return before the work is done; time only finished work.
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.synchronize()


def measure_latency(
    fn: Callable[[], object],
    batch_size: int,
    warmup: int = 1,
    repeats: int = 3,
    synchronize: Callable[[], None] | None = _default_sync,
) -> dict:
    """Time ``fn()``, which generates one batch of ``batch_size`` images.

    Args:
        fn: zero-argument callable producing one batch (its result is discarded).
        batch_size: images per call, to report seconds per image.
        warmup: untimed calls first.
        repeats: timed calls (>= 1).
        synchronize: called before starting and before stopping each timer (default: CUDA / MPS
            synchronise when in use); None to skip.

    Returns:
        ``{"sec_per_image", "sec_per_batch", "batch_size", "repeats", "warmup",
        "sec_per_batch_all", "statistic": "median"}``.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, {repeats}, {warmup}")
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    per_batch = statistics.median(times)
    return {
        "sec_per_image": per_batch / batch_size,
        "sec_per_batch": per_batch,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "sec_per_batch_all": times,
        "statistic": "median",
    }


def speedup(base: Mapping | float, other: Mapping | float) -> float:
    """How many times faster ``other`` is than ``base`` per image (e.g. teacher vs student).

    Args:
        base, other: results of :func:`measure_latency` or seconds per image.

    Returns:
        base seconds per image / other seconds per image.
    """
    b = base["sec_per_image"] if isinstance(base, Mapping) else float(base)
    o = other["sec_per_image"] if isinstance(other, Mapping) else float(other)
    if o <= 0:
        raise ValueError(f"non-positive latency {o}")
    return b / o
