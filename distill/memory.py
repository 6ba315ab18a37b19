"""Keep freed CPU memory in the process instead of returning it to the OS after every tensor.

On CPU, PyTorch allocates every activation with plain ``malloc`` (no caching allocator, unlike CUDA).
glibc hands large blocks to ``mmap`` and unmaps them on free, and trims the top of its heap as soon
as more than ~128 KiB is free there; a training step frees its activations at the end and allocates
them again at the next, so each step faults the same memory back in page by page. Measured on the
embedded teacher's LCM-LoRA step (batch 32, ``bench/malloc_retain.py``): ~21,600 page faults per step
(VAE encode ~7,500, guided teacher forward ~8,900, student forward+backward ~5,900), ~60 with the
thresholds below. Peak memory is unchanged (the pages were in use at the peak anyway); the process
just keeps them between steps. (Single tensors of 16 MiB and more still fault in afresh at each
allocation with or without the thresholds, measured with torch 2.14 on glibc 2.36; a step's many
mid-size activations are what the thresholds keep.)

The fix is two ``mallopt`` calls (glibc's ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD``, the same
settings the ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` environment variables make),
made by ``fewstep``'s command line at start-up; a library user calls :func:`retain_freed_memory`.
No effect (and no error) on other C libraries or platforms.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
TRIM_BYTES = 1 << 30  # keep up to 1 GiB of free heap top before giving it back
MMAP_BYTES = 1 << 29  # blocks below 512 MiB come from the heap (reused) instead of fresh mmaps

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; True if they are in effect."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES))
