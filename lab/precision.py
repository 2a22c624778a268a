"""How faithful a half-precision training step is: its embedding gradient against float32's.

Why: in float16 small gradient values flush to zero on the way back to the embeddings, so fit
scales the loss (`SlimeConfig.loss_scale`); bfloat16 keeps float32's range. This module computes
one `fit` step's gradient for the same example, seed and weights in several dtypes, on any
`StableDiffusion` (the SD 2.1-shaped random model of `lab.fullsize` in the tests and
`benchmarks/precision.py`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch

from slimeseg.attention import capture
from slimeseg.config import SlimeConfig
from slimeseg.examples import prepare_examples
from slimeseg.models import StableDiffusion
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.training import TrainingJob, TrainState, train_step


def cast(sd: StableDiffusion, dtype: torch.dtype) -> StableDiffusion:
    """A copy of `sd` with UNet and VAE encoder in `dtype` (same weights, rounded)."""
    unet, enc = copy.deepcopy(sd.unet).to(dtype), copy.deepcopy(sd.vae_encoder).to(dtype)
    qc = None if sd.quant_conv is None else copy.deepcopy(sd.quant_conv).to(dtype)
    return replace(sd, unet=unet, vae_encoder=enc, quant_conv=qc, dtype=dtype,
                   _prompt_cache=dict(sd._prompt_cache))


def step_gradient(sd: StableDiffusion, cfg: SlimeConfig, size: int = 256) -> tuple[torch.Tensor, float]:
    """The (K-1, D) float32 gradient of one training step on the shapes scene, and its seconds."""
    image, mask = shapes_scene(0, size)
    examples = prepare_examples([image], [mask], SHAPE_CLASSES)
    job = TrainingJob.create(sd, examples, SHAPE_CLASSES, cfg)
    state = TrainState(job)
    start = time.perf_counter()
    with capture(sd.unet, sd.plan.roles(), job.store):
        train_step(job, state)  # leaves the (unscaled) gradient in trainable.grad
    return state.trainable.grad.detach().float().clone(), time.perf_counter() - start


@dataclass
class GradientMatch:
    """How a gradient compares with the float32 one."""

    dtype: str
    loss_scale: str
    cosine: float
    zeros: int  # exactly-zero entries
    zeros_fp32: int
    rel_error: float  # |g - g32| / |g32|
    seconds: float


def compare(sd32: StableDiffusion, variants: list[tuple[torch.dtype, str]], size: int = 256,
            seed: int = 0) -> list[GradientMatch]:
    """Gradient of one step in float32 and in each (dtype, loss_scale) variant, compared."""
    cfg = SlimeConfig(image_size=size, seed=seed, augment=False)
    ref, secs = step_gradient(sd32, cfg.replace(loss_scale="off"), size)
    zeros32 = int((ref == 0).sum())
    rows = [GradientMatch("float32", "off", 1.0, zeros32, zeros32, 0.0, secs)]
    for dtype, mode in variants:
        low = cast(sd32, dtype)
        grad, secs = step_gradient(low, cfg.replace(loss_scale=mode), size)
        cos = float(torch.nn.functional.cosine_similarity(grad.flatten(), ref.flatten(), dim=0))
        rel = float((grad - ref).norm() / ref.norm())
        rows.append(GradientMatch(str(dtype).replace("torch.", ""), mode, cos, int((grad == 0).sum()),
                                  zeros32, rel, secs))
        del low
    return rows
