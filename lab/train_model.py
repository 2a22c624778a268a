"""Pretrain a small Stable Diffusion (SD's block structure at toy width) on the synthetic world.

Why: random SD weights attend almost uniformly, so SLiMe cannot be evaluated offline; a tiny SD
trained briefly on part-structured images gives attention that groups parts. The result is saved
in diffusers layout (StableDiffusionPipeline.save_pretrained), like any SD checkpoint.

Steps: render a fixed dataset (cars and faces), train the VAE on reconstruction, set its scaling
factor so latents have unit variance, then train text encoder + UNet on noise prediction with
captions (10% empty, for classifier-free guidance).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

from slimeseg.lab.world import KIND_CLASSES, World, caption_vocabulary
from slimeseg.tiny import tie_self_attention
from slimeseg.tokenizer import build_tokenizer

from .probe import AttentionStats, self_attention_stats

KINDS = ("car", "face")
TEXT_DIM = 64  # text encoder width = UNet cross_attention_dim


# --------------------------------------------------------------------------- models


def build_vae(size: int) -> AutoencoderKL:
    """A 4-block AutoencoderKL (downscale 8, 4 latent channels), as in SD but ~1 M parameters.

    The posterior starts with a small variance (logvar -8): with unit variance the sampled latent
    is mostly noise early on and a short training loses colour (seen: grey reconstructions).
    """
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
    )
    with torch.no_grad():
        c = vae.config.latent_channels
        vae.quant_conv.weight[c:] = 0.0
        vae.quant_conv.bias[c:] = -8.0
    return vae


def build_unet(size: int, qk_scale: float = 0.0) -> UNet2DConditionModel:
    """SD's UNet layout (3 cross-attn down blocks + 1 plain, mirrored) at ~2 M parameters.

    `attention_head_dim` is the number of heads in diffusers' SD UNet (a historic misnomer).
    qk_scale > 0 starts every self-attention layer with tied, scaled query/key projections:
    with default init the logits are tiny and stay so in a short CPU training (measured: entropy
    0.993 of uniform after 4183 steps), whereas SD's trained self-attention is peaked.
    """
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64, 64), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TEXT_DIM, attention_head_dim=(2, 4, 4, 4), use_linear_projection=True,
    )
    if qk_scale > 0:
        tie_self_attention(unet, qk_scale)
    return unet


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer CLIP text transformer over the tokenizer's vocabulary."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=TEXT_DIM,
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
    """Rendered world images (N, 3, H, W) uint8 with captions, masks and the kind of each."""

    images: torch.Tensor
    masks: list[np.ndarray]
    captions: list[str]
    kinds: list[str]

    def as_float(self, idx: torch.Tensor) -> torch.Tensor:
        """Images idx as float RGB in [-1, 1], the range SD's VAE sees."""
        return self.images[idx].float() / 127.5 - 1.0


