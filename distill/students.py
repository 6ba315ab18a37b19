"""Building students from a teacher UNet: a peft LoRA on it, or a full copy with a guidance embedding.

Either kind registers the same roles, so no method branches on the kind (``build_students``):
``student`` (trained), ``teacher`` (frozen) and ``target`` (what the consistency target and the
export use). A LoRA student shares the frozen base weights with the teacher: the teacher is the same
UNet with the adapters switched off, which is how LCM-LoRA trains without a second copy; further
adapters on that UNet (e.g. a fake score) are roles of their own.
"""
from __future__ import annotations

import copy
import warnings

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from fewstep.distill import lora_merged
from fewstep.distill.config import ConfigError, StudentConfig
from fewstep.distill.denoiser import Denoiser
from fewstep.distill.lora_init import load_into_adapter
from fewstep.distill.modelset import ModelSet

# The one rule for what a consistency student ships: its ``target`` role, i.e. the EMA copy of a full
# student when there is one, otherwise the student itself (a LoRA's online weights).
EXPORTED_ROLE = "target"
STUDENT_ADAPTER = "default"  # the LoRA student's peft adapter (the name LoRA exports are read under)


def lora_target_modules(unet: nn.Module, patterns: list[str], key: str = "student.lora_targets") -> list[str]:
    """Full module names of ``unet`` whose name ends with one of ``patterns`` (Linear / Conv2d only).

    Resolving to full names up front lets a tiny UNet and SD1.5 share one config, and a pattern
    that matches nothing fails loudly (a ConfigError naming the config ``key``) instead of training an
    empty adapter. ``unet`` may live on the meta device: only module names and types are read, so the
    command line checks a teacher's targets from its config before any weight is loaded.
    """
    # A layer that already carries an adapter holds the original as ``<name>.base_layer``: a further
    # adapter targets the same name (peft adds it to that layer).
    layers = [n.removesuffix(".base_layer") for n, m in unet.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d)) and ".lora_" not in n]
    names = [n for n in layers if any(n == p or n.endswith("." + p) for p in patterns)]
    if not names:
        raise ConfigError(f"{key}: {patterns} match no Linear/Conv2d module of the UNet (a pattern matches a "
                          "module whose name is it or ends with '.' + it, e.g. to_q or attn1.to_q)")
    return names


def add_lora(unet: UNet2DConditionModel, cfg: StudentConfig, adapter_name: str = "default") -> UNet2DConditionModel:
    """Freeze ``unet`` and attach a trainable peft LoRA (rank, alpha and targets from ``cfg``)."""
    unet.requires_grad_(False)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                        target_modules=lora_target_modules(unet, cfg.lora_targets))
    with warnings.catch_warnings():  # a second adapter on one UNet is what we mean to build
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        unet.add_adapter(config, adapter_name)
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    lora_merged.install(unet)  # where the adapter takes no gradient its layers run merged: same output, cheaper
    return unet


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


def takes_guidance_embedding(cfg: StudentConfig, w_embedding_dim: int | None) -> bool:
    """Whether ``build_students`` gives this student a guidance input (``time_cond_proj_dim``): a
    full copy can grow one; a LoRA cannot add a layer to the base it loads onto."""
    return cfg.kind == "full" and bool(w_embedding_dim)


def build_students(pipe, cfg: StudentConfig, target_ema: float = 0.0, w_embedding_dim: int | None = None,
                   w_embedding_init: str = "zeros", adapters: tuple[str, ...] = (),
                   adapter_config: StudentConfig | None = None) -> ModelSet:
    """The roles of a distillation run, the same names for either student kind:

    * ``student``: LoRA: adapter ``default`` on the teacher's UNet; full: a trainable copy (with a
      guidance embedding if ``w_embedding_dim``).
    * ``teacher``: LoRA: that UNet with its adapters off (no second copy); full: the frozen UNet.
    * ``target``: LoRA: the online student (call it under no_grad); full: an EMA copy if
      ``target_ema`` > 0, else the student.
    * one role per name in ``adapters`` (e.g. ``fake_score``): a further LoRA adapter on the frozen
      teacher UNet (rank, alpha, targets from ``adapter_config``, else ``cfg``), trained by whichever
      phase names it.

    The export ships ``EXPORTED_ROLE`` (``target``).
    """
    models = ModelSet(pipe)
    pipe.vae.requires_grad_(False).eval()
    pipe.text_encoder.requires_grad_(False).eval()
    sched = pipe.scheduler.config
    if cfg.kind == "lora":
        unet = add_lora(pipe.unet, cfg, STUDENT_ADAPTER)
        if cfg.init_lora:
            load_into_adapter(unet, cfg.init_lora, STUDENT_ADAPTER)
        for name in adapters:
            add_lora(unet, adapter_config or cfg, name)
        _activate(unet, STUDENT_ADAPTER)
        models["unet"] = Denoiser(unet, sched).train()
        models.add_view("student", "unet", adapter=STUDENT_ADAPTER)
        models.add_view("teacher", "unet", base=True)
        models.add_view("target", "unet", adapter=STUDENT_ADAPTER)
    else:
        pipe.unet.requires_grad_(False).eval()
        student = (with_guidance_embedding(pipe.unet, w_embedding_dim, w_embedding_init) if w_embedding_dim
                   else copy.deepcopy(pipe.unet))
        models["student"] = Denoiser(student.train().requires_grad_(True), sched)
        if adapters:
            for name in adapters:
                add_lora(pipe.unet, adapter_config or cfg, name)
            models["unet"] = Denoiser(pipe.unet, sched).train()
            models.add_view("teacher", "unet", base=True)
        else:
            models["teacher"] = Denoiser(pipe.unet, sched)
        if target_ema > 0:
            models.add_ema("target", "student", target_ema)
        else:
            models.add_view("target", "student")
    for name in adapters:
        models.add_view(name, "unet", adapter=name)
    return models


def _activate(unet: UNet2DConditionModel, adapter: str) -> None:
    """Make ``adapter`` the active one without freezing the others (peft's switch would)."""
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    unet.set_adapter(adapter)
    for n, p in unet.named_parameters():
        p.requires_grad_(flags[n])
