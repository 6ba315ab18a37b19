"""Building students from a teacher UNet: a peft LoRA on it, or a full copy with a guidance embedding.

A LoRA student shares the frozen base weights with the teacher: the teacher is the same UNet with
the adapters switched off (``base_weights``), which is how LCM-LoRA trains without a second copy.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from fewstep.distill.config import StudentConfig
from fewstep.distill.denoiser import Denoiser
from fewstep.distill.modelset import ModelSet, unwrap


def lora_target_modules(unet: nn.Module, patterns: list[str]) -> list[str]:
    """Full module names of ``unet`` whose name ends with one of ``patterns`` (Linear / Conv2d only).

    Resolving to full names up front lets a tiny UNet and SD1.5 share one config, and a pattern
    that matches nothing fails loudly instead of training an empty adapter.
    """
    names = [n for n, m in unet.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and any(n == p or n.endswith("." + p) for p in patterns)]
    if not names:
        raise ValueError(f"student.lora_targets {patterns} match no Linear/Conv2d module of the UNet")
    return names


def add_lora(unet: UNet2DConditionModel, cfg: StudentConfig, adapter_name: str = "default") -> UNet2DConditionModel:
    """Freeze ``unet`` and attach a trainable peft LoRA (rank, alpha and targets from ``cfg``)."""
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                target_modules=lora_target_modules(unet, cfg.lora_targets)), adapter_name)
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    return unet


@contextmanager
def base_weights(module: nn.Module):
    """Run the wrapped UNet without its LoRA adapters (the teacher of a LoRA student)."""
    unet = getattr(unwrap(module), "unet", unwrap(module))
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale w (LCM, Luo et al. 2023, Sec. 4.2; the same
    formula diffusers' pipelines use for ``timestep_cond``: w scaled by 1000, sin then cos)."""
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def with_guidance_embedding(unet: UNet2DConditionModel, dim: int = 256, init: str = "zeros") -> UNet2DConditionModel:
    """A full copy of ``unet`` that also takes a guidance embedding (``time_cond_proj_dim``).

    ``init='zeros'``: the new projection starts at zero, so the copy initially computes exactly what
    the teacher does. ``'default'``: PyTorch's Linear init, as diffusers' LCM training script gets by
    loading the teacher's weights into a UNet built with ``time_cond_proj_dim`` (the student starts
    perturbed, but the guidance input is live from the first step).
    """
    if init not in ("zeros", "default"):
        raise ValueError(f"guidance embedding init must be 'zeros' or 'default', got {init!r}")
    student = UNet2DConditionModel.from_config(unet.config, time_cond_proj_dim=dim)
    missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    if init == "zeros":
        nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(device=unet.device) if unet.dtype == torch.float32 else student.to(unet.device, unet.dtype)


def build_students(pipe, cfg: StudentConfig, target_ema: float = 0.0, w_embedding_dim: int | None = None,
                   w_embedding_init: str = "zeros") -> ModelSet:
    """The roles of a distillation run: ``student`` (trainable), and for full students a frozen
    ``teacher`` plus, if ``target_ema`` > 0, an EMA ``target``. LoRA students need neither: the
    teacher is the base weights and the target the online student under no_grad (LCM-LoRA).
    ``w_embedding_dim`` gives full students a guidance embedding."""
    models = ModelSet(pipe)
    pipe.vae.requires_grad_(False).eval()
    pipe.text_encoder.requires_grad_(False).eval()
    sched = pipe.scheduler.config
    if cfg.kind == "lora":
        models["student"] = Denoiser(add_lora(pipe.unet, cfg), sched).train()
        return models
    pipe.unet.requires_grad_(False).eval()
    models["teacher"] = Denoiser(pipe.unet, sched)
    student = (with_guidance_embedding(pipe.unet, w_embedding_dim, w_embedding_init) if w_embedding_dim
               else copy.deepcopy(pipe.unet))
    models["student"] = Denoiser(student.train().requires_grad_(True), sched)
    if target_ema > 0:
        models.add_ema("target", "student", target_ema)
    return models
