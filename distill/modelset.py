"""The networks of one run: named modules (trainable or frozen) around a loaded pipeline.

A method builds a ModelSet, the loop prepares its trainable modules with accelerate and writes the
wrapped modules back, so methods call ``models["student"](...)`` whatever the distribution strategy.
EMA pairs (target <- source, decay) are declared here and updated by the loop, in one place.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelSet:
    def __init__(self, pipe):
        self.pipe = pipe  # the loaded diffusers pipeline: tokenizer, frozen components, scheduler config
        self.modules: dict[str, nn.Module] = {}
        self.ema: list[tuple[str, str, float]] = []  # (target name, source name, decay)
        self.device = torch.device("cpu")

    def __getitem__(self, name: str) -> nn.Module:
        return self.modules[name]

    def __setitem__(self, name: str, module: nn.Module) -> None:
        self.modules[name] = module

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    @property
    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler.config)

    def add_ema(self, target: str, source: str, decay: float) -> None:
        """Register a frozen copy of ``source`` that tracks it with exponential moving average."""
        ema = copy.deepcopy(self.modules[source]).requires_grad_(False).eval()
        self.modules[target] = ema
        self.ema.append((target, source, decay))

    def to(self, device: torch.device) -> "ModelSet":
        self.device = torch.device(device)
        for m in self.modules.values():
            m.to(device)
        for name in ("vae", "text_encoder"):
            getattr(self.pipe, name).to(device)
        return self

    def text_encoder(self) -> nn.Module:
        return self.modules.get("text_encoder", self.pipe.text_encoder)

    def encode_text(self, captions: list[str], encoder: nn.Module | None = None) -> torch.Tensor:
        """Token-level text embeddings [B, L, D] as SD's UNet consumes them (last hidden state)."""
        tok = self.pipe.tokenizer(captions, padding="max_length", truncation=True,
                                  max_length=self.pipe.tokenizer.model_max_length, return_tensors="pt")
        encoder = encoder if encoder is not None else self.text_encoder()
        return encoder(tok.input_ids.to(self.device))[0]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents, sampled from the VAE posterior as SD training does."""
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        return (dist.sample(generator) * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1]."""
        vae = self.pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float().clamp(-1, 1)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / FSDP / torch.compile wrappers."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameters and float buffers."""
    for t, s in zip(target.parameters(), unwrap(source).parameters()):
        t.lerp_(s.detach().to(t.dtype), 1.0 - decay)
    for t, s in zip(target.buffers(), unwrap(source).buffers()):
        if t.dtype.is_floating_point:
            t.copy_(s)
