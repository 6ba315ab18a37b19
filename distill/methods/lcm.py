"""Latent consistency distillation (LCM, Luo et al. 2023, Algorithm 1 / Eq. 9).

A point z_t on the DDIM skip grid is moved one skipping step to s = t - k by the teacher's DDIM
solver with classifier-free guidance w; the student's consistency function at (z_t, t) must match
the target network's at (z_s, s):

    f(z, t) = c_skip(t) z + c_out(t) x0_theta(z, t)           (boundary condition, f(z, 0) = z)
    loss    = d(f_theta(z_t, t), f_target(z_s, s))             (pseudo-Huber or L2)

The roles come from ``build_students``: for LoRA students (LCM-LoRA, Luo et al. 2023b) the target
is the online student under no_grad and the teacher the frozen base weights; full students keep an
EMA target and take w as a guidance embedding (``time_cond_proj_dim``), so guidance stays a knob
at inference.
"""
from __future__ import annotations

import torch

from fewstep.distill import rng, schedules
from fewstep.distill.methods.base import LossOutput, Method, Recipe, pipeline_with
from fewstep.distill.methods.common import distance, grid_batch, guided_teacher, noised
from fewstep.distill.methods.settings import LCMConfig
from fewstep.distill.modelset import ModelSet
from fewstep.distill.students import EXPORTED_ROLE, build_students, takes_guidance_embedding


class LCMMethod(Method):
    Config = LCMConfig

    def __init__(self, config: LCMConfig, student=None):
        super().__init__(config, student)
        # A full student takes w as an input (guidance stays a knob); a LoRA student bakes one in.
        self.embeds_guidance = takes_guidance_embedding(self.student_config, config.w_embedding_dim)

    def build(self, pipe) -> ModelSet:
        return build_students(pipe, self.student_config, target_ema=self.config.target_ema,
                              w_embedding_dim=self.config.w_embedding_dim,
                              w_embedding_init=self.config.w_embedding_init)

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        cfg = self.config
        den, latents, cond, uncond, t, s = grid_batch(models, batch, cfg.num_ddim_timesteps)
        b, dev = latents.shape[0], latents.device
        z_t = noised(den, latents, t)
        w = rng.rand(b, dev) * (cfg.w_max - cfg.w_min) + cfg.w_min
        w_emb = schedules.guidance_embedding(w, cfg.w_embedding_dim).to(latents.dtype) if self.embeds_guidance else None

        def f(z, x0, tt):  # the consistency function with LCM's boundary scalings
            return schedules.consistency_function(z, x0, tt, cfg.sigma_data, cfg.timestep_scaling)

        online = f(z_t, models["student"](z_t, t, cond, timestep_cond=w_emb).x0, t)
        with torch.no_grad():
            teacher = guided_teacher(models, z_t, t, cond, uncond, w)
            z_s = schedules.ddim_jump(teacher.x0, teacher.eps, den.alphas_cumprod, s)
            target = f(z_s, models["target"](z_s, s, cond, timestep_cond=w_emb).x0, s)
        loss = distance(online, target, cfg.loss, cfg.huber_c)
        return LossOutput(loss, {"t_mean": t.float().mean().item()})

    def recipe(self, steps: int | None = None) -> Recipe:
        kwargs = {"original_inference_steps": self.config.num_ddim_timesteps,
                  "timestep_scaling": self.config.timestep_scaling}
        return Recipe("LCMScheduler", kwargs, steps or self.config.sample_steps,
                      self.config.sample_guidance if self.embeds_guidance else 1.0,
                      trained_steps=list(range(1, self.config.num_ddim_timesteps + 1)))

    def to_pipeline(self, models: ModelSet):
        return pipeline_with(models, unet=models[EXPORTED_ROLE].unet), self.recipe()
