"""A tiny Stable Diffusion of SD's architecture, built offline, for trying and testing slimeseg.

It is NOT a trained model: its segmentations mean nothing on real photos. Plain random weights
are useless for SLiMe (self-attention is near uniform, so WAS maps are flat), so two parts get a
structured initialisation that lets the method work on simple scenes of coloured shapes:
- the VAE encoder is an average-pooling of RGB into the latent channels (each standardised per
  image, so latents have unit variance with scaling factor 1);
- every self-attention layer has its query and key projections tied and scaled, so attention is
  peaked and groups positions with similar features.
Everything else is SD's usual random initialisation, seeded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .tokenizer import DEFAULT_WORDS, build_tokenizer

TINY_NOTE = (
    "This is slimeseg's tiny test model: SD's architecture at toy size with structured random "
    "weights. It is NOT a trained Stable Diffusion; use it to try the tool and run tests only."
)


@torch.no_grad()
def _init_pooling_vae(vae: nn.Module) -> None:
    """Make the VAE encoder average-pool RGB (plus luminance) into 4 standardised latent channels."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D

    enc = vae.encoder
    ch = enc.conv_in.out_channels
    enc.conv_in.weight.zero_()
    enc.conv_in.bias.zero_()
    for c in range(3):
        enc.conv_in.weight[c, c, 1, 1] = 1.0
    enc.conv_in.weight[3, :, 1, 1] = 1.0 / 3.0  # luminance
    for module in enc.modules():
        if isinstance(module, ResnetBlock2D):  # residual branch off: the block is the identity
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()
        elif isinstance(module, Downsample2D) and module.conv is not None:
            module.conv.weight.zero_()
            module.conv.bias.zero_()
            k = module.conv.weight.shape[-1]
            for c in range(ch):
                module.conv.weight[c, c] = 1.0 / (k * k)  # a box blur with stride 2
    for attn in enc.mid_block.attentions:
        if attn is not None:
            attn.to_out[0].weight.zero_()
            attn.to_out[0].bias.zero_()
    # Per-channel standardisation (one group per channel), shifted into SiLU's near-linear range.
    enc.conv_norm_out.weight.fill_(1.0)
    enc.conv_norm_out.bias.fill_(6.0)
    enc.conv_out.weight.zero_()
    latent = enc.conv_out.out_channels // 2
    enc.conv_out.bias[:latent] = -6.0
    enc.conv_out.bias[latent:] = -20.0  # tiny posterior variance
    for c in range(latent):
        enc.conv_out.weight[c, c, 1, 1] = 1.0
    if getattr(vae, "quant_conv", None) is not None:
        vae.quant_conv.weight.zero_()
        vae.quant_conv.bias.zero_()
        for c in range(vae.quant_conv.out_channels):
            vae.quant_conv.weight[c, c, 0, 0] = 1.0


@torch.no_grad()
def tie_self_attention(unet: nn.Module, scale: float) -> None:
    """Tie each self-attention layer's key projection to its query projection, times `scale`.

    Attention logits then start as scaled feature similarities, so attention is peaked and groups
    similar pixels from the first step (what a long-trained SD ends up with; short training does not).
    """
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            w = module.to_q.weight
            nn.init.orthogonal_(w)
            w.mul_(math.sqrt(scale))
            module.to_k.weight.copy_(w)


def build_tiny_sd(seed: int = 0, qk_scale: float = 10.0, words=DEFAULT_WORDS, width: int = 32):
    """Build the tiny SD pipeline in memory (UNet 4 blocks: 3 cross-attention + 1 plain).

    `width` is the UNet's first block width (and the text width); other widths make a model
    of another configuration, e.g. to test that artifacts refuse the wrong model.
    """
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=width,
    ))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(width, width, 2 * width, 2 * width), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=width, attention_head_dim=2, use_linear_projection=True,
    )
    tie_self_attention(unet, qk_scale)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 16, 16), norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=1.0,
    )
    _init_pooling_vae(vae)
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, num_train_timesteps=1000,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_tiny_sd(out_dir: str | Path, seed: int = 0, qk_scale: float = 10.0, width: int = 32) -> Path:
    """Write the tiny SD in diffusers layout (loadable with `from_pretrained`) plus a README."""
    out = Path(out_dir)
    pipe = build_tiny_sd(seed=seed, qk_scale=qk_scale, width=width)
    pipe.save_pretrained(out)
    (out / "README.md").write_text(
        f"# slimeseg tiny test model\n\n{TINY_NOTE}\n\nMade by `slimeseg tiny-model` "
        f"(seed {seed}, qk_scale {qk_scale}).\n"
    )
    return out
