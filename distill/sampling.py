"""Sampling with a plain diffusers pipeline and a recipe: what validation, export and eval share.

A recipe names a *stock* diffusers scheduler and its settings, so the images fewstep shows during
training are produced exactly as a user of the exported pipeline produces them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import math
import os
from pathlib import Path

import diffusers
import numpy as np
import torch
from PIL import Image


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)


@torch.no_grad()
def consistency_sample(denoiser, cond: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor, *,
                       rule: str, generator=None, timestep_cond: torch.Tensor | None = None,
                       sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> torch.Tensor:
    """fewstep's own few-step sampler, written from the schedule math (not from diffusers' schedulers).

    rule="lcm" (multistep consistency sampling, Song et al. 2023 Alg. 1 with LCM's scalings):
        x0_f = c_skip(t) x + c_out(t) x0(x, t); re-noise to the next timestep with fresh noise.
    rule="tcd" (eta 0, i.e. deterministic DDIM jumps between segment edges, ending at timestep 0):
        x <- alpha(prev) x0 + sigma(prev) eps.
    Fresh noise is drawn with diffusers' ``randn_tensor`` from ``generator`` so that, for the same
    seeds, the result can be compared with a stock pipeline number for number.

    Returns the final latents (what a pipeline with ``output_type='latent'`` returns).
    """
    from diffusers.utils.torch_utils import randn_tensor

    from fewstep.distill import schedules

    abar = denoiser.alphas_cumprod
    x = latents
    n = len(timesteps)
    for i, t in enumerate(timesteps.tolist()):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        pred = denoiser(x, tt, cond, timestep_cond=timestep_cond)
        last = i == n - 1
        if rule == "lcm":
            c_skip, c_out = (schedules.append_dims(c, x.ndim).to(x.dtype)
                             for c in schedules.consistency_scalings(tt, sigma_data, timestep_scaling))
            denoised = c_skip * x + c_out * pred.x0
            if last:
                return denoised
            a, s = schedules.alpha_sigma(abar, torch.full_like(tt, timesteps[i + 1]))
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = a * denoised + s * noise
        elif rule == "tcd":
            prev = 0 if last else int(timesteps[i + 1])
            a, s = schedules.alpha_sigma(abar, torch.full_like(tt, prev))
            x = schedules.ddim_step(pred.x0, pred.eps, a, s)
        else:
            raise ValueError(f"unknown sampling rule {rule!r}; expected 'lcm' or 'tcd'")
    return x
