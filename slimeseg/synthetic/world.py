"""A deterministic synthetic world of part-structured objects (cars, faces) with exact masks.

Why: offline there is no pretrained Stable Diffusion and no labelled data, so nothing can measure
segmentation quality. This world supplies images whose parts are recognisable by shape and layout
(part colours and textures are random, so colour matching alone fails), each with an exact part
mask and a caption, to pretrain a small SD on and to evaluate SLiMe against.

Two generations share the same object painters:
- `World` (v1): one object filling most of a square frame, every part visible. Its samples are
  frozen (bitwise) because published benchmarks and tests depend on them.
- `SceneWorld` (v2) and `compose`: canvases of any shape with several objects at sizes from the
  full frame down to ~1/6 of it, objects cut off at the borders and close-ups of a part region;
  captions name the parts that are visible; an instance map and per-object boxes come with each
  sample.

Rendering: every shape is an implicit function of position, evaluated on a supersampled grid
(default 3x3 per pixel). The image is the average of the subsamples (anti-aliased edges); the mask
is the label at each pixel's centre subsample, so it is exact for the drawn shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import textures as tx
from .textures import Texture

KIND_CLASSES: dict[str, tuple[str, ...]] = {
    "car": ("background", "body", "wheel", "window", "light"),
    "face": ("background", "skin", "eye", "mouth", "hair"),
}
CAR_GROUNDS = ("grass", "road", "sand", "snow", "bricks", "checkers")
FACE_BACKDROPS = ("bricks", "checkers", "stripes", "clouds", "leaves", "wall", "dots")
CAPTION_COLOURS = tuple(tx.NAMED_COLOURS)
_KIND_IDS = {"car": 1, "face": 2}
_MAX_TRIES = 20  # redraws until every class is visible (only ever needed at tiny sizes)
MIN_PART_PIXELS = 4  # a part counts as visible (captions name it) with at least this many mask pixels
_COUNT_WORDS = ("two", "three", "four", "five", "six", "seven", "eight")


@dataclass(frozen=True)
class SceneObject:
    """One object of a v2 scene: where it is, how big, which of its parts can be seen."""

    instance: int  # its value in Sample.instances (1, 2, ...)
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) image px of its whole box; may pass the borders
    size: float  # box extent / canvas extent along the tighter of the two axes (1: spans that axis)
    parts: tuple[int, ...]  # classes with >= MIN_PART_PIXELS visible mask pixels of this object
    colour: str  # the caption's colour word (car body / hair)


@dataclass(frozen=True)
class Sample:
    """One rendered example: RGB image, part mask (class indices into World.classes), caption.

    v2 samples (`SceneWorld`, `compose`) also carry an instance map (0 = background, i = the
    object with `instance` i) and the objects; v1 samples leave them empty.
    """

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8
    caption: str
    instances: np.ndarray | None = None  # (H, W) uint8
    objects: tuple[SceneObject, ...] = field(default=())


def caption_vocabulary(version: int = 1) -> tuple[str, ...]:
    """Every word any caption uses (for a tokenizer that keeps each word one token).

    version 1: `World`'s captions (the words the lab SD v1 was trained with); version 2 adds the
    words of `SceneWorld` / `compose` captions (counts, plurals, close-ups, part names).
    """
    words = {"a", "car", "on", "face", "with", "hair", "in", "front", "of"}
    words.update(CAPTION_COLOURS, CAR_GROUNDS, FACE_BACKDROPS)
    if version >= 2:
        words.update({"cars", "faces", "and", "close", "up", "showing"}, _COUNT_WORDS)
        words.update(*(names[1:] for names in KIND_CLASSES.values()))
    elif version != 1:
        raise ValueError(f"unknown caption version {version}")
    return tuple(sorted(words))


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Frame:
    """An object's placement: local unit = `scale` px, rotated by `angle`, optionally mirrored."""

    cx: float
    cy: float
    scale: float
    angle: float
    flip: bool

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image pixel coordinates -> object-local coordinates."""
        dx, dy = x - self.cx, y - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = (c * dx + s * dy) / self.scale, (-s * dx + c * dy) / self.scale
        return (-u if self.flip else u), v

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Object-local coordinates -> image pixel coordinates."""
        u = -u if self.flip else u
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.cx + self.scale * (c * u - s * v), self.cy + self.scale * (s * u + c * v)

    def bounds(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Axis-aligned image box (x0, y0, x1, y1) around the local box (u0, v0, u1, v1)."""
        u0, v0, u1, v1 = box
        corners = [self.to_image(u, v) for u in (u0, u1) for v in (v0, v1)]
        xs, ys = [float(p[0]) for p in corners], [float(p[1]) for p in corners]
        return min(xs), min(ys), max(xs), max(ys)


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((u - cx) / a) ** 2 + ((v - cy) / b) ** 2 <= 1.0


def _rounded_rect(
    u: np.ndarray, v: np.ndarray, x0: float, y0: float, x1: float, y1: float, r: float
) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    dx = np.maximum(np.maximum(x0 + r - u, u - (x1 - r)), 0.0)
    dy = np.maximum(np.maximum(y0 + r - v, v - (y1 - r)), 0.0)
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1) & (dx * dx + dy * dy <= r * r)


def _convex_polygon(
    u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]], insets: list[float] | None = None
) -> np.ndarray:
    """Points inside a convex polygon, each edge optionally moved inward by insets[i]."""
    p = np.asarray(pts, dtype=np.float64)
    area = np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
    orient = 1.0 if area > 0 else -1.0
    inside = np.ones(u.shape, dtype=bool)
    for i in range(len(p)):
        (ax, ay), (bx, by) = p[i], p[(i + 1) % len(p)]
        ex, ey = bx - ax, by - ay
        dist = orient * (ex * (v - ay) - ey * (u - ax)) / np.hypot(ex, ey)
        inside &= dist >= (insets[i] if insets else 0.0)
    return inside


# --------------------------------------------------------------------------- canvas


class _Canvas:
    """A supersampled RGB + label canvas that parts are painted onto, back to front.

    `window` gives a view of a pixel-aligned sub-rectangle sharing the arrays, so an object is
    evaluated only where it can be (large canvases with small objects).
    """

    def __init__(self, width: int, height: int, supersample: int, instances: bool = False) -> None:
        ss = supersample
        cx = (np.arange(width * ss, dtype=np.float32) + 0.5) / ss
        cy = (np.arange(height * ss, dtype=np.float32) + 0.5) / ss
        self.width, self.height, self.ss = width, height, ss
        self.x = np.broadcast_to(cx[None, :], (height * ss, width * ss))
        self.y = np.broadcast_to(cy[:, None], (height * ss, width * ss))
        self.labels = np.zeros((height * ss, width * ss), dtype=np.uint8)
        self.rgb = np.zeros((height * ss, width * ss, 3), dtype=np.float32)
        self.instances = np.zeros((height * ss, width * ss), dtype=np.uint8) if instances else None
        self.instance = 0  # instance id that foreground paint writes (when instances are kept)

    def window(self, box: tuple[float, float, float, float]) -> _Canvas | None:
        """A view of the pixels that the image box (x0, y0, x1, y1) touches; None if none."""
        x0, y0 = max(0, math.floor(box[0]) - 1), max(0, math.floor(box[1]) - 1)
        x1, y1 = min(self.width, math.ceil(box[2]) + 1), min(self.height, math.ceil(box[3]) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        ss = self.ss
        sl = (slice(y0 * ss, y1 * ss), slice(x0 * ss, x1 * ss))
        view = object.__new__(_Canvas)
        view.width, view.height, view.ss = x1 - x0, y1 - y0, ss
        view.x, view.y, view.labels, view.rgb = self.x[sl], self.y[sl], self.labels[sl], self.rgb[sl]
        view.instances = None if self.instances is None else self.instances[sl]
        view.instance = self.instance
        return view

    def fill(self, texture: Texture) -> None:
        """Paint the whole canvas with `texture`, as background (same values as paint(everywhere))."""
        self.rgb[...] = texture(self.x.ravel(), self.y.ravel()).reshape(self.rgb.shape)
        self.labels[...] = 0
        if self.instances is not None:
            self.instances[...] = 0

    def paint(self, region: np.ndarray, texture: Texture, label: int | None = None) -> None:
        """Fill `region` with `texture`; relabel it unless `label` is None (pure decoration)."""
        if region.any():
            self.rgb[region] = texture(self.x[region], self.y[region])
            if label is not None:
                self.labels[region] = label
                if self.instances is not None:
                    self.instances[region] = self.instance if label else 0

    def shade(self, region: np.ndarray, factor: float) -> None:
        """Darken or lighten `region` without changing its labels (shadows, seams)."""
        self.rgb[region] *= factor

    def finish(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Global lighting and grain, then downsample: (uint8 image, exact centre-sample mask,
        centre-sample instance map or None)."""
        w, h, ss = self.width, self.height, self.ss
        img = self.rgb.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * np.arange(w)[None, :] + np.sin(angle) * np.arange(h)[:, None]) / max(w, h)
        img = img * (1.0 + rng.uniform(0.0, 0.25) * (ramp - ramp.mean()))[..., None]
        img = img + rng.normal(0.0, rng.uniform(0.004, 0.02), size=img.shape)
        image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        mask = self.labels[ss // 2 :: ss, ss // 2 :: ss].copy()
        inst = None if self.instances is None else self.instances[ss // 2 :: ss, ss // 2 :: ss].copy()
        return image, mask, inst


@dataclass
class _Paint:
    """The random stream and texture settings painters draw from.

    v1 (`tiled=False`) adds grain from a full (extent + 1)^2 grid per texture, exactly as the
    frozen v1 samples were made; v2 from small tiles (the same look at any canvas size).
    """

    rng: np.random.Generator
    extent: int  # texture extent (px): the canvas's longer side
    tiled: bool = False

    def noise(self, tex: Texture, amplitude: float) -> Texture:
        if self.tiled:
            return tx.with_tiled_noise(tex, amplitude, self.rng)
        return tx.with_noise(tex, amplitude, self.extent, self.rng)

    def part(self, c: np.ndarray, scale: float, centre: tuple[float, float]) -> Texture:
        """A random part texture around colour c (see textures.random_part_texture)."""
        return tx.random_part_texture(c, self.rng, scale, self.extent, centre,
                                      noise=self.noise if self.tiled else None)


# --------------------------------------------------------------------------- backgrounds


def _background_texture(name: str, pt: _Paint, size: float) -> Texture:
    """A full-frame texture that a caption can call `name`; `size` sets its feature scale (px)."""
    rng, ext = pt.rng, pt.extent
    cell = size * rng.uniform(0.05, 0.15)
    if name == "grass":
        c = tx.hsv(rng.uniform(0.2, 0.36), rng.uniform(0.5, 0.85), rng.uniform(0.35, 0.7))
        t = tx.blotches(c, tx.shift(c, rng, 0.15), cell * 0.5, ext, rng, sharpness=2.0)
        return pt.noise(t, 0.06)
    if name == "road":
        c = tx.hsv(rng.uniform(), rng.uniform(0.0, 0.08), rng.uniform(0.22, 0.5))
        return pt.noise(tx.solid(c), 0.05)
    if name == "sand":
        c = tx.hsv(rng.uniform(0.09, 0.13), rng.uniform(0.25, 0.5), rng.uniform(0.7, 0.92))
        t = tx.waves(c, tx.shift(c, rng, 0.1), cell * 0.4, cell * 0.2, cell * 3)
        return pt.noise(t, 0.03)
    if name == "snow":
        c = tx.hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0))
        t = tx.blotches(c, tx.shift(c, rng, 0.12), cell, ext, rng, sharpness=2.0)
        return pt.noise(t, 0.02)
    if name == "bricks":
        brick = tx.random_colour(rng) if rng.uniform() < 0.4 else tx.named_colour(rng, rng.choice(["red", "brown", "orange"]))
        mortar = tx.hsv(0, 0, rng.uniform(0.55, 0.9))
        w = size * rng.uniform(0.08, 0.16)
        return pt.noise(tx.bricks(brick, mortar, w, w * rng.uniform(0.35, 0.5), rng), 0.03)
    if name == "checkers":
        c1 = tx.random_colour(rng)
        return tx.checkers(c1, tx.distinct_colour(rng, [c1], 0.3), cell, rng.uniform(0, np.pi / 2))
    if name == "stripes":
        c1 = tx.random_colour(rng)
        return tx.stripes(c1, tx.distinct_colour(rng, [c1], 0.3), cell, rng.uniform(0, np.pi), rng.uniform(0.3, 0.7))
    if name == "clouds":
        sky = tx.hsv(rng.uniform(0.53, 0.63), rng.uniform(0.3, 0.7), rng.uniform(0.75, 1.0))
        return tx.blotches(sky, tx.hsv(0, 0, rng.uniform(0.92, 1.0)), size * rng.uniform(0.12, 0.25), ext, rng, 3.0)
    if name == "leaves":
        c = tx.hsv(rng.uniform(0.18, 0.4), rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.6))
        return tx.blotches(c, tx.shift(c, rng, 0.3), cell * 0.4, ext, rng, sharpness=6.0)
    if name == "wall":
        c1 = tx.random_colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        return pt.noise(tx.gradient(c1, tx.shift(c1, rng, 0.3), ang, -size * 0.7, size * 1.4), 0.02)
    if name == "dots":
        c1 = tx.random_colour(rng)
        return tx.dots(c1, tx.distinct_colour(rng, [c1], 0.3), cell, cell * rng.uniform(0.15, 0.4))
    raise ValueError(f"unknown background {name!r}")


