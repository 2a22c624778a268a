"""Pretrain a small Stable Diffusion (SD's block structure at toy width) on the synthetic world.

Why: random SD weights attend almost uniformly, so SLiMe cannot be evaluated offline; a tiny SD
trained briefly on part-structured images gives attention that groups parts. The result is saved
in diffusers layout (StableDiffusionPipeline.save_pretrained), like any SD checkpoint.

Steps: render a fixed dataset (cars and faces; v1 world images, v2 scenes or a mix), train the
VAE on reconstruction, set its scaling factor so latents have unit variance, then train text
encoder + UNet on noise prediction with captions (10% empty, for classifier-free guidance).

Resumable: a checkpoint (weights, optimiser and RNG states, step counters, losses, CPU time and
the commands of every run) is written atomically to OUT.ckpt/ every few CPU minutes and when the
run is stopped (Ctrl-C, SIGTERM); `--resume` continues it, to the same weights as an
uninterrupted run (one thread, same machine). The rendered images are cached there too.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from slimeseg.synthetic.tiny import tie_self_attention
from slimeseg.synthetic.tokenizer import build_tokenizer
from slimeseg.synthetic.world import KIND_CLASSES, SceneWorld, World, caption_vocabulary
from slimeseg.writers import atomic_path, write_json

from .probe import AttentionStats, self_attention_stats

KINDS = ("car", "face")
TEXT_DIM = 64  # v1's text encoder width = UNet cross_attention_dim
V1_UNET_CHANNELS = (32, 64, 64, 64)
V1_HEADS = (2, 4, 4, 4)
V1_VAE_CHANNELS = (16, 32, 64, 64)
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- models


def build_vae(size: int, channels: Sequence[int] = V1_VAE_CHANNELS) -> AutoencoderKL:
    """A 4-block AutoencoderKL (downscale 8, 4 latent channels), as in SD but ~1 M parameters.

    The posterior starts with a small variance (logvar -8): with unit variance the sampled latent
    is mostly noise early on and a short training loses colour (seen: grey reconstructions).
    """
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=8,
    )
    with torch.no_grad():
        c = vae.config.latent_channels
        vae.quant_conv.weight[c:] = 0.0
        vae.quant_conv.bias[c:] = -8.0
    return vae


def build_unet(size: int, qk_scale: float = 0.0, channels: Sequence[int] = V1_UNET_CHANNELS,
               heads: Sequence[int] = V1_HEADS, layers_per_block: int = 1,
               text_dim: int = TEXT_DIM) -> UNet2DConditionModel:
    """SD's UNet layout (3 cross-attn down blocks + 1 plain, mirrored); v1: ~2 M parameters.

    `attention_head_dim` is the number of heads in diffusers' SD UNet (a historic misnomer).
    qk_scale > 0 starts every self-attention layer with tied, scaled query/key projections:
    with default init the logits are tiny and stay so in a short CPU training (measured: entropy
    0.993 of uniform after 4183 steps), whereas SD's trained self-attention is peaked.
    """
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=tuple(channels), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim, attention_head_dim=tuple(heads), use_linear_projection=True,
    )
    if qk_scale > 0:
        tie_self_attention(unet, qk_scale)
    return unet


def build_text_encoder(tokenizer: CLIPTokenizer, text_dim: int = TEXT_DIM) -> CLIPTextModel:
    """A 2-layer CLIP text transformer over the tokenizer's vocabulary."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=4 * text_dim,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=text_dim,
    )
    return CLIPTextModel(config)


def build_scheduler() -> DDPMScheduler:
    """SD's training noise schedule (scaled-linear betas 0.00085..0.012 over 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type="epsilon",
    )


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """Rendered world images (N, 3, H, W) uint8 with captions, masks (if kept) and the kind of each."""

    images: torch.Tensor
    masks: list[np.ndarray]
    captions: list[str]
    kinds: list[str]

    def as_float(self, idx: torch.Tensor) -> torch.Tensor:
        """Images idx as float RGB in [-1, 1], the range SD's VAE sees."""
        return self.images[idx].float() / 127.5 - 1.0


def is_v2(j: int, v2_fraction: float) -> bool:
    """Whether sample j of a kind is a v2 scene: spreads a fraction evenly (0: none, 1: all)."""
    return math.floor((j + 1) * v2_fraction + 1e-9) > math.floor(j * v2_fraction + 1e-9)


def render_range(start: int, stop: int, size: int, seed: int, v2_fraction: float = 0.0,
                 keep_masks: bool = True) -> Dataset:
    """Images start..stop-1 of the training stream: kinds alternate car/face; image i is sample
    i // 2 of its kind's v1 `World` or, for a `v2_fraction` of them, of its `SceneWorld`."""
    v1 = {k: World(k, size, seed) for k in KINDS}
    v2 = {k: SceneWorld(k, size, seed=seed) for k in KINDS}
    images, masks, captions, kinds = [], [], [], []
    for i in range(start, stop):
        kind, j = KINDS[i % len(KINDS)], i // len(KINDS)
        s = (v2 if is_v2(j, v2_fraction) else v1)[kind].sample(j)
        images.append(torch.from_numpy(s.image).permute(2, 0, 1))
        if keep_masks:
            masks.append(s.mask)
        captions.append(s.caption)
        kinds.append(kind)
    return Dataset(torch.stack(images), masks, captions, kinds)


def render_dataset(n: int, size: int, seed: int, v2_fraction: float = 0.0) -> Dataset:
    """n samples alternating car/face; world seed `seed` (use another seed for held-out data)."""
    return render_range(0, n, size, seed, v2_fraction)


def tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded to the 77 CLIP positions."""
    return tokenizer(list(captions), padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


# --------------------------------------------------------------------------- training steps


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _steps_for(budget_s: float, step_fn: Callable[[int], float], probe_steps: int = 5) -> int:
    """How many steps fit in `budget_s` CPU seconds, timed on a few real steps (then discarded).

    CPU time, not wall time, so a busy machine does not shrink the run.
    """
    step_fn(0)  # first call pays one-off costs
    t0 = time.process_time()
    for i in range(probe_steps):
        step_fn(i)
    per_step = (time.process_time() - t0) / probe_steps
    return max(10, int(budget_s / per_step))


def _image_grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: keeps edges sharp (plain L1/MSE blur them)."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def vae_optimizer(vae: AutoencoderKL, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)


def vae_step(vae: AutoencoderKL, opt: torch.optim.Optimizer, data: Dataset, step: int, steps: int,
             gen: torch.Generator, batch: int = 8, crop: int = 128, lr: float = 1e-3) -> float:
    """One reconstruction step on random crops (the VAE is convolutional); returns the loss."""
    n, size = data.images.shape[0], data.images.shape[-1]
    for g in opt.param_groups:
        g["lr"] = lr * _lr_factor(step, steps, 50)
    idx = torch.randint(0, n, (batch,), generator=gen)
    oy, ox = (int(v) * 8 for v in torch.randint(0, (size - crop) // 8 + 1, (2,), generator=gen))
    x = data.as_float(idx)[..., oy : oy + crop, ox : ox + crop]
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample(generator=gen)).sample
    loss = (rec - x).abs().mean() + 0.25 * _image_grad_l1(rec, x) + 1e-8 * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    return loss.item()


def train_vae(vae: AutoencoderKL, data: Dataset, steps: int, gen: torch.Generator, batch: int = 8,
              crop: int = 128, lr: float = 1e-3, log: Callable[[str], None] = print) -> list[float]:
    """Reconstruction training on random crops (the VAE is convolutional); returns losses."""
    opt = vae_optimizer(vae, lr)
    losses: list[float] = []
    vae.train()
    for step in range(steps):
        losses.append(vae_step(vae, opt, data, step, steps, gen, batch, crop, lr))
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {np.mean(losses[-100:]):.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, data: Dataset, batch: int = 16,
                   stop: Callable[[], bool] = lambda: False) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image's latent (unscaled); `stop()` aborts between batches."""
    means, stds = [], []
    for i in range(0, data.images.shape[0], batch):
        if stop():
            raise _Stopped
        post = vae.encode(data.as_float(torch.arange(i, min(i + batch, data.images.shape[0])))).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def denoiser_optimizer(params: list[torch.nn.Parameter], lr: float = 5e-4) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)


