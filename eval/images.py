"""Image-stream plumbing shared by the metrics: whatever the caller yields, uint8 NCHW batches come out.

Every metric in ``eval/`` consumes an *iterable* of images, so a sweep can stream samples straight
from a pipeline (or from disk) without holding them all in memory. Callers may yield single
images or batches, as torch tensors (CHW / NCHW), numpy arrays (HWC / NHWC, the PIL and
``diffusers`` ``output_type="np"`` layout) or PIL images; :func:`uint8_batches` re-chunks them into
fixed-size uint8 ``[N, 3, H, W]`` tensors.

Float inputs are taken to be in [0, 1] (the ``diffusers`` / torchvision convention) and are
quantised with rounding, so an image scored in memory gets the same score as the PNG it would be
saved to.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


def to_uint8_nchw(item) -> torch.Tensor:
    """Convert one image or one batch to a uint8 ``[N, 3, H, W]`` CPU tensor.

    Args:
        item: a torch tensor ``[3, H, W]`` / ``[N, 3, H, W]``, a numpy array ``[H, W, 3]`` /
            ``[N, H, W, 3]``, or a PIL image. uint8 values are used as they are; float values must
            lie in [0, 1] and are rounded to the nearest of the 256 levels. Grey images get 3 channels.

    Returns:
        uint8 tensor ``[N, 3, H, W]``.
    """
    if hasattr(item, "convert") and hasattr(item, "size"):  # PIL.Image without importing PIL here
        item = np.array(item.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"numpy images must be HWC or NHWC, got shape {item.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    elif isinstance(item, torch.Tensor):
        t = item.detach().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4:
            raise ValueError(f"torch images must be CHW or NCHW, got shape {tuple(item.shape)}")
    else:
        raise TypeError(f"unsupported image type {type(item).__name__}; pass torch tensors, numpy arrays or PIL images")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got images of shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.is_floating_point():
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 1.0)
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float images must be in [0, 1] (got range [{lo:.3g}, {hi:.3g}]); pass uint8 for [0, 255]")
        return (t.float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    raise TypeError(f"unsupported image dtype {t.dtype}; use uint8 or float in [0, 1]")


def uint8_batches(images: Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """Re-chunk a stream of images / batches into uint8 ``[<=batch_size, 3, H, W]`` tensors.

    Only one output batch (plus the tail of one input item) is held at a time, so memory does not
    grow with the length of the stream. All images must share one size.

    Args:
        images: iterable of items accepted by :func:`to_uint8_nchw`, or one tensor / array.
        batch_size: size of every yielded batch but the last.

    Returns:
        An iterator of uint8 tensors.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, (torch.Tensor, np.ndarray)):
        images = [images]  # one image or one big batch: re-chunk it rather than iterate its rows
    pending: list[torch.Tensor] = []
    count = 0
    for item in images:
        t = to_uint8_nchw(item)
        while t.shape[0]:
            take = min(batch_size - count, t.shape[0])
            pending.append(t[:take])
            count += take
            t = t[take:]
            if count == batch_size:
                yield torch.cat(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if count:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]
