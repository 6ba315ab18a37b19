"""One interface over any diffusers UNet: (x_t, t, text) -> x0 and eps, whatever it predicts.

Methods never branch on the prediction type: the conversion happens here once (k-diffusion's
``external.py`` / EDM2's ``Precond`` pattern). Classifier-free guidance is one batched forward with
the unconditional and conditional halves stacked; guidance is applied to x0 and eps alike, which
equals guiding the raw output because both are affine in it for a fixed x_t.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import nn

from fewstep.distill import schedules


class Prediction(NamedTuple):
    x0: torch.Tensor  # predicted clean latents
    eps: torch.Tensor  # predicted noise
    output: torch.Tensor  # what the network itself returned (eps, v or x0)


class Denoiser(nn.Module):
    """A UNet2DConditionModel plus the noise schedule it was trained with."""

    def __init__(self, unet: nn.Module, scheduler_config: Mapping):
        super().__init__()
        self.unet = unet
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        abar = schedules.alphas_cumprod_from_config(scheduler_config)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return schedules.alpha_sigma(self.alphas_cumprod, t)

    def forward(
        self,
        x_t: torch.Tensor,  # [B, C, H, W] noisy latents at timestep t
        t: torch.Tensor,  # [B] integer timesteps 0..T-1
        cond: torch.Tensor,  # [B, L, D] text embeddings
        uncond: torch.Tensor | None = None,  # [B, L, D] embeddings of the empty prompt (CFG)
        guidance: torch.Tensor | float | None = None,  # CFG scale s: uncond + s (cond - uncond)
        timestep_cond: torch.Tensor | None = None,  # guidance embedding for w-conditioned UNets
    ) -> Prediction:
        alpha, sigma = self.alpha_sigma(t)
        if uncond is None or guidance is None:
            out = self.unet(x_t, t, encoder_hidden_states=cond, timestep_cond=timestep_cond).sample
            x0, eps = schedules.x0_eps_from_output(out, x_t, alpha, sigma, self.prediction_type)
            return Prediction(x0, eps, out)
        tc = None if timestep_cond is None else torch.cat([timestep_cond, timestep_cond])
        out = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond]),
                        timestep_cond=tc).sample
        a2, s2 = torch.cat([alpha, alpha]), torch.cat([sigma, sigma])
        x0, eps = schedules.x0_eps_from_output(out, torch.cat([x_t, x_t]), a2, s2, self.prediction_type)
        g = guidance if not torch.is_tensor(guidance) else schedules.append_dims(guidance, x_t.ndim)
        (x0_u, x0_c), (eps_u, eps_c), (o_u, o_c) = x0.chunk(2), eps.chunk(2), out.chunk(2)
        return Prediction(x0_u + g * (x0_c - x0_u), eps_u + g * (eps_c - eps_u), o_u + g * (o_c - o_u))