def denoiser_step(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, opt: torch.optim.Optimizer,
                  ids: torch.Tensor, empty_ids: torch.Tensor, latents: tuple[torch.Tensor, torch.Tensor],
                  scheduler: DDPMScheduler, step: int, steps: int, gen: torch.Generator, batch: int = 8,
                  lr: float = 5e-4, p_empty: float = 0.1) -> float:
    """One joint UNet + text encoder step on epsilon prediction (latents already scaled)."""
    mean, std = latents
    for g in opt.param_groups:
        g["lr"] = lr * _lr_factor(step, steps, 100)
    idx = torch.randint(0, mean.shape[0], (batch,), generator=gen)
    z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
    tok = ids[idx].clone()
    tok[torch.rand(batch, generator=gen) < p_empty] = empty_ids
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
    pred = unet(scheduler.add_noise(z0, noise, t), t, text_encoder(tok)[0]).sample
    loss = F.mse_loss(pred, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    return loss.item()


def train_denoiser(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, ids: torch.Tensor,
                   empty_ids: torch.Tensor, latents: tuple[torch.Tensor, torch.Tensor],
                   scheduler: DDPMScheduler, steps: int, gen: torch.Generator, batch: int = 8,
                   lr: float = 5e-4, p_empty: float = 0.1,
                   log: Callable[[str], None] = print) -> list[float]:
    """Joint UNet + text encoder training on epsilon prediction; latents already scaled."""
    opt = denoiser_optimizer(list(unet.parameters()) + list(text_encoder.parameters()), lr)
    losses: list[float] = []
    unet.train()
    text_encoder.train()
    for step in range(steps):
        losses.append(denoiser_step(unet, text_encoder, opt, ids, empty_ids, latents, scheduler, step, steps,
                                    gen, batch, lr, p_empty))
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {np.mean(losses[-100:]):.4f}")
    unet.eval()
    text_encoder.eval()
    return losses


@torch.no_grad()
def denoiser_val_loss(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, ids: torch.Tensor,
                      z0: torch.Tensor, scheduler: DDPMScheduler, seed: int = 0) -> float:
    """Noise-prediction MSE on held-out latents, fixed noise, timesteps spread over [0, 1000)."""
    gen = torch.Generator().manual_seed(seed)
    n = z0.shape[0]
    t = torch.linspace(0, scheduler.config.num_train_timesteps - 1, n).long()
    noise = torch.randn(z0.shape, generator=gen)
    pred = unet(scheduler.add_noise(z0, noise, t), t, text_encoder(ids)[0]).sample
    return float(F.mse_loss(pred, noise))


# --------------------------------------------------------------------------- configuration and report


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (a resumed run must match it)."""

    seed: int = 0
    size: int = 256
    n_images: int = 2400
    vae_steps: int | None = None  # None: from `minutes` (timed on the machine, then recorded)
    unet_steps: int | None = None
    minutes: float = 45.0
    qk_scale: float = 10.0
    vae_crop: int = 64
    unet_channels: tuple[int, ...] = V1_UNET_CHANNELS
    heads: tuple[int, ...] = V1_HEADS
    layers_per_block: int = 1
    text_dim: int = TEXT_DIM
    vae_channels: tuple[int, ...] = V1_VAE_CHANNELS
    v2_fraction: float = 0.0  # share of training images that are v2 scenes (SceneWorld)
    batch: int = 8
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    val_every: int = 0  # held-out noise MSE every N UNet steps (0: only at the end)
    # continue from a trained lab SD folder: its VAE (not retrained), scaling factor, tokenizer,
    # text encoder and UNet are the starting point; the UNet phase runs unet_steps more steps
    init_from: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in ("unet_channels", "heads", "vae_channels"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @property
    def caption_version(self) -> int:
        return 2 if self.v2_fraction > 0 else 1


@dataclass
class TrainReport:
    """What a training run did and measured; written to training.json and the README."""

    command: str
    seed: int
    size: int
    n_images: int
    vae_steps: int
    unet_steps: int
    qk_scale: float = 0.0
    vae_crop: int = 128
    wall_s: float = 0.0
    render_s: float = 0.0
    vae_s: float = 0.0
    encode_s: float = 0.0
    unet_s: float = 0.0
    final_s: float = 0.0
    cpu_s: float = 0.0  # all phases, all runs
    vae_loss_first: float | None = 0.0  # None: no VAE steps (the VAE came with --init-from)
    vae_loss_final: float | None = 0.0
    vae_val_l1: float = 0.0
    scaling_factor: float = 1.0
    unet_loss_first: float = 0.0
    unet_loss_final: float = 0.0
    unet_val_loss: float = 0.0
    unet_val_loss_random: float = 0.0  # before the UNet phase: at random init, or the --init-from model
    config: dict = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)  # each run: command, phases, CPU and wall seconds
    attention: dict[str, dict] = field(default_factory=dict)
    vae_curve: list[tuple[int, float]] = field(default_factory=list)
    unet_curve: list[tuple[int, float]] = field(default_factory=list)
    unet_val_curve: list[tuple[int, float]] = field(default_factory=list)


def _curve(losses: list[float], every: int = 100) -> list[tuple[int, float]]:
    """Losses averaged over consecutive windows of `every` steps: (first step, mean)."""
    return [(i, round(float(np.mean(losses[i : i + every])), 5)) for i in range(0, len(losses), every)]


def _stats_dict(stats: AttentionStats) -> dict:
    d = asdict(stats)
    d["own_part_ratio"] = stats.own_part_ratio
    d["far_own_part_ratio"] = stats.far_own_part_ratio
    return d


def sample_grid(pipe: StableDiffusionPipeline, captions: list[str], path: Path, seed: int,
                steps: int = 30, guidance: float = 3.0, thumb: int = 128) -> None:
    """Generate one image per caption (DDIM) and save them side by side as a small PNG."""
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    tiles = []
    for i, caption in enumerate(captions):
        gen = torch.Generator().manual_seed(seed + i)
        img = pipe(caption, num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                   output_type="np").images[0]
        tiles.append(Image.fromarray((img * 255).round().astype(np.uint8)).resize((thumb, thumb), Image.BILINEAR))
    cols = 4
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * thumb, rows * thumb))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * thumb, (i // cols) * thumb))
    grid.save(path, optimize=True)


SAMPLE_CAPTIONS = [
    "a red car on grass", "a blue car on road", "a yellow car on snow", "a white car on bricks",
    "a face with black hair in front of bricks", "a face with yellow hair in front of clouds",
    "a face with red hair in front of checkers", "a face with green hair in front of wall",
]
SAMPLE_CAPTIONS_V2 = [
    "three red blue and white cars on road showing body wheel window light",
    "a close up of a green car on grass showing body wheel",
    "two faces with black and yellow hair in front of wall showing skin eye mouth hair",
    "a close up of a face with brown hair in front of dots showing skin eye mouth hair",
]


def evaluate_attention(model_dir: str | Path, seed: int = 0, n_per_kind: int = 8,
                       qk_scale: float = 10.0, start_from: str | Path | None = None) -> dict[str, dict]:
    """Self-attention stats of the saved model and of untrained UNets, per kind, on held-out images.

    'init' is the trained model's initialisation (tied q/k at qk_scale), 'random' diffusers' default
    init: what training added is trained vs init. A run continued from another lab SD
    (`start_from`) has 'start' rows (that model's UNet) instead of 'init'. Held-out images: v1 world samples.
    """
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    size = pipe.unet.config.sample_size * 8
    results: dict[str, dict] = {}
    torch.manual_seed(seed + 1)

    def untrained(scale: float) -> UNet2DConditionModel:
        unet = UNet2DConditionModel.from_config(pipe.unet.config)
        if scale > 0:
            tie_self_attention(unet, scale)
        return unet.eval()

    inits = [("init", untrained(qk_scale))] if qk_scale > 0 else []
    if start_from is not None:
        inits = [("start", StableDiffusionPipeline.from_pretrained(start_from).unet.eval())]
    for label, unet in [("trained", pipe.unet), *inits, ("random", untrained(0.0))]:
        for kind in KINDS:
            samples = [World(kind, size, seed + 2000).sample(i) for i in range(n_per_kind)]
            with torch.no_grad():
                emb = pipe.text_encoder(tokenize(pipe.tokenizer, [s.caption for s in samples]))[0]
            stats = self_attention_stats(unet, pipe.vae, pipe.scheduler, emb, [s.image for s in samples],
                                         [s.mask for s in samples], [KIND_CLASSES[kind]] * n_per_kind)
            results[f"{label}/{kind}"] = _stats_dict(stats)
    return results


def render_readme(r: TrainReport) -> str:
    """The asset README: how to re-make the weights and what they measure."""
    cfg = TrainConfig.from_dict(r.config) if r.config else TrainConfig(seed=r.seed, size=r.size)
    world = ("v1 world images" if cfg.v2_fraction == 0 else
             f"{100 * (1 - cfg.v2_fraction):g} % v1 world images, {100 * cfg.v2_fraction:g} % v2 scenes (SceneWorld)")
    params = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in r.parameters.items())
    lines = [
        "# lab-sd: a tiny Stable Diffusion pretrained on the synthetic world",
        "",
        "Diffusers layout (`StableDiffusionPipeline.from_pretrained(this_dir)`); SD's block structure",
        f"at toy width: UNet {tuple(cfg.unet_channels)} with {tuple(cfg.heads)} attention heads,"
        f" {cfg.layers_per_block} layer(s) per block, 3 CrossAttnDownBlock2D + DownBlock2D, mirrored up blocks,",
        f"cross-attention dim {cfg.text_dim}; 4-block AutoencoderKL {tuple(cfg.vae_channels)} (downscale 8);"
        " 2-layer CLIP text encoder;",
        "byte-level tokenizer over the caption words; DDPM scheduler (scaled-linear 0.00085..0.012).",
        f"Trained on {r.n_images} images ({', '.join(KINDS)}, alternating; {world}) at {r.size}x{r.size}"
        f" (latents {r.size // 8}x{r.size // 8}).",
    ]
    if not cfg.init_from:
        lines.append(f"Self-attention q/k projections start tied and scaled by {r.qk_scale:g}"
                     " (`build_unet(qk_scale=...)`; 0 = diffusers' default init).")
    else:
        lines.append(f"Continued from `{cfg.init_from}`: its VAE (not retrained; scaling factor kept), tokenizer,"
                     f" text encoder and UNet start this run, which adds {r.unet_steps} UNet steps.")
    if params:
        lines.append(f"Parameters: {params}.")
    lines += ["", "## Re-make", "", "```", r.command, "```", ""]
    if len(r.runs) > 1:
        lines += [f"Trained in {len(r.runs)} runs, each resuming the previous one's checkpoint (one uninterrupted"
                  " run of the command above computes the same, up to float summation order where runs used"
                  " other thread counts):", ""]
        lines += [f"{i + 1}. `{run['command']}`: {', '.join(run['phases'])}; CPU {run['cpu_s'] / 60:.1f} min,"
                  f" wall {run['wall_s'] / 60:.1f} min" + (f". {run['note']}." if run.get("note") else "")
                  for i, run in enumerate(r.runs)]
        lines.append("")
    lines += [
        f"Seed {r.seed}; CPU threads as in the command(s); CPU times: rendering {r.render_s:.0f} s, VAE {r.vae_s / 60:.1f} min"
        f" ({r.vae_steps} steps, batch {cfg.batch}, {r.vae_crop} px crops), encoding {r.encode_s:.0f} s,"
        f" text encoder + UNet {r.unet_s / 60:.1f} min ({r.unet_steps} steps, batch {cfg.batch}),"
        f" evaluation and saving {r.final_s / 60:.1f} min; total {r.cpu_s / 60:.1f} CPU min."
        f" Wall time (shared machine, all runs): {r.wall_s / 60:.0f} min.",
        "",
        "## Losses",
        "",
        (f"- VAE (L1 + image-gradient L1 + 1e-8 KL): first 20 steps {r.vae_loss_first:.4f},"
         f" last 100 steps {r.vae_loss_final:.4f}; held-out reconstruction L1 (range [-1, 1]) {r.vae_val_l1:.4f}."
         if r.vae_steps else f"- VAE: the init model's; held-out reconstruction L1 (range [-1, 1]) {r.vae_val_l1:.4f}."),
        f"- VAE scaling factor {r.scaling_factor:.4f} ("
        + ("the init model's" if cfg.init_from else "1 / std of the training latents' means") + ").",
        f"- UNet noise MSE: first 20 steps {r.unet_loss_first:.4f}, last 200 steps {r.unet_loss_final:.4f};"
        f" held-out (64 images, t spread over [0, 1000)) {r.unet_val_loss:.4f}"
        f" ({'the init model' if cfg.init_from else 'same UNet at random init'}: {r.unet_val_loss_random:.4f}).",
    ]
    if r.unet_val_curve:
        lines.append("- Held-out noise MSE during training: "
                     + ", ".join(f"{s}: {v:.4f}" for s, v in r.unet_val_curve) + ".")
    lines += [
        "- Curves (mean per 100 steps) are in `training.json`.",
        "",
        "## Self-attention (highest-resolution up block, attn1), held-out images, t = 100",
        "",
        "Entropy ratio = mean row entropy / log(keys) (1 = uniform). Own-part mass = attention a query",
        "puts on keys of its own class (mask majority per latent cell), class-balanced; 'uniform' is",
        "what uniform attention would give. 'Far' counts only keys more than 4 latent px away",
        "(normalised over those keys), so locality alone cannot explain it.",
        "",
        "| model/kind | entropy ratio | own-part mass | uniform | ratio | far own-part | far uniform | far ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, s in r.attention.items():
        lines.append(
            f"| {key} | {s['entropy_ratio']:.3f} | {s['own_part_mass']:.3f} | {s['own_part_uniform']:.3f}"
            f" | {s['own_part_ratio']:.2f} | {s['far_own_part_mass']:.3f} | {s['far_own_part_uniform']:.3f}"
            f" | {s['far_own_part_ratio']:.2f} |"
        )
    lines += ["", "Per-class own-part ratio (trained):", ""]
    for key, s in r.attention.items():
        if key.startswith("trained"):
            lines.append(f"- {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in s["per_class_ratio"].items()))
    captions = sample_captions(cfg)
    lines += [
        "",
        "## Samples",
        "",
        "`samples.png`: DDIM, 30 steps, guidance 3, one image per caption, row by row:",
        "",
    ] + [f"- {c}" for c in captions] + [""]
    return "\n".join(lines)


def sample_captions(cfg: TrainConfig) -> list[str]:
    return SAMPLE_CAPTIONS + (SAMPLE_CAPTIONS_V2 if cfg.caption_version >= 2 else [])


# --------------------------------------------------------------------------- resumable driver


class _Stopped(Exception):
    """A stop was requested (signal); the caller has saved or will redo the current phase."""


PHASES = ("render", "vae", "encode", "unet", "final", "done")
_STATE_OBJECTS = ("vae", "vae_opt", "unet", "text_encoder", "unet_opt")
RENDER_CHUNK = 200  # images per cached chunk (a stop during rendering loses at most one chunk)


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save through the project's atomic writer (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rng_state(gen: torch.Generator) -> dict:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def _set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])


class InitFromError(ValueError):
    """--init-from names a folder that is not a lab SD this run can continue."""


INIT_PARTS = {"vae": AutoencoderKL, "tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel,
              "unet": UNet2DConditionModel}


def check_init_from(cfg: TrainConfig) -> None:
    """Load and check every part of `cfg.init_from` up front (cheap), so a wrong folder fails
    before anything is rendered or checkpointed."""
    if cfg.vae_steps:
        raise InitFromError(f"--init-from {cfg.init_from}: the VAE is the init model's, so --vae-steps must be 0 or unset")
    for part, cls in INIT_PARTS.items():
        _init_part(cfg, part, cls)


def _init_part(cfg: TrainConfig, part: str, cls: Any) -> Any:
    """One component of the `cfg.init_from` lab SD, checked against the config it continues under
    (size, widths, heads, text width, caption words), so a mismatch fails before any training."""
    folder = Path(cfg.init_from) / part
    if not folder.is_dir():
        raise InitFromError(f"{cfg.init_from}: no {part}/ folder (--init-from needs a lab SD in diffusers layout)")
    obj = cls.from_pretrained(folder)
    c = getattr(obj, "config", None)
    expect: dict[str, Any] = {}
    if part == "vae":
        expect = {"block_out_channels": tuple(cfg.vae_channels)}
    elif part == "unet":
        expect = {"sample_size": cfg.size // 8, "block_out_channels": tuple(cfg.unet_channels),
                  "attention_head_dim": tuple(cfg.heads), "layers_per_block": cfg.layers_per_block,
                  "cross_attention_dim": cfg.text_dim}
    elif part == "text_encoder":
        expect = {"hidden_size": cfg.text_dim}
    elif part == "tokenizer":
        vocab = obj.get_vocab()
        missing = [w for w in caption_vocabulary(cfg.caption_version) if f"{w}</w>" not in vocab]
        if missing:
            raise InitFromError(f"{folder}: the tokenizer lacks caption words {missing[:5]} (v2 scenes need a v2 model)")
    for key, want in expect.items():
        have = getattr(c, key)
        have = tuple(have) if isinstance(have, (list, tuple)) else have
        if isinstance(have, int) and isinstance(want, tuple):  # one value for every block
            have = (have,) * len(want)
        if have != want:
            raise InitFromError(f"{folder}: {key} is {have}, the run's config says {want}")
    return obj


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Trainer:
    """Runs (or resumes) one training as phases render -> vae -> encode -> unet -> final.

    The state that determines the outcome (weights, optimiser and RNG states, step counters,
    losses) lives in `self.st` and is checkpointed to `ckpt_dir/state.pt` atomically every
    `checkpoint_minutes` of CPU time, at the end of each phase and when a stop is requested.
    """

    def __init__(self, out: Path, cfg: TrainConfig, ckpt_dir: Path, command: str,
                 checkpoint_minutes: float = 5.0, log: Callable[[str], None] = print) -> None:
        self.out, self.cfg, self.ckpt, self.log = Path(out), cfg, Path(ckpt_dir), log
        self.every_s = checkpoint_minutes * 60
        self.stop_signal: int | None = None
        self.gen = torch.Generator()
        self.st: dict[str, Any] = {
            "version": CHECKPOINT_VERSION, "config": asdict(cfg), "phase": "render",
            "cpu": {p: 0.0 for p in PHASES[:-1]}, "wall_s": 0.0, "runs": [],
        }
        self.run = {"command": command, "phases": [], "cpu_s": 0.0, "wall_s": 0.0}
        self.evaluate = True  # attention figures and sample grid at the end
        self.where = "render"  # the phase CPU time is charged to (st["phase"] marks progress)
        self._t_cpu, self._t_wall = time.process_time(), time.perf_counter()
        self._last_save = time.process_time()
        self._stop_saved = False
        self._saved: dict[str, Any] = {}  # a loaded checkpoint's model, optimiser and RNG states
        self.data: Dataset | None = None
        self.held: Dataset | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.ckpt / "state.pt"

    def _tick(self) -> None:
        """Charge the CPU and wall time since the last tick to the current phase and run."""
        cpu, wall = time.process_time(), time.perf_counter()
        self.st["cpu"][self.where] += cpu - self._t_cpu
        self.run["cpu_s"] += cpu - self._t_cpu
        self.run["wall_s"] += wall - self._t_wall
        self.st["wall_s"] += wall - self._t_wall
        self._t_cpu, self._t_wall = cpu, wall

    def save(self, reason: str = "") -> None:
        """Write the checkpoint (atomically); the current run is recorded in it."""
        self._tick()
        st = dict(self.st)
        st["runs"] = [*self.st["runs"], dict(self.run)]
        st["rng"] = _rng_state(self.gen)
        for name in _STATE_OBJECTS:
            obj = getattr(self, name, None)
            if obj is not None:
                st[name] = obj.state_dict()
            elif name in self._saved:  # resumed, not rebuilt yet: keep what the checkpoint had
                st[name] = self._saved[name]
        self.ckpt.mkdir(parents=True, exist_ok=True)
        _atomic_save(st, self.state_path)
        self._last_save = time.process_time()
        if reason:
            self.log(f"checkpoint ({reason}): {self.state_path}")

    def load(self) -> None:
        """Continue from the checkpoint: its config replaces ours (they were checked to agree)."""
        st = torch.load(self.state_path, weights_only=False)
        if st.get("version") != CHECKPOINT_VERSION:
            raise SystemExit(f"error: {self.state_path}: checkpoint version {st.get('version')} is not {CHECKPOINT_VERSION}")
        self.st = {k: v for k, v in st.items() if k not in ("rng", *_STATE_OBJECTS)}
        self.cfg = TrainConfig.from_dict(st["config"])
        self._saved = st  # model and optimiser states, restored when their phase is set up
        _set_rng_state(self.gen, st["rng"])
        self.where = self.st["phase"] if self.st["phase"] in self.st["cpu"] else "final"

    def restart_unet(self, steps: int) -> None:
        """Start the UNet phase over with `steps` (its learning-rate schedule depends on the total);
        the rendered images, the VAE and the latents are kept. Recorded in this run's entry."""
        if PHASES.index(self.st["phase"]) < PHASES.index("unet"):
            self.log(f"UNet phase not started yet: it will run {steps} steps")
        else:
            done, old = self.st.get("unet_step", 0), self.cfg.unet_steps
            self.run["note"] = (f"UNet phase restarted with --unet-steps {steps} (was {old}; the {done} step(s)"
                                " done were discarded, their CPU time is counted)")
            self.log(self.run["note"])
            for key in ("unet_step", "unet_losses", "val_curve", "val_random"):
                self.st.pop(key, None)
            for key in ("unet", "text_encoder", "unet_opt"):
                self._saved.pop(key, None)
            self.st["phase"] = self.where = "unet"
        self.cfg.unet_steps = steps
        self.st["config"]["unet_steps"] = steps

    def _maybe_save(self) -> None:
        if self.stop_signal is not None:
            self.save(f"stopped by signal {self.stop_signal}")
            self._stop_saved = True
            raise _Stopped(self.stop_signal)
        if time.process_time() - self._last_save >= self.every_s:
            self.save()

    def _enter(self, phase: str) -> None:
        """Charge what follows to `phase` (progress is marked by _advance)."""
        self._tick()
        self.where = phase
        if phase not in self.run["phases"]:
            self.run["phases"].append(phase)

    def _advance(self, phase: str, reason: str) -> None:
        """Mark the previous phase done and checkpoint."""
        self.st["phase"] = phase
        self._enter(phase)
        self.save(reason)

    def _restore_torch_rng(self) -> None:
        """After rebuilding models on resume: the global RNG as it was when the checkpoint was made
        (an uninterrupted run has consumed exactly that much of it by then)."""
        if "rng" in self._saved:
            torch.set_rng_state(self._saved["rng"]["torch"])

    # -- phases --------------------------------------------------------------------------

    def _render(self) -> None:
        """Render (or load the cached chunks of) the training and held-out images."""
        cfg, cache = self.cfg, self.ckpt / "data"
        cache.mkdir(parents=True, exist_ok=True)
        chunks = []
        for start in range(0, cfg.n_images, RENDER_CHUNK):
            stop = min(start + RENDER_CHUNK, cfg.n_images)
            chunks.append(self._chunk(cache / f"train_{start:06d}.pt", start, stop, cfg.seed))
        self.data = Dataset(torch.cat([c["images"] for c in chunks]), [],
                            [x for c in chunks for x in c["captions"]], [x for c in chunks for x in c["kinds"]])
        h = self._chunk(cache / "held.pt", 0, 64, cfg.seed + 1000)
        self.held = Dataset(h["images"], [], h["captions"], h["kinds"])

    def _chunk(self, path: Path, start: int, stop: int, seed: int) -> dict:
        if path.exists():
            return torch.load(path, weights_only=False)
        if self.stop_signal is not None:
            raise _Stopped(self.stop_signal)
        t0 = time.process_time()
        d = render_range(start, stop, self.cfg.size, seed, self.cfg.v2_fraction, keep_masks=False)
        chunk = {"images": d.images, "captions": d.captions, "kinds": d.kinds}
        _atomic_save(chunk, path)
        self.log(f"rendered images {start}..{stop - 1} (world seed {seed}) in {time.process_time() - t0:.0f} s CPU")
        return chunk

    def _setup_vae(self) -> None:
        cfg = self.cfg
        fresh = "vae_step" not in self.st
        if fresh:
            torch.manual_seed(cfg.seed)
        if cfg.init_from:
            self.vae = _init_part(cfg, "vae", AutoencoderKL)
            if fresh:  # the VAE is the init model's: no VAE steps
                self.cfg.vae_steps = self.st["config"]["vae_steps"] = 0
        else:
            self.vae = build_vae(cfg.size, cfg.vae_channels)
        if fresh:
            self.gen.manual_seed(cfg.seed)
            if cfg.vae_steps is None:
                state = {k: v.clone() for k, v in self.vae.state_dict().items()}
                steps = _steps_for(cfg.minutes * 60 * 0.25, lambda i: train_vae(
                    self.vae, self.data, 1, self.gen, batch=cfg.batch, crop=cfg.vae_crop, lr=cfg.vae_lr,
                    log=lambda s: None)[0])
                self.vae.load_state_dict(state)
                self.gen.manual_seed(cfg.seed)
                self.cfg.vae_steps = steps
                self.st["config"]["vae_steps"] = steps
            self.vae_opt = vae_optimizer(self.vae, cfg.vae_lr)
            self.st.update(vae_step=0, vae_losses=[])
        else:
            self.vae.load_state_dict(self._saved["vae"])
            self.vae_opt = vae_optimizer(self.vae, cfg.vae_lr)
            if "vae_opt" in self._saved:
                self.vae_opt.load_state_dict(self._saved["vae_opt"])
            self._restore_torch_rng()
            self.vae.eval()

    def _train_vae(self) -> None:
        cfg, st = self.cfg, self.st
        self.vae.train()
        while st["vae_step"] < cfg.vae_steps:
            k = st["vae_step"]
            st["vae_losses"].append(vae_step(self.vae, self.vae_opt, self.data, k, cfg.vae_steps, self.gen,
                                             cfg.batch, cfg.vae_crop, cfg.vae_lr))
            st["vae_step"] = k + 1
            if k % 100 == 0 or k == cfg.vae_steps - 1:
                self.log(f"vae step {k}/{cfg.vae_steps} loss {np.mean(st['vae_losses'][-100:]):.4f}")
            if st["vae_step"] < cfg.vae_steps:
                self._maybe_save()
        self.vae.eval()

    def _encode(self) -> None:
        """Latents of every image (posterior mean and std), scaling factor, held-out figures."""
        path = self.ckpt / "latents.pt"
        if "scaling" in self.st and path.exists():
            lat = torch.load(path, weights_only=False)
            self.mean, self.std, self.held_z = lat["mean"], lat["std"], lat["held_z"]
            return
        stop = lambda: self.stop_signal is not None  # noqa: E731
        self.mean, self.std = encode_dataset(self.vae, self.data, stop=stop)
        # continuing a model: keep the scaling its UNet was trained with
        scaling = float(self.vae.config.scaling_factor if self.cfg.init_from else 1.0 / self.mean.std())
        with torch.no_grad():
            hx = self.held.as_float(torch.arange(16))
            val_l1 = float((self.vae.decode(self.vae.encode(hx).latent_dist.mean).sample - hx).abs().mean())
            self.held_z = encode_dataset(self.vae, self.held, stop=stop)[0] * scaling
        _atomic_save({"mean": self.mean, "std": self.std, "held_z": self.held_z}, path)
        self.st.update(scaling=scaling, val_l1=val_l1)
        self.log(f"vae scaling factor {scaling:.4f}, held-out L1 {val_l1:.4f}")

    def _setup_unet(self) -> None:
        cfg = self.cfg
        self.vae.register_to_config(scaling_factor=self.st["scaling"])
        fresh = "unet_step" not in self.st
        if fresh:
            torch.manual_seed(cfg.seed + 1)
        if cfg.init_from:
            self.tokenizer = _init_part(cfg, "tokenizer", CLIPTokenizer)
            self.text_encoder = _init_part(cfg, "text_encoder", CLIPTextModel)
            self.unet = _init_part(cfg, "unet", UNet2DConditionModel)
        else:
            self.tokenizer = build_tokenizer(caption_vocabulary(cfg.caption_version))
            self.text_encoder = build_text_encoder(self.tokenizer, cfg.text_dim)
            self.unet = build_unet(cfg.size, cfg.qk_scale, cfg.unet_channels, cfg.heads, cfg.layers_per_block,
                                   cfg.text_dim)
        self.scheduler = build_scheduler()
        self.ids, self.held_ids = tokenize(self.tokenizer, self.data.captions), tokenize(self.tokenizer, self.held.captions)
        self.empty = tokenize(self.tokenizer, [""])[0]
        s = self.st["scaling"]
        self.lat = (self.mean * s, self.std * s)
        params = lambda: list(self.unet.parameters()) + list(self.text_encoder.parameters())  # noqa: E731
        if fresh:
            self.st["val_random"] = denoiser_val_loss(self.unet, self.text_encoder, self.held_ids, self.held_z,
                                                      self.scheduler)
            if cfg.unet_steps is None:
                state_u = {k: v.clone() for k, v in self.unet.state_dict().items()}
                state_t = {k: v.clone() for k, v in self.text_encoder.state_dict().items()}
                budget = cfg.minutes * 60 - self.st["cpu"]["vae"]
                steps = _steps_for(budget, lambda i: train_denoiser(
                    self.unet, self.text_encoder, self.ids, self.empty, self.lat, self.scheduler, 1, self.gen,
                    batch=cfg.batch, lr=cfg.unet_lr, log=lambda s: None)[0])
                self.unet.load_state_dict(state_u)
                self.text_encoder.load_state_dict(state_t)
                self.cfg.unet_steps = steps
                self.st["config"]["unet_steps"] = steps
            self.gen.manual_seed(cfg.seed + 1)
            self.unet_opt = denoiser_optimizer(params(), cfg.unet_lr)
            self.st.update(unet_step=0, unet_losses=[], val_curve=[])
        else:
            self.unet.load_state_dict(self._saved["unet"])
            self.text_encoder.load_state_dict(self._saved["text_encoder"])
            self.unet_opt = denoiser_optimizer(params(), cfg.unet_lr)
            if "unet_opt" in self._saved:
                self.unet_opt.load_state_dict(self._saved["unet_opt"])
            self._restore_torch_rng()
            self.unet.eval()
            self.text_encoder.eval()

    def _val(self) -> float:
        self.unet.eval()
        self.text_encoder.eval()
        v = denoiser_val_loss(self.unet, self.text_encoder, self.held_ids, self.held_z, self.scheduler)
        self.unet.train()
        self.text_encoder.train()
        return v

    def _train_unet(self) -> None:
        cfg, st = self.cfg, self.st
        self.unet.train()
        self.text_encoder.train()
        while st["unet_step"] < cfg.unet_steps:
            k = st["unet_step"]
            st["unet_losses"].append(denoiser_step(
                self.unet, self.text_encoder, self.unet_opt, self.ids, self.empty, self.lat, self.scheduler, k,
                cfg.unet_steps, self.gen, cfg.batch, cfg.unet_lr))
            st["unet_step"] = k + 1
            if k % 100 == 0 or k == cfg.unet_steps - 1:
                self.log(f"unet step {k}/{cfg.unet_steps} loss {np.mean(st['unet_losses'][-100:]):.4f}")
            if cfg.val_every and st["unet_step"] % cfg.val_every == 0 and st["unet_step"] < cfg.unet_steps:
                st["val_curve"].append((st["unet_step"], self._val()))
                self.log(f"unet step {st['unet_step']}: held-out noise MSE {st['val_curve'][-1][1]:.4f}")
            if st["unet_step"] < cfg.unet_steps:
                self._maybe_save()
        self.unet.eval()
        self.text_encoder.eval()

    def _final(self) -> TrainReport:
        cfg, st = self.cfg, self.st
        val = denoiser_val_loss(self.unet, self.text_encoder, self.held_ids, self.held_z, self.scheduler)
        self.log(f"held-out noise MSE {val:.4f} ({'init model' if cfg.init_from else 'random init'} {st['val_random']:.4f})")
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        self.out.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(self.out)
        vae_losses, unet_losses = st["vae_losses"], st["unet_losses"]
        runs = [*st["runs"], self.run]
        command = runs[0]["command"]  # one uninterrupted run of it makes the same weights
        if command and "--unet-steps" not in command:
            command += f" --vae-steps {cfg.vae_steps} --unet-steps {cfg.unet_steps}"
        command = re.sub(r"--unet-steps[= ]\d+", f"--unet-steps {cfg.unet_steps}", command)  # after a restart
        report = TrainReport(
            command=command,
            seed=cfg.seed, size=cfg.size, n_images=cfg.n_images, vae_steps=cfg.vae_steps,
            unet_steps=cfg.unet_steps, qk_scale=cfg.qk_scale, vae_crop=cfg.vae_crop,
            vae_loss_first=float(np.mean(vae_losses[:20])) if vae_losses else None,
            vae_loss_final=float(np.mean(vae_losses[-100:])) if vae_losses else None,
            vae_val_l1=st["val_l1"], scaling_factor=st["scaling"],
            unet_loss_first=float(np.mean(unet_losses[:20])), unet_loss_final=float(np.mean(unet_losses[-200:])),
            unet_val_loss=val, unet_val_loss_random=st["val_random"],
            config=asdict(cfg), vae_curve=_curve(vae_losses), unet_curve=_curve(unet_losses),
            unet_val_curve=[(int(s), float(v)) for s, v in st["val_curve"]] + ([(cfg.unet_steps, val)] if st["val_curve"] else []),
            parameters={"vae": _count(self.vae), "text_encoder": _count(self.text_encoder), "unet": _count(self.unet)},
        )
        if self.evaluate:
            report.attention = evaluate_attention(self.out, seed=cfg.seed, qk_scale=cfg.qk_scale,
                                                 start_from=cfg.init_from)
            sample_grid(StableDiffusionPipeline.from_pretrained(self.out), sample_captions(cfg),
                        self.out / "samples.png", cfg.seed)
        self._tick()
        report.runs = runs
        report.render_s, report.vae_s = st["cpu"]["render"], st["cpu"]["vae"]
        report.encode_s, report.unet_s, report.final_s = st["cpu"]["encode"], st["cpu"]["unet"], st["cpu"]["final"]
        report.cpu_s = sum(st["cpu"].values())
        report.wall_s = st["wall_s"]
        write_json(self.out / "training.json", asdict(report))
        (self.out / "README.md").write_text(render_readme(report))
        return report

    # -- driver --------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.log(f"signal {signum}: stopping after this step (checkpoint to {self.ckpt})")

    def train(self) -> TrainReport:
        """Run the remaining phases; raises _Stopped after checkpointing when a stop is requested."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not self.state_path.exists():
                self.save("started")
            return self._train()
        except _Stopped:
            if not self._stop_saved:  # stopped between batches of rendering or encoding
                self.save(f"stopped by signal {self.stop_signal}")
            raise _Stopped(self.stop_signal) from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _train(self) -> TrainReport:
        start = PHASES.index(self.st["phase"])  # phases before it are done: only their results are rebuilt
        self._enter("render")
        self._render()
        if start <= PHASES.index("render"):
            self._advance("vae", "images rendered")
        self._enter("vae")
        self._setup_vae()
        if start <= PHASES.index("vae"):
            self._train_vae()
            self._advance("encode", "VAE trained")
        self._enter("encode")
        self._encode()
        if start <= PHASES.index("encode"):
            self._advance("unet", "latents encoded")
        self._enter("unet")
        self._setup_unet()
        if start <= PHASES.index("unet"):
            self._train_unet()
            self._advance("final", "UNet trained")
        self._enter("final")
        report = self._final()
        self.st["phase"] = "done"
        return report


def train_model(out_dir: str | Path, minutes: float = 45.0, seed: int = 0, size: int = 256,
                n_images: int = 2400, vae_steps: int | None = None, unet_steps: int | None = None,
                qk_scale: float = 10.0, vae_crop: int = 64, command: str = "", log: Callable[[str], None] = print,
                ckpt_dir: str | Path | None = None, resume: bool = False, checkpoint_minutes: float = 5.0,
                keep_checkpoint: bool = False, evaluate: bool = True, restart_unet: bool = False,
                **options: Any) -> TrainReport:
    """Train VAE then text encoder + UNet on the world; save a diffusers SD folder in out_dir.

    `minutes` is the training budget in CPU minutes (VAE ~25%, UNet the rest) used to pick step
    counts when vae_steps / unet_steps are not given; pass them to reproduce a run exactly.
    Other TrainConfig fields (unet_channels, heads, v2_fraction, ...) come as keyword options.
    Checkpoints go to `ckpt_dir` (default OUT.ckpt next to OUT); `resume` continues from there.
    After success the checkpoint folder is removed unless `keep_checkpoint`; `evaluate=False`
    skips the attention figures and the sample grid (tests); `restart_unet` (with `resume`) starts
    the UNet phase over with `unet_steps`, keeping images, VAE and latents. Raises _Stopped
    (after checkpointing) when stopped by SIGINT / SIGTERM.
    """
    out = Path(out_dir)
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else out.with_name(out.name + ".ckpt")
    cfg = TrainConfig(seed=seed, size=size, n_images=n_images, vae_steps=vae_steps, unet_steps=unet_steps,
                      minutes=minutes, qk_scale=qk_scale, vae_crop=vae_crop, **options)
    if cfg.init_from and cfg.vae_steps is None:
        cfg.vae_steps = 0  # the VAE is the init model's
    trainer = Trainer(out, cfg, ckpt, command, checkpoint_minutes, log)
    trainer.evaluate = evaluate
    if resume:
        if not trainer.state_path.exists():
            raise FileNotFoundError(f"{trainer.state_path}: no checkpoint to resume")
        trainer.load()
        log(f"resuming from {trainer.state_path}: phase {trainer.st['phase']}"
            + (f", VAE step {trainer.st['vae_step']}" if "vae_step" in trainer.st else "")
            + (f", UNet step {trainer.st['unet_step']}" if "unet_step" in trainer.st else ""))
        if restart_unet:
            if unet_steps is None:
                raise ValueError("restarting the UNet phase needs its new step count (--unet-steps)")
            trainer.restart_unet(unet_steps)
    elif trainer.state_path.exists():
        raise FileExistsError(f"{trainer.state_path} exists: pass --resume to continue it, or remove it")
    elif cfg.init_from:
        check_init_from(cfg)
    report = trainer.train()
    if not keep_checkpoint:
        shutil.rmtree(ckpt, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- CLI


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


# options that determine the weights: on --resume, the checkpoint's values are used and any of
# these typed on the command line must agree with them
CONFIG_OPTIONS = {
    "seed": "seed", "size": "size", "images": "n_images", "vae_steps": "vae_steps", "unet_steps": "unet_steps",
    "minutes": "minutes", "qk_scale": "qk_scale", "vae_crop": "vae_crop", "unet_channels": "unet_channels",
    "heads": "heads", "layers_per_block": "layers_per_block", "text_dim": "text_dim",
    "vae_channels": "vae_channels", "v2_fraction": "v2_fraction", "batch": "batch", "vae_lr": "vae_lr",
    "unet_lr": "unet_lr", "val_every": "val_every", "init_from": "init_from",
}


def add_train_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m lab.train_model`."""
    d = TrainConfig()
    p.add_argument("out", help="output folder (diffusers layout)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="training budget when steps are not given")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--size", type=int, default=d.size, help="image size (multiple of 64)")
    p.add_argument("--images", type=int, default=d.n_images, help="training images rendered")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--qk-scale", type=float, default=d.qk_scale,
                   help="self-attention q/k start tied at this scale (0: diffusers' default init)")
    p.add_argument("--vae-crop", type=int, default=d.vae_crop, help="VAE training crop size (px)")
    p.add_argument("--unet-channels", type=_ints, default=d.unet_channels,
                   help="UNet block widths, 4 comma-separated (default 32,64,64,64)")
    p.add_argument("--heads", type=_ints, default=d.heads, help="attention heads per block (default 2,4,4,4)")
    p.add_argument("--layers-per-block", type=int, default=d.layers_per_block)
    p.add_argument("--text-dim", type=int, default=d.text_dim, help="text encoder width = cross-attention dim")
    p.add_argument("--vae-channels", type=_ints, default=d.vae_channels, help="VAE block widths (default 16,32,64,64)")
    p.add_argument("--v2-fraction", type=float, default=d.v2_fraction,
                   help="share of training images that are v2 scenes (SceneWorld: several objects, sizes"
                        " down to 1/6, cut-offs, close-ups); the rest v1 world images (default 0)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="continue a trained lab SD: its VAE (kept), tokenizer, text encoder and UNet start this"
                        " run, which renders its images and runs --unet-steps more UNet steps")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--vae-lr", type=float, default=d.vae_lr)
    p.add_argument("--unet-lr", type=float, default=d.unet_lr)
    p.add_argument("--val-every", type=int, default=d.val_every,
                   help="held-out noise MSE every N UNet steps (0: only at the end)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--checkpoint-dir", default=None, help="where checkpoints and the image cache go (default OUT.ckpt)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint every N CPU minutes")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the checkpoint folder (its options apply; typed ones must agree)")
    p.add_argument("--restart-unet", action="store_true",
                   help="with --resume and --unet-steps N: start the UNet phase over with N steps (a new"
                        " schedule), keeping the rendered images, the VAE and the latents")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint folder after success")
    p.add_argument("--no-eval", action="store_true", help="skip the attention figures and sample grid (quick trials)")


def _typed_options(argv: Sequence[str], parser: argparse.ArgumentParser) -> set[str]:
    """Destinations of the options the command line names explicitly."""
    typed = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in argv):
                typed.add(action.dest)
    return typed


