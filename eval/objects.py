"""Object count: a companion to the attribute classifier that sees extra objects.

The classifier names one colour, shape and position per image; an image with two objects still
gets credit (it names a blended colour and one object's side). This check counts the objects of a
flat-background scene directly:

1. background colour = the per-channel median of the border pixels (objects touch the border at
   most in a few pixels, so the median is the background even then);
2. foreground = pixels whose largest channel difference from it exceeds ``threshold`` (the domain's
   weakest object/background contrast is 83 per channel, 71 with the colour jitter, so 36 sits
   near half of it: an anti-aliased edge pixel counts when the object covers about half of it);
3. objects = 8-connected components of the foreground with at least ``min_pixels`` pixels (the
   smallest object covers about 25 pixels; stray noisy pixels do not count).

Pure numpy / scipy, no learned weights. Two objects that touch merge into one component, so the
count is a lower bound; the tests measure how often that happens.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

THRESHOLD = 36  # uint8 units, largest channel difference from the background
MIN_PIXELS = 4  # components smaller than this are noise, not objects
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _hwc(images) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` from NCHW torch / numpy or NHWC numpy."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.shape[1] == 3 and a.shape[-1] != 3:
        a = a.transpose(0, 2, 3, 1)
    return a.astype(np.int16)


def border_background(image: np.ndarray) -> np.ndarray:
    """Per-channel median of the border pixels of one ``[H, W, 3]`` image."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return np.median(border, axis=0)


def foreground_mask(image: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """bool ``[H, W]``: pixels whose largest channel difference from the background exceeds ``threshold``."""
    return np.abs(image - border_background(image)).max(axis=-1) > threshold


def count_objects(images, threshold: float = THRESHOLD, min_pixels: int = MIN_PIXELS) -> np.ndarray:
    """Number of objects in each image (module docstring): uint8 NCHW / NHWC batch -> int ``[N]``."""
    out = []
    for image in _hwc(images):
        labels, num = ndimage.label(foreground_mask(image, threshold), structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel(), minlength=num + 1)[1:]
        out.append(int((sizes >= min_pixels).sum()))
    return np.array(out, dtype=np.int64)


def all_attributes_right(correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """bool ``[N]``: every attribute right *and* exactly one object (a two-object image is wrong)."""
    return np.asarray(correct, bool).all(axis=1) & (np.asarray(counts) == 1)
