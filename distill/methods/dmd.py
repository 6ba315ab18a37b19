"""Distribution matching distillation (DMD2, Yin et al. 2024b; DMD, Yin et al. 2024): a one-step
generator, without GAN term, regression loss or backward simulation (issue 10 has those still to do).

Two phases over the roles of ``build_students`` plus a ``fake_score`` network:

* ``generator`` (every iteration, captions only): x0 = G(z) is the student's x0 prediction from pure
  noise z at t = 999. Re-noised at a random t in [t_min, t_max], it is scored by the teacher with CFG
  (the real score) and by the fake score; their x0 difference is the distribution-matching gradient
  (``score.dmd_gradient``, DMD Eq. 7), applied through 0.5 ||x0 - sg(x0 - grad)||^2.
* ``fake_score`` (``fake_steps_per_generator`` optimizer steps per generator step: the two time-scale
  update rule, DMD2 Sec. 4.2; no data): the plain denoising loss on the generator's detached samples of
  this iteration, handed over by the generator phase. Each of its steps re-noises the same samples with
  fresh t and noise (DMD2 draws fresh generator samples per fake step instead).

A LoRA student and a LoRA fake score are two adapters on one frozen UNet, whose base weights are the
teacher; a full student gets a full fake score, a trainable copy of the teacher UNet.
"""
from __future__ import annotations

import copy

import torch

from fewstep.distill import schedules
from fewstep.distill.config import PhaseConfig
from fewstep.distill.denoiser import Denoiser
from fewstep.distill.methods.base import LossOutput, Method, Recipe, pipeline_with
from fewstep.distill.methods.common import encode_prompts, noised
from fewstep.distill.methods.score import denoising_loss, dmd_gradient, stop_gradient_loss
from fewstep.distill.methods.settings import DMDConfig
from fewstep.distill.modelset import ModelSet
from fewstep.distill.phases import Phase
from fewstep.distill.students import build_students

FAKE = "fake_score"  # the role of the fake score network (an adapter, or a full copy of the teacher)
GENERATOR_STEPS = 1  # the generator's step count (so far only the 1-step generator)


def generator_timesteps(num_train_timesteps: int) -> torch.Tensor:
    """Where the generator is evaluated: the timesteps LCMScheduler runs with ``original_inference_steps``
    equal to the step count ([999] for one step), so training and the exported scheduler agree."""
    return schedules.consistency_timesteps(GENERATOR_STEPS, GENERATOR_STEPS, num_train_timesteps)


def generate(models: ModelSet, cond: torch.Tensor) -> torch.Tensor:
    """One-step samples x0 = G(z) from fresh pure noise z (with gradients if the student trains)."""
    student = models["student"]
    c = student.unet.config
    z = torch.randn(len(cond), c.in_channels, c.sample_size, c.sample_size, device=cond.device)
    t = generator_timesteps(student.alphas_cumprod.shape[0]).to(cond.device).expand(len(cond))
    return student(z, t, cond).x0


class DMDMethod(Method):
    Config = DMDConfig

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("generator", ("student",), data="prompts"),
                Phase(FAKE, (FAKE,), data="none",
                      defaults=PhaseConfig(repeats=self.config.fake_steps_per_generator)))

    def build(self, pipe) -> ModelSet:
        if self.student_config.kind == "lora":
            return build_students(pipe, self.student_config, adapters=(FAKE,))
        models = build_students(pipe, self.student_config)
        fake = copy.deepcopy(pipe.unet).train().requires_grad_(True)
        models[FAKE] = Denoiser(fake, pipe.scheduler.config)
        return models

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        if phase == "generator":
            return self.generator_loss(models, batch["captions"])
        return self.fake_score_loss(models, batch)

    def generator_loss(self, models: ModelSet, captions: list[str]) -> LossOutput:
        cfg = self.config
        cond, uncond = encode_prompts(models, captions)
        x0 = generate(models, cond)
        b = len(x0)
        with torch.no_grad():
            t = torch.randint(cfg.t_min, cfg.t_max + 1, (b,), device=x0.device)
            x_t = noised(models["teacher"], x0.detach(), t)
            real = models["teacher"](x_t, t, cond, uncond=uncond, guidance=cfg.real_guidance).x0
            fake = models[FAKE](x_t, t, cond).x0
            grad = dmd_gradient(x0, real, fake)
        loss = stop_gradient_loss(x0, grad)
        logs = {"grad_abs": grad.abs().mean().item(), "t_mean": t.float().mean().item()}
        return LossOutput(loss, logs, handover={"x0": x0.detach(), "cond": cond})

    def fake_score_loss(self, models: ModelSet, batch: dict) -> LossOutput:
        given = batch.get("handover", {})
        if "x0" in given:
            x0, cond = given["x0"], given["cond"]
        elif "captions" in batch:  # called on its own (tests, inspection): make the samples here
            cond, _ = encode_prompts(models, batch["captions"])
            with torch.no_grad():
                x0 = generate(models, cond)
        else:
            raise ValueError("the fake_score phase trains on the generator's samples of this iteration; "
                             "none were handed over and the batch has no captions to make them from")
        fake = models[FAKE]
        t = torch.randint(0, fake.alphas_cumprod.shape[0], (len(x0),), device=x0.device)
        alpha, sigma = fake.alpha_sigma(t)
        noise = torch.randn_like(x0)
        pred = fake(alpha.to(x0.dtype) * x0 + sigma.to(x0.dtype) * noise, t, cond)
        return LossOutput(denoising_loss(pred.output, x0, noise, alpha, sigma, fake.prediction_type))

    def recipe(self) -> Recipe:
        """LCMScheduler with ``original_inference_steps`` = 1 evaluates exactly t = 999 and returns
        c_skip z + c_out x0 with c_skip(999) ~ 3e-9: the generator's x0 to float32 rounding."""
        return Recipe("LCMScheduler", {"original_inference_steps": GENERATOR_STEPS}, GENERATOR_STEPS, 1.0,
                      trained_steps=[GENERATOR_STEPS])

    def to_pipeline(self, models: ModelSet):
        return pipeline_with(models, unet=models["student"].unet), self.recipe()
