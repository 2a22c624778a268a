"""Colours and procedural textures for the synthetic world, evaluated at arbitrary points.

A texture maps pixel coordinates (x, y arrays, in output-image pixels) to RGB in [0, 1], so a
part can be painted only where its shape is, at any supersampling, without rendering a full
canvas per texture.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Named colours used in captions: (hue range, saturation range, value range), all in [0, 1].
# Hue ranges may wrap (red). Names are chosen so a person would agree with them.
NAMED_COLOURS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-0.025, 0.02), (0.7, 1.0), (0.6, 0.95)),
    "orange": ((0.055, 0.09), (0.8, 1.0), (0.85, 1.0)),
    "yellow": ((0.13, 0.16), (0.7, 1.0), (0.85, 1.0)),
    "green": ((0.25, 0.42), (0.55, 1.0), (0.45, 0.85)),
    "blue": ((0.57, 0.66), (0.6, 1.0), (0.55, 0.95)),
    "purple": ((0.73, 0.8), (0.5, 0.9), (0.45, 0.8)),
    "pink": ((0.88, 0.96), (0.3, 0.55), (0.9, 1.0)),
    "brown": ((0.05, 0.09), (0.55, 0.85), (0.3, 0.5)),
    "black": ((0.0, 1.0), (0.0, 0.3), (0.05, 0.16)),
    "white": ((0.0, 1.0), (0.0, 0.06), (0.9, 1.0)),
    "gray": ((0.0, 1.0), (0.0, 0.06), (0.45, 0.65)),
}


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour in [0, 1] from hue (wrapping), saturation and value."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def named_colour(rng: np.random.Generator, name: str) -> np.ndarray:
    """A random shade of a named colour (one a caption can state truthfully)."""
    (h0, h1), (s0, s1), (v0, v1) = NAMED_COLOURS[name]
    return hsv(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any colour: uniform hue, broad saturation and value (so parts have no fixed colour)."""
    return hsv(rng.uniform(), rng.uniform(0.0, 1.0) ** 0.7, rng.uniform(0.15, 1.0))


def distinct_colour(
    rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float = 0.35
) -> np.ndarray:
    """A random colour at least `min_dist` (RGB Euclidean) from each of `avoid`, best effort."""
    best, best_d = random_colour(rng), -1.0
    for _ in range(60):
        c = random_colour(rng)
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1.0)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def shift(c: np.ndarray, rng: np.random.Generator, amount: float = 0.25) -> np.ndarray:
    """A second colour near `c` (lighter or darker), for two-tone textures of one part."""
    sign = -1.0 if c.mean() > 0.5 else 1.0
    return np.clip(c + sign * amount * rng.uniform(0.6, 1.0), 0.0, 1.0).astype(np.float32)


