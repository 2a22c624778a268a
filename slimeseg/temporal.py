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

After the final upsampling (`video.frame_labels`), `finish` takes the frame's final scores: with
`temporal_filter="recursive"` they become the carry (the edge refinement itself is then smoothed
over time), and with `temporal_hysteresis` a pixel keeps the label it had (followed along the
trusted flow) unless another class beats it by that much there.

The flows a clip needs depend on its frames alone, not on the scores, so `FlowAhead` computes
them in a background thread while the UNet runs on the batch (`video.label_frames`); OpenCV
releases the GIL. The carry takes them (`step(..., ahead=...)`) when they are the flows between
its previous frame and this one, and computes them itself otherwise (`step` without them), so
the labels are the same either way.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import SlimeConfig
from .inference import class_argmax

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


@functools.lru_cache(maxsize=8)
def _pixels(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's x and y, (h, w) float32 each, built once per size (shared: read only)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return xs, ys


def sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """grid_sample's sampling grid (1, h, w, 2) for a (h, w, 2) pixel flow (x, y)."""
    h, w = flow.shape[:2]
    xs, ys = _pixels(h, w)  # (h, w) each
    gx = (xs + flow[..., 0] + 0.5) / w * 2 - 1  # (h, w)
    gy = (ys + flow[..., 1] + 0.5) / h * 2 - 1  # (h, w)
    return torch.stack([gx, gy], -1)[None]


def warp(values: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         grid: torch.Tensor | None = None) -> torch.Tensor:
    """values (C, h, w) sampled at each pixel + flow (h, w, 2): (C, h, w) (border-clamped).
    `grid`: the flow's `sampling_grid` where the caller has it already."""
    grid = sampling_grid(flow) if grid is None else grid  # (1, h, w, 2)
    return F.grid_sample(values[None], grid, mode=mode, padding_mode="border", align_corners=False)[0]


# dis-fine with fewer variational refinement iterations (fine and medium: 5): the patch search
# at full resolution, where the flicker gain comes from, kept whole. Screened on flicker and
# against the lab's true motion (docs/video.md, "A flow between medium and fine").
DIS_BALANCED = {"dis-balanced": 1, "dis-balanced-v0": 0}


def optical_flow(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """Dense flow a -> b of two (h, w) uint8 grey frames by `method` (`SlimeConfig.flow_method`):
    (h, w, 2) float32 pixel offsets (x, y)."""
    cv2 = _cv2()
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)
    preset = {"dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
              "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST}.get(method, cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis = cv2.DISOpticalFlow_create(preset)
    if method in ("dis-fine", *DIS_BALANCED):  # patches matched down to full resolution (medium stops at half)
        dis.setFinestScale(0)
    if method in DIS_BALANCED:  # less variational refinement: fine's flicker, cheaper
        dis.setVariationalRefinementIterations(DIS_BALANCED[method])
    return dis.calc(a, b, None)


def working_gray(frame: np.ndarray, flow_size: int) -> np.ndarray:
    """A (H, W, 3) uint8 RGB frame as the flow sees it: (h, w) uint8 grey at `working_hw`."""
    cv2 = _cv2()
    hw = working_hw(frame.shape[:2], flow_size)
    small = cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


@dataclass(frozen=True)
class Motion:
    """What a frame's step needs from its frames alone: its working grey frame and, when it
    follows a frame, the flows (by `method`) back to that frame's grey `prev` and forward from
    it, (h, w, 2) float32 each (None: no previous frame, or one of another size)."""

    method: str
    gray: np.ndarray
    prev: np.ndarray | None = None
    back: np.ndarray | None = None  # t -> t-1
    fwd: np.ndarray | None = None  # t-1 -> t


def frame_motion(frame: np.ndarray, flow_size: int, method: str, prev: Motion | None = None) -> Motion:
    """A frame's `Motion`, with the flows to `prev`'s frame where there is one (same size)."""
    gray = working_gray(frame, flow_size)
    if prev is None or prev.gray.shape != gray.shape:
        return Motion(method, gray)
    return Motion(method, gray, prev.gray, optical_flow(gray, prev.gray, method),
                  optical_flow(prev.gray, gray, method))


class FlowAhead:
    """Frames' `Motion` computed in one background thread, in the order they are given, so
    the flows are ready when the carry reaches the frame (the UNet runs meanwhile): `submit`
    each frame the carry will step, saying whether it follows the frame submitted before
    (False at a gap, where the carry restarts), and hand the future to `FlowCarry.step`.
    `close` (or leaving the `with` block) cancels what has not started and waits for the rest."""

    def __init__(self, cfg: SlimeConfig) -> None:
        self.flow_size, self.method = cfg.flow_size, cfg.flow_method
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimeseg-flow")
        self._last: Future[Motion] | None = None

    def submit(self, frame: np.ndarray, follows: bool = True) -> Future[Motion]:
        before = self._last if follows else None
        self._last = self._pool.submit(self._motion, frame, before)
        return self._last

    def _motion(self, frame: np.ndarray, before: Future[Motion] | None) -> Motion:
        # one worker runs the tasks in order, so the frame before's is done (or failed) here
        return frame_motion(frame, self.flow_size, self.method, None if before is None else before.result())

    def close(self) -> None:
        self._last = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FlowAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resized_flow(flow: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A (h, w, 2) pixel flow at another (H, W): (H, W, 2), its vectors scaled with the grid."""
    h, w = flow.shape[:2]
    if (h, w) == tuple(hw):
        return flow
    out = F.interpolate(flow.permute(2, 0, 1)[None], size=hw, mode="bilinear", align_corners=False)[0]  # (2, H, W)
    scale = torch.tensor([hw[1] / w, hw[0] / h])[:, None, None]  # (2, 1, 1)
    return (out * scale).permute(1, 2, 0)


def consistent(back: torch.Tensor, fwd: torch.Tensor, tolerance: float = FB_TOLERANCE,
               grid: torch.Tensor | None = None) -> torch.Tensor:
    """Where the backward flow (t -> t-1) and the forward flow (t-1 -> t) agree, (h, w) bool:
    |b(p) + f(p + b(p))|^2 < 0.01 (|b|^2 + |f|^2) + tolerance (Sundaram et al. 2010), and the
    source p + b(p) lies inside the frame. `grid`: the backward flow's `sampling_grid`, if known."""
    h, w = back.shape[:2]
    f_at = warp(fwd.permute(2, 0, 1), back, grid=grid).permute(1, 2, 0)  # (h, w, 2) forward flow at the source
    err = (back + f_at).square().sum(-1)  # (h, w)
    bound = 0.01 * (back.square().sum(-1) + f_at.square().sum(-1)) + tolerance
    xs, ys = _pixels(h, w)  # (h, w) each
    sx, sy = xs + back[..., 0], ys + back[..., 1]
    inside = (sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5)
    return (err < bound) & inside


class FlowCarry:
    """Scores carried along optical flow over a clip (see the module doc); feed it the frames in
    order with `step` (and, when `wants_final`, their final scores with `finish`), call `reset`
    at a gap (skipped frames)."""

    def __init__(self, cfg: SlimeConfig) -> None:
        self.weight, self.flow_size = cfg.temporal_weight, cfg.flow_size
        self.margin, self.hysteresis = cfg.temporal_margin, cfg.temporal_hysteresis
        self.method = cfg.flow_method
        self.recursive = cfg.temporal_filter == "recursive" and cfg.upsample == "guided"
        self.reset()

    @property
    def wants_final(self) -> bool:
        """Whether `finish` must see every frame's final scores (warm-up frames' too)."""
        return self.recursive or self.hysteresis > 0

    def reset(self) -> None:
        self.gray: np.ndarray | None = None  # (h, w) uint8, the previous frame
        self.carried: torch.Tensor | None = None  # (K, h, w) float32
        self.trusted = 0.0  # share of the last frame's pixels that took the carry
        self.back: torch.Tensor | None = None  # (h, w, 2) the last step's flow t -> t-1, if carried
        self.valid: torch.Tensor | None = None  # (h, w) bool, where it was trusted
        self.labels: torch.Tensor | None = None  # (H', W') int64, the last frame's final labels
        self._grid: tuple[torch.Tensor, torch.Tensor] | None = None  # a flow and its sampling grid
        self._ahead: Motion | None = None  # the frame being stepped's precomputed motion, if any

    def grid(self, flow: torch.Tensor) -> torch.Tensor:
        """The (1, h, w, 2) `sampling_grid` of a (h, w, 2) flow, built once per flow: a step's
        warps (the forward flow, the grey frame, the carried scores) and the hold share it."""
        if self._grid is None or self._grid[0] is not flow:
            self._grid = (flow, sampling_grid(flow))
        return self._grid[1]

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return optical_flow(a, b, self.method)  # (h, w, 2) float32, a -> b

    def flows(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The flows (h, w, 2) from this grey frame back to the previous one and forward from it:
        the ones `step` was handed when they are between these two grey frames, else computed."""
        assert self.gray is not None
        ahead = self._ahead
        if ahead is not None and ahead.back is not None and ahead.prev is self.gray and ahead.gray is gray:
            return ahead.back, ahead.fwd
        return self._flow(gray, self.gray), self._flow(self.gray, gray)

    def motion(self, gray: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow from this (h, w) grey frame back to the previous one, (h, w, 2), and where it
        is trusted, (h, w) bool: the forward-backward check holds and the pixel looks like its
        source."""
        back, fwd = (torch.from_numpy(f) for f in self.flows(gray))  # (h, w, 2) t -> t-1, t-1 -> t
        return back, consistent(back, fwd, grid=self.grid(back)) & self.looks_same(gray, back)

    def looks_same(self, gray: np.ndarray, back: torch.Tensor) -> torch.Tensor:
        """Where a pixel of this frame is within PHOTO_TOLERANCE of its source: (h, w) bool."""
        assert self.gray is not None
        before = warp(torch.from_numpy(self.gray).float()[None], back, grid=self.grid(back))[0]  # (h, w)
        return (before - torch.from_numpy(gray).float()).abs() < PHOTO_TOLERANCE

    def step(self, frame: np.ndarray, scores: torch.Tensor,
             ahead: Motion | Future[Motion] | None = None) -> torch.Tensor:
        """The carried scores (K, h, w) at the working resolution for the next frame (H, W, 3)
        uint8 and its own low-resolution scores (K, h', w'); where nothing was carried (the first
        frame, a cut) the frame's own scores as they came, so it is labelled exactly as a still.
        `ahead`: this frame's `Motion` (or its future, `FlowAhead`); its flows are used when they
        are this carry's method's and start from the grey frame it stepped last, and computed
        here otherwise."""
        if isinstance(ahead, Future):
            ahead = ahead.result()
        if ahead is not None and (ahead.method != self.method
                                  or ahead.gray.shape != working_hw(frame.shape[:2], self.flow_size)):
            ahead = None  # made for other settings
        gray = working_gray(frame, self.flow_size) if ahead is None else ahead.gray  # (h, w)
        hw = gray.shape
        now = F.interpolate(scores[None].float().cpu(), size=hw, mode="bilinear",
                            align_corners=False)[0]  # (K, h, w)
        shown = None  # what labels this frame, when it differs from the carry (the margin)
        self.back = self.valid = None
        if self.gray is None or self.carried is None or self.gray.shape != gray.shape:
            self.trusted = 0.0
        else:
            self._ahead = ahead
            try:
                back, valid = self.motion(gray)  # (h, w, 2), (h, w)
            finally:
                self._ahead = None
            self.trusted = float(valid.float().mean())
            if self.trusted >= CUT_VALID_SHARE:
                self.back, self.valid = back, valid
                moved = warp(self.carried, back, grid=self.grid(back))  # (K, h, w)
                blend = self.weight * now + (1 - self.weight) * moved  # (K, h, w)
                now = torch.where(valid[None], blend, now)
                if self.margin > 0:  # the label the carry brings keeps its place unless beaten
                    keep = F.one_hot(class_argmax(moved), now.shape[0]).permute(2, 0, 1)  # (K, h, w)
                    shown = now + self.margin * keep * valid[None]  # (K, h, w)
            else:
                self.trusted = 0.0
        self.gray, self.carried = gray, now
        if self.trusted == 0.0:  # nothing carried: the still image's scores, not a resized copy
            return scores
        return now if shown is None else shown

    def finish(self, final: torch.Tensor) -> torch.Tensor:
        """The frame's final scores (K, H', W') (after the upsampling `step`'s output went
        through), as they should label it: with `recursive` they also become the carry, and with
        `hysteresis` the label each pixel had, followed along the trusted flow, is raised by it."""
        if self.recursive and self.carried is not None:
            self.carried = F.interpolate(final[None].float().cpu(), size=self.carried.shape[1:],
                                         mode="bilinear", align_corners=False, antialias=True)[0]  # (K, h, w)
        if self.hysteresis <= 0:
            return final
        hw = tuple(final.shape[1:])
        if self.back is not None and self.valid is not None and self.labels is not None:
            # 1. the flow, where it is trusted and the last labels at the final size (as they are
            # when it is the working one)
            back = resized_flow(self.back, hw)  # (H', W', 2)
            valid, labels = self.valid.float(), self.labels.float()  # (h, w), (H'', W'')
            if tuple(valid.shape) != hw:
                valid = F.interpolate(valid[None, None], size=hw, mode="nearest")[0, 0]  # (H', W')
            if tuple(labels.shape) != hw:
                labels = F.interpolate(labels[None, None], size=hw, mode="nearest")[0, 0]  # (H', W')
            # 2. the label each pixel had, at its source's nearest pixel: a label, not a blend
            # (bilinear sampling measured the same on the lab clips); one channel sampled, which
            # picks what sampling its one-hot (K channels) picked
            held = warp(labels[None], back, mode="nearest", grid=self.grid(back))[0].long()  # (H', W')
            # 3. that class raised by the hysteresis where the flow is trusted (+ 0 elsewhere)
            raise_by = (self.hysteresis * valid).to(final.device, final.dtype)  # (H', W')
            final = final.scatter_add(0, held[None].to(final.device), raise_by[None])  # (K, H', W')
        at = final  # labels kept at least at the working resolution (a still's scores come coarser)
        if self.carried is not None and final.shape[1] * final.shape[2] < self.carried[0].numel():
            at = F.interpolate(final[None].float(), size=self.carried.shape[1:], mode="bilinear",
                               align_corners=False)[0]  # (K, h, w)
        self.labels = class_argmax(at).cpu()  # (H', W')
        return final
