"""Latent consistency distillation (LCM, Luo et al. 2023, Algorithm 1 / Eq. 9).

A point z_t on the DDIM skip grid is moved one skipping step to s = t - k by the teacher's DDIM
solver with classifier-free guidance w; the student's consistency function at (z_t, t) must match
the target network's at (z_s, s):

    f(z, t) = c_skip(t) z + c_out(t) x0_theta(z, t)           (boundary condition, f(z, 0) = z)
    loss    = d(f_theta(z_t, t), f_target(z_s, s))             (pseudo-Huber or L2)

LoRA students (LCM-LoRA, Luo et al. 2023b) use the online student under no_grad as the target and
the frozen base weights as the teacher; full students keep an EMA target and take w as a
guidance embedding (``time_cond_proj_dim``), so guidance stays a knob at inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fewstep.distill import schedules
from fewstep.distill.methods.base import LossOutput, Method, Recipe, pipeline_with
from fewstep.distill.modelset import ModelSet, unwrap
from fewstep.distill.methods.common import distance, grid_batch, guided_teacher, noised
from fewstep.distill.methods.settings import LCMConfig
from fewstep.distill.students import build_students, guidance_embedding


class LCMMethod(Method):
    Config = LCMConfig
    phases = ("student",)

    @property
    def lora(self) -> bool:
        return self.student_config.kind == "lora"

    def build(self, pipe) -> ModelSet:
        return build_students(pipe, self.student_config, target_ema=self.config.target_ema,
                              w_embedding_dim=self.config.w_embedding_dim,
                              w_embedding_init=self.config.w_embedding_init)

    def trainable(self, models: ModelSet, phase: str) -> list[str]:
        return ["student"]

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        cfg = self.config
        student = models["student"]
        den, latents, cond, uncond, t, s = grid_batch(models, batch, cfg.num_ddim_timesteps)
        b, dev = latents.shape[0], latents.device
        z_t = noised(den, latents, t)
        w = torch.rand(b, device=dev) * (cfg.w_max - cfg.w_min) + cfg.w_min
        w_emb = None if self.lora else guidance_embedding(w, cfg.w_embedding_dim).to(latents.dtype)

        def f(pred_x0, x, tt):  # consistency function with LCM's boundary scalings
            c_skip, c_out = (schedules.append_dims(c, x.ndim).to(x.dtype) for c in
                             schedules.consistency_scalings(tt, cfg.sigma_data, cfg.timestep_scaling))
            return c_skip * x + c_out * pred_x0

        online = f(student(z_t, t, cond, timestep_cond=w_emb).x0, z_t, t)
        with torch.no_grad():
            teacher = guided_teacher(models, self.lora, z_t, t, cond, uncond, w)
            a_s, s_s = schedules.alpha_sigma(den.alphas_cumprod, s)
            z_s = schedules.ddim_step(teacher.x0, teacher.eps, a_s, s_s)
            target_net = den if self.lora else models["target"]
            target = f(target_net(z_s, s, cond, timestep_cond=w_emb).x0, z_s, s)
        loss = distance(online, target, cfg.loss, cfg.huber_c)
        return LossOutput(loss, {"t_mean": t.float().mean().item()})

    def recipe(self, steps: int | None = None) -> Recipe:
        kwargs = {"original_inference_steps": self.config.num_ddim_timesteps,
                  "timestep_scaling": self.config.timestep_scaling}
        return Recipe("LCMScheduler", kwargs, steps or self.config.sample_steps,
                      1.0 if self.lora else self.config.sample_guidance,
                      trained_steps=list(range(1, self.config.num_ddim_timesteps + 1)))

    def to_pipeline(self, models: ModelSet):
        net = models["student"] if self.lora else models["target"]  # full students export the EMA target
        return pipeline_with(models, unet=unwrap(net).unet), self.recipe()
