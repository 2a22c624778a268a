"""Training-time augmentation of (image, mask) pairs (`SlimeConfig.augment_order`).

- "slimeseg": a random square crop of the original that keeps > 30 % of one class (the class
  cycles from step to step), resized to the model's input size; horizontal flip; rotation
  (border = background); Gaussian blur of the image.
- "reference", the reference code's order: resize to the model's square first, flip, Gaussian
  blur with a kernel of 1, 3 or 5 px (sigma by OpenCV's rule for that kernel), then the crop in
  that square frame keeping > 30 % of the background (what its cycling class index amounts to),
  resized back, and rotation.
One seeded torch.Generator drives every draw, so runs repeat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import SlimeConfig


def _uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (3, H, W) bilinear (antialiased) and mask (H, W) nearest to size x size."""
    img = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    msk = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0]
    return img.clamp(0, 1), msk.long()


def _crop(image: torch.Tensor, mask: torch.Tensor, cfg: SlimeConfig, gen: torch.Generator,
          focus: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random square crop of side in [min_crop_ratio, 1] x min(H, W) keeping part of `focus`."""
    h, w = mask.shape
    total = int((mask == focus).sum()) if focus is not None else 0
    best = None
    for _ in range(20):
        side = max(1, int(round(_uniform(gen, cfg.min_crop_ratio, 1.0) * min(h, w))))
        y = int(torch.randint(0, h - side + 1, (), generator=gen))
        x = int(torch.randint(0, w - side + 1, (), generator=gen))
        if total == 0:
            best = (y, x, side)
            break
        kept = int((mask[y:y + side, x:x + side] == focus).sum())
        if kept > cfg.crop_keep_fraction * total:
            best = (y, x, side)
            break
    if best is None:  # no crop kept enough of the class: use the whole image
        return image, mask
    y, x, side = best
    return image[:, y:y + side, x:x + side], mask[y:y + side, x:x + side]


def _rotate(image: torch.Tensor, mask: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate about the centre; uncovered borders become black (image) and background (mask)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    grid = F.affine_grid(theta[None], [1, 1, *mask.shape], align_corners=False)
    img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    msk = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0, 0]
    return img, msk.long()


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (3, H, W) image."""
    radius = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = image.shape[0]
    out = F.conv2d(F.pad(image[None], (radius, radius, 0, 0), mode="replicate"),
                   k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"),
                   k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out[0]


def _blur_kernel(image: torch.Tensor, ksize: int) -> torch.Tensor:
    """Gaussian blur with an odd kernel of `ksize` px and OpenCV's sigma for it (sigma 0 there)."""
    if ksize <= 1:
        return image
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    radius = ksize // 2
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = image.shape[0]
    out = F.conv2d(F.pad(image[None], (radius, radius, 0, 0), mode="reflect"),
                   k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"),
                   k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out[0]


def augment_reference(image: torch.Tensor, mask: torch.Tensor, cfg: SlimeConfig,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's augmentation order (module doc), at image_size."""
    # 1. resize to the model's square first, then flip and blur in that frame
    image, mask = resize_pair(image, mask, cfg.image_size)
    if _uniform(gen) < cfg.flip_p:
        image, mask = image.flip(-1), mask.flip(-1)
    if _uniform(gen) < cfg.blur_p:
        image = _blur_kernel(image, (1, 3, 5)[int(torch.randint(0, 3, (), generator=gen))])
    # 2. the crop in the square frame, keeping part of the background, resized back
    if _uniform(gen) < cfg.crop_p:
        image, mask = _crop(image, mask, cfg, gen, 0)
        image, mask = resize_pair(image, mask, cfg.image_size)
    # 3. rotation
    if _uniform(gen) < cfg.rotate_p and cfg.rotate_degrees > 0:
        image, mask = _rotate(image, mask, _uniform(gen, -cfg.rotate_degrees, cfg.rotate_degrees))
    return image.clamp(0, 1), mask


def augment(image: torch.Tensor, mask: torch.Tensor, cfg: SlimeConfig, gen: torch.Generator,
            focus: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random augmentation of image (3, H, W) in [0, 1] and mask (H, W), at image_size."""
    if cfg.augment_order == "reference":
        return augment_reference(image, mask, cfg, gen)
    # 1. crop (keeping > crop_keep_fraction of class `focus`), then resize to the model size
    if _uniform(gen) < cfg.crop_p:
        image, mask = _crop(image, mask, cfg, gen, focus)
    image, mask = resize_pair(image, mask, cfg.image_size)
    # 2. horizontal flip
    if _uniform(gen) < cfg.flip_p:
        image, mask = image.flip(-1), mask.flip(-1)
    # 3. rotation
    if _uniform(gen) < cfg.rotate_p and cfg.rotate_degrees > 0:
        image, mask = _rotate(image, mask, _uniform(gen, -cfg.rotate_degrees, cfg.rotate_degrees))
    # 4. Gaussian blur (image only)
    if _uniform(gen) < cfg.blur_p:
        image = _blur(image, _uniform(gen, 0.1, 2.0) * cfg.image_size / 512)
    return image.clamp(0, 1), mask


def hue_rotation(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a (3, H, W) image's colours about the grey axis by `degrees` (greys stay grey,
    brightness roughly kept), clamped to [0, 1]."""
    a = math.radians(degrees)
    u = torch.full((3,), 1 / math.sqrt(3), dtype=image.dtype)
    cross = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]], dtype=image.dtype)
    rot = math.cos(a) * torch.eye(3, dtype=image.dtype) + (1 - math.cos(a)) * torch.outer(u, u) + math.sin(a) * cross
    return torch.einsum("ij,jhw->ihw", rot, image).clamp(0, 1)


def bank_view(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, zoom: tuple[float, float],
              hue: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A rescaled copy of an example for the matching bank: zoomed by a log-uniform factor in
    `zoom` (above 1: a random crop resized to the original's size; below 1: the whole example at
    a smaller input size, a multiple of 64), mirrored half the time, with `hue` a random hue
    rotation. Image (3, H, W) in [0, 1], mask (H, W); the view's size may differ."""
    h, w = mask.shape
    s = math.exp(_uniform(gen, math.log(zoom[0]), math.log(zoom[1])))
    if s >= 1:  # 1. zoom in: a crop of 1/s of each side, back to the original's size
        ch, cw = max(8, round(h / s)), max(8, round(w / s))
        y = int(torch.randint(0, h - ch + 1, (), generator=gen))
        x = int(torch.randint(0, w - cw + 1, (), generator=gen))
        image, mask, out = image[:, y:y + ch, x:x + cw], mask[y:y + ch, x:x + cw], (h, w)
    else:  # 2. zoom out: the whole example, smaller
        out = (max(64, round(h * s / 64) * 64), max(64, round(w * s / 64) * 64))
    image = F.interpolate(image[None], size=out, mode="bilinear", align_corners=False, antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), size=out, mode="nearest")[0, 0].long()
    if _uniform(gen) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if hue:
        image = hue_rotation(image, _uniform(gen, -180.0, 180.0))
    return image.clamp(0, 1), mask
