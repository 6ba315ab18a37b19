"""Distribution matching distillation (DMD2, Yin et al. 2024b; DMD, Yin et al. 2024).

The generator, the fake score, backward simulation, the optional GAN term (DMD2 Sec. 4.3) and the
export are :mod:`methods.generator`'s. The generator objective: x0 re-noised at t ~ U[t_min, t_max]
is scored by the teacher with CFG (the real score) and by the fake score; their x0 difference is the
distribution-matching gradient (``score.dmd_gradient``, DMD Eq. 7), applied through
0.5 ||x0 - sg(x0 - grad)||^2; optionally plus DMD's regression term on teacher (noise, sample) pairs.
"""
from __future__ import annotations

import torch

from fewstep.distill import rng
from fewstep.distill.data import first_items
from fewstep.distill.methods.common import noised
from fewstep.distill.methods.generator import ScoreDistillation, generator_step, generator_timesteps
from fewstep.distill.methods.regression import Pairs, regression_loss, teacher_pairs
from fewstep.distill.methods.score import dmd_gradient, stop_gradient_loss
from fewstep.distill.methods.settings import DMDConfig


class DMDMethod(ScoreDistillation):
    Config = DMDConfig
    pairs: Pairs | None = None  # the regression term's teacher pairs (made in setup)

    def setup(self, models, dataset) -> None:
        super().setup(models, dataset)
        cfg = self.config
        if cfg.regression_weight > 0:
            captions = [item["caption"] for item in first_items(dataset, cfg.regression_pairs)]
            self.pairs = teacher_pairs(models, captions, cfg.regression_teacher_steps, cfg.real_guidance)

    def generator_objective(self, models, x0, cond, uncond, batch):
        cfg = self.config
        with torch.no_grad():
            t = rng.randint(cfg.t_min, cfg.t_max + 1, len(x0), x0.device)
            x_t = noised(models["teacher"], x0.detach(), t)
            real = models["teacher"](x_t, t, cond, uncond=uncond, guidance=cfg.real_guidance).x0
            fake = self.fake_prediction(models, x_t, t, cond, uncond).x0
            grad = dmd_gradient(x0, real, fake)
        loss = stop_gradient_loss(x0, grad)
        logs = {"grad_abs": grad.abs().mean().item(), "t_mean": t.float().mean().item()}
        if cfg.regression_weight > 0:
            reg = self.regression(models, len(x0))
            loss = loss + cfg.regression_weight * reg
            logs["regression"] = reg.item()
        return loss, logs

    def regression(self, models, n: int) -> torch.Tensor:
        """The regression loss on ``n`` pairs drawn uniformly: the generator's first step (t = 999 or its own)
        from the pair's noise against the teacher's sample."""
        if self.pairs is None:
            raise RuntimeError("method.regression_weight is on but setup() made no pairs")
        idx = rng.randint(0, len(self.pairs.noise), n)
        cond = models.encode_text([self.pairs.captions[i] for i in idx.tolist()])
        z = self.pairs.noise[idx].to(cond.device)
        t0 = int(generator_timesteps(self.config.generator_steps, first=self.config.generator_timestep)[0])
        return regression_loss(generator_step(models["student"], z, t0, cond), self.pairs.latents[idx].to(cond.device))
