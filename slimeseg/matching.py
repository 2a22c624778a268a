"""Training-free matching: label a new image's cells by their nearest cells in the examples.

The UNet pass that gives SLiMe's attention maps also computes the decoder's features: the
output of every up block, resized to the latent grid and concatenated (`FeatureCapture`, a
forward hook beside the attention processors, so no second pass). An example's cells, with
their class fractions, form a bank (`MatchBank`); a new image's cells vote by their `k` most
cosine-similar bank cells, each weighted by softmax(similarity / temperature) (`vote`), or are
scored against per-class mean features (`prototype_scores`). Features are standardised by the
bank's own per-channel statistics first, so no channel dominates the cosine.

Shapes: C feature channels, (h, w) the latent grid, N bank cells, K classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIMILARITY_CHUNK = 1 << 22  # target cells x bank cells compared at once (16 MB of float32)


class FeatureCapture:
    """Forward hooks that keep the outputs of the UNet's up blocks during one forward."""

    def __init__(self, blocks: Sequence[int] | None = None) -> None:
        self.blocks = None if blocks is None else list(blocks)  # None: every up block
        self.outputs: list[torch.Tensor] = []

    @contextlib.contextmanager
    def hooked(self, unet: nn.Module) -> Iterator[FeatureCapture]:
        """Install the hooks for the `with` block, then remove them."""
        self.outputs = []
        chosen = range(len(unet.up_blocks)) if self.blocks is None else self.blocks
        if any(not 0 <= i < len(unet.up_blocks) for i in chosen):
            from .errors import InputError

            raise InputError(f"match_blocks {self.blocks}: this UNet has up blocks 0-{len(unet.up_blocks) - 1}")
        hooks = [unet.up_blocks[i].register_forward_hook(self._keep) for i in chosen]
        try:
            yield self
        finally:
            for h in hooks:
                h.remove()

    def _keep(self, module: nn.Module, args: object, output: torch.Tensor) -> None:
        self.outputs.append(output.detach())

    def features(self, hw: tuple[int, int]) -> torch.Tensor:
        """The kept outputs resized to `hw` and concatenated: (B, C, h, w) float32."""
        if not self.outputs:
            raise RuntimeError("no up-block output was captured")
        return torch.cat([F.interpolate(o.float(), size=hw, mode="bilinear", align_corners=False)
                          for o in self.outputs], 1)


def soft_targets(mask: torch.Tensor, num_classes: int, hw: tuple[int, int]) -> torch.Tensor:
    """Each latent cell's fraction of pixels in each class, for an (H, W) mask: (K, h, w)."""
    onehot = F.one_hot(mask.long(), num_classes).permute(2, 0, 1).float()  # (K, H, W)
    return F.adaptive_avg_pool2d(onehot[None], hw)[0]


@dataclass
class MatchBank:
    """The examples' cells: standardised, unit-length features and their class fractions."""

    features: torch.Tensor  # (N, C) float16: standardised, then L2-normalised
    targets: torch.Tensor  # (N, K) float16: class fractions per cell
    mean: torch.Tensor  # (C,) float32: the per-channel statistics the features were standardised by
    std: torch.Tensor  # (C,) float32

    @classmethod
    def build(cls, features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
              max_cells: int = 0, seed: int = 0) -> MatchBank:
        """A bank from per-view (C, h, w) features and (K, h, w) class fractions (views may differ
        in size). With `max_cells` > 0 and more cells than that, a class-balanced random subset
        is kept (every class keeps its cells up to an equal share), so the bank stays bounded."""
        f = torch.cat([x.flatten(1).T for x in features]).float()  # (N, C)
        t = torch.cat([y.flatten(1).T for y in targets]).float()  # (N, K)
        if max_cells and len(f) > max_cells:
            keep = _balanced_subset(t, max_cells, seed)
            f, t = f[keep], t[keep]
        mean, std = f.mean(0), f.std(0).clamp_min(1e-4)
        return cls(_normalise(f, mean, std).half(), t.half(), mean, std)

    @property
    def num_classes(self) -> int:
        return self.targets.shape[1]

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, h*w, C) unit vectors in the bank's space."""
        b, c = features.shape[:2]
        flat = features.float().flatten(2).transpose(1, 2)  # (B, h*w, C)
        return _normalise(flat, self.mean.to(flat.device), self.std.to(flat.device))

    def prototypes(self) -> torch.Tensor:
        """Each class's mean bank feature, unit length: (K, C) (a class without cells: zeros)."""
        t, f = self.targets.float(), self.features.float()
        protos = (t.T @ f) / t.sum(0).clamp_min(1e-6)[:, None]  # (K, C)
        return F.normalize(protos, dim=1)


