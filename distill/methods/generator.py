"""What the score-distillation methods (DMD2, VSD, SiD) share: a one- or few-step generator, a
fake score that learns the generator's distribution, their two phases, their roles and the export.

* The generator is the student UNet run as LCMScheduler runs it with ``original_inference_steps``
  equal to its step count K: at t_0 = 999 on pure noise, then (K > 1) re-noised to each next
  t_i = T - 1 - i T / K with fresh noise (DMD2's 4-step generator 999, 749, 499, 249). A 1-step
  generator may instead be told its noise sits at a lower t_0 (``generator_timestep``; DMD2's SDXL
  1-step model: 399), exported as a one-step DDIMScheduler on the schedule cut at t_0. Training
  sees what inference sees through *backward simulation* (DMD2, Yin et al. 2024b, Sec. 4.5): a step
  index k is drawn per iteration, steps 0 .. k-1 run without gradient from pure noise, and step k
  runs with gradient.
* The fake score is trained with the denoising loss on the generator's detached samples: those the
  generator phase of the iteration handed over, or fresh ones per fake step (DMD2's choice).
  The two time-scale update rule (``fake_steps_per_generator``) is the phase's ``repeats``.
* Optionally an adversarial term (``gan_weight``; DMD2 Sec. 4.3, and SiDA, Zhou et al. 2025, for SiD):
  a small classifier head on the fake score's bottleneck features tells noised real images from
  noised generator samples; it trains in the fake-score phase (whose batches then carry images) and
  the generator gets the non-saturating loss through the fake UNet, added to its objective.
* A LoRA student and a LoRA fake score are two adapters on one frozen UNet whose base weights are
  the teacher (no second or third copy); a full student gets a full fake score, a trainable copy of
  the teacher UNet. An EMA of a full generator (``ema_decay``) is what ships.

A method subclasses :class:`ScoreDistillation` and writes only its generator objective.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch

from fewstep.distill import rng, schedules
from fewstep.distill.config import ConfigError, PhaseConfig, StudentConfig
from fewstep.distill.data import first_items
from fewstep.distill.denoiser import Denoiser
from fewstep.distill.methods.base import LossOutput, Method, Recipe, pipeline_with
from fewstep.distill.methods.common import encode_prompts, noised
from fewstep.distill.methods.denoise import snr_weight
from fewstep.distill.methods.gan import GAN_HEAD, add_gan_head, check_real_size, gan_logits, gan_losses
from fewstep.distill.methods.score import denoising_loss
from fewstep.distill.modelset import ModelSet
from fewstep.distill.phases import Phase
from fewstep.distill.students import EXPORTED_ROLE, build_students

FAKE = "fake_score"  # the role of the fake score network (an adapter, or a full copy of the teacher)


def generator_timesteps(num_steps: int, num_train_timesteps: int = 1000, first: int | None = None) -> torch.Tensor:
    """Where a K-step generator is evaluated: the timesteps LCMScheduler runs with
    ``original_inference_steps = K`` ([999] for one step, [999, 749, 499, 249] for four), so training
    and the exported scheduler agree; ``first`` (1-step only) moves the one step to that timestep."""
    if first is not None and first != num_train_timesteps - 1:
        if num_steps != 1:
            raise ValueError(f"only a 1-step generator runs at a timestep of its own, not {num_steps} steps")
        return torch.tensor([int(first)])
    return schedules.consistency_timesteps(num_steps, num_steps, num_train_timesteps)


def one_step_ddim(timestep: int, betas: torch.Tensor) -> dict:
    """DDIMScheduler settings whose default single step evaluates the UNet at ``timestep`` and returns its
    x0: the teacher's schedule ``betas`` cut to its first ``timestep + 1`` entries (the same alpha_bar
    there) puts a "trailing" step at ``timestep``, and with ``set_alpha_to_one`` the step's target
    alpha_bar is 1, so DDIM's update is x0 itself (unclipped, unthresholded, as trained). A stock
    pipeline resets ``steps_offset`` to 1 when it loads a scheduler, so that cannot carry the timestep."""
    n = int(timestep) + 1
    if not 0 < n <= len(betas):
        raise ValueError(f"timestep {timestep} is outside the teacher's {len(betas)} training timesteps")
    return {"num_train_timesteps": n, "trained_betas": [float(b) for b in betas[:n]], "timestep_spacing": "trailing",
            "set_alpha_to_one": True, "rescale_betas_zero_snr": False, "clip_sample": False, "thresholding": False}


def generator_step(student, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
    """One generator evaluation: LCMScheduler's ``denoised`` c_skip(t) x + c_out(t) x0(x, t)
    (:func:`schedules.consistency_function`; at t >= 249 it equals x0 to ~1e-7)."""
    tt = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
    return schedules.consistency_function(x, student(x, tt, cond).x0, tt)


def generate(models: ModelSet, cond: torch.Tensor, num_steps: int = 1, grad_step: int | None = None,
             role: str = "student", first: int | None = None) -> torch.Tensor:
    """Samples of the K-step generator from fresh pure noise.

    Args:
        models: The run's roles; ``role`` is the generator.
        cond: Text embeddings ``[B, L, D]``.
        num_steps: K.
        grad_step: Backward simulation: run steps ``0 .. grad_step - 1`` without gradient and return
            the x0 of step ``grad_step`` (with gradient if the role trains). ``None``: all K steps,
            i.e. what the exported pipeline returns.
        first: A 1-step generator's own timestep (:func:`generator_timesteps`); None: 999.

    Returns:
        Clean latents ``[B, C, H, W]``.
    """
    student = models[role]
    c = student.unet.config
    T = student.alphas_cumprod.shape[0]
    ts = generator_timesteps(num_steps, T, first).tolist()
    last = num_steps - 1 if grad_step is None else grad_step
    x = rng.randn(len(cond), c.in_channels, c.sample_size, c.sample_size, device=cond.device)
    with torch.no_grad():
        for i in range(last):  # LCMScheduler.step: denoise, then re-noise to the next timestep
            x0 = generator_step(student, x, ts[i], cond)
            alpha, sigma = student.alpha_sigma(torch.tensor([ts[i + 1]], device=x.device))
            x = alpha * x0 + sigma * rng.randn_like(x0)
    return generator_step(student, x, ts[last], cond)


class ScoreDistillation(Method):
    """Phases ``generator`` (captions only) and ``fake_score`` (TTUR repeats); subclasses implement
    :meth:`generator_objective`. Settings read from ``self.config``: ``generator_steps``,
    ``fake_steps_per_generator``, ``fake_samples``, ``fake_train_guidance``, ``ema_decay``,
    ``gan_weight``, ``gan_head_weight``."""

    def __init__(self, config, student=None):
        super().__init__(config, student)
        if config.ema_decay > 0 and self.student_config.kind == "lora":
            raise ConfigError("method.ema_decay: an EMA of the generator needs a full student (student.kind: full); "
                              "a LoRA student ships its online adapter")

    # ---- the contract ----------------------------------------------------------------------------
    def phases(self) -> tuple[Phase, ...]:
        fake_data = "prompts" if self.config.fake_samples == "fresh" else "none"
        fake_roles = (FAKE,)
        if self.gan:  # the head trains with the fake score, on the batch's real images
            fake_data, fake_roles = "batch", (FAKE, GAN_HEAD)
        return (Phase("generator", ("student",), data="prompts"),
                Phase(FAKE, fake_roles, data=fake_data, defaults=PhaseConfig(repeats=self.config.fake_steps_per_generator)))

    @property
    def gan(self) -> bool:
        return self.config.gan_weight > 0

    def check_native_size(self, dataset, sample_size: int, vae_factor: int) -> None:
        if self.gan:
            check_real_size(sample_size, vae_factor, first_items(dataset, 1)[0]["image"])

    def setup(self, models, dataset) -> None:
        if self.gan:  # again here: a hub teacher with no local config is checked only now
            self.check_native_size(dataset, models["student"].unet.config.sample_size, models.pipe.vae_scale_factor)

    def fake_adapter_config(self) -> StudentConfig | None:
        """The fake score's LoRA settings (``fake_lora_*``), or None for the student's kind."""
        c = self.config
        if not c.fake_lora_rank:
            return None
        return replace(self.student_config, kind="lora", lora_rank=c.fake_lora_rank,
                       lora_alpha=c.fake_lora_alpha or float(c.fake_lora_rank),
                       lora_targets=list(c.fake_lora_targets) or list(self.student_config.lora_targets))

    def build(self, pipe) -> ModelSet:
        fake_lora = self.fake_adapter_config()
        if self.student_config.kind == "lora" or fake_lora is not None:
            models = build_students(pipe, self.student_config, target_ema=self.config.ema_decay, adapters=(FAKE,),
                                    adapter_config=fake_lora)
        else:
            models = build_students(pipe, self.student_config, target_ema=self.config.ema_decay)
            fake = copy.deepcopy(pipe.unet).train().requires_grad_(True)
            models[FAKE] = Denoiser(fake, pipe.scheduler.config)
        if self.gan:
            add_gan_head(models, FAKE)
        return models

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        if phase == "generator":
            cond, uncond = encode_prompts(models, batch["captions"])
            x0 = self.training_samples(models, cond)
            loss, logs = self.generator_objective(models, x0, cond, uncond, batch)
            if self.gan:  # the non-saturating generator loss through the fake score's bottleneck
                t = rng.randint(self.config.t_min, self.config.t_max + 1, len(x0), x0.device)
                gen_loss, _ = gan_losses(fake_logits=gan_logits(models, noised(models[FAKE], x0, t), t, cond))
                loss = loss + self.config.gan_weight * gen_loss
                logs["gan"] = gen_loss.item()
            return LossOutput(loss, logs, handover={"x0": x0.detach(), "cond": cond})
        return self.fake_score_loss(models, batch)

    def generator_objective(self, models: ModelSet, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                            batch: dict) -> tuple[torch.Tensor, dict]:
        """(scalar loss whose gradient reaches the generator through ``x0``, logs)."""
        raise NotImplementedError

    def training_samples(self, models: ModelSet, cond: torch.Tensor) -> torch.Tensor:
        """The generator's x0 with gradient, at a uniformly drawn step (backward simulation)."""
        k = self.config.generator_steps
        step = int(torch.randint(0, k, ())) if k > 1 else 0
        return generate(models, cond, k, grad_step=step, first=self.config.generator_timestep)

    # ---- the fake score ----------------------------------------------------------------------------
    def fake_samples(self, models: ModelSet, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(detached generator samples, cond, uncond) for one fake-score step."""
        given = batch.get("handover", {})
        if "x0" in given and (self.config.fake_samples == "handover" or "captions" not in batch):
            cond = given["cond"]  # the batch may still carry captions and images (the GAN head's)
            return given["x0"], cond, models.encode_text([""]).expand(len(cond), -1, -1)
        if "captions" in batch:  # fresh samples (fake_samples: fresh), or called on its own
            cond, uncond = encode_prompts(models, batch["captions"])
            with torch.no_grad():
                x0 = self.training_samples(models, cond)
            return x0, cond, uncond
        raise ValueError("the fake_score phase trains on the generator's samples of this iteration; "
                         "none were handed over and the batch has no captions to make them from")

    def fake_score_loss(self, models: ModelSet, batch: dict) -> LossOutput:
        """The fake score's denoising loss, plus the GAN head's loss on the same generator samples
        against the batch's real images when the adversarial term is on."""
        x0, cond, uncond = self.fake_samples(models, batch)
        loss = self.fake_denoising_loss(models, x0, cond, uncond)
        if not self.gan:
            return LossOutput(loss)
        real = models.encode_images(batch["pixels"])
        # each real image with its own caption: fresh samples were made from the batch's captions, handed-over
        # ones from the generator phase's
        real_cond = cond if self.config.fake_samples == "fresh" else models.encode_text(batch["captions"])
        t = rng.randint(self.config.t_min, self.config.t_max + 1, len(x0), x0.device)
        with torch.no_grad():
            fake_in, real_in = noised(models[FAKE], x0, t), noised(models[FAKE], real, t)
        _, head_loss = gan_losses(fake_logits=gan_logits(models, fake_in, t, cond),
                                  real_logits=gan_logits(models, real_in, t, real_cond))
        return LossOutput(loss + self.config.gan_head_weight * head_loss, {"gan_head": head_loss.item()})

    def fake_denoising_loss(self, models: ModelSet, x0: torch.Tensor, cond: torch.Tensor,
                            uncond: torch.Tensor) -> torch.Tensor:
        """The denoising loss of the fake score on generator samples ``x0`` (its prediction guided
        with ``fake_train_guidance``, SiD-LSG's kappa_1; 1: unguided), weighted per t by ``fake_weighting``."""
        fake = models[FAKE]
        if self.config.fake_caption_dropout > 0:  # train the unconditional branch too (SiD-LSG)
            drop = rng.rand(len(x0), x0.device) < self.config.fake_caption_dropout
            cond = torch.where(drop[:, None, None], uncond, cond)
        t = rng.randint(0, fake.alphas_cumprod.shape[0], len(x0), x0.device)
        alpha, sigma = fake.alpha_sigma(t)
        noise = rng.randn_like(x0)
        x_t = alpha.to(x0.dtype) * x0 + sigma.to(x0.dtype) * noise
        g = self.config.fake_train_guidance
        pred = fake(x_t, t, cond) if g == 1 else fake(x_t, t, cond, uncond=uncond, guidance=g)
        weight = snr_weight(self.config.fake_weighting, fake.prediction_type, alpha, sigma)
        return denoising_loss(pred.output, x0, noise, alpha, sigma, fake.prediction_type, weight=weight)

    def fake_prediction(self, models: ModelSet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                        uncond: torch.Tensor):
        """The fake score where the generator objective evaluates it (CFG ``fake_guidance``; 1: none)."""
        g = self.config.fake_guidance
        return models[FAKE](x_t, t, cond) if g == 1 else models[FAKE](x_t, t, cond, uncond=uncond, guidance=g)

    # ---- export ----------------------------------------------------------------------------------------
    def trained_steps(self) -> list[int]:
        k = self.config.generator_steps
        return sorted({1, k})

    def recipe(self, scheduler=None) -> Recipe:
        """LCMScheduler with ``original_inference_steps`` = K evaluates exactly the generator's
        timesteps and re-noises between them as :func:`generate` does. A K-step generator is trained
        for K steps and, through its first step, for 1. A
        1-step generator at its own timestep exports as :func:`one_step_ddim` on the teacher's
        ``scheduler``'s betas (needed then)."""
        k, t0 = self.config.generator_steps, self.config.generator_timestep
        if k == 1 and t0 != 999:
            if scheduler is None:
                raise ValueError("the recipe of a generator at its own timestep needs the teacher's scheduler")
            return Recipe("DDIMScheduler", one_step_ddim(t0, scheduler.betas), 1, 1.0, trained_steps=[1])
        return Recipe("LCMScheduler", {"original_inference_steps": k}, k, 1.0, trained_steps=self.trained_steps())

    def to_pipeline(self, models: ModelSet):
        return pipeline_with(models, unet=models[EXPORTED_ROLE].unet), self.recipe(models.pipe.scheduler)
