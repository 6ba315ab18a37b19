"""Score identity distillation (SiD, Zhou et al. 2024) with long-and-short guidance (SiD-LSG, Zhou et
al. 2025). Data-free: prompts only.

The generator, the fake score, their phases and the export are :mod:`methods.generator`'s (SiD
updates the fake score once per generator step). The generator objective is ``score.sid_loss`` at
t ~ U[t_min, t_max]: the teacher (CFG kappa_4 = ``real_guidance``) and the fake score (CFG
kappa_2 = ``fake_guidance``) are evaluated on the re-noised x0 *with* gradient, which flows through
both frozen networks into the generator. That costs a backward pass through two more UNet
evaluations than DMD or VSD (more memory and time). The fake score's own loss uses kappa_1
(``fake_train_guidance``). Samples with a non-finite term are masked and counted in the logs.
"""
from __future__ import annotations

import torch

from fewstep.distill import rng
from fewstep.distill.methods.common import noised
from fewstep.distill.methods.generator import ScoreDistillation
from fewstep.distill.methods.score import sid_loss
from fewstep.distill.methods.settings import SiDConfig


class SiDMethod(ScoreDistillation):
    Config = SiDConfig

    def generator_objective(self, models, x0, cond, uncond, batch):
        cfg = self.config
        teacher = models["teacher"]
        t = rng.randint(cfg.t_min, cfg.t_max + 1, len(x0), x0.device)
        x_t = noised(teacher, x0, t)  # with gradient: SiD differentiates through both scores
        real = teacher(x_t, t, cond, uncond=uncond, guidance=cfg.real_guidance).x0
        fake = self.fake_prediction(models, x_t, t, cond, uncond).x0
        loss, masked = sid_loss(x0, real, fake, cfg.alpha)
        return loss, {"masked": float(masked), "t_mean": t.float().mean().item()}
