"""DMD's regression term (Yin et al. 2024, Sec. 3.3): (noise, teacher sample) pairs made once by
the teacher's own sampler, and the loss that pulls the 1-step generator's output from that noise
toward the teacher's sample. It anchors the generator to the teacher's mapping early on (DMD2
uses it as a warm-up for SDXL)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from fewstep.distill.modelset import ModelSet

PAIR_SEED = 20240601  # the pairs' noise: its own generator, never the global RNG


class Pairs(NamedTuple):
    noise: torch.Tensor  # [N, C, h, w] initial latents
    latents: torch.Tensor  # [N, C, h, w] the teacher's samples from them
    captions: list[str]


@torch.no_grad()
def teacher_pairs(models: ModelSet, captions: list[str], steps: int, guidance: float, batch_size: int = 64) -> Pairs:
    """The teacher (the run's pipeline UNet with every adapter off) sampled with DDIM, trailing
    spacing, from seeded noise: deterministic, and drawing nothing from the global RNG."""
    import diffusers

    pipe = models.pipe
    sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    teacher = models["teacher"]
    c = teacher.unet.config
    gen = torch.Generator().manual_seed(PAIR_SEED)
    noise = torch.randn(len(captions), c.in_channels, c.sample_size, c.sample_size, generator=gen)
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc="regression pairs", leave=False):
        chunk = captions[i:i + batch_size]
        cond = models.encode_text(chunk)
        uncond = models.encode_text([""]).expand(len(chunk), -1, -1)
        x = noise[i:i + len(chunk)].to(models.device)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            tt = torch.full((len(chunk),), int(t), device=x.device, dtype=torch.long)
            eps = teacher(x, tt, cond, uncond=uncond, guidance=guidance).eps
            x = sched.step(eps, t, x).prev_sample
        out.append(x.cpu())
    return Pairs(noise, torch.cat(out), list(captions))


def regression_loss(x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in latent space, float32."""
    return torch.mean((x0.float() - target.float()) ** 2)
