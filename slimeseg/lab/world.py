"""A deterministic synthetic world of part-structured objects (cars, faces) with exact masks.

Why: offline there is no pretrained Stable Diffusion and no labelled data, so nothing can measure
segmentation quality. This world supplies images whose parts are recognisable by shape and layout
(part colours and textures are random, so colour matching alone fails), each with an exact part
mask and a caption, to pretrain a small SD on and to evaluate SLiMe against.

Rendering: every shape is an implicit function of position, evaluated on a supersampled grid
(default 3x3 per pixel). The image is the average of the subsamples (anti-aliased edges); the mask
is the label at each pixel's centre subsample, so it is exact for the drawn shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Sample:
    """One rendered example: RGB image, part mask (class indices into World.classes), caption."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8
    caption: str


def caption_vocabulary() -> tuple[str, ...]:
    """Every word any caption uses (for a tokenizer that keeps each word one token)."""
    words = {"a", "car", "on", "face", "with", "hair", "in", "front", "of"}
    words.update(CAPTION_COLOURS, CAR_GROUNDS, FACE_BACKDROPS)
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
    """A supersampled RGB + label canvas that parts are painted onto, back to front."""

    def __init__(self, size: int, supersample: int) -> None:
        n = size * supersample
        c = (np.arange(n, dtype=np.float32) + 0.5) / supersample
        self.size, self.ss = size, supersample
        self.x = np.broadcast_to(c[None, :], (n, n))
        self.y = np.broadcast_to(c[:, None], (n, n))
        self.labels = np.zeros((n, n), dtype=np.uint8)
        self.rgb = np.zeros((n, n, 3), dtype=np.float32)

    def paint(self, region: np.ndarray, texture: Texture, label: int | None = None) -> None:
        """Fill `region` with `texture`; relabel it unless `label` is None (pure decoration)."""
        if region.any():
            self.rgb[region] = texture(self.x[region], self.y[region])
            if label is not None:
                self.labels[region] = label

    def shade(self, region: np.ndarray, factor: float) -> None:
        """Darken or lighten `region` without changing its labels (shadows, seams)."""
        self.rgb[region] *= factor

    def finish(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Global lighting and grain, then downsample: (uint8 image, exact centre-sample mask)."""
        s, ss = self.size, self.ss
        img = self.rgb.reshape(s, ss, s, ss, 3).mean(axis=(1, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * np.arange(s)[None, :] + np.sin(angle) * np.arange(s)[:, None]) / s
        img = img * (1.0 + rng.uniform(0.0, 0.25) * (ramp - ramp.mean()))[..., None]
        img = img + rng.normal(0.0, rng.uniform(0.004, 0.02), size=img.shape)
        image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        mask = self.labels[ss // 2 :: ss, ss // 2 :: ss].copy()
        return image, mask


# --------------------------------------------------------------------------- backgrounds


def _background_texture(name: str, rng: np.random.Generator, size: int) -> Texture:
    """A full-frame texture that a caption can call `name`."""
    cell = size * rng.uniform(0.05, 0.15)
    if name == "grass":
        c = tx.hsv(rng.uniform(0.2, 0.36), rng.uniform(0.5, 0.85), rng.uniform(0.35, 0.7))
        t = tx.blotches(c, tx.shift(c, rng, 0.15), cell * 0.5, size, rng, sharpness=2.0)
        return tx.with_noise(t, 0.06, size, rng)
    if name == "road":
        c = tx.hsv(rng.uniform(), rng.uniform(0.0, 0.08), rng.uniform(0.22, 0.5))
        return tx.with_noise(tx.solid(c), 0.05, size, rng)
    if name == "sand":
        c = tx.hsv(rng.uniform(0.09, 0.13), rng.uniform(0.25, 0.5), rng.uniform(0.7, 0.92))
        t = tx.waves(c, tx.shift(c, rng, 0.1), cell * 0.4, cell * 0.2, cell * 3)
        return tx.with_noise(t, 0.03, size, rng)
    if name == "snow":
        c = tx.hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0))
        t = tx.blotches(c, tx.shift(c, rng, 0.12), cell, size, rng, sharpness=2.0)
        return tx.with_noise(t, 0.02, size, rng)
    if name == "bricks":
        brick = tx.random_colour(rng) if rng.uniform() < 0.4 else tx.named_colour(rng, rng.choice(["red", "brown", "orange"]))
        mortar = tx.hsv(0, 0, rng.uniform(0.55, 0.9))
        w = size * rng.uniform(0.08, 0.16)
        return tx.with_noise(tx.bricks(brick, mortar, w, w * rng.uniform(0.35, 0.5), rng), 0.03, size, rng)
    if name == "checkers":
        c1 = tx.random_colour(rng)
        return tx.checkers(c1, tx.distinct_colour(rng, [c1], 0.3), cell, rng.uniform(0, np.pi / 2))
    if name == "stripes":
        c1 = tx.random_colour(rng)
        return tx.stripes(c1, tx.distinct_colour(rng, [c1], 0.3), cell, rng.uniform(0, np.pi), rng.uniform(0.3, 0.7))
    if name == "clouds":
        sky = tx.hsv(rng.uniform(0.53, 0.63), rng.uniform(0.3, 0.7), rng.uniform(0.75, 1.0))
        return tx.blotches(sky, tx.hsv(0, 0, rng.uniform(0.92, 1.0)), size * rng.uniform(0.12, 0.25), size, rng, 3.0)
    if name == "leaves":
        c = tx.hsv(rng.uniform(0.18, 0.4), rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.6))
        return tx.blotches(c, tx.shift(c, rng, 0.3), cell * 0.4, size, rng, sharpness=6.0)
    if name == "wall":
        c1 = tx.random_colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        return tx.with_noise(tx.gradient(c1, tx.shift(c1, rng, 0.3), ang, -size * 0.7, size * 1.4), 0.02, size, rng)
    if name == "dots":
        c1 = tx.random_colour(rng)
        return tx.dots(c1, tx.distinct_colour(rng, [c1], 0.3), cell, cell * rng.uniform(0.15, 0.4))
    raise ValueError(f"unknown background {name!r}")


def _sky_texture(rng: np.random.Generator, size: int) -> Texture:
    """The upper part of a car scene: plain, graded or cloudy, any hue."""
    c = tx.random_colour(rng) if rng.uniform() < 0.4 else tx.hsv(rng.uniform(0.5, 0.66), rng.uniform(0.2, 0.7), rng.uniform(0.7, 1.0))
    style = rng.choice(["plain", "gradient", "clouds"])
    if style == "plain":
        return tx.solid(c)
    if style == "gradient":
        return tx.gradient(tx.shift(c, rng, 0.25), c, np.pi / 2, 0, size * 0.6)
    return tx.blotches(c, tx.hsv(0, 0, rng.uniform(0.9, 1.0)), size * rng.uniform(0.12, 0.25), size, rng, 3.0)


def _distractors(canvas: _Canvas, rng: np.random.Generator, n: int, avoid_y: float | None = None) -> None:
    """Random background shapes (circles, boxes, trees): background label, so shape alone is not enough."""
    s = canvas.size
    for _ in range(n):
        c = tx.random_colour(rng)
        tex = tx.random_part_texture(c, rng, s * 0.2, s, (s / 2, s / 2))
        kind = rng.choice(["circle", "box", "tree"])
        x0, y0 = rng.uniform(0, s), rng.uniform(0, s if avoid_y is None else avoid_y)
        r = s * rng.uniform(0.03, 0.12)
        if kind == "circle":
            region = _ellipse(canvas.x, canvas.y, x0, y0, r, r * rng.uniform(0.6, 1.4))
        elif kind == "box":
            region = _rounded_rect(canvas.x, canvas.y, x0 - r, y0 - r * 0.7, x0 + r, y0 + r * 0.7, r * 0.2)
        else:
            trunk = _rounded_rect(canvas.x, canvas.y, x0 - r * 0.15, y0, x0 + r * 0.15, y0 + r * 1.6, 0)
            canvas.paint(trunk, tx.solid(tx.named_colour(rng, "brown")), 0)
            region = _ellipse(canvas.x, canvas.y, x0, y0, r, r * 1.2)
        canvas.paint(region, tex, 0)


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


def _render_car(rng: np.random.Generator, size: int, ss: int) -> tuple[_Canvas, str]:
    """A side-view car (body, wheels, windows, lights) on a sky/ground scene."""
    canvas = _Canvas(size, ss)
    body_name = str(rng.choice(CAPTION_COLOURS))
    ground = str(rng.choice(CAR_GROUNDS))

    # shape parameters, local units: car length 1, origin at the middle of the chassis bottom
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
    top = -h_ch - cab["h"]

    scale = size * rng.uniform(0.55, 0.92)
    angle = np.deg2rad(rng.uniform(-6, 6))
    frame = _place(rng, size, scale, angle, bool(rng.uniform() < 0.5), (-0.5, top, 0.5, wheel_y + rw))
    u, v = frame.local(canvas.x, canvas.y)

    # scene: sky above a horizon somewhat above the wheels' bottom, ground below; car shadow
    horizon = frame.to_image(0.0, wheel_y + rw - rng.uniform(0.05, 0.3))[1]
    canvas.paint(np.ones_like(canvas.labels, dtype=bool), _sky_texture(rng, size), 0)
    _distractors(canvas, rng, int(rng.integers(0, 3)), avoid_y=horizon)
    canvas.paint(canvas.y >= horizon, _background_texture(ground, rng, size), 0)
    canvas.shade(_ellipse(u, v, 0.0, wheel_y + rw, 0.55, 0.05), rng.uniform(0.5, 0.8))

    # body: chassis + cabin
    body_c = tx.named_colour(rng, body_name)
    chassis = _rounded_rect(u, v, -0.5, -h_ch, 0.5, 0.0, rng.uniform(0.03, 0.07))
    cab_pts = [(cab["x0"], -h_ch + 0.01), (roof0, top), (roof1, top), (cab["x1"], -h_ch + 0.01)]
    cabin = _convex_polygon(u, v, cab_pts)
    body_tex = tx.random_part_texture(body_c, rng, scale, size, frame.to_image(0, -0.2))
    if rng.uniform() < 0.5:  # plain paint is the most common car finish
        body_tex = tx.with_noise(tx.solid(body_c), 0.015, size, rng)
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
    canvas.paint(glass, tx.random_part_texture(glass_c, rng, scale * 0.3, size, frame.to_image(0, top)), 3)

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
        canvas.paint(lamp & chassis, tx.with_noise(tx.solid(lamp_c), 0.02, size, rng), 4)

    # wheels: tyre, hub (with spokes sometimes); colours vary per wheel
    tyre_c = tx.distinct_colour(rng, [body_c], 0.3)
    for x in wx:
        canvas.paint(_ellipse(u, v, x, wheel_y, rw, rw), tx.with_noise(tx.solid(tyre_c), 0.03, size, rng), 2)
        hub_c = tx.distinct_colour(rng, [tyre_c], 0.3)
        hr = rw * rng.uniform(0.4, 0.65)
        hub_tex = tx.random_part_texture(hub_c, rng, hr * scale, size, frame.to_image(x, wheel_y))
        canvas.paint(_ellipse(u, v, x, wheel_y, hr, hr), hub_tex, 2)
    return canvas, f"a {body_name} car on {ground}"


def _render_face(rng: np.random.Generator, size: int, ss: int) -> tuple[_Canvas, str]:
    """A frontal face (skin, eyes, mouth, hair) over a textured backdrop."""
    canvas = _Canvas(size, ss)
    hair_name = str(rng.choice(CAPTION_COLOURS))
    backdrop = str(rng.choice(FACE_BACKDROPS))
    canvas.paint(np.ones_like(canvas.labels, dtype=bool), _background_texture(backdrop, rng, size), 0)
    _distractors(canvas, rng, int(rng.integers(0, 3)))

    # local units: face about 1 tall, origin at the face centre
    a, b = rng.uniform(0.3, 0.4), rng.uniform(0.44, 0.52)
    taper = rng.uniform(0.0, 0.25)
    scale = size * rng.uniform(0.42, 0.68)
    angle = np.deg2rad(rng.uniform(-12, 12))
    frame = _place(rng, size, scale, angle, bool(rng.uniform() < 0.5), (-a - 0.1, -b - 0.1, a + 0.1, b + 0.02))
    u, v = frame.local(canvas.x, canvas.y)

    skin_c = tx.random_colour(rng)
    hair_c = tx.named_colour(rng, hair_name)
    skin_tex = tx.random_part_texture(skin_c, rng, scale, size, frame.to_image(0, 0))
    if rng.uniform() < 0.5:
        skin_tex = tx.with_noise(tx.solid(skin_c), 0.015, size, rng)
    hair_tex = tx.random_part_texture(hair_c, rng, scale * 0.5, size, frame.to_image(0, -b))

    if rng.uniform() < 0.6:  # clothes/shoulders: background class
        top_c = tx.distinct_colour(rng, [skin_c])
        shoulders = _rounded_rect(u, v, -rng.uniform(0.6, 0.9), b + rng.uniform(0.05, 0.2), rng.uniform(0.6, 0.9), 3.0, 0.2)
        canvas.paint(shoulders, tx.random_part_texture(top_c, rng, scale, size, frame.to_image(0, 1)), 0)
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
    canvas.paint(mouth & face, tx.with_noise(tx.solid(mouth_c), 0.02, size, rng), 3)
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
    return canvas, f"a face with {hair_name} hair in front of {backdrop}"


_RENDERERS = {"car": _render_car, "face": _render_face}


class World:
    """Renders samples of one kind ("car" or "face"); sample i is a pure function of (seed, i)."""

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
            image, mask = canvas.finish(rng)
            if len(np.unique(mask)) == n_classes:
                return Sample(image=image, mask=mask, caption=caption)
        raise RuntimeError(f"could not render all {self.kind} parts at size {self.size}")


def make_split(kind: str, n: int, seed: int = 0, size: int = 256) -> list[Sample]:
    """The first `n` samples of World(kind, size, seed): a reproducible train or test split."""
    world = World(kind=kind, size=size, seed=seed)
    return [world.sample(i) for i in range(n)]
