"""The committed lab SD (tests/assets/lab-sd): loads like any SD checkpoint, has SD's structure,
and its self-attention is peaked and groups parts (what makes WAS maps informative).

Measured on 8 held-out images per kind (its README): entropy 0.57 / 0.55 of uniform (car / face),
own-part attention 3.3 / 3.0 x uniform; a randomly initialised UNet: 0.995 and 1.01."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from lab.probe import self_attention_stats, top_self_attention_layers
from lab.train_model import tokenize
from slimeseg.lab import KIND_CLASSES, World, caption_vocabulary

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


def test_train_model_cli_writes_a_loadable_model(tmp_path: Path) -> None:
    """`python -m lab.train_model` end to end at toy size: diffusers folder, report, samples."""
    import json

    from lab.train_model import main

    out = tmp_path / "lab"
    assert main([str(out), "--size", "64", "--images", "8", "--vae-steps", "3",
                 "--unet-steps", "3", "--seed", "1"]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.sample_size == 8
    report = json.loads((out / "training.json").read_text())
    assert (report["vae_steps"], report["unet_steps"], report["qk_scale"]) == (3, 3, 10.0)
    assert {"trained/car", "init/car", "random/face"} <= set(report["attention"])
    assert (out / "samples.png").stat().st_size > 0
    assert f"python -m lab.train_model {out} --size 64 --images 8" in (out / "README.md").read_text()


@pytest.mark.parametrize("kind", ["car", "face"])
def test_self_attention_is_peaked_and_groups_parts(pipe: StableDiffusionPipeline, kind: str) -> None:
    samples = [World(kind, 256, seed=2000).sample(i) for i in range(3)]
    with torch.no_grad():
        emb = pipe.text_encoder(tokenize(pipe.tokenizer, [s.caption for s in samples]))[0]
    stats = self_attention_stats(pipe.unet, pipe.vae, pipe.scheduler, emb, [s.image for s in samples],
                                 [s.mask for s in samples], [KIND_CLASSES[kind]] * len(samples))
    assert stats.entropy_ratio < 0.75
    assert stats.own_part_ratio > 2.0
    assert stats.far_own_part_ratio > 1.4
