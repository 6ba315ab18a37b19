"""A two-phase toy method in DMD2's shape, for the phase-contract tests (not a registered method).

``generator`` trains the ``student`` role on data batches every ``every``-th iteration and hands its
detached samples over; ``critic`` trains a second adapter, ``fake_score``, on the same frozen UNet
``repeats`` times per iteration without drawing data, on those samples when it got them (DMD2's fake
score loss: denoise the generator's samples), else on samples it makes itself. Each phase also calls
the other phase's role with gradients enabled, so only the loop's freezing keeps them from training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.distill.config import PhaseConfig, StudentConfig
from fewstep.distill.methods.base import LossOutput, Method, Recipe, pipeline_with
from fewstep.distill.modelset import ModelSet
from fewstep.distill.phases import Phase
from fewstep.distill.students import build_students

T_MID = 500


@dataclass
class ToyConfig:
    every: int = 2  # generator update ratio
    repeats: int = 5  # critic steps per iteration

    def check(self) -> None:
        pass


class ToyTwoPhase(Method):
    Config = ToyConfig

    def __init__(self, config: ToyConfig, student: StudentConfig | None = None):
        super().__init__(config, student)
        self.calls: list[tuple[int, str, tuple[str, ...], tuple[str, ...]]] = []  # (iteration, phase, batch keys, handover keys)

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("generator", ("student",), defaults=PhaseConfig(every=self.config.every)),
                Phase("critic", ("fake_score",), data="none",
                      defaults=PhaseConfig(repeats=self.config.repeats, adam_beta1=0.0, lr=2e-3)))

    def build(self, pipe) -> ModelSet:
        return build_students(pipe, self.student_config, adapters=("fake_score",))

    def loss(self, models: ModelSet, batch: dict, phase: str, step: int) -> LossOutput:
        handover = batch["handover"]
        self.calls.append((step, phase, tuple(sorted(batch)), tuple(sorted(handover))))
        if phase == "generator":
            latents = models.encode_images(batch["pixels"])
            cond = models.encode_text(batch["captions"])
            t = torch.full((len(latents),), T_MID, device=latents.device)
            alpha, sigma = models["student"].alpha_sigma(t)
            x_t = alpha * latents + sigma * torch.randn_like(latents)
            pred = models["student"](x_t, t, cond)
            with torch.no_grad():
                ref = models["teacher"](x_t, t, cond)
            # Through the fake score with gradients on (as SiD's generator loss): only its input may
            # get them; its adapter is frozen while this phase runs.
            fake = models["fake_score"](alpha * pred.x0 + sigma * torch.randn_like(latents), t, cond)
            loss = torch.mean((pred.x0 - ref.x0) ** 2) + torch.mean(pred.x0 ** 2) + torch.mean(fake.eps ** 2)
            return LossOutput(loss, {"x0_mean": pred.x0.mean().item()}, handover={"x0": pred.x0, "cond": cond})
        if "x0" in handover:
            x0, cond = handover["x0"], handover["cond"]
        else:  # no generator step this iteration: sample from it (gradients on: it is frozen now)
            cond = models.encode_text([""] * 4)
            z = torch.randn(4, 4, 8, 8, device=models.device)
            x0 = models["student"](z, torch.full((4,), T_MID, device=models.device), cond).x0
        t = torch.full((len(x0),), T_MID, device=x0.device)
        alpha, sigma = models["fake_score"].alpha_sigma(t)
        noise = torch.randn_like(x0)
        pred = models["fake_score"](alpha * x0 + sigma * noise, t, cond)
        return LossOutput(torch.mean((pred.eps - noise) ** 2))

    def to_pipeline(self, models: ModelSet):
        return pipeline_with(models, unet=models["student"].unet), Recipe("DDIMScheduler", {}, 2, 1.0)
