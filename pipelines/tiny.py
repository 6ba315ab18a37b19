"""A fresh, untrained tiny StableDiffusionPipeline for the embedded procedural domain.

Same classes as SD1.5 (CLIPTextModel, AutoencoderKL, UNet2DConditionModel, DDIMScheduler with SD1.5's
noise schedule), only small: the embedded teacher in ``assets/`` is this pipeline after training
by ``fewstep train`` (configs/tiny/vae.yaml, then configs/tiny/teacher.yaml).
"""
from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from fewstep.distill.config import TinyArch
from fewstep.distill.data.procedural import vocabulary
from fewstep.pipelines.tokenizer import build_clip_tokenizer

# SD1.5's noise schedule and sampler settings (runwayml/stable-diffusion-v1-5 scheduler config).
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)


def _norm_groups(channels: list[int]) -> int:
    """GroupNorm groups: the largest divisor of every width, at most 16 (tiny widths need few groups)."""
    g = math.gcd(*channels)
    return max(d for d in range(1, 17) if g % d == 0)


# The VAE's GroupNorms get at least 8 channels per group: with 1-2 channels a group, normalising
# removes each channel's spatial mean, i.e. the absolute colour of a flat background, and the tiny
# autoencoder then returns shapes in an averaged brown (seen on the procedural domain).


def build_tiny_pipeline(arch: TinyArch, seed: int = 0) -> StableDiffusionPipeline:
    """Randomly initialised tiny pipeline; deterministic given ``seed``."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(vocabulary() + [","], model_max_length=arch.max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    n = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(arch.vae_channels),
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=max(1, math.gcd(*arch.vae_channels) // 8),  # >= 8 channels a group: see below
        sample_size=arch.resolution,
        scaling_factor=1.0,  # set from latent statistics after the VAE is trained
    )
    m = len(arch.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=arch.resolution // 2 ** (n - 1),
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        block_out_channels=tuple(arch.unet_channels),
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.unet_attention_head_dim,
        norm_num_groups=_norm_groups(arch.unet_channels),
    )
    scheduler = DDIMScheduler(**SD15_SCHEDULE, prediction_type=arch.prediction_type)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