def render_dataset(n: int, size: int, seed: int) -> Dataset:
    """n samples alternating car/face; world seed `seed` (use another seed for held-out data)."""
    worlds = {k: World(k, size, seed) for k in KINDS}
    images, masks, captions, kinds = [], [], [], []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        s = worlds[kind].sample(i // len(KINDS))
        images.append(torch.from_numpy(s.image).permute(2, 0, 1))
        masks.append(s.mask)
        captions.append(s.caption)
        kinds.append(kind)
    return Dataset(torch.stack(images), masks, captions, kinds)


def tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded to the 77 CLIP positions."""
    return tokenizer(list(captions), padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


# --------------------------------------------------------------------------- training loops


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


def train_vae(vae: AutoencoderKL, data: Dataset, steps: int, gen: torch.Generator, batch: int = 8,
              crop: int = 128, lr: float = 1e-3, log: Callable[[str], None] = print) -> list[float]:
    """Reconstruction training on random crops (the VAE is convolutional); returns losses."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    n, size = data.images.shape[0], data.images.shape[-1]
    losses: list[float] = []
    vae.train()
    for step in range(steps):
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
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {np.mean(losses[-100:]):.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, data: Dataset, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image's latent (unscaled)."""
    means, stds = [], []
    for i in range(0, data.images.shape[0], batch):
        post = vae.encode(data.as_float(torch.arange(i, min(i + batch, data.images.shape[0])))).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, ids: torch.Tensor,
                   empty_ids: torch.Tensor, latents: tuple[torch.Tensor, torch.Tensor],
                   scheduler: DDPMScheduler, steps: int, gen: torch.Generator, batch: int = 8,
                   lr: float = 5e-4, p_empty: float = 0.1,
                   log: Callable[[str], None] = print) -> list[float]:
    """Joint UNet + text encoder training on epsilon prediction; latents already scaled."""
    mean, std = latents
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    losses: list[float] = []
    unet.train()
    text_encoder.train()
    for step in range(steps):
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
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
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


# --------------------------------------------------------------------------- report


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
    vae_loss_first: float = 0.0
    vae_loss_final: float = 0.0
    vae_val_l1: float = 0.0
    scaling_factor: float = 1.0
    unet_loss_first: float = 0.0
    unet_loss_final: float = 0.0
    unet_val_loss: float = 0.0
    unet_val_loss_random: float = 0.0
    attention: dict[str, dict] = field(default_factory=dict)
    vae_curve: list[tuple[int, float]] = field(default_factory=list)
    unet_curve: list[tuple[int, float]] = field(default_factory=list)


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


# --------------------------------------------------------------------------- driver


def train_model(out_dir: str | Path, minutes: float = 45.0, seed: int = 0, size: int = 256,
                n_images: int = 2400, vae_steps: int | None = None, unet_steps: int | None = None,
                qk_scale: float = 10.0, vae_crop: int = 64, command: str = "", log: Callable[[str], None] = print) -> TrainReport:
    """Train VAE then text encoder + UNet on the world; save a diffusers SD folder in out_dir.

    `minutes` is the training budget in CPU minutes (VAE ~15%, UNet the rest) used to pick step
    counts when vae_steps / unet_steps are not given; pass them to reproduce a run exactly.
    """
    wall0 = time.perf_counter()
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    t0 = time.process_time()
    data = render_dataset(n_images, size, seed)
    held = render_dataset(64, size, seed + 1000)
    render_s = time.process_time() - t0
    log(f"rendered {n_images} + 64 images in {render_s:.0f}s")

    # VAE
    vae = build_vae(size)
    if vae_steps is None:
        state = {k: v.clone() for k, v in vae.state_dict().items()}
        vae_steps = _steps_for(minutes * 60 * 0.25, lambda i: train_vae(
            vae, data, 1, gen, crop=vae_crop, log=lambda s: None)[0])
        vae.load_state_dict(state)
        gen.manual_seed(seed)
    t0 = time.process_time()
    vae_losses = train_vae(vae, data, vae_steps, gen, crop=vae_crop, log=log)
    vae_s = time.process_time() - t0

    t0 = time.process_time()
    mean, std = encode_dataset(vae, data)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        hx = held.as_float(torch.arange(16))
        val_l1 = float((vae.decode(vae.encode(hx).latent_dist.mean).sample - hx).abs().mean())
        held_z = encode_dataset(vae, held)[0] * scaling
    encode_s = time.process_time() - t0
    log(f"vae scaling factor {scaling:.4f}, held-out L1 {val_l1:.4f}")

    # text encoder + UNet
    torch.manual_seed(seed + 1)
    tokenizer = build_tokenizer(caption_vocabulary())
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet(size, qk_scale)
    scheduler = build_scheduler()
    ids, held_ids = tokenize(tokenizer, data.captions), tokenize(tokenizer, held.captions)
    empty = tokenize(tokenizer, [""])[0]
    lat = (mean * scaling, std * scaling)
    val_random = denoiser_val_loss(unet, text_encoder, held_ids, held_z, scheduler)
    if unet_steps is None:
        state_u = {k: v.clone() for k, v in unet.state_dict().items()}
        state_t = {k: v.clone() for k, v in text_encoder.state_dict().items()}
        unet_steps = _steps_for(minutes * 60 - vae_s, lambda i: train_denoiser(
            unet, text_encoder, ids, empty, lat, scheduler, 1, gen, log=lambda s: None)[0])
        unet.load_state_dict(state_u)
        text_encoder.load_state_dict(state_t)
    if command and "--unet-steps" not in command:
        command += f" --vae-steps {vae_steps} --unet-steps {unet_steps}"
    gen.manual_seed(seed + 1)
    t0 = time.process_time()
    unet_losses = train_denoiser(unet, text_encoder, ids, empty, lat, scheduler, unet_steps, gen, log=log)
    unet_s = time.process_time() - t0
    val = denoiser_val_loss(unet, text_encoder, held_ids, held_z, scheduler)
    log(f"held-out noise MSE {val:.4f} (random init {val_random:.4f})")

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)

    report = TrainReport(
        command=command, seed=seed, size=size, n_images=n_images, vae_steps=vae_steps,
        unet_steps=unet_steps, qk_scale=qk_scale, vae_crop=vae_crop, render_s=render_s, vae_s=vae_s, encode_s=encode_s, unet_s=unet_s,
        vae_loss_first=float(np.mean(vae_losses[:20])), vae_loss_final=float(np.mean(vae_losses[-100:])),
        vae_val_l1=val_l1, scaling_factor=scaling,
        unet_loss_first=float(np.mean(unet_losses[:20])), unet_loss_final=float(np.mean(unet_losses[-200:])),
        unet_val_loss=val, unet_val_loss_random=val_random,
        vae_curve=_curve(vae_losses), unet_curve=_curve(unet_losses),
    )
    report.attention = evaluate_attention(out, seed=seed, qk_scale=qk_scale)
    sample_grid(StableDiffusionPipeline.from_pretrained(out), SAMPLE_CAPTIONS, out / "samples.png", seed)
    report.wall_s = time.perf_counter() - wall0
    (out / "training.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
    (out / "README.md").write_text(render_readme(report))
    return report


SAMPLE_CAPTIONS = [
    "a red car on grass", "a blue car on road", "a yellow car on snow", "a white car on bricks",
    "a face with black hair in front of bricks", "a face with yellow hair in front of clouds",
    "a face with red hair in front of checkers", "a face with green hair in front of wall",
]


def evaluate_attention(model_dir: str | Path, seed: int = 0, n_per_kind: int = 8,
                       qk_scale: float = 10.0) -> dict[str, dict]:
    """Self-attention stats of the saved model and of untrained UNets, per kind, on held-out images.

    'init' is the trained model's initialisation (tied q/k at qk_scale), 'random' diffusers' default
    init: what training added is trained vs init.
    """
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    size = pipe.unet.config.sample_size * 8
    results: dict[str, dict] = {}
    torch.manual_seed(seed + 1)
    untrained = [("init", build_unet(size, qk_scale).eval())] if qk_scale > 0 else []
    for label, unet in [("trained", pipe.unet), *untrained, ("random", build_unet(size).eval())]:
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
    lines = [
        "# lab-sd: a tiny Stable Diffusion pretrained on the synthetic world",
        "",
        "Diffusers layout (`StableDiffusionPipeline.from_pretrained(this_dir)`); SD's block structure",
        "at toy width: UNet (32, 64, 64, 64), 3 CrossAttnDownBlock2D + DownBlock2D, mirrored up blocks,",
        f"cross-attention dim {TEXT_DIM}; 4-block AutoencoderKL (downscale 8); 2-layer CLIP text encoder;",
        "byte-level tokenizer over the caption words; DDPM scheduler (scaled-linear 0.00085..0.012).",
        f"Trained on {r.n_images} world images ({', '.join(KINDS)}, alternating) at {r.size}x{r.size}"
        f" (latents {r.size // 8}x{r.size // 8}).",
        f"Self-attention q/k projections start tied and scaled by {r.qk_scale:g}"
        " (`build_unet(qk_scale=...)`; 0 = diffusers' default init).",
        "",
        "## Re-make",
        "",
        "```",
        r.command,
        "```",
        "",
        f"Seed {r.seed}; one CPU thread; CPU times: rendering {r.render_s:.0f} s, VAE {r.vae_s / 60:.1f} min"
        f" ({r.vae_steps} steps, batch 8, {r.vae_crop} px crops), encoding {r.encode_s:.0f} s,"
        f" text encoder + UNet {r.unet_s / 60:.1f} min ({r.unet_steps} steps, batch 8)."
        f" Wall time of the whole run (shared machine): {r.wall_s / 60:.0f} min.",
        "",
        "## Losses",
        "",
        f"- VAE (L1 + image-gradient L1 + 1e-8 KL): first 20 steps {r.vae_loss_first:.4f},"
        f" last 100 steps {r.vae_loss_final:.4f}; held-out reconstruction L1 (range [-1, 1]) {r.vae_val_l1:.4f}.",
        f"- VAE scaling factor {r.scaling_factor:.4f} (1 / std of the training latents' means).",
        f"- UNet noise MSE: first 20 steps {r.unet_loss_first:.4f}, last 200 steps {r.unet_loss_final:.4f};"
        f" held-out (64 images, t spread over [0, 1000)) {r.unet_val_loss:.4f}"
        f" (same UNet at random init: {r.unet_val_loss_random:.4f}).",
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
    lines += [
        "",
        "## Samples",
        "",
        "`samples.png`: DDIM, 30 steps, guidance 3, one image per caption (row 1 cars, row 2 faces):",
        "",
    ] + [f"- {c}" for c in SAMPLE_CAPTIONS] + [""]
    return "\n".join(lines)


def add_train_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m lab.train_model`."""
    p.add_argument("out", help="output folder (diffusers layout)")
    p.add_argument("--minutes", type=float, default=45.0, help="training budget when steps are not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image size (multiple of 64)")
    p.add_argument("--images", type=int, default=2400, help="training images rendered")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--qk-scale", type=float, default=10.0,
                   help="self-attention q/k start tied at this scale (0: diffusers' default init)")
    p.add_argument("--vae-crop", type=int, default=64, help="VAE training crop size (px)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run(a: argparse.Namespace, command: str) -> int:
    """Train and save the lab SD as the parsed options say; `command` is recorded to re-make it."""
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    report = train_model(a.out, minutes=a.minutes, seed=a.seed, size=a.size, n_images=a.images,
                         vae_steps=a.vae_steps, unet_steps=a.unet_steps, qk_scale=a.qk_scale,
                         vae_crop=a.vae_crop, command=command, log=lambda s: print(s, flush=True))
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {a.out} (UNet {report.unet_steps} steps)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m lab.train_model OUT [--minutes M] [--seed S] ... (from a checkout's root)."""
    p = argparse.ArgumentParser(prog="python -m lab.train_model", description=__doc__.splitlines()[0])
    add_train_model_arguments(p)
    command = "python -m lab.train_model " + " ".join(shlex.quote(x) for x in (argv or []))
    return run(p.parse_args(argv), command)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