def _sky_texture(pt: _Paint, size: float) -> Texture:
    """The upper part of a car scene: plain, graded or cloudy, any hue."""
    rng = pt.rng
    c = tx.random_colour(rng) if rng.uniform() < 0.4 else tx.hsv(rng.uniform(0.5, 0.66), rng.uniform(0.2, 0.7), rng.uniform(0.7, 1.0))
    style = rng.choice(["plain", "gradient", "clouds"])
    if style == "plain":
        return tx.solid(c)
    if style == "gradient":
        return tx.gradient(tx.shift(c, rng, 0.25), c, np.pi / 2, 0, size * 0.6)
    return tx.blotches(c, tx.hsv(0, 0, rng.uniform(0.9, 1.0)), size * rng.uniform(0.12, 0.25), pt.extent, rng, 3.0)


def _distractors(canvas: _Canvas, pt: _Paint, n: int, avoid_y: float | None = None) -> None:
    """Random background shapes (circles, boxes, trees): background label, so shape alone is not enough."""
    rng, w, h = pt.rng, canvas.width, canvas.height
    s = min(w, h)
    for _ in range(n):
        c = tx.random_colour(rng)
        tex = pt.part(c, s * 0.2, (w / 2, h / 2))
        kind = rng.choice(["circle", "box", "tree"])
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h if avoid_y is None else avoid_y)
        r = s * rng.uniform(0.03, 0.12)
        view = canvas.window((x0 - r - 1, y0 - r * 1.2 - 1, x0 + r + 1, y0 + r * 1.6 + 1))
        if view is None:
            continue
        if kind == "circle":
            region = _ellipse(view.x, view.y, x0, y0, r, r * rng.uniform(0.6, 1.4))
        elif kind == "box":
            region = _rounded_rect(view.x, view.y, x0 - r, y0 - r * 0.7, x0 + r, y0 + r * 0.7, r * 0.2)
        else:
            trunk = _rounded_rect(view.x, view.y, x0 - r * 0.15, y0, x0 + r * 0.15, y0 + r * 1.6, 0)
            view.paint(trunk, tx.solid(tx.named_colour(rng, "brown")), 0)
            region = _ellipse(view.x, view.y, x0, y0, r, r * 1.2)
        view.paint(region, tex, 0)


