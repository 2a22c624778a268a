"""The committed lab SD (tests/assets/lab-sd): loads like any SD checkpoint and has SD's structure.

Its self-attention is still near uniform (entropy 0.993 of the maximum, see its README), so no
test asserts sharp or part-grouping attention yet: that is the open part of the lab issue."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from slimeseg.lab import World, caption_vocabulary
from slimeseg.lab.probe import top_self_attention_layers

ASSET = Path(__file__).parent / "assets" / "lab-sd"

@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(ASSET)


@pytest.fixture(scope="module")
def probe_samples() -> list:
    return [World(kind, 256, seed=123).sample(i) for kind in ("car", "face") for i in range(2)]


def test_components_load_on_their_own() -> None:
    unet = UNet2DConditionModel.from_pretrained(ASSET, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(ASSET, subfolder="vae")
    text = CLIPTextModel.from_pretrained(ASSET, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(ASSET, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(ASSET, subfolder="scheduler")
    assert unet.config.cross_attention_dim == text.config.hidden_size
    assert vae.config.latent_channels == unet.config.in_channels == 4
    assert len(tok) == text.config.vocab_size
    assert sched.config.num_train_timesteps == 1000


def test_weights_stay_small() -> None:
    total = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file())
    assert total < 20e6


def test_has_stable_diffusions_structure(pipe: StableDiffusionPipeline) -> None:
    u = pipe.unet.config
    assert list(u.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(u.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert u.use_linear_projection
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8  # SD's VAE downscale
    assert u.sample_size * 8 == 256
    s = pipe.scheduler.config
    assert (s.beta_schedule, s.beta_start, s.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert not s.clip_sample and s.steps_offset == 1
    layers = top_self_attention_layers(pipe.unet)
    assert layers and all(n.startswith("up_blocks.3.") and ".attn1." in n for n in layers)


def test_tokenizer_keeps_every_caption_word_whole(pipe: StableDiffusionPipeline) -> None:
    for word in caption_vocabulary():
        assert len(pipe.tokenizer(word).input_ids) == 3, word


@torch.no_grad()
def test_latents_have_about_unit_variance(pipe: StableDiffusionPipeline, probe_samples: list) -> None:
    x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in probe_samples]).float() / 127.5 - 1
    z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    assert 0.6 < float(z.std()) < 1.6
