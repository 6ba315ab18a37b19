"""A fresh, untrained tiny StableDiffusionPipeline for the embedded procedural domain.

Same classes as SD1.5 (CLIPTextModel, AutoencoderKL, UNet2DConditionModel, DDIMScheduler with SD1.5's
noise schedule), only small: the embedded teacher in ``assets/`` is this pipeline after training
by ``fewstep train`` (configs/tiny/vae.yaml, then configs/tiny/teacher.yaml).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from distill.config import TinyArch
from distill.data.procedural import vocabulary
from pipelines.tokenizer import build_clip_tokenizer

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
        norm_num_groups=16,
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
        norm_num_groups=16,  # divides every width in TinyArch defaults
    )
    scheduler = DDIMScheduler(**SD15_SCHEDULE, prediction_type=arch.prediction_type)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
