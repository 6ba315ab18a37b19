"""What both judge builders share: procedural training batches, the augmentation that makes renders
look like generated samples, and the training loop's LR schedule.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler

from fewstep.distill.config import schedule_name
from fewstep.distill.data.procedural import ProceduralDataset
from fewstep.pipelines.judge_config import OptimConfig


def procedural_slice(seed: int, start: int, n: int, key: str) -> tuple[torch.Tensor, torch.Tensor | list[str]]:
    """Scenes ``start .. start+n-1`` of split ``seed``: uint8 images ``[n, 3, 32, 32]`` and each item's
    ``key`` (``"labels"`` stacked to ``[n, n_attr]``, ``"caption"`` as a list)."""
    data = ProceduralDataset(seed)
    items = [data[i] for i in range(start, start + n)]
    values = [it[key] for it in items]
    return torch.stack([it["image"] for it in items]), (torch.stack(values) if key == "labels" else values)


def procedural_batches(seed: int, batch_size: int, key: str) -> Iterator[tuple[torch.Tensor, torch.Tensor | list[str]]]:
    """Endless fresh batches of consecutive scenes of split ``seed``: training never repeats an image."""
    start = 0
    while True:
        yield procedural_slice(seed, start, batch_size, key)
        start += batch_size


def lr_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The training loop's schedule (``distill.loop``): diffusers' ``get_scheduler`` with the same arguments."""
    return get_scheduler(schedule_name(cfg.lr_schedule, cfg.warmup_steps), opt, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=cfg.steps)


def _gaussian_kernels(sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Normalised 1-D gaussian kernels ``[N, 2*radius+1]``, one per sigma."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light photometric augmentation of raw images; returns float images in [0, 255].

    ``generator`` must be a CPU generator (or None for the global RNG).

    Generated images are slightly blurry, noisy and colour-shifted compared to renders, so each
    image gets, at random: a gaussian blur (sigma up to 1 px, half the images), additive noise
    (std up to 8 grey levels), a global brightness/contrast gain (+-10 %) and a per-channel offset
    (+-10 levels). No flips or large shifts: position (left/right) and shape orientation (the
    triangle points up) are labels.
    """
    x = images.float()
    n, c, h, w = x.shape
    dev = x.device

    # Draw on the CPU generator and move, so results do not depend on the training device.
    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    # Separable blur with a per-image sigma; sigma ~ 0 leaves the image (numerically) untouched.
    sigma = rand(n) * (rand(n) < 0.5)
    k = _gaussian_kernels(sigma)  # [n, 5]
    r = k.shape[1] // 2
    xp = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    kh = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    xp = F.conv2d(xp, kh[:, None, None, :], groups=n * c)
    x = F.conv2d(xp, kh[:, None, :, None], groups=n * c).reshape(n, c, h, w)
    gain = 1.0 + (rand(n, 1, 1, 1) * 2 - 1) * 0.10
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * gain  # contrast around the image mean
    x = x * (1.0 + (rand(n, 1, 1, 1) * 2 - 1) * 0.10)  # brightness
    x = x + (rand(n, c, 1, 1) * 2 - 1) * 10.0  # colour cast
    noise = torch.randn(x.shape, generator=generator).to(dev)
    x = x + noise * (rand(n, 1, 1, 1) * 8.0)
    return x.clamp_(0, 255)
