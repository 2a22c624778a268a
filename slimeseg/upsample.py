"""Edge-aware upsampling: class scores from the latent grid to the image's pixels, along its edges.

Scores come at 1/8 of the model input (32 x 32 cells at 256 px), where a part narrower than a
cell (a car's lights, an eye) rarely wins a cell, and bilinear upsampling blurs every boundary
over a cell. The guided filter (He, Sun & Tang, "Guided Image Filtering", TPAMI 2013) fits each
class's score, in every window, as a linear function of the image's colour, so the scores' edges
move onto the image's colour edges. Written here in torch (about 30 lines, box filters and a
3 x 3 solve per pixel) rather than taken from opencv-contrib's `ximgproc`, which is not in the
headless OpenCV wheel and filters one channel at a time.

Shapes: K classes, (h, w) the score grid, (H, W) the working size (the image's, at most
WORK_PIXELS).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .examples import image_tensor

WORK_PIXELS = 1 << 19  # the filter runs at most at ~0.5 M pixels (2x a 512-px model input); labels_at takes it on
CLASS_CHUNK = 4  # classes filtered at once (bounds the (3, chunk, H, W) covariance tensors)


def box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over (2r + 1)^2 windows of (C, H, W), the window cut at the border: (C, H, W).
    Running sums along rows then columns, so the cost does not grow with r (at 512 px and r = 32
    the whole filter is 6.5x faster than with 2-D average pooling, equal to 1e-6)."""
    _, h, w = x.shape
    x = _window_means(x, 2, w, r)
    return _window_means(x, 1, h, r)


def _window_means(x: torch.Tensor, dim: int, n: int, r: int) -> torch.Tensor:
    sums = F.pad(x.cumsum(dim), (1, 0) if dim == 2 else (0, 0, 1, 0))  # a leading 0 along dim
    idx = torch.arange(n, device=x.device)
    hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
    count = (hi - lo).to(x.dtype)
    diff = sums.index_select(dim, hi) - sums.index_select(dim, lo)
    return diff / (count if dim == 2 else count[:, None])


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """The colour guided filter of (K, H, W) `src` by a (3, H, W) `guide` in [0, 1]: (K, H, W).

    Per window, src_k ~ a_k . guide + b_k by ridge regression (`eps` the ridge: larger = smoother);
    the output averages the windows' fits at each pixel."""
    _, h, w = guide.shape
    mean_i = box(guide, radius)  # (3, H, W)
    corr_ii = box((guide[:, None] * guide[None]).flatten(0, 1), radius).view(3, 3, h, w)
    var = corr_ii - mean_i[:, None] * mean_i[None] + eps * torch.eye(3, device=guide.device)[:, :, None, None]
    inv = torch.linalg.inv(var.permute(2, 3, 0, 1))  # (H, W, 3, 3)
    out = []
    for p in src.split(CLASS_CHUNK):  # (k, H, W)
        mean_p = box(p, radius)  # (k, H, W)
        corr_ip = box((guide[:, None] * p[None]).flatten(0, 1), radius).view(3, -1, h, w)
        cov = corr_ip - mean_i[:, None] * mean_p[None]  # (3, k, H, W)
        a = torch.einsum("hwcd,dkhw->ckhw", inv, cov)  # (3, k, H, W)
        b = mean_p - (a * mean_i[:, None]).sum(0)  # (k, H, W)
        mean_a = box(a.flatten(0, 1), radius).view(3, -1, h, w)
        out.append((mean_a * guide[:, None]).sum(0) + box(b, radius))  # (k, H, W)
    return torch.cat(out)


def work_size(hw: tuple[int, int]) -> tuple[int, int]:
    """The filter's (H, W): the image's own, or scaled down to about WORK_PIXELS."""
    scale = min(1.0, math.sqrt(WORK_PIXELS / (hw[0] * hw[1])))
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def guided_scores(scores: torch.Tensor, image: np.ndarray, radius: float, eps: float) -> torch.Tensor:
    """(K, h, w) scores of an (H, W, 3) uint8 image, bilinearly upsampled to the working size and
    guided-filtered by the image there: (K, H', W') float32 on the scores' device (the GPU's when
    the UNet ran there). The image is reduced to the working size while still uint8 (PIL's
    antialiased bilinear), so a 12 MP photo never exists as floats. `radius` is in the image's
    pixels (scaled with it to the working size)."""
    size, width = work_size(image.shape[:2]), image.shape[1]
    r = max(1, round(radius * size[1] / width))
    if tuple(image.shape[:2]) != size:
        image = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    guide = image_tensor(image).to(scores.device)  # (3, H', W') in [0, 1]
    up = F.interpolate(scores[None].float(), size=size, mode="bilinear", align_corners=False)[0]  # (K, H', W')
    return guided_filter(guide, up, r, eps)