def _option_value(key: str, value: Any) -> Any:
    """An option as compared on --resume (a folder by where it is, however it was spelled)."""
    return str(Path(value).resolve()) if key == "init_from" and value else value


def run(a: argparse.Namespace, command: str, typed: set[str] | None = None) -> int:
    """Train and save the lab SD as the parsed options say; `command` is recorded to re-make it."""
    torch.set_num_threads(a.threads)
    options = {k: getattr(a, k) for k in ("unet_channels", "heads", "layers_per_block", "text_dim", "vae_channels",
                                          "v2_fraction", "batch", "vae_lr", "unet_lr", "val_every",
                                          "init_from")}
    ckpt = Path(a.checkpoint_dir) if a.checkpoint_dir else Path(a.out).with_name(Path(a.out).name + ".ckpt")
    if a.resume and (ckpt / "state.pt").exists():
        saved = TrainConfig.from_dict(torch.load(ckpt / "state.pt", weights_only=False)["config"])
        free = {"unet_steps"} if a.restart_unet else set()
        clash = [f"--{k.replace('_', '-')} {getattr(a, k)} (checkpoint: {getattr(saved, v)})"
                 for k, v in CONFIG_OPTIONS.items()
                 if k in (typed or set()) - free and _option_value(k, getattr(a, k)) != _option_value(k, getattr(saved, v))]
        if clash:
            print(f"error: {ckpt}: the checkpoint was made with other options: {'; '.join(clash)}", file=sys.stderr)
            return 2
    if a.restart_unet and not (a.resume and a.unet_steps):
        print("error: --restart-unet needs --resume and the new --unet-steps", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        report = train_model(a.out, minutes=a.minutes, seed=a.seed, size=a.size, n_images=a.images,
                             vae_steps=a.vae_steps, unet_steps=a.unet_steps, qk_scale=a.qk_scale,
                             vae_crop=a.vae_crop, command=command, log=lambda s: print(s, flush=True),
                             ckpt_dir=ckpt, resume=a.resume, checkpoint_minutes=a.checkpoint_minutes,
                             keep_checkpoint=a.keep_checkpoint, evaluate=not a.no_eval,
                             restart_unet=a.restart_unet, **options)
    except _Stopped as stop:
        resume = command if "--resume" in command.split() else command + " --resume"
        print(f"stopped; checkpoint in {ckpt}. Continue with:\n  {resume}", flush=True)
        return 128 + (stop.args[0] if stop.args else signal.SIGINT)
    except (FileExistsError, FileNotFoundError, InitFromError) as exc:  # bad --resume / --init-from
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {a.out} (UNet {report.unet_steps} steps,"
          f" {report.cpu_s / 60:.1f} CPU min over {len(report.runs)} run(s))")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m lab.train_model OUT [--minutes M] [--seed S] ... (from a checkout's root)."""
    argv = list(argv or [])
    p = argparse.ArgumentParser(prog="python -m lab.train_model", description=__doc__.splitlines()[0])
    add_train_model_arguments(p)
    command = "python -m lab.train_model " + " ".join(shlex.quote(x) for x in argv)
    return run(p.parse_args(argv), command, _typed_options(argv, p))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
