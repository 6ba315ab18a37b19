"""Pieces the distillation methods share: distances and the guided teacher call."""
from __future__ import annotations

from typing import NamedTuple

import torch

from fewstep.distill import rng, schedules
from fewstep.distill.denoiser import Prediction
from fewstep.distill.modelset import ModelSet, unwrap


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean of sqrt((a - b)^2 + c^2) - c (improved consistency training, Song & Dhariwal 2023, Sec. 3.3)."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c * c) - c).mean()


def distance(pred: torch.Tensor, target: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """The consistency distance: pseudo-Huber (``kind='huber'``) or mean squared error."""
    return pseudo_huber(pred, target, c) if kind == "huber" else torch.mean((pred.float() - target.float()) ** 2)


@torch.no_grad()
def guided_teacher(models: ModelSet, x, t, cond, uncond, w) -> Prediction:
    """Teacher x0 / eps with CFG in LCM form cond + w (cond - uncond), i.e. standard scale 1 + w.

    The ``teacher`` role is the frozen teacher UNet, or for a LoRA student its base weights.
    """
    return models["teacher"](x, t, cond, uncond=uncond, guidance=1 + w)


@torch.no_grad()
def encode_prompts(models: ModelSet, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) text embeddings from the frozen text encoder."""
    # The empty prompt is encoded once and broadcast: the frozen encoder gives every copy the same row.
    uncond = models.encode_text([""]).expand(len(captions), -1, -1)
    return models.encode_text(captions), uncond


class GridBatch(NamedTuple):
    den: object  # the student role (its schedule and prediction type)
    latents: torch.Tensor  # clean latents of the batch
    cond: torch.Tensor  # text embeddings
    uncond: torch.Tensor  # empty-prompt embeddings
    t: torch.Tensor  # training points on the DDIM skip grid
    s: torch.Tensor  # one solver step below t


def grid_batch(models: ModelSet, batch: dict, num_ddim_timesteps: int) -> GridBatch:
    """What every consistency loss starts from: latents, prompts, and (t, s) on the skip grid."""
    den = unwrap(models["student"])  # for its schedule: the DDP wrapper does not carry it
    latents = models.encode_images(batch["pixels"])
    cond, uncond = encode_prompts(models, batch["captions"])
    t, s = skip_grid_points(den, num_ddim_timesteps, latents.shape[0], latents.device)
    return GridBatch(den, latents, cond, uncond, t, s)


def skip_grid_points(den, num_ddim_timesteps: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform training points t on the DDIM skip grid and their solver targets s = t - k (LCM Sec. 4.3)."""
    T = den.alphas_cumprod.shape[0]
    grid = schedules.ddim_skip_grid(num_ddim_timesteps, T).to(device)
    t = grid[rng.randint(0, num_ddim_timesteps, batch, device)]
    return t, schedules.previous_on_grid(t, T // num_ddim_timesteps)


def noised(den, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = alpha_t x0 + sigma_t eps with fresh Gaussian noise (the forward process)."""
    alpha, sigma = den.alpha_sigma(t)
    return alpha * latents + sigma * rng.randn_like(latents)
