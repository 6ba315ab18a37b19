"""Stable Diffusion 1.5's architecture with random weights, for benchmarks that need its real size.

The values are those of the published stable-diffusion-v1-5/stable-diffusion-v1-5 component configs
(``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json``);
keys those files leave out take diffusers' / transformers' defaults there as here. Sizes: UNet 859.5M
parameters, VAE 83.7M, text encoder (CLIP ViT-L/14's text tower) 123.1M.

No CLIP BPE vocabulary can be downloaded here, so the tokenizer is the repo's locally built CLIP
tokenizer (``fewstep.pipelines.tokenizer``: a real ``CLIPTokenizer`` over the procedural vocabulary,
byte-level pieces for other text) at SD1.5's 77 tokens; the text encoder keeps CLIP's 49408-row
embedding, of which the tokenizer's ids use the first few hundred.
"""
from __future__ import annotations

# UNet2DConditionModel (unet/config.json); block widths separately so a benchmark can scale them
SD15_WIDTHS = (320, 640, 1280, 1280)
SD15_UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                 mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32)
SD15_LATENT = 64  # sample_size: 512 px / the VAE's factor 8

# AutoencoderKL (vae/config.json); scaling_factor 0.18215 is diffusers' default and SD1.5's value
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", sample_size=512, scaling_factor=0.18215)

# CLIPTextModel (text_encoder/config.json: openai/clip-vit-large-patch14's text tower)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 projection_dim=768)

# PNDMScheduler (scheduler/scheduler_config.json): SD1.5 ships PNDM, not the DDIM the tiny teacher uses; the
# file's clip_sample: false is left out (PNDM has no such argument; from_config drops it with a warning)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


def sd15_unet(divisor: int = 1, latent: int = SD15_LATENT):
    """SD1.5's UNet, random weights; ``divisor`` > 1 divides every block width (same layout, fewer
    parameters), ``latent`` is only the recorded ``sample_size``."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=latent, block_out_channels=tuple(w // divisor for w in SD15_WIDTHS),
                                **SD15_UNET)


def sd15_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` of SD1.5's architecture with random weights (fp32, ~4.3 GB)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from fewstep.distill.data.procedural import vocabulary
    from fewstep.pipelines.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(vocabulary() + [","], model_max_length=SD15_TEXT["max_position_embeddings"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text_encoder, tokenizer=tokenizer, unet=sd15_unet(),
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