# --------------------------------------------------------------------------- objects


def _place(rng: np.random.Generator, size: int, scale: float, angle: float, flip: bool,
           box: tuple[float, float, float, float]) -> _Frame:
    """A frame at a random position that keeps the local box (u0, v0, u1, v1) inside the image."""
    u0, v0, u1, v1 = box
    probe = _Frame(0.0, 0.0, scale, angle, flip)
    corners = [probe.to_image(u, v) for u in (u0, u1) for v in (v0, v1)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    margin = 0.02 * size
    lo_x, hi_x = margin - min(xs), size - margin - max(xs)
    lo_y, hi_y = margin - min(ys), size - margin - max(ys)
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (lo_x + hi_x) / 2
    cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (lo_y + hi_y) / 2
    return _Frame(cx, cy, scale, angle, flip)


def _px(frame: _Frame, pixels: float) -> float:
    """A length of `pixels` image pixels in the frame's local units (keeps tiny parts visible)."""
    return pixels / frame.scale


@dataclass(frozen=True)
class _CarShape:
    """A car's proportions in local units: length 1, origin at the middle of the chassis bottom."""

    h_ch: float
    cab: dict
    roof0: float
    roof1: float
    rw: float
    wheel_y: float
    wx: tuple[float, float]

    @property
    def top(self) -> float:
        return -self.h_ch - self.cab["h"]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The car's own box (what `size` measures and placement keeps in view)."""
        return (-0.5, self.top, 0.5, self.wheel_y + self.rw)

    @property
    def footprint(self) -> tuple[float, float, float, float]:
        """Everything its painter touches (the shadow included)."""
        return (-0.56, self.top - 0.01, 0.56, self.wheel_y + self.rw + 0.06)

    @property
    def regions(self) -> list[tuple[float, float, float, float]]:
        """Boxes covering what it paints, tighter than the footprint (for overlap tests)."""
        return [self.footprint]


def _car_shape(rng: np.random.Generator) -> _CarShape:
    h_ch = rng.uniform(0.14, 0.22)
    van = rng.uniform() < 0.2
    if van:
        cab = dict(x0=-0.47, x1=rng.uniform(0.25, 0.38), h=rng.uniform(0.18, 0.25),
                   d0=rng.uniform(0.0, 0.02), d1=rng.uniform(0.05, 0.12))
    else:
        cab = dict(x0=rng.uniform(-0.44, -0.26), x1=rng.uniform(0.08, 0.3), h=rng.uniform(0.12, 0.2),
                   d0=rng.uniform(0.03, 0.14), d1=rng.uniform(0.07, 0.2))
    spare = cab["x1"] - cab["x0"] - 0.22  # keep a roof at least 0.22 long
    if cab["d0"] + cab["d1"] > spare:
        cab["d0"], cab["d1"] = (cab["d0"] * spare / (cab["d0"] + cab["d1"]),
                                cab["d1"] * spare / (cab["d0"] + cab["d1"]))
    roof0, roof1 = cab["x0"] + cab["d0"], cab["x1"] - cab["d1"]
    rw = rng.uniform(0.085, 0.12)
    wheel_y = rng.uniform(-0.01, 0.02)
    wx = (-0.5 + rng.uniform(0.16, 0.24), 0.5 - rng.uniform(0.16, 0.24))
    return _CarShape(h_ch, cab, roof0, roof1, rw, wheel_y, wx)


def _paint_car(canvas: _Canvas, pt: _Paint, frame: _Frame, sh: _CarShape, body_name: str) -> None:
    """Paint one car (its shadow, body, windows, lights, wheels) in `frame` onto `canvas`."""
    rng, scale = pt.rng, frame.scale
    u, v = frame.local(canvas.x, canvas.y)
    h_ch, cab, roof0, roof1, rw, wheel_y, wx, top = sh.h_ch, sh.cab, sh.roof0, sh.roof1, sh.rw, sh.wheel_y, sh.wx, sh.top
    canvas.shade(_ellipse(u, v, 0.0, wheel_y + rw, 0.55, 0.05), rng.uniform(0.5, 0.8))

    # body: chassis + cabin
    body_c = tx.named_colour(rng, body_name)
    chassis = _rounded_rect(u, v, -0.5, -h_ch, 0.5, 0.0, rng.uniform(0.03, 0.07))
    cab_pts = [(cab["x0"], -h_ch + 0.01), (roof0, top), (roof1, top), (cab["x1"], -h_ch + 0.01)]
    cabin = _convex_polygon(u, v, cab_pts)
    body_tex = pt.part(body_c, scale, frame.to_image(0, -0.2))
    if rng.uniform() < 0.5:  # plain paint is the most common car finish
        body_tex = pt.noise(tx.solid(body_c), 0.015)
    canvas.paint(chassis | cabin, body_tex, 1)
    for x in wx:  # dark wheel wells, still body
        canvas.shade(_ellipse(u, v, x, wheel_y, rw * 1.15, rw * 1.15) & chassis, 0.45)
    pillar_x = roof0 + (roof1 - roof0) * rng.uniform(0.35, 0.7)
    door = (np.abs(u - pillar_x) < _px(frame, 0.6)) & chassis & (v < -0.03)
    canvas.shade(door, 0.6)
    canvas.shade(_rounded_rect(u, v, -0.5, -rng.uniform(0.03, 0.05), 0.5, 0.0, 0.02) & chassis, rng.uniform(0.6, 0.85))

    # windows: the cabin shrunk inward, split by pillars
    m = max(rng.uniform(0.016, 0.03), _px(frame, 1.5))
    belt = 0.01 + rng.uniform(0.005, 0.03)
    glass = _convex_polygon(u, v, cab_pts, insets=[m, m, m, belt])
    glass &= np.abs(u - pillar_x) > max(rng.uniform(0.01, 0.02), _px(frame, 1.0))
    if rng.uniform() < 0.3:
        glass &= np.abs(u - (pillar_x + cab["x0"]) / 2 - 0.02) > max(0.01, _px(frame, 1.0))
    glass_c = tx.distinct_colour(rng, [body_c])
    canvas.paint(glass, pt.part(glass_c, scale * 0.3, frame.to_image(0, top)), 3)

    # lights: front and rear, clipped to the chassis, colours independent of each other
    for front in (True, False):
        lw = max(rng.uniform(0.035, 0.07), _px(frame, 3))
        lh = max(rng.uniform(0.025, 0.05), _px(frame, 3))
        ly = -h_ch * rng.uniform(0.5, 0.75)
        x0 = 0.5 - 0.008 - lw if front else -0.5 + 0.008
        if rng.uniform() < 0.5:
            lamp = _ellipse(u, v, x0 + lw / 2, ly, lw / 2, lh / 2)
        else:
            lamp = _rounded_rect(u, v, x0, ly - lh / 2, x0 + lw, ly + lh / 2, lh * 0.3)
        lamp_c = tx.distinct_colour(rng, [body_c], 0.4)
        canvas.paint(lamp & chassis, pt.noise(tx.solid(lamp_c), 0.02), 4)

    # wheels: tyre, hub (with spokes sometimes); colours vary per wheel
    tyre_c = tx.distinct_colour(rng, [body_c], 0.3)
    for x in wx:
        canvas.paint(_ellipse(u, v, x, wheel_y, rw, rw), pt.noise(tx.solid(tyre_c), 0.03), 2)
        hub_c = tx.distinct_colour(rng, [tyre_c], 0.3)
        hr = rw * rng.uniform(0.4, 0.65)
        hub_tex = pt.part(hub_c, hr * scale, frame.to_image(x, wheel_y))
        canvas.paint(_ellipse(u, v, x, wheel_y, hr, hr), hub_tex, 2)


@dataclass(frozen=True)
class _FaceShape:
    """A face's proportions in local units: about 1 tall, origin at the face centre."""

    a: float
    b: float
    taper: float
    shoulder_bottom: float = 3.0  # where clothes end (v1: far below the frame)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The head (hair and ears included): what `size` measures and placement keeps in view."""
        return (-self.a - 0.1, -self.b - 0.1, self.a + 0.1, self.b + 0.02)

    @property
    def footprint(self) -> tuple[float, float, float, float]:
        """Everything its painter touches (neck, long hair and clothes included)."""
        return (-0.95, -self.b - 0.2, 0.95, max(self.shoulder_bottom, 0.85))

    @property
    def regions(self) -> list[tuple[float, float, float, float]]:
        """Boxes covering what it paints, tighter than the footprint (for overlap tests): the head
        with hair, ears and neck; the clothes below it."""
        return [(-self.a - 0.2, -self.b - 0.2, self.a + 0.2, 0.85),
                (-0.92, self.b + 0.04, 0.92, max(self.shoulder_bottom, 0.85) + 0.01)]


def _face_shape(rng: np.random.Generator) -> _FaceShape:
    return _FaceShape(rng.uniform(0.3, 0.4), rng.uniform(0.44, 0.52), rng.uniform(0.0, 0.25))


def _paint_face(canvas: _Canvas, pt: _Paint, frame: _Frame, sh: _FaceShape, hair_name: str) -> None:
    """Paint one face (clothes, hair, neck, ears, skin, eyes, nose, mouth) in `frame` onto `canvas`."""
    rng, scale, a, b, taper = pt.rng, frame.scale, sh.a, sh.b, sh.taper
    u, v = frame.local(canvas.x, canvas.y)
    skin_c = tx.random_colour(rng)
    hair_c = tx.named_colour(rng, hair_name)
    skin_tex = pt.part(skin_c, scale, frame.to_image(0, 0))
    if rng.uniform() < 0.5:
        skin_tex = pt.noise(tx.solid(skin_c), 0.015)
    hair_tex = pt.part(hair_c, scale * 0.5, frame.to_image(0, -b))

    if rng.uniform() < 0.6:  # clothes/shoulders: background class
        top_c = tx.distinct_colour(rng, [skin_c])
        shoulders = _rounded_rect(u, v, -rng.uniform(0.6, 0.9), b + rng.uniform(0.05, 0.2), rng.uniform(0.6, 0.9),
                                  sh.shoulder_bottom, 0.2)
        canvas.paint(shoulders, pt.part(top_c, scale, frame.to_image(0, 1)), 0)
    long_hair = rng.uniform() < 0.5
    if long_hair:
        hx = a + rng.uniform(0.06, 0.16)
        canvas.paint(_rounded_rect(u, v, -hx, -0.2, hx, b * rng.uniform(0.6, 1.4), 0.15), hair_tex, 4)
    nw = a * rng.uniform(0.35, 0.5)
    canvas.paint(_rounded_rect(u, v, -nw, 0.2, nw, b + rng.uniform(0.1, 0.3), 0.02), skin_tex, 1)
    canvas.shade(_rounded_rect(u, v, -nw, b * 0.7, nw, b + 0.08, 0.02), 0.8)  # chin shadow on neck
    ey_ear = rng.uniform(-0.06, 0.05)
    for side in (-1, 1):
        canvas.paint(_ellipse(u, v, side * a * 0.97, ey_ear, rng.uniform(0.05, 0.08), rng.uniform(0.09, 0.13)), skin_tex, 1)

    half_w = a * (1.0 - taper * np.clip(v / b, 0.0, 1.0))  # egg shape: narrower chin
    face = (u / half_w) ** 2 + (v / b) ** 2 <= 1.0
    canvas.paint(face, skin_tex, 1)

    # eyes and mouth: positions and sizes vary, never below a few pixels
    ex, ey = a * rng.uniform(0.36, 0.5), rng.uniform(-0.12, 0.0)
    ew, eh = max(rng.uniform(0.055, 0.08), _px(frame, 2)), max(rng.uniform(0.028, 0.045), _px(frame, 1.5))
    sclera_c = tx.distinct_colour(rng, [skin_c], 0.4)
    iris_c = tx.distinct_colour(rng, [sclera_c], 0.35)
    for side in (-1, 1):
        cx = side * ex
        eye = _ellipse(u, v, cx, ey, ew, eh)
        canvas.paint(eye, tx.solid(sclera_c), 2)
        ir = eh * rng.uniform(0.75, 1.0)
        off = rng.uniform(-0.3, 0.3) * ew
        canvas.paint(eye & _ellipse(u, v, cx + off, ey, ir, ir), tx.solid(iris_c), 2)
        canvas.shade(eye & _ellipse(u, v, cx + off, ey, ir * 0.45, ir * 0.45), 0.25)
    nose_y = rng.uniform(0.06, 0.13)
    canvas.shade(_ellipse(u, v, 0.0, nose_y, rng.uniform(0.03, 0.06), rng.uniform(0.02, 0.04)) & face, 0.75)

    my = rng.uniform(max(nose_y + 0.1, 0.2), 0.32)
    mw, mh = max(a * rng.uniform(0.3, 0.45), _px(frame, 2.5)), max(rng.uniform(0.025, 0.06), _px(frame, 1.5))
    mouth = _ellipse(u, v, 0.0, my, mw, mh)
    style = rng.choice(["closed", "smile", "open"])
    if style == "smile":
        mouth = _ellipse(u, v, 0.0, my - mh, mw, 2 * mh) & (v >= my - mh + _px(frame, 0.8))
    mouth_c = tx.distinct_colour(rng, [skin_c], 0.35)
    canvas.paint(mouth & face, pt.noise(tx.solid(mouth_c), 0.02), 3)
    if style == "open":
        canvas.shade(mouth & _ellipse(u, v, 0.0, my, mw * 0.8, mh * 0.5), 0.35)

    # hair on top: a cap over the forehead down to a hairline, plus sides beside the face
    t = rng.uniform(0.03, 0.1)
    cap = _ellipse(u, v, 0.0, -rng.uniform(0.0, 0.06), a + t, b + t)
    hair_low = ey - eh - max(0.05, _px(frame, 2))
    hairline = np.minimum(-b * rng.uniform(0.35, 0.7) + rng.uniform(-0.3, 0.6) * u ** 2 + rng.uniform(-0.15, 0.15) * u
                          + rng.uniform(0, 0.03) * np.sin(u * rng.uniform(20, 50)), hair_low)
    sides = ~face & (v < rng.uniform(-0.15, 0.15))
    canvas.paint(cap & ((v < hairline) | sides), hair_tex, 4)


# --------------------------------------------------------------------------- v1 scenes (frozen)


def _render_car(rng: np.random.Generator, size: int, ss: int) -> tuple[_Canvas, str]:
    """A side-view car (body, wheels, windows, lights) on a sky/ground scene."""
    canvas = _Canvas(size, size, ss)
    pt = _Paint(rng, size)
    body_name = str(rng.choice(CAPTION_COLOURS))
    ground = str(rng.choice(CAR_GROUNDS))
    sh = _car_shape(rng)
    scale = size * rng.uniform(0.55, 0.92)
    angle = np.deg2rad(rng.uniform(-6, 6))
    frame = _place(rng, size, scale, angle, bool(rng.uniform() < 0.5), sh.box)

    # scene: sky above a horizon somewhat above the wheels' bottom, ground below; then the car
    horizon = frame.to_image(0.0, sh.wheel_y + sh.rw - rng.uniform(0.05, 0.3))[1]
    canvas.fill(_sky_texture(pt, size))
    _distractors(canvas, pt, int(rng.integers(0, 3)), avoid_y=horizon)
    canvas.paint(canvas.y >= horizon, _background_texture(ground, pt, size), 0)
    _paint_car(canvas, pt, frame, sh, body_name)
    return canvas, f"a {body_name} car on {ground}"


def _render_face(rng: np.random.Generator, size: int, ss: int) -> tuple[_Canvas, str]:
    """A frontal face (skin, eyes, mouth, hair) over a textured backdrop."""
    canvas = _Canvas(size, size, ss)
    pt = _Paint(rng, size)
    hair_name = str(rng.choice(CAPTION_COLOURS))
    backdrop = str(rng.choice(FACE_BACKDROPS))
    canvas.fill(_background_texture(backdrop, pt, size))
    _distractors(canvas, pt, int(rng.integers(0, 3)))
    sh = _face_shape(rng)
    scale = size * rng.uniform(0.42, 0.68)
    angle = np.deg2rad(rng.uniform(-12, 12))
    frame = _place(rng, size, scale, angle, bool(rng.uniform() < 0.5), sh.box)
    _paint_face(canvas, pt, frame, sh, hair_name)
    return canvas, f"a face with {hair_name} hair in front of {backdrop}"


_RENDERERS = {"car": _render_car, "face": _render_face}


class World:
    """Renders samples of one kind ("car" or "face"); sample i is a pure function of (seed, i).

    The v1 world: one object filling most of a square frame, every part visible. Its samples
    never change (benchmarks and tests depend on them); `SceneWorld` is the richer v2.
    """

    def __init__(self, kind: str = "car", size: int = 256, seed: int = 0, supersample: int = 3) -> None:
        if kind not in KIND_CLASSES:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KIND_CLASSES)}")
        if size < 64 or size % 64:
            raise ValueError(f"size must be a positive multiple of 64, got {size}")
        if supersample < 1 or supersample % 2 == 0:
            raise ValueError("supersample must be odd (the mask is the centre subsample)")
        self.kind, self.size, self.seed, self.supersample = kind, size, seed, supersample

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; index 0 is background, mask values index this tuple."""
        return KIND_CLASSES[self.kind]

    def rng(self, index: int) -> np.random.Generator:
        """The random stream that sample `index` is drawn from."""
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, _KIND_IDS[self.kind], index])

    def sample(self, index_or_rng: int | np.random.Generator) -> Sample:
        """Render one sample; every class is guaranteed at least one mask pixel."""
        rng = index_or_rng if isinstance(index_or_rng, np.random.Generator) else self.rng(int(index_or_rng))
        n_classes = len(self.classes)
        for _ in range(_MAX_TRIES):
            canvas, caption = _RENDERERS[self.kind](rng, self.size, self.supersample)
            image, mask, _ = canvas.finish(rng)
            if len(np.unique(mask)) == n_classes:
                return Sample(image=image, mask=mask, caption=caption)
        raise RuntimeError(f"could not render all {self.kind} parts at size {self.size}")


def make_split(kind: str, n: int, seed: int = 0, size: int = 256) -> list[Sample]:
    """The first `n` samples of World(kind, size, seed): a reproducible train or test split."""
    world = World(kind=kind, size=size, seed=seed)
    return [world.sample(i) for i in range(n)]


# --------------------------------------------------------------------------- v2 scenes

LAYOUTS = ("single", "group", "cut", "closeup")
# how often SceneWorld draws each layout: one object at any size, several, one cut off by the
# borders (plus a few small ones), a close-up of one part region
DEFAULT_LAYOUT_WEIGHTS = {"single": 0.3, "group": 0.3, "cut": 0.2, "closeup": 0.2}
MIN_SIZE, MAX_SIZE = 1 / 6, 0.95  # object sizes (fraction of the frame) of v2 scenes


@dataclass
class _Plan:
    """One object of a scene before painting: its shape, caption colour and (once placed) frame."""

    kind: str
    shape: _CarShape | _FaceShape
    colour: str
    angle: float
    flip: bool
    frame: _Frame | None = None
    size: float = 0.0

    def scale_for(self, size: float, width: int, height: int) -> float:
        """Pixels per local unit so that the box spans `size` of the canvas along its tighter axis."""
        u0, v0, u1, v1 = self.shape.box
        return size / max((u1 - u0) / width, (v1 - v0) / height)

    def at(self, cx: float, cy: float, scale: float) -> _Frame:
        return _Frame(cx, cy, scale, self.angle, self.flip)

    def anchors(self) -> list[tuple[float, float]]:
        """Local points of part regions a close-up can centre on."""
        sh = self.shape
        if isinstance(sh, _CarShape):
            mid = (sh.roof0 + sh.roof1) / 2
            return [(sh.wx[0], sh.wheel_y), (sh.wx[1], sh.wheel_y), (0.46, -sh.h_ch * 0.6),
                    (-0.46, -sh.h_ch * 0.6), (mid, sh.top + sh.cab["h"] * 0.5), (mid, -sh.h_ch * 0.5)]
        return [(-sh.a * 0.43, -0.06), (sh.a * 0.43, -0.06), (0.0, 0.26), (0.0, -sh.b), (sh.a, 0.0), (0.0, 0.1)]


def _draw_object(kind: str, rng: np.random.Generator) -> _Plan:
    """Shape, colour word, tilt and mirroring of one object (placement comes later)."""
    if kind == "car":
        return _Plan(kind, _car_shape(rng), str(rng.choice(CAPTION_COLOURS)),
                     float(np.deg2rad(rng.uniform(-6, 6))), bool(rng.uniform() < 0.5))
    a, b, taper = rng.uniform(0.3, 0.4), rng.uniform(0.44, 0.52), rng.uniform(0.0, 0.25)
    shape = _FaceShape(a, b, taper, shoulder_bottom=b + rng.uniform(0.45, 1.2))  # a bust, not a column
    return _Plan(kind, shape, str(rng.choice(CAPTION_COLOURS)),
                 float(np.deg2rad(rng.uniform(-12, 12))), bool(rng.uniform() < 0.5))


def _clip_area(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    return max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection area / the smaller box's area."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(area, 1e-9)


def _place_inside(plan: _Plan, rng: np.random.Generator, width: int, height: int, size: float,
                  taken: list[tuple[float, float, float, float]], max_overlap: float,
                  tries: int = 30, hug: bool = False) -> bool:
    """Put the object's box wholly inside the canvas, its regions overlapping each earlier one by
    at most `max_overlap` of the smaller; `hug`: against the bottom or a side (where more room is
    left), to leave room for others."""
    scale = plan.scale_for(size, width, height)
    x0, y0, x1, y1 = plan.at(0.0, 0.0, scale).bounds(plan.shape.box)
    margin = 0.01 * min(width, height)
    lo_x, hi_x = margin - x0, width - margin - x1
    lo_y, hi_y = margin - y0, height - margin - y1
    if hi_x < lo_x or hi_y < lo_y:
        return False
    for _ in range(tries):
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        if hug and (hi_y - lo_y) / height >= (hi_x - lo_x) / width:  # most room above: sit at the bottom
            cy = hi_y - (cy - lo_y) * 0.1
        elif hug:  # most room beside: stand at the left or right
            cx = (lo_x + (cx - lo_x) * 0.1) if cx < (lo_x + hi_x) / 2 else (hi_x - (hi_x - cx) * 0.1)
        frame = plan.at(cx, cy, scale)
        boxes = [_clip_area(frame.bounds(r), width, height) for r in plan.shape.regions]
        if all(_overlap(b, t) <= max_overlap for b in boxes for t in taken):
            plan.frame, plan.size = frame, size
            taken.extend(boxes)
            return True
    return False


def _place_cut(plan: _Plan, rng: np.random.Generator, width: int, height: int, size: float) -> None:
    """Put the object across the border: 30-85 % of its box inside the canvas."""
    scale = plan.scale_for(size, width, height)
    x0, y0, x1, y1 = plan.at(0.0, 0.0, scale).bounds(plan.shape.box)
    bw, bh = x1 - x0, y1 - y0
    for _ in range(50):
        bx, by = rng.uniform(-0.6 * bw, width - 0.4 * bw), rng.uniform(-0.6 * bh, height - 0.4 * bh)
        inside = (min(bx + bw, width) - max(bx, 0)) * (min(by + bh, height) - max(by, 0)) / (bw * bh)
        if 0.3 <= inside <= 0.85:
            break
    plan.frame, plan.size = plan.at(bx - x0, by - y0, scale), size


def _place_closeup(plan: _Plan, rng: np.random.Generator, width: int, height: int) -> None:
    """Zoom in on one part region: the object 1.8-4.5 x the frame, the region near the centre."""
    scale = plan.scale_for(0.9, width, height) * rng.uniform(1.8, 4.5)
    anchors = plan.anchors()
    au, av = anchors[int(rng.integers(len(anchors)))]
    ax, ay = plan.at(0.0, 0.0, scale).to_image(au, av)
    tx_, ty_ = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    plan.frame, plan.size = plan.at(tx_ - ax, ty_ - ay, scale), scale / plan.scale_for(1.0, width, height)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _layout(kind: str, layout: str, rng: np.random.Generator, width: int, height: int) -> list[_Plan]:
    """The objects of one SceneWorld sample, placed."""
    plans: list[_Plan] = []
    taken: list[tuple[float, float, float, float]] = []
    if layout == "single":
        plan = _draw_object(kind, rng)
        size = _log_uniform(rng, MIN_SIZE, MAX_SIZE)
        while not _place_inside(plan, rng, width, height, size, taken, 1.0):
            size *= 0.9
        plans.append(plan)
    elif layout == "group":
        for _ in range(int(rng.integers(2, 7))):
            plan = _draw_object(kind, rng)
            if _place_inside(plan, rng, width, height, _log_uniform(rng, MIN_SIZE, 0.6), taken, 0.2):
                plans.append(plan)
    elif layout == "cut":
        plan = _draw_object(kind, rng)
        _place_cut(plan, rng, width, height, rng.uniform(0.7, 1.6))
        taken.extend(_clip_area(plan.frame.bounds(r), width, height) for r in plan.shape.regions)
        for _ in range(int(rng.integers(0, 3))):
            small = _draw_object(kind, rng)
            if _place_inside(small, rng, width, height, _log_uniform(rng, MIN_SIZE, 0.35), taken, 0.15):
                plans.append(small)
        plans.append(plan)
    elif layout == "closeup":
        plan = _draw_object(kind, rng)
        _place_closeup(plan, rng, width, height)
        plans.append(plan)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return plans


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else " ".join(words[:-1]) + " and " + words[-1]


def _scene_caption(kind: str, objects: list[SceneObject], setting: str | None, closeup: bool) -> str:
    """Names the objects (count, colours of the visible car bodies / hair), the setting (unless
    none of the background shows) and the visible parts."""
    classes = KIND_CLASSES[kind]
    colour_part = 1 if kind == "car" else 4
    colours = list(dict.fromkeys(o.colour for o in objects if colour_part in o.parts))
    n = len(objects)
    if kind == "car":
        noun = "car" if n == 1 else "cars"
        subject = f"{_and(colours)} {noun}" if colours else noun
    else:
        noun = "face" if n == 1 else "faces"
        subject = f"{noun} with {_and(colours)} hair" if colours else noun
    subject = ("a " if n == 1 else (_COUNT_WORDS[n - 2] if n <= 8 else "many") + " ") + subject
    if closeup:
        subject = "a close up of " + subject
    where = "" if setting is None else (f" on {setting}" if kind == "car" else f" in front of {setting}")
    parts = sorted({p for o in objects for p in o.parts})
    return f"{subject}{where} showing {' '.join(classes[p] for p in parts)}"


def _render_scene(kind: str, rng: np.random.Generator, width: int, height: int, ss: int,
                  plans: list[_Plan], closeup: bool = False) -> Sample:
    """Paint the background and the planned objects (farther / smaller first), then finish."""
    canvas = _Canvas(width, height, ss, instances=True)
    pt = _Paint(rng, max(width, height), tiled=True)
    ref = min(width, height)
    n_distractors = int(rng.integers(0, 3 + round(width * height / 400_000)))
    if kind == "car":
        ground = str(rng.choice(CAR_GROUNDS))
        horizon = min(p.frame.to_image(0.0, p.shape.wheel_y + p.shape.rw - rng.uniform(0.05, 0.3))[1] for p in plans)
        canvas.fill(_sky_texture(pt, ref))
        _distractors(canvas, pt, n_distractors, avoid_y=max(horizon, 1.0))
        canvas.paint(canvas.y >= horizon, _background_texture(ground, pt, ref), 0)
        order = sorted(range(len(plans)), key=lambda i: plans[i].frame.bounds(plans[i].shape.box)[3])
        setting = ground
    else:
        backdrop = str(rng.choice(FACE_BACKDROPS))
        canvas.fill(_background_texture(backdrop, pt, ref))
        _distractors(canvas, pt, n_distractors)
        order = sorted(range(len(plans)), key=lambda i: plans[i].frame.scale)
        setting = backdrop
    painter = _paint_car if kind == "car" else _paint_face
    for inst, i in enumerate(order, start=1):
        plan = plans[i]
        canvas.instance = inst
        view = canvas.window(plan.frame.bounds(plan.shape.footprint))
        if view is not None:
            painter(view, pt, plan.frame, plan.shape, plan.colour)
    image, mask, inst_map = canvas.finish(rng)
    objects = []
    for inst, i in enumerate(order, start=1):
        plan = plans[i]
        own = mask[inst_map == inst]
        counts = np.bincount(own, minlength=len(KIND_CLASSES[kind]))
        parts = tuple(int(c) for c in np.flatnonzero(counts >= MIN_PART_PIXELS) if c > 0)
        if parts:
            box = tuple(round(float(b), 2) for b in plan.frame.bounds(plan.shape.box))
            objects.append(SceneObject(inst, box, round(plan.size, 4), parts, plan.colour))
    if np.count_nonzero(mask == 0) < MIN_PART_PIXELS:
        setting = None
    caption = _scene_caption(kind, objects, setting, closeup) if objects else ""
    return Sample(image=image, mask=mask, caption=caption, instances=inst_map, objects=tuple(objects))


def _check(kind: str, width: int, height: int, supersample: int) -> None:
    if kind not in KIND_CLASSES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KIND_CLASSES)}")
    if width < 32 or height < 32:
        raise ValueError(f"canvas must be at least 32 x 32 px, got {width} x {height}")
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError("supersample must be odd (the mask is the centre subsample)")


class SceneWorld:
    """The v2 world: scenes of one kind on a width x height canvas; sample i is a pure function
    of (seed, i).

    Each sample draws a layout (weights `layouts`): "single" (one object, size log-uniform from
    1/6 of the frame to nearly all of it), "group" (2-6 objects, 1/6 to 0.6, overlapping little),
    "cut" (one object of 0.7-1.6 x the frame across the border, plus up to 2 small ones) or
    "closeup" (one part region of an object 1.8-4.5 x the frame). Size = the object's box over
    the canvas along its tighter axis. Captions name the count, colours and the visible parts
    ("three red blue and green cars on road showing body wheel window light"; words in
    `caption_vocabulary(2)`); not every class is in every sample (close-ups, cut-offs).
    """

    def __init__(self, kind: str = "car", width: int = 256, height: int | None = None, seed: int = 0,
                 supersample: int = 3, layouts: dict[str, float] | None = None) -> None:
        height = width if height is None else height
        _check(kind, width, height, supersample)
        weights = dict(DEFAULT_LAYOUT_WEIGHTS if layouts is None else layouts)
        if not weights or set(weights) - set(LAYOUTS) or min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise ValueError(f"layouts must weigh some of {LAYOUTS}, got {weights}")
        self.kind, self.width, self.height, self.seed, self.supersample = kind, width, height, seed, supersample
        self.layouts = {k: v / sum(weights.values()) for k, v in weights.items()}

    @property
    def classes(self) -> tuple[str, ...]:
        return KIND_CLASSES[self.kind]

    def rng(self, index: int) -> np.random.Generator:
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, _KIND_IDS[self.kind], index, 2])

    def sample(self, index_or_rng: int | np.random.Generator, layout: str | None = None) -> Sample:
        """Render one scene (its layout drawn unless given); at least one part is visible."""
        rng = index_or_rng if isinstance(index_or_rng, np.random.Generator) else self.rng(int(index_or_rng))
        names = list(self.layouts)
        for _ in range(_MAX_TRIES):
            chosen = layout or names[int(rng.choice(len(names), p=[self.layouts[n] for n in names]))]
            plans = _layout(self.kind, chosen, rng, self.width, self.height)
            if not plans:
                continue
            s = _render_scene(self.kind, rng, self.width, self.height, self.supersample, plans,
                              closeup=chosen == "closeup")
            if s.objects:
                return s
        raise RuntimeError(f"could not render a visible {self.kind} at {self.width} x {self.height}")


def compose(kind: str, width: int, height: int, seed: int = 0, n_objects: int | None = None,
            min_size: float = MIN_SIZE, max_size: float = 0.9, supersample: int | None = None,
            max_overlap: float = 0.1) -> Sample:
    """One large scene of several whole objects of `kind`, for high-resolution benchmarks.

    `n_objects` (default 3-6, drawn) objects with sizes spread geometrically from `max_size` down
    to `min_size` (fraction of the canvas along the object's tighter axis: 0.9 = nearly the full
    height for a face on a landscape canvas), each wholly inside the canvas, footprints overlapping
    at most `max_overlap` of the smaller one; an object that does not fit is shrunk (never below
    `min_size`) or left out; the smallest is always there (the largest shrinks until both fit,
    which cars on a landscape canvas need: one 0.9 wide is most of its height). Every class is
    visible (>= MIN_PART_PIXELS mask pixels). `supersample` defaults to 3 up to 640 x 640 pixels
    and 1 above (rendering time; the mask is exact at pixel centres either way). Deterministic
    from (kind, width, height, seed, n_objects, min_size, max_size, max_overlap).
    """
    if supersample is None:
        supersample = 3 if width * height <= 640 * 640 else 1
    _check(kind, width, height, supersample)
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
    if n_objects is not None and not 1 <= n_objects <= 32:
        raise ValueError(f"n_objects must be in 1..32, got {n_objects}")
    rng = np.random.default_rng([seed, _KIND_IDS[kind], width, height, 3])
    n_classes = len(KIND_CLASSES[kind])
    n = int(rng.integers(3, 7)) if n_objects is None else n_objects
    for _ in range(_MAX_TRIES):
        ratio = min_size / max_size
        sizes = [max_size * ratio ** (i / (n - 1)) if n > 1 else max_size for i in range(n)]
        sizes = [float(np.clip(s * rng.uniform(0.93, 1.07), min_size, max_size)) for s in sizes]
        sizes[0], sizes[-1] = max_size, min_size
        big = sizes[0]
        for _ in range(100):  # the largest at the bottom or a side, then the smallest; shrink the largest until both fit
            taken: list[tuple[float, float, float, float]] = []
            plans = [_draw_object(kind, rng)]
            if not _place_inside(plans[0], rng, width, height, big, taken, 1.0, hug=True):
                big = max(big * 0.95, min_size)
                continue
            if n == 1:
                break
            plans.append(_draw_object(kind, rng))
            if _place_inside(plans[1], rng, width, height, min_size, taken, max_overlap) or big <= min_size:
                break
            big = max(big * 0.95, min_size)
        for size in sizes[1:-1]:  # the others, shrunk (not below min_size) or left out where they do not fit
            plan = _draw_object(kind, rng)
            while not _place_inside(plan, rng, width, height, size, taken, max_overlap) and size > min_size:
                size = max(size * 0.9, min_size)
            if plan.frame is not None:
                plans.append(plan)
        plans = [p for p in plans if p.frame is not None]
        s = _render_scene(kind, rng, width, height, supersample, plans)
        if all(np.count_nonzero(s.mask == c) >= MIN_PART_PIXELS for c in range(n_classes)):
            return s
    raise RuntimeError(f"could not compose every {kind} part at {width} x {height}")
