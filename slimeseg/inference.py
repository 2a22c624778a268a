"""Applying learned embeddings to images (METHOD.md "Inference").

An image is resized to the model's input, encoded, noised at t_test and run once through the UNet
with attention capture; the captured maps give per-class scores at the latent resolution
(`score_batch`), optionally over overlapping tiles (`score_image`), which are upsampled to the
image's own size (`predict_scores`) and argmax-ed into a label map (`predict_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import maps
from .artifact import Learned
from .attention import AttentionStore, capture
from .config import SlimeConfig
from .examples import image_tensor
from .models import StableDiffusion


def model_input(image: np.ndarray, cfg: SlimeConfig) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) in [0, 1] at the model's input size (antialiased)."""
    x = F.interpolate(image_tensor(image)[None], size=(cfg.image_size,) * 2, mode="bilinear",
                      align_corners=False, antialias=True)
    return x[0].clamp(0, 1)


@torch.no_grad()
def score_batch(sd: StableDiffusion, batch: torch.Tensor, learned: Learned,
                cfg: SlimeConfig) -> torch.Tensor:
    """Per-class scores at the latent resolution for a (B, 3, S, S) batch: (B, K, h, w)."""
    k = learned.num_classes
    hw = (batch.shape[-2] // 8, batch.shape[-1] // 8)
    reference = cfg.normalization == "reference"
    store = AttentionStore(k, hw, want_was=cfg.use_was, want_probs=reference,
                           values_fn=maps.reference_values if reference else maps.train_values)
    latents = sd.encode_image(batch)  # (B, 4, h, w)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(latents.shape[1:], generator=gen).expand_as(latents)  # one noise for all
    t = torch.full((latents.shape[0],), cfg.t_test, dtype=torch.long, device=sd.device)
    context = learned.context[None].to(sd.device).expand(latents.shape[0], -1, -1)  # (B, 77, D)
    with capture(sd.unet, sd.plan.roles(), store):
        sd.denoise(latents, noise, t, context)
    if reference:
        probs = maps.class_probs(store, hw)  # (B, K, h, w)
        return maps.reference_rescale(store.was(), probs) if cfg.use_was else probs
    return store.was() if cfg.use_was else maps.class_scores(store, hw).softmax(1)


def tile_boxes(size: int, cfg: SlimeConfig) -> tuple[int, list[tuple[int, int]]]:
    """Side and (y, x) corners of the n x n overlapping square tiles of a size x size input."""
    side = int(round(size * cfg.tile_ratio))
    stride = (size - side) / (cfg.tiles - 1)
    return side, [(round(i * stride), round(j * stride)) for i in range(cfg.tiles) for j in range(cfg.tiles)]


def score_image(sd: StableDiffusion, image: torch.Tensor, learned: Learned,
                cfg: SlimeConfig) -> torch.Tensor:
    """Scores (K, S, S) for one (3, S, S) input, averaged over n x n overlapping tiles if tiles > 1.

    Each tile is upsampled to the model input, scored, and its scores resized back into its box;
    with the reference normalisation a class whose maximum in a tile is below `tile_threshold` is
    left out of that tile's vote, as the reference code does.
    """
    size = image.shape[-1]
    if cfg.tiles == 1:
        s = score_batch(sd, image[None], learned, cfg)[0]  # (K, h, w)
        return F.interpolate(s[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    side, boxes = tile_boxes(size, cfg)
    crops = torch.stack([F.interpolate(image[None, :, y:y + side, x:x + side], size=(size, size),
                                       mode="bilinear", align_corners=False)[0] for y, x in boxes])
    scores = score_batch(sd, crops, learned, cfg)  # (n*n, K, h, w)
    k = scores.shape[1]
    total = torch.zeros(k, size, size, device=scores.device)  # (K, S, S)
    count = torch.full((k, size, size), 1e-7, device=scores.device)  # (K, S, S)
    for (y, x), s in zip(boxes, scores, strict=True):
        keep = torch.ones(k, dtype=torch.bool, device=s.device)
        if cfg.normalization == "reference":  # the reference drops weak classes per tile
            keep = s.flatten(1).amax(1) >= cfg.tile_threshold
            keep[0] = True
        up = F.interpolate(s[None], size=(side, side), mode="bilinear", align_corners=False)[0]
        total[keep, y:y + side, x:x + side] += up[keep]
        count[keep, y:y + side, x:x + side] += 1
    return total / count


def to_image_size(scores: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (K, h, w) scores to the image's (H, W), in float32 on the CPU."""
    return F.interpolate(scores[None].float(), size=hw, mode="bilinear", align_corners=False)[0].cpu()


def predict_scores(sd: StableDiffusion, image: np.ndarray, learned: Learned,
                   cfg: SlimeConfig) -> torch.Tensor:
    """Per-class scores (K, H, W) at the image's own size (their argmax is the label map)."""
    return to_image_size(score_image(sd, model_input(image, cfg), learned, cfg), image.shape[:2])


def labels_of(scores: torch.Tensor) -> np.ndarray:
    """Argmax over classes of (K, H, W) scores: (H, W) uint8 class indices."""
    return scores.argmax(0).cpu().numpy().astype(np.uint8)


def predict_labels(sd: StableDiffusion, images: Sequence[np.ndarray], learned: Learned,
                   cfg: SlimeConfig, batch_size: int = 4) -> list[np.ndarray]:
    """Label maps for many images, `batch_size` UNet passes at a time (tiles: one image at a time)."""
    if cfg.tiles > 1:
        return [labels_of(predict_scores(sd, im, learned, cfg)) for im in images]
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([model_input(a, cfg) for a in chunk])  # (B, 3, S, S)
        scores = score_batch(sd, x, learned, cfg)  # (B, K, h, w)
        out += [labels_of(to_image_size(s, a.shape[:2])) for a, s in zip(chunk, scores, strict=True)]
    return out
