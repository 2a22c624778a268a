"""Models for the benchmark, built offline: the tiny test SD and a full-size SD 2.1-base-shaped one.

The full-size model has SD 2.1-base's UNet configuration (866 M parameters) and SD's VAE encoder
configuration, with RANDOM weights: built on the meta device, materialised with `to_empty` and a
fast scaled-normal initialisation (nothing is downloaded). There is no text encoder: the prompt
embeddings SLiMe would get from CLIP are random (1, 77, 1024) tensors put into the prompt cache,
so `Segmenter.fit` runs unchanged. Timings depend on shapes, not on weights, so they are those
of the real model; segmentations are meaningless.
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch
from torch import nn

from slimeseg import Segmenter
from slimeseg.models import StableDiffusion, config_fingerprint, load_stable_diffusion, plan_layers

# stabilityai/stable-diffusion-2-1-base unet/config.json (the fields that set its shapes)
SD21_UNET: dict = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
    "use_linear_projection": True, "norm_num_groups": 32,
}
# SD's VAE encoder (AutoencoderKL with 4 blocks of 128, 256, 512, 512 channels)
SD_VAE_ENCODER: dict = {
    "in_channels": 3, "out_channels": 4, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
    "double_z": True,
}


@torch.no_grad()
def _init_random(module: nn.Module, generator: torch.Generator) -> None:
    """Scaled-normal weights (std 1/sqrt(fan_in)), zero biases, unit norm scales; fast on CPU.

    Drawing 866 M normals takes ~30 s on 2 cores, so weights tile one bank of 2**20 normals
    started at a random offset per tensor (timings depend on shapes, not on weight values).
    """
    bank = torch.randn(2 ** 21, generator=generator)
    for name, p in module.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
            continue
        n, start = p.numel(), int(torch.randint(0, 2 ** 20, (1,), generator=generator))
        flat = bank[start:start + 2 ** 20].repeat(-(-n // 2 ** 20))[:n]
        p.copy_(flat.view(p.shape) * math.prod(p.shape[1:]) ** -0.5)


def _materialise(module: nn.Module, device: torch.device, generator: torch.Generator) -> nn.Module:
    module.to_empty(device=device)
    _init_random(module, generator)
    return module.requires_grad_(False).eval()


def build_full_sd(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> StableDiffusion:
    """An SD 2.1-base-shaped StableDiffusion with random weights (no text encoder, no decoder)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.models.autoencoders.vae import Encoder

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
        encoder = Encoder(**SD_VAE_ENCODER)
        quant_conv = nn.Conv2d(8, 8, 1)
    unet, encoder, quant_conv = (_materialise(m, dev, gen) for m in (unet, encoder, quant_conv))
    if dtype != torch.float32:
        for m in (unet, encoder, quant_conv):
            m.to(dtype)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, steps_offset=1, num_train_timesteps=1000)
    sd = StableDiffusion(
        model_id="random-sd2.1-base-shape", revision=None, unet=unet, vae_encoder=encoder,
        quant_conv=quant_conv, scaling_factor=1.0,
        alphas_cumprod=scheduler.alphas_cumprod.to(dev, torch.float32),
        prediction_type="epsilon", device=dev, dtype=dtype,
        fingerprint=config_fingerprint(unet.config), plan=plan_layers(unet), local_files_only=True)
    # As METHOD.md asks of a random VAE: pick the scaling factor that gives unit-variance latents.
    probe = torch.rand(1, 3, 64, 64, generator=gen)
    sd.scaling_factor = 1.0 / float(sd.encode_image(probe).float().std())
    return sd


def fake_prompts(sd: StableDiffusion, num_classes: int, seed: int = 0) -> None:
    """Fill the prompt cache with random 'CLIP outputs' so fit() needs no text encoder."""
    gen = torch.Generator().manual_seed(seed)
    for prompt in (" ".join(["part"] * num_classes), ""):
        sd._prompt_cache[prompt] = torch.randn(1, 77, sd.context_dim, generator=gen)


def load_model(name: str, device: str | torch.device, dtype: torch.dtype = torch.float32,
               num_classes: int = 4) -> Segmenter:
    """'tiny': slimeseg's tiny SD saved and loaded from disk; 'full': the random full-size SD."""
    if name == "tiny":
        from slimeseg.synthetic.tiny import save_tiny_sd

        folder = save_tiny_sd(tempfile.mkdtemp(prefix="slimeseg-bench-tiny-"))
        sd = load_stable_diffusion(str(folder), device=device, dtype=dtype, local_files_only=True)
    elif name == "full":
        sd = build_full_sd(device, dtype)
        fake_prompts(sd, num_classes)
    else:
        raise ValueError(f"unknown model {name!r}")
    return Segmenter(sd)


def add_timing_arguments(p: argparse.ArgumentParser, rows: dict) -> None:
    """The options the full-size speed benchmarks share (fit_speed.py, infer_speed.py): which
    model, device, dtypes, image side, rows and repeats, and the torch thread count."""
    p.add_argument("--model", default="full", choices=["tiny", "full"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32,bfloat16", help="comma list")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rows", default=",".join(rows), help=f"comma list of {', '.join(rows)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