def _mix(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c1[None, :] * (1.0 - t[:, None]) + c2[None, :] * t[:, None]


def solid(c: np.ndarray) -> Texture:
    """One flat colour."""
    return lambda x, y: np.broadcast_to(c, (x.shape[0], 3)).copy()


def stripes(c1: np.ndarray, c2: np.ndarray, period: float, angle: float, duty: float = 0.5) -> Texture:
    """Straight stripes of `period` pixels at `angle` radians."""
    ca, sa = np.cos(angle), np.sin(angle)

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        phase = ((x * ca + y * sa) / period) % 1.0
        return _mix(c1, c2, (phase < duty).astype(np.float32))

    return tex


def waves(c1: np.ndarray, c2: np.ndarray, period: float, amplitude: float, wavelength: float) -> Texture:
    """Horizontal wavy bands (water)."""

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        phase = ((y + amplitude * np.sin(2 * np.pi * x / wavelength)) / period) % 1.0
        return _mix(c1, c2, 0.5 - 0.5 * np.cos(2 * np.pi * phase))

    return tex


def checkers(c1: np.ndarray, c2: np.ndarray, period: float, angle: float) -> Texture:
    """A checkerboard of square cells of side `period` pixels, rotated by `angle`."""
    ca, sa = np.cos(angle), np.sin(angle)

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = (x * ca + y * sa) / period, (-x * sa + y * ca) / period
        return _mix(c1, c2, ((np.floor(u) + np.floor(v)) % 2).astype(np.float32))

    return tex


def dots(c1: np.ndarray, c2: np.ndarray, period: float, radius: float) -> Texture:
    """Polka dots of colour c2 on c1, on a square grid."""

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = (x / period) % 1.0 - 0.5, (y / period) % 1.0 - 0.5
        return _mix(c1, c2, (u * u + v * v < (radius / period) ** 2).astype(np.float32))

    return tex


def bricks(c_brick: np.ndarray, c_mortar: np.ndarray, width: float, height: float, rng: np.random.Generator) -> Texture:
    """A running-bond brick wall with per-brick shade variation."""
    shades = rng.uniform(0.8, 1.15, size=(64, 64)).astype(np.float32)

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        row = np.floor(y / height)
        xs = x / width + 0.5 * (row % 2)
        col = np.floor(xs)
        mortar = ((y / height) % 1.0 < 0.14) | (xs % 1.0 < 0.07)
        shade = shades[row.astype(int) % 64, col.astype(int) % 64]
        out = np.clip(c_brick[None, :] * shade[:, None], 0.0, 1.0)
        out[mortar] = c_mortar
        return out

    return tex


def gradient(c1: np.ndarray, c2: np.ndarray, angle: float, origin: float, span: float) -> Texture:
    """A linear ramp from c1 to c2 along `angle`, over `span` pixels from `origin`."""
    ca, sa = np.cos(angle), np.sin(angle)

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _mix(c1, c2, np.clip((x * ca + y * sa - origin) / span, 0.0, 1.0))

    return tex


def _smooth_field(rng: np.random.Generator, cell: float, extent: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Bilinearly interpolated value noise in [0, 1] with features about `cell` pixels wide."""
    n = int(extent / cell) + 3
    grid = rng.uniform(size=(n, n)).astype(np.float32)

    def field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = np.clip(x / cell, 0, n - 1.001), np.clip(y / cell, 0, n - 1.001)
        i, j = np.floor(v).astype(int), np.floor(u).astype(int)
        fv, fu = v - i, u - j
        fv, fu = fv * fv * (3 - 2 * fv), fu * fu * (3 - 2 * fu)  # smoothstep: no grid creases
        top = grid[i, j] * (1 - fu) + grid[i, j + 1] * fu
        bottom = grid[i + 1, j] * (1 - fu) + grid[i + 1, j + 1] * fu
        return top * (1 - fv) + bottom * fv

    return field


def blotches(c1: np.ndarray, c2: np.ndarray, cell: float, extent: int, rng: np.random.Generator, sharpness: float = 4.0) -> Texture:
    """Soft-edged patches of c2 on c1 (clouds, sand ripples, camouflage)."""
    field = _smooth_field(rng, cell, extent)

    def tex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = np.clip((field(x, y) - 0.5) * sharpness + 0.5, 0.0, 1.0)
        return _mix(c1, c2, t)

    return tex


def with_noise(tex: Texture, amplitude: float, extent: int, rng: np.random.Generator) -> Texture:
    """Add per-pixel grain (constant within an output pixel, so it survives downsampling)."""
    grain = rng.normal(0.0, amplitude, size=(extent + 1, extent + 1, 1)).astype(np.float32)

    def noisy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        i = np.clip(y.astype(int), 0, extent)
        j = np.clip(x.astype(int), 0, extent)
        return tex(x, y) + grain[i, j]

    return noisy


GRAIN_PERIODS = (61, 67)  # co-prime tiles: the grain repeats only every 4087 px


def with_tiled_noise(tex: Texture, amplitude: float, rng: np.random.Generator) -> Texture:
    """Per-pixel grain like `with_noise`, from two small co-prime tiles instead of a full-canvas grid.

    Costs the same at any canvas size (`with_noise` draws (extent + 1)^2 values per texture, which
    dominates rendering on large canvases); the sum of the tiles has the same amplitude.
    """
    tiles = [rng.normal(0.0, amplitude / np.sqrt(2.0), size=(p, p, 1)).astype(np.float32) for p in GRAIN_PERIODS]

    def noisy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        i, j = np.floor(y).astype(int), np.floor(x).astype(int)
        out = tex(x, y)
        for p, tile in zip(GRAIN_PERIODS, tiles, strict=True):
            out = out + tile[i % p, j % p]
        return out

    return noisy


def random_part_texture(
    c: np.ndarray, rng: np.random.Generator, scale: float, extent: int, centre: tuple[float, float],
    noise: Callable[[Texture, float], Texture] | None = None,
) -> Texture:
    """A random texture around colour `c` for a part of an object `scale` px wide at `centre`.

    `noise(texture, amplitude)` adds grain (default: `with_noise` over `extent`).
    """
    if noise is None:
        noise = lambda t, a: with_noise(t, a, extent, rng)  # noqa: E731
    c2 = shift(c, rng, rng.uniform(0.12, 0.35))
    kind = rng.choice(["solid", "noise", "stripes", "checkers", "gradient", "blotches"],
                      p=[0.25, 0.2, 0.15, 0.1, 0.2, 0.1])
    period = max(3.0, scale * rng.uniform(0.04, 0.1))
    if kind == "solid":
        tex = solid(c)
    elif kind == "noise":
        tex = noise(solid(c), rng.uniform(0.03, 0.08))
    elif kind == "stripes":
        tex = stripes(c, c2, period, rng.uniform(0, np.pi))
    elif kind == "checkers":
        tex = checkers(c, c2, period, rng.uniform(0, np.pi / 2))
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        origin = centre[0] * np.cos(angle) + centre[1] * np.sin(angle) - scale / 2
        tex = gradient(c, c2, angle, origin, scale)
    else:
        tex = blotches(c, c2, period * 1.5, extent, rng)
    if kind != "noise" and rng.uniform() < 0.3:
        tex = noise(tex, rng.uniform(0.02, 0.05))
    return tex
