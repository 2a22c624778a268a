"""Lab clips: short videos of the synthetic world with an exact mask and the known motion per frame.

Why: to measure how much masks flicker over time, a clip needs the true label of every pixel in
every frame and where each pixel was one frame before. A clip is two shots joined by a cut; in
each shot

- the camera pans and zooms over a still scene (a `World` sample rendered larger than the frame);
- a second object of the same kind (another sample's object, cut out by its mask) moves across
  and grows or shrinks, passing in front of the first.

Every frame is sampled from the rendered scene through known maps (the camera's and the moving
object's, each a scale and a shift), so the mask is the scene's mask at the same points (nearest)
and the motion is exact: `motion[t]` holds, for each pixel of frame t, its position (x, y) in
frame t - 1 (None at the first frame of a shot). Deterministic from (kind, size, seed, index).
Not modelled: wheels turning, lighting changes, motion blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import World

CANVAS = 1.5  # the still scene is rendered about this much larger than a frame (room to pan and zoom)


@dataclass(frozen=True)
class Clip:
    """A lab clip: frames (H, W, 3) uint8, masks (H, W) uint8, motion[t] (H, W, 2) or None."""

    kind: str
    classes: tuple[str, ...]
    frames: list[np.ndarray]
    masks: list[np.ndarray]
    motion: list[np.ndarray | None]
    cut: int  # index of the first frame of the second shot


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, nearest: bool) -> np.ndarray:
    """image at float pixel positions (xs, ys) (pixel centres at integers), edges clamped."""
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, xs.astype(np.float32), ys.astype(np.float32), interp,
                     borderMode=cv2.BORDER_REPLICATE)


def _shot(world: World, rng: np.random.Generator, size: int, n: int, index: int
          ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """One shot of n frames: a panning, zooming camera over scene `index`, another object moving
    across it. Returns frames, masks and motion (None at the first frame)."""
    scene = world.sample(index)  # (C, C) canvas: image and mask
    sprite = world.sample(index + 1000)
    spr_alpha = (sprite.mask > 0).astype(np.uint8)
    c = scene.image.shape[0]
    # camera: window side (canvas px) from z0 to z1, its centre moving from p0 to p1
    z0, z1 = rng.uniform(0.8, 1.0) * c, rng.uniform(0.65, 0.85) * c
    p0 = rng.uniform(0.4, 0.6, 2) * c
    p1 = p0 + rng.uniform(-0.08, 0.08, 2) * c
    # the moving object: its scale (canvas px per sprite px) and top-left corner in the canvas
    s0, s1 = rng.uniform(0.35, 0.5), rng.uniform(0.45, 0.65)
    left = rng.random() < 0.5
    y0, y1 = rng.uniform(0.2, 0.5, 2) * c
    x0, x1 = (-0.1 * c, 0.7 * c) if left else (0.7 * c, -0.1 * c)
    grid = np.arange(size, dtype=np.float64) + 0.5
    fx, fy = np.meshgrid(grid, grid)  # frame pixel centres
    frames, masks, motion = [], [], []
    prev = None
    for t in range(n):
        a = t / max(n - 1, 1)
        side = z0 + a * (z1 - z0)
        cx, cy = p0 + a * (p1 - p0)
        cam = (cx - side / 2, cy - side / 2, side / size)  # canvas = corner + frame * scale
        spr = (x0 + a * (x1 - x0), y0 + a * (y1 - y0), (s0 + a * (s1 - s0)) * c / sprite.mask.shape[0])
        X, Y = cam[0] + fx * cam[2] - 0.5, cam[1] + fy * cam[2] - 0.5  # canvas px coordinates
        U, V = (X - spr[0]) / spr[2], (Y - spr[1]) / spr[2]  # sprite px coordinates
        inside = (U > -0.5) & (U < sprite.mask.shape[1] - 0.5) & (V > -0.5) & (V < sprite.mask.shape[0] - 0.5)
        front = inside & (_sample(spr_alpha, U, V, True) > 0)  # (H, W) the moving object
        image = np.where(front[..., None], _sample(sprite.image, U, V, False), _sample(scene.image, X, Y, False))
        mask = np.where(front, _sample(sprite.mask, U, V, True), _sample(scene.mask, X, Y, True))
        frames.append(image.astype(np.uint8))
        masks.append(mask.astype(np.uint8))
        if prev is None:
            motion.append(None)
        else:
            pcam, pspr = prev
            # where each pixel's point was one frame before, in canvas px: the scene is still,
            # the object's point moved with it
            PX = np.where(front, pspr[0] + U * pspr[2], X)
            PY = np.where(front, pspr[1] + V * pspr[2], Y)
            motion.append(np.stack([(PX + 0.5 - pcam[0]) / pcam[2] - 0.5,
                                    (PY + 0.5 - pcam[1]) / pcam[2] - 0.5], -1).astype(np.float32))
        prev = (cam, spr)
    return frames, masks, motion


def lab_clip(kind: str, index: int, size: int = 256, frames: int = 12, seed: int = 3) -> Clip:
    """Clip `index` of World(kind, seed): two shots of frames // 2 frames (and the rest) joined
    by a cut; frames at size x size."""
    world = World(kind, size=64 * max(1, round(size * CANVAS / 64)), seed=seed)
    rng = np.random.default_rng([seed, index, 77])
    cut = frames // 2
    a = _shot(world, rng, size, cut, 2 * index)
    b = _shot(world, rng, size, frames - cut, 2 * index + 1)
    return Clip(kind, tuple(world.classes), a[0] + b[0], a[1] + b[1], a[2] + b[2], cut)


def flicker(preds: list[np.ndarray], masks: list[np.ndarray], motion: list[np.ndarray | None]
            ) -> tuple[float, int]:
    """The share of pixels whose predicted label changes between consecutive frames where the
    true label, followed along the known motion, does not; and how many such pixels there were.

    For frame t, each pixel's position in frame t - 1 is `motion[t]` (rounded to the nearest
    pixel; pixels whose position is outside frame t - 1 and frames starting a shot are left out).
    """
    changed = stable = 0
    for t in range(1, len(preds)):
        if motion[t] is None:
            continue
        h, w = masks[t].shape
        sx = np.rint(motion[t][..., 0]).astype(np.int64)
        sy = np.rint(motion[t][..., 1]).astype(np.int64)
        inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
        sx, sy = sx.clip(0, w - 1), sy.clip(0, h - 1)
        keep = inside & (masks[t] == masks[t - 1][sy, sx])  # (H, W) true label followed along
        changed += int((keep & (preds[t] != preds[t - 1][sy, sx])).sum())
        stable += int(keep.sum())
    return (changed / stable if stable else 0.0), stable
