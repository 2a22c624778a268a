"""Temporal consistency for clips: class scores carried along the motion from frame to frame.

Segmenting each frame on its own makes masks flicker: a pixel's class changes between frames
although the thing under it did not. With `temporal="flow"` the scores of the frames before are
moved onto the current frame along dense optical flow (OpenCV's DIS: classical, nothing to
download) and blended with the current frame's own:

    carried_t = w * scores_t + (1 - w) * warp(carried_{t-1})   where the flow is trusted
    carried_t = scores_t                                        elsewhere (occluded, out of view)

`w` is `temporal_weight`, so frame t-n weighs (1 - w)^n: a window that fades, and memory is one
frame's scores whatever the clip's length. The flow is trusted where the forward-backward check
holds (following the flow back and then forward returns near the start) and the pixel looks
like the one the flow says it came from; where most of the frame fails (a cut), the carry
starts afresh. Flow and carried scores live at a working resolution (the frame's long side at
most `flow_size`), finer than the UNet's latent cells, so motion of a pixel or two is followed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import SlimeConfig

CUT_VALID_SHARE = 0.3  # under this share of trusted pixels the frame is taken as a cut
PHOTO_TOLERANCE = 24.0  # grey levels a pixel may differ from where the flow says it came from
# px^2 the forward-backward check allows beyond its relative bound (on lab clips 0.5 trusted
# 2-4 % fewer pixels and flickered a little more)
FB_TOLERANCE = 2.0


def _cv2():
    try:
        import cv2
    except ImportError:
        from .errors import InputError

        raise InputError("temporal 'flow' needs OpenCV (pip install 'slimeseg[video]')") from None
    return cv2


def working_hw(hw: tuple[int, int], flow_size: int) -> tuple[int, int]:
    """The (h, w) flow and carried scores use: the frame's, its long side at most `flow_size`."""
    scale = min(1.0, flow_size / max(hw))
    return max(8, round(hw[0] * scale)), max(8, round(hw[1] * scale))


def _grid(flow: torch.Tensor) -> torch.Tensor:
    """grid_sample's sampling grid (1, h, w, 2) for a (h, w, 2) pixel flow (x, y)."""
    h, w = flow.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    gx = (xs + flow[..., 0] + 0.5) / w * 2 - 1  # (h, w)
    gy = (ys + flow[..., 1] + 0.5) / h * 2 - 1  # (h, w)
    return torch.stack([gx, gy], -1)[None]


def warp(values: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """values (C, h, w) sampled at each pixel + flow (h, w, 2): (C, h, w) (border-clamped)."""
    return F.grid_sample(values[None], _grid(flow), mode="bilinear", padding_mode="border",
                         align_corners=False)[0]


def consistent(back: torch.Tensor, fwd: torch.Tensor, tolerance: float = FB_TOLERANCE) -> torch.Tensor:
    """Where the backward flow (t -> t-1) and the forward flow (t-1 -> t) agree, (h, w) bool:
    |b(p) + f(p + b(p))|^2 < 0.01 (|b|^2 + |f|^2) + tolerance (Sundaram et al. 2010), and the
    source p + b(p) lies inside the frame."""
    h, w = back.shape[:2]
    f_at = warp(fwd.permute(2, 0, 1), back).permute(1, 2, 0)  # (h, w, 2) forward flow at the source
    err = (back + f_at).square().sum(-1)  # (h, w)
    bound = 0.01 * (back.square().sum(-1) + f_at.square().sum(-1)) + tolerance
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    sx, sy = xs + back[..., 0], ys + back[..., 1]
    inside = (sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5)
    return (err < bound) & inside


class FlowCarry:
    """Scores carried along optical flow over a clip (see the module doc); feed it the frames in
    order with `step`, call `reset` at a gap (skipped frames)."""

    def __init__(self, cfg: SlimeConfig) -> None:
        self.weight, self.flow_size = cfg.temporal_weight, cfg.flow_size
        self.margin = cfg.temporal_margin
        self.reset()

    def reset(self) -> None:
        self.gray: np.ndarray | None = None  # (h, w) uint8, the previous frame
        self.carried: torch.Tensor | None = None  # (K, h, w) float32
        self.trusted = 0.0  # share of the last frame's pixels that took the carry

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(a, b, None)  # (h, w, 2) float32, a -> b

    def step(self, frame: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """The carried scores (K, h, w) at the working resolution for the next frame (H, W, 3)
        uint8 and its own low-resolution scores (K, h', w'); where nothing was carried (the first
        frame, a cut) the frame's own scores as they came, so it is labelled exactly as a still."""
        cv2 = _cv2()
        hw = working_hw(frame.shape[:2], self.flow_size)
        small = cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)  # (h, w)
        now = F.interpolate(scores[None].float().cpu(), size=hw, mode="bilinear",
                            align_corners=False)[0]  # (K, h, w)
        shown = None  # what labels this frame, when it differs from the carry (the margin)
        if self.gray is None or self.carried is None or self.gray.shape != gray.shape:
            self.trusted = 0.0
        else:
            back = torch.from_numpy(self._flow(gray, self.gray))  # (h, w, 2) t -> t-1
            fwd = torch.from_numpy(self._flow(self.gray, gray))  # (h, w, 2) t-1 -> t
            before = warp(torch.from_numpy(self.gray).float()[None], back)[0]  # (h, w)
            same = (before - torch.from_numpy(gray).float()).abs() < PHOTO_TOLERANCE  # (h, w)
            valid = consistent(back, fwd) & same  # (h, w)
            self.trusted = float(valid.float().mean())
            if self.trusted >= CUT_VALID_SHARE:
                moved = warp(self.carried, back)  # (K, h, w)
                blend = self.weight * now + (1 - self.weight) * moved  # (K, h, w)
                now = torch.where(valid[None], blend, now)
                if self.margin > 0:  # the label the carry brings keeps its place unless beaten
                    keep = F.one_hot(moved.argmax(0), now.shape[0]).permute(2, 0, 1)  # (K, h, w)
                    shown = now + self.margin * keep * valid[None]  # (K, h, w)
            else:
                self.trusted = 0.0
        self.gray, self.carried = gray, now
        if self.trusted == 0.0:  # nothing carried: the still image's scores, not a resized copy
            return scores
        return now if shown is None else shown