def _normalise(f: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return F.normalize((f - mean) / std, dim=-1)


def _balanced_subset(targets: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of at most `n` cells: each class (by a cell's majority class) gets an equal share,
    a class with fewer cells gives its unused share to the others."""
    gen = torch.Generator().manual_seed(seed)
    owner = targets.argmax(1)  # (N,)
    groups = [torch.nonzero(owner == k)[:, 0] for k in range(targets.shape[1])]
    groups = [g[torch.randperm(len(g), generator=gen)] for g in groups if len(g)]
    quota, chosen = n, []
    for i, g in enumerate(sorted(groups, key=len)):  # smallest first: leftovers go to the larger
        take = min(len(g), quota // (len(groups) - i))
        chosen.append(g[:take])
        quota -= take
    return torch.cat(chosen).sort().values


def vote(bank: MatchBank, features: torch.Tensor, k: int = 10, temperature: float = 0.1,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """k-NN label transfer: each target cell's class distribution from its `k` most similar bank
    cells, weighted by softmax(similarity / temperature): (B, K, h, w), summing to 1 over K.
    `dtype`: the similarities' product computed in it (bfloat16: about 2x faster on CPUs with
    bfloat16 units, `SlimeConfig.match_dtype`); top-k and weights in float32."""
    b, _, h, w = features.shape
    q = bank.standardise(features).to(dtype)  # (B, h*w, C)
    bank_f = bank.features.to(q.device, dtype)  # (N, C)
    bank_t = bank.targets.to(q.device).float()  # (N, K)
    k = min(k, len(bank_f))
    out = torch.empty(b, h * w, bank.num_classes, device=q.device)  # (B, h*w, K)
    rows = max(1, SIMILARITY_CHUNK // max(len(bank_f), 1))
    for i in range(b):
        for r0 in range(0, h * w, rows):
            sim = (q[i, r0:r0 + rows] @ bank_f.T).float()  # (rows, N)
            top, idx = sim.topk(k, dim=1)  # (rows, k)
            weight = (top / temperature).softmax(1)  # (rows, k)
            out[i, r0:r0 + rows] = (weight[..., None] * bank_t[idx]).sum(1)  # (rows, K)
    return out.transpose(1, 2).reshape(b, bank.num_classes, h, w)


def prototype_scores(bank: MatchBank, features: torch.Tensor, temperature: float = 0.1
                     ) -> torch.Tensor:
    """Class distributions from the cosine similarity to each class's mean feature: (B, K, h, w)."""
    b, _, h, w = features.shape
    q = bank.standardise(features)  # (B, h*w, C)
    sim = q @ bank.prototypes().to(q.device).T  # (B, h*w, K)
    return (sim / temperature).softmax(-1).transpose(1, 2).reshape(b, -1, h, w)


def confidence(p: torch.Tensor) -> torch.Tensor:
    """1 - normalised entropy of (B, K, h, w) class distributions: 1 = certain, 0 = uniform."""
    k = p.shape[1]
    ent = -(p.clamp_min(1e-8) * p.clamp_min(1e-8).log()).sum(1, keepdim=True)  # (B, 1, h, w)
    return 1 - ent / float(np.log(k))
