"""Pieces the distillation methods share: distances and the guided teacher call."""
from __future__ import annotations

import torch

from distill.denoiser import Prediction
from distill.modelset import ModelSet, unwrap
from distill.students import base_weights


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean of sqrt((a - b)^2 + c^2) - c (improved consistency training, Song & Dhariwal 2023, Sec. 3.3)."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c * c) - c).mean()


def distance(pred: torch.Tensor, target: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """The consistency distance: pseudo-Huber (``kind='huber'``) or mean squared error."""
    return pseudo_huber(pred, target, c) if kind == "huber" else torch.mean((pred.float() - target.float()) ** 2)


@torch.no_grad()
def guided_teacher(models: ModelSet, lora: bool, x, t, cond, uncond, w) -> Prediction:
    """Teacher x0 / eps with CFG in LCM form cond + w (cond - uncond), i.e. standard scale 1 + w.

    A LoRA student's teacher is its own UNet with the adapters switched off; a full student's is
    the frozen ``models['teacher']``.
    """
    if lora:
        with base_weights(models["student"]):
            return unwrap(models["student"])(x, t, cond, uncond=uncond, guidance=1 + w)
    return models["teacher"](x, t, cond, uncond=uncond, guidance=1 + w)


@torch.no_grad()
def encode_prompts(models: ModelSet, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) text embeddings from the frozen text encoder."""
    return models.encode_text(captions), models.encode_text([""] * len(captions))
