"""Sampling with a plain diffusers pipeline and a recipe: what validation, export and eval share.

A recipe names a *stock* diffusers scheduler and its settings, so the images fewstep shows during
training are produced exactly as a user of the exported pipeline produces them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import io
import math
from pathlib import Path

import diffusers
import numpy as np
import torch
from PIL import Image

from fewstep.distill.files import atomic_write


@dataclass
class Recipe:
    scheduler: str = "DDIMScheduler"  # a diffusers scheduler class name
    scheduler_kwargs: dict = field(default_factory=dict)  # overrides on top of the pipeline's config
    steps: int = 25
    guidance: float = 1.0  # pipeline guidance_scale (<= 1 disables CFG)
    trained_steps: list[int] | None = None  # step counts the student was trained for (None: any)

    def check_steps(self, steps: int) -> None:
        """Refuse a step count the student was never trained to run."""
        if self.trained_steps is not None and steps not in self.trained_steps:
            few = self.trained_steps if len(self.trained_steps) <= 10 else \
                f"1..{max(self.trained_steps)}"
            raise ValueError(f"this student was trained for {few} steps, not {steps}; "
                             f"pass one of those as --steps")

    def to_dict(self) -> dict:
        return asdict(self)


def apply_recipe(pipe, recipe: Recipe):
    """Swap in the recipe's stock scheduler (in place) and return the pipeline."""
    cls = getattr(diffusers, recipe.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **recipe.scheduler_kwargs)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int,
             batch_size: int = 64) -> np.ndarray:
    """uint8 images [N, H, W, 3]; image i always uses generator seed ``seed + i``."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed + i + j) for j in range(len(chunk))]
        imgs = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                    output_type="np").images
        out.append(np.round(np.asarray(imgs) * 255).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def save_grid(images: np.ndarray, path: Path, ncol: int = 8) -> None:
    """uint8 [N, H, W, 3] -> one PNG grid, written atomically."""
    n, h, w, _ = images.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    grid = np.zeros((nrow * h, ncol * w, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
