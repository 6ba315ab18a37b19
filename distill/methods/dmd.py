"""Distribution matching distillation (DMD2, Yin et al. 2024b; DMD, Yin et al. 2024).

The generator, the fake score, backward simulation and the export are :mod:`methods.generator`'s.
The generator objective: x0 re-noised at t ~ U[t_min, t_max] is scored by the teacher with CFG (the
real score) and by the fake score; their x0 difference is the distribution-matching gradient
(``score.dmd_gradient``, DMD Eq. 7), applied through 0.5 ||x0 - sg(x0 - grad)||^2. Optionally the
GAN term of DMD2 (Sec. 4.3): a small classifier head on the fake score UNet's bottleneck features
tells noised real images from noised generator samples; the head trains in the fake-score phase and
the generator gets the non-saturating loss through the (frozen) fake UNet.
"""
from __future__ import annotations

import torch

from fewstep.distill import rng
from fewstep.distill.config import ConfigError
from fewstep.distill.data import first_items
from fewstep.distill.methods.base import LossOutput
from fewstep.distill.methods.common import noised
from fewstep.distill.methods.gan import GAN_HEAD, add_gan_head, gan_logits, gan_losses
from fewstep.distill.methods.generator import FAKE, ScoreDistillation, generator_step, generator_timesteps
from fewstep.distill.methods.regression import Pairs, regression_loss, teacher_pairs
from fewstep.distill.methods.score import dmd_gradient, stop_gradient_loss
from fewstep.distill.methods.settings import DMDConfig
from fewstep.distill.modelset import ModelSet
from fewstep.distill.phases import Phase


class DMDMethod(ScoreDistillation):
    Config = DMDConfig
    pairs: Pairs | None = None  # the regression term's teacher pairs (made in setup)

    def setup(self, models, dataset) -> None:
        cfg = self.config
        if cfg.gan_weight > 0:  # again here: a hub teacher with no local config is checked only now
            c = models["student"].unet.config
            self.check_native_size(dataset, c.sample_size, models.pipe.vae_scale_factor)
        if cfg.regression_weight > 0:
            captions = [item["caption"] for item in first_items(dataset, cfg.regression_pairs)]
            self.pairs = teacher_pairs(models, captions, cfg.regression_teacher_steps, cfg.real_guidance)

    def check_native_size(self, dataset, sample_size: int, vae_factor: int) -> None:
        if self.config.gan_weight > 0:
            check_real_size(sample_size, vae_factor, first_items(dataset, 1)[0]["image"])

    def phases(self) -> tuple[Phase, ...]:
        gen, fake = super().phases()
        if self.config.gan_weight > 0:  # the head trains with the fake score
            fake = Phase(fake.name, (FAKE, GAN_HEAD), data=fake.data, defaults=fake.defaults)
        return gen, fake

    def fake_data_need(self, need: str) -> str:
        return "batch" if self.config.gan_weight > 0 else need  # the GAN head sees real images

    def build(self, pipe) -> ModelSet:
        models = super().build(pipe)
        if self.config.gan_weight > 0:
            add_gan_head(models, FAKE)
        return models

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
        if cfg.gan_weight > 0:
            t = rng.randint(cfg.t_min, cfg.t_max + 1, len(x0), x0.device)
            gen_loss, _ = gan_losses(fake_logits=gan_logits(models, noised(models[FAKE], x0, t), t, cond))
            loss = loss + cfg.gan_weight * gen_loss
            logs["gan"] = gen_loss.item()
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

    def fake_score_loss(self, models, batch):
        """The fake score's denoising loss, plus the GAN head's loss on the same generator samples
        against the batch's real images when the GAN term is on."""
        if self.config.gan_weight <= 0:
            return super().fake_score_loss(models, batch)
        x0, cond, uncond = self.fake_samples(models, batch)
        loss = self.fake_denoising_loss(models, x0, cond, uncond)
        real = models.encode_images(batch["pixels"])
        t = rng.randint(self.config.t_min, self.config.t_max + 1, len(x0), x0.device)
        with torch.no_grad():
            fake_in, real_in = noised(models[FAKE], x0, t), noised(models[FAKE], real, t)
        _, head_loss = gan_losses(fake_logits=gan_logits(models, fake_in, t, cond),
                                  real_logits=gan_logits(models, real_in, t, cond))
        return LossOutput(loss + self.config.gan_head_weight * head_loss, {"gan_head": head_loss.item()})


def check_real_size(sample_size: int, factor: int, image) -> None:
    """The GAN head compares real images with generator samples, which come at the UNet's native size
    (what the exported pipeline makes): the data's images must encode to that latent size."""
    side = image.moments.shape[-1] if hasattr(image, "moments") else image.shape[-1] // factor
    if side != sample_size:
        raise ConfigError(f"data.resolution: the GAN term (method.gan_weight) needs real images at the generator's "
                          f"size {sample_size * factor} px (the teacher UNet's sample_size {sample_size} x "
                          f"{factor}); the data gives {side * factor} px")
