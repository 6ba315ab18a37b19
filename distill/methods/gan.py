"""The adversarial term of score distillation (DMD2, Yin et al. 2024b, Sec. 4.3; SiDA, Zhou et al. 2025,
for SiD): a small classification head on the fake score UNet's bottleneck (mid-block) features of
noised samples, trained to tell real images from generator samples with the non-saturating logistic
loss (Goodfellow et al. 2014), while the generator is trained to fool it through the fake UNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.distill.config import ConfigError
from fewstep.distill.modelset import ModelSet

GAN_HEAD = "gan_head"  # the role of the classification head


class GanHead(nn.Module):
    """Bottleneck features [B, C, h, w] -> one logit per sample (any h, w)."""

    # read by distill.loop.checkpoint_activations under train.gradient_checkpointing
    checkpointing_exempt = ("one conv and a linear on the UNet's bottleneck (its lowest resolution): its "
                            "activations are those of a single mid-block layer, nothing worth recomputing")

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(min(32, channels), channels)
        self.out = nn.Linear(channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.conv(h.float())))
        return self.out(h.mean(dim=(2, 3))).squeeze(1)


def add_gan_head(models: ModelSet, role: str) -> None:
    """Register a trainable :class:`GanHead` sized for ``role``'s UNet bottleneck as ``GAN_HEAD``."""
    unet = models[role].unet
    models[GAN_HEAD] = GanHead(unet.config.block_out_channels[-1]).train().requires_grad_(True)


class _Stop(Exception):
    """Raised by the mid-block hook: nothing after the bottleneck needs computing."""


def bottleneck(net, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The mid-block output of ``net``'s UNet at ``(x_t, t, cond)``; the up path is never run."""
    found = {}

    def hook(module, args, output):
        found["h"] = output
        raise _Stop

    handle = net.unet.mid_block.register_forward_hook(hook)
    try:
        net(x_t, t, cond)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found["h"]


def gan_logits(models: ModelSet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, role: str = "fake_score"):
    """Head logits of noised samples ``x_t`` (real: positive) through ``role``'s bottleneck."""
    return models[GAN_HEAD](bottleneck(models[role], x_t, t, cond))


def gan_losses(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Non-saturating logistic losses: (generator softplus(-D(fake)), head softplus(D(fake)) +
    softplus(-D(real)); None without real logits), means over the batch, float32."""
    fake_logits = fake_logits.float()
    gen = F.softplus(-fake_logits).mean()
    if real_logits is None:
        return gen, None
    return gen, F.softplus(fake_logits).mean() + F.softplus(-real_logits.float()).mean()


def check_real_size(sample_size: int, factor: int, image) -> None:
    """The head compares real images with generator samples, which come at the UNet's native size
    (what the exported pipeline makes): the data's images must encode to that latent size."""
    side = image.moments.shape[-1] if hasattr(image, "moments") else image.shape[-1] // factor
    if side != sample_size:
        raise ConfigError(f"data.resolution: the GAN term (method.gan_weight) needs real images at the generator's "
                          f"size {sample_size * factor} px (the teacher UNet's sample_size {sample_size} x "
                          f"{factor}); the data gives {side * factor} px")
