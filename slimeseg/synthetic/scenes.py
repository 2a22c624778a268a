"""Simple synthetic scenes of textured shapes with exact masks, for tests and the quick start.

Deterministic from a seed. Classes: background, disc, square, triangle (a stripe texture each,
random placement), which the tiny test model can separate by colour and texture.
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = ["background", "disc", "square", "triangle"]


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, kind: int) -> np.ndarray:
    """A base colour with a stripe/check/noise texture: (h, w, 3) float in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.uniform(6, 12)
    if kind == 0:
        pattern = np.sin(2 * np.pi * (xx + yy) / period)
    elif kind == 1:
        pattern = np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    else:
        pattern = rng.standard_normal((h, w))
    return np.clip(base[None, None] + 0.12 * pattern[..., None], 0, 1)


def shapes_scene(seed: int = 0, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """An (size, size, 3) uint8 scene and its (size, size) uint8 mask over SHAPE_CLASSES."""
    rng = np.random.default_rng(seed)
    bg_color = np.array([0.55, 0.5, 0.45]) + rng.uniform(-0.1, 0.1, 3)
    image = _texture(rng, size, size, bg_color, 2)
    mask = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    colors = {1: np.array([0.85, 0.2, 0.2]), 2: np.array([0.2, 0.35, 0.85]), 3: np.array([0.25, 0.75, 0.25])}
    cells = rng.permutation(4)[:3]  # place the three shapes in distinct quadrants
    for cls, cell in zip((1, 2, 3), cells, strict=True):
        cy = 0.25 + 0.5 * (cell // 2) + rng.uniform(-0.05, 0.05)
        cx = 0.25 + 0.5 * (cell % 2) + rng.uniform(-0.05, 0.05)
        r = rng.uniform(0.14, 0.2)
        if cls == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        elif cls == 2:
            region = (np.abs(yy - cy) < r * 0.85) & (np.abs(xx - cx) < r * 0.85)
        else:
            region = (yy < cy + r * 0.8) & (yy - (cy - r) > 1.8 * np.abs(xx - cx))
        color = np.clip(colors[cls] + rng.uniform(-0.08, 0.08, 3), 0, 1)
        tex = _texture(rng, size, size, color, cls - 1)
        image[region] = tex[region]
        mask[region] = cls
    return (image * 255 + 0.5).astype(np.uint8), mask
