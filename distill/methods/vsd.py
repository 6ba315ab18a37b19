"""Variational score distillation for a one-step text-to-image generator (SwiftBrush, Nguyen & Tran
2024; VSD from ProlificDreamer, Wang et al. 2023). Image-free: prompts only.

The generator, the fake score ("LoRA teacher" in SwiftBrush), their phases and the export are
:mod:`methods.generator`'s. The generator objective: x0 re-noised at t ~ U[t_min, t_max]; the
gradient w(t) (eps_teacher_cfg - eps_fake) with w = sigma_t^2 (``score.vsd_gradient``) is applied
through 0.5 ||x0 - sg(x0 - grad)||^2. SwiftBrush: teacher CFG 4.5, fake score LoRA rank 64, one
fake step per generator step.
"""
from __future__ import annotations

import torch

from fewstep.distill import rng
from fewstep.distill.methods.common import noised
from fewstep.distill.methods.generator import ScoreDistillation
from fewstep.distill.methods.score import stop_gradient_loss, vsd_gradient
from fewstep.distill.methods.settings import VSDConfig


class VSDMethod(ScoreDistillation):
    Config = VSDConfig

    def generator_objective(self, models, x0, cond, uncond, batch):
        cfg = self.config
        teacher = models["teacher"]
        with torch.no_grad():
            t = rng.randint(cfg.t_min, cfg.t_max + 1, len(x0), x0.device)
            x_t = noised(teacher, x0.detach(), t)
            real = teacher(x_t, t, cond, uncond=uncond, guidance=cfg.real_guidance).eps
            fake = self.fake_prediction(models, x_t, t, cond, uncond).eps
            grad = vsd_gradient(real, fake, teacher.alpha_sigma(t)[1])
        return stop_gradient_loss(x0, grad), {"grad_abs": grad.abs().mean().item()}
