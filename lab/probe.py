"""Measure how structured a UNet's self-attention is: entropy vs uniform, and part grouping.

Why: a random UNet attends almost uniformly, which makes SLiMe's WAS maps meaningless; a
usefully pretrained one attends to few positions, preferably within the query's own part.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from slimeseg.attention import explicit_attention, finish, project


class ProbeProcessor:
    """Attention computed explicitly so its probabilities can be kept (SDPA never forms them):
    the engine's own input projection, explicit attention and output projection."""

    def __init__(self, store: dict[str, torch.Tensor], name: str) -> None:
        self.store, self.name = store, name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kw: object,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise NotImplementedError("the probe supports SD 1.x/2.x transformer blocks only")
        q, k, v = project(attn, hidden_states, encoder_hidden_states)  # (B, H, N, d), (B, H, M, d)
        out, probs = explicit_attention(q, k, v, attn.scale)  # probs (B, H, N, M)
        self.store[self.name] = probs.detach()
        return finish(attn, out, hidden_states)


def top_self_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """Processor names of the self-attention (attn1) layers in the highest-resolution up block."""
    names = [n for n in unet.attn_processors if n.startswith("up_blocks.") and ".attn1." in n]
    if not names:
        raise ValueError("the UNet has no self-attention in its up blocks")
    last = max(int(n.split(".")[1]) for n in names)  # up blocks run from low to high resolution
    return [n for n in names if int(n.split(".")[1]) == last]


@contextmanager
def capture_self_attention(unet: UNet2DConditionModel, layers: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Probes on `layers` (fused attention elsewhere) while inside; yields the dict they fill and
    restores the UNet's processors on exit."""
    original = dict(unet.attn_processors)
    store: dict[str, torch.Tensor] = {}
    processors = {n: (ProbeProcessor(store, n) if n in layers else AttnProcessor2_0())
                  for n in list(unet.attn_processors)}
    unet.set_attn_processor(processors)  # note: pops from the dict it is given
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


@dataclass(frozen=True)
class AttentionStats:
    """Self-attention figures averaged over images, layers, heads and query positions."""

    entropy_ratio: float  # mean row entropy / log(keys): 1 = uniform
    own_part_mass: float  # attention a query puts on keys of its own class (class-balanced mean)
    own_part_uniform: float  # the same under uniform attention (own-class area fraction)
    far_own_part_mass: float  # among keys > `far` latent px away: share on the own class
    far_own_part_uniform: float  # the same under uniform attention
    per_class_ratio: dict[str, float]  # own-part mass / uniform expectation, per class
    keys: int
    layers: int

    @property
    def own_part_ratio(self) -> float:
        return self.own_part_mass / self.own_part_uniform

    @property
    def far_own_part_ratio(self) -> float:
        return self.far_own_part_mass / self.far_own_part_uniform


def _mask_to_grid(mask: np.ndarray, side: int, n_classes: int) -> torch.Tensor:
    """Majority class of each cell of a side x side grid over the mask (flattened)."""
    onehot = F.one_hot(torch.from_numpy(mask.astype(np.int64)), n_classes).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(onehot[None], side)[0].argmax(0).flatten()


@torch.no_grad()
def self_attention_stats(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: DDPMScheduler,
    text_embeddings: torch.Tensor,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    class_names: list[tuple[str, ...]],
    timestep: int = 100,
    far: float = 4.0,
    seed: int = 0,
) -> AttentionStats:
    """Entropy and part grouping of the top up block's self-attention on noised world images.

    text_embeddings: (len(images), 77, D) encoder outputs (captions), one per image.
    """
    layers = top_self_attention_layers(unet)
    gen = torch.Generator().manual_seed(seed)
    ent, own, own_u, far_own, far_u = [], [], [], [], []
    per_class: dict[str, list[float]] = {}
    keys = 0
    for i, (image, mask, names) in enumerate(zip(images, masks, class_names, strict=True)):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        z0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.tensor([timestep])
        with capture_self_attention(unet, layers) as store:
            unet(scheduler.add_noise(z0, noise, t), t, text_embeddings[i : i + 1])
        probs = torch.stack([store[n][0] for n in layers])  # (layers, heads, N, N)
        keys = probs.shape[-1]
        side = int(round(math.sqrt(keys)))
        ent.append(float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean() / math.log(keys)))
        a = probs.mean(dim=(0, 1))  # (N, N), rows sum to 1
        labels = _mask_to_grid(mask, side, len(names))
        same = labels[:, None] == labels[None, :]
        yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
        is_far = torch.cdist(pos, pos) > far
        mass = (a * same).sum(1)
        frac = same.float().mean(1)
        far_mass = (a * same * is_far).sum(1) / (a * is_far).sum(1).clamp_min(1e-12)
        far_frac = (same & is_far).sum(1).float() / is_far.sum(1).clamp_min(1)
        # class-balanced: average over queries within each class, then over classes present
        cls_own, cls_u, cls_fo, cls_fu = [], [], [], []
        for k in labels.unique().tolist():
            q = labels == k
            cls_own.append(float(mass[q].mean()))
            cls_u.append(float(frac[q].mean()))
            cls_fo.append(float(far_mass[q].mean()))
            cls_fu.append(float(far_frac[q].mean()))
            per_class.setdefault(names[k], []).append(cls_own[-1] / cls_u[-1])
        own.append(np.mean(cls_own))
        own_u.append(np.mean(cls_u))
        far_own.append(np.mean(cls_fo))
        far_u.append(np.mean(cls_fu))
    return AttentionStats(
        entropy_ratio=float(np.mean(ent)),
        own_part_mass=float(np.mean(own)),
        own_part_uniform=float(np.mean(own_u)),
        far_own_part_mass=float(np.mean(far_own)),
        far_own_part_uniform=float(np.mean(far_u)),
        per_class_ratio={k: float(np.mean(v)) for k, v in per_class.items()},
        keys=keys,
        layers=len(layers),
    )
