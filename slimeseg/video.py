"""Video in and out: streaming a clip's frames with PyAV, and the overlay video written back.

A clip is an input kind of the segment job (`job.list_inputs` lists it, `SegmentJob.run` hands
it to `segment_clip`). Frames are decoded one at a time (never the whole clip in memory) and
numbered by their index in the stream; `--frames START:STOP:STEP` picks some. For a clip `NAME`
the outputs are

- `NAME/000000.png`, `000001.png`, ...: one label map per frame at the frame's size, named by
  frame index. They are written into `.NAME.frames/` while the clip runs and that folder is
  renamed to `NAME/` when every frame is there, so `NAME/` is never partial; a re-run skips the
  frames already in `.NAME.frames/` (a killed run resumes);
- `NAME.overlay.mp4` (unless overlays are off): the frames with their labels drawn over them,
  at the input's frame rate, encoded in a second pass over the clip and renamed into place
  whole (`atomic_path`).

Bad clips (unreadable, truncated, no video stream, no frames) are one-line InputErrors naming
the file; the partial folder of a clip that turned out bad is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, one_line
from .files import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")  # .gif: when animated
VIDEO_HINT = "pip install 'slimeseg[video]'"
OVERLAY_VIDEO_SUFFIX = ".overlay.mp4"
FRAME_DIGITS = 6


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise InputError(f"reading video needs PyAV ({VIDEO_HINT})") from None
    return av


def is_video(path: str | os.PathLike) -> bool:
    """Whether a file is a clip by its name: .mp4 .mov .mkv .webm .avi, or a .gif of more than
    one frame (a still .gif stays an image)."""
    suffix = Path(path).suffix.lower()
    if suffix != ".gif":
        return suffix in VIDEO_EXTENSIONS
    from PIL import Image

    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:  # unreadable: the image reader names the problem
        return False


# ---------------------------------------------------------------------------- frame ranges
@dataclass(frozen=True)
class FrameRange:
    """Which frames of a clip to segment, by index: start, stop (None: to the end), step."""

    start: int = 0
    stop: int | None = None
    step: int = 1

    @classmethod
    def parse(cls, text: str | None) -> FrameRange:
        """`START:STOP:STEP` like a Python slice (each part optional; `10:` is frame 10 on)."""
        if text is None or not str(text).strip():
            return cls()
        parts = str(text).split(":")
        try:
            if len(parts) > 3:
                raise ValueError
            vals = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
        except ValueError:
            raise InputError(f"--frames {text!r}: expected START:STOP:STEP (whole numbers, each "
                             "optional, e.g. 0:100:2)") from None
        start, stop = vals[0] or 0, vals[1]
        step = 1 if vals[2] is None else vals[2]
        if start < 0 or (stop is not None and stop < 0) or step < 1:
            raise InputError(f"--frames {text!r}: START and STOP must be >= 0 and STEP >= 1")
        return cls(start, stop, step)

    def wants(self, index: int) -> bool:
        return (index >= self.start and (self.stop is None or index < self.stop)
                and (index - self.start) % self.step == 0)

    def past(self, index: int) -> bool:
        return self.stop is not None and index >= self.stop


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip's video stream (`frames`: 0 when it does not say)."""

    width: int
    height: int
    fps: Fraction
    frames: int


def _open(path: Path) -> Any:
    """The container, or a one-line InputError naming the file."""
    av = _av()
    if not path.is_file():
        raise InputError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises several types on damaged or foreign files
        raise InputError(f"{path}: not a readable video (corrupt, truncated or unknown format: "
                         f"{one_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream (an audio-only file?)")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """The clip's size, frame rate and declared frame count, from its header (nothing decoded)."""
    path = Path(path)
    with contextlib.closing(_open(path)) as container:
        return _info(container.streams.video[0])


def _info(stream: Any) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return VideoInfo(int(stream.codec_context.width), int(stream.codec_context.height),
                     Fraction(rate), int(stream.frames or 0))


def read_frames(path: str | os.PathLike, frames: FrameRange = FrameRange()
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, (H, W, 3) uint8 RGB) for the wanted frames, decoded one at a time.

    A clip with no frame in the range, one that stops before the frames its header declares
    (truncated), or a decoding error are InputErrors naming the file.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        info = _info(stream)
        if info.width < 1 or info.height < 1:
            raise InputError(f"{path}: video stream has no frame size")
        index, yielded = -1, 0
        try:
            for frame in container.decode(stream):
                index += 1
                if frames.past(index):
                    break
                if frames.wants(index):
                    yielded += 1
                    yield index, frame.to_ndarray(format="rgb24")
        except InputError:
            raise
        except Exception as exc:  # PyAV's decoding errors (a kill or close is no Exception)
            raise InputError(f"{path}: corrupt or truncated video at frame {index + 1} "
                             f"({one_line(exc)})") from None
        if index < 0:
            raise InputError(f"{path}: video has no frames")
        if info.frames and index + 1 < info.frames and not frames.past(index + 1):
            raise InputError(f"{path}: truncated video: {index + 1} of the {info.frames} frames "
                             "its header declares")
        if not yielded:
            length = "" if frames.past(index) else f" (the clip has {index + 1})"
            raise InputError(f"{path}: no frame in --frames {frames.start}:"
                             f"{'' if frames.stop is None else frames.stop}:{frames.step}{length}")
    finally:
        container.close()


# ---------------------------------------------------------------------------- segmenting
def frame_scores(sd: Any, frames: list[np.ndarray], learned: Any, cfg: Any) -> list[Any]:
    """Low-resolution scores (K, h, w) of a batch of frames: one UNet batch when the settings
    allow (frames share a size), else frame by frame (tiles, windows)."""
    import torch

    from . import inference

    if cfg.tiles > 1 or cfg.window_scale() is not None or cfg.normalization == "reference_exact":
        return [inference.low_res_scores(sd, f, learned, cfg) for f in frames]
    x = torch.stack([inference.model_input(f, cfg) for f in frames])  # (B, 3, h, w)
    return list(inference.score_batch(sd, x, learned, cfg).float().cpu())  # B x (K, h/8, w/8)


def frame_labels(frame: np.ndarray, scores: Any, carry: Any, cfg: Any, want: bool = True,
                 ahead: Any = None) -> np.ndarray | None:
    """A frame's (H, W) uint8 labels from its low-resolution scores (K, h, w): carried along the
    motion by `carry` (a `temporal.FlowCarry`, or None: the frame alone) and upsampled by
    `cfg.upsample`, the guided filter after the carry or, with `temporal_filter="before"`, on the
    frame's own scores before it (then the carried scores are only resized); the final scores
    then go back to the carry (`FlowCarry.finish`: the recursive carry, the label hysteresis).
    `want=False` only steps the carry (a warm-up frame whose labels exist) and returns None.
    `ahead`: the frame's precomputed flows for the carry (`temporal.Motion` or its future)."""
    from . import inference

    before = carry is not None and cfg.temporal_filter == "before" and cfg.upsample == "guided"
    if before:
        scores = inference.upsampled(scores, frame, cfg)  # (K, h', w'): filtered, then carried
    if carry is not None:
        scores = carry.step(frame, scores, ahead)  # (K, h', w')
    if not want and (carry is None or not carry.wants_final):
        return None
    final = scores if before else inference.upsampled(scores, frame, cfg)  # (K, h'', w'')
    if carry is not None:
        final = carry.finish(final)  # (K, h'', w'')
    if not want:
        return None
    taken = None if carry is None else carry.labels  # final's argmax, where finish took it (hysteresis)
    return inference.labels_at(final, frame.shape[:2], taken)


def label_frames(sd: Any, clip: str | os.PathLike, learned: Any, cfg: Any,
                 frames: FrameRange = FrameRange(), batch_size: int = 4,
                 done: set[int] | frozenset[int] = frozenset(), warmup: int = 8
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (index, frame (H, W, 3), labels (H, W) uint8) for the clip's wanted frames not in
    `done`, in order; `batch_size` frames per UNet batch.

    With `cfg.temporal == "flow"` the scores are carried along the motion (`temporal.FlowCarry`);
    the `warmup` done frames before a frame to do are run again (not yielded) so its carry has a
    past, and a gap in the frames run restarts the carry. The optical flow a frame needs is
    computed in a background thread (`temporal.FlowAhead`) from when the frame is read, so it
    overlaps the UNet's batch; the thread ends with the generator (closed, exhausted or failed).
    """
    from .temporal import FlowAhead, FlowCarry

    carry = FlowCarry(cfg) if cfg.temporal == "flow" else None
    wanted = None if frames.stop is None else range(frames.start, frames.stop, frames.step)

    def todo_after(i: int) -> bool:  # a frame to do follows within the warm-up
        ahead = range(i + frames.step, i + 1 + warmup * frames.step, frames.step)
        return any(j not in done for j in ahead if wanted is None or j in wanted)

    # (index, frame, whether it follows the frame before it in the run, its flows' future or None):
    # a gap (skipped frames) restarts the carry, and the flow thread's frame has no frame before
    batch: list[tuple[int, np.ndarray, bool, Any]] = []

    def flush() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        scores = frame_scores(sd, [f for _, f, _, _ in batch], learned, cfg)
        for (index, frame, follows, motion), sc in zip(batch, scores, strict=True):
            if carry is not None and not follows:
                carry.reset()
            labels = frame_labels(frame, sc, carry, cfg, want=index not in done,
                                  ahead=motion)  # (H, W) or None
            if labels is not None:
                yield index, frame, labels
        batch.clear()

    with contextlib.ExitStack() as stack:
        flows = None if carry is None else stack.enter_context(FlowAhead(cfg))
        last = None  # the index added to a batch last
        for index, frame in read_frames(clip, frames):
            if index in done and (carry is None or not todo_after(index)):
                continue
            follows = last is not None and index == last + frames.step
            last = index
            batch.append((index, frame, follows, None if flows is None else flows.submit(frame, follows)))
            if len(batch) >= batch_size:
                yield from flush()
        if batch:
            yield from flush()


# ---------------------------------------------------------------------------- writing
def frame_name(index: int) -> str:
    return f"{index:0{FRAME_DIGITS}d}.png"


class VideoWriter:
    """An H.264 (else MPEG-4) video written frame by frame into a temp file beside `path`,
    renamed into place by `close()` only: `with VideoWriter(...) as w: w.write(rgb)`."""

    def __init__(self, path: str | os.PathLike, fps: Fraction | float) -> None:
        self.path, self.fps = Path(path), Fraction(fps).limit_denominator(1001 * 1000)
        self._atomic = atomic_path(self.path)
        self._tmp: Path | None = None
        self._container: Any = None
        self._stream: Any = None

    def __enter__(self) -> VideoWriter:
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, rgb: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame (odd sides are padded by one edge pixel: yuv420p)."""
        av = _av()
        h, w = rgb.shape[:2]
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._container is None:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self._stream = self._container.add_stream(codec, rate=self.fps)
            self._stream.width, self._stream.height = rgb.shape[1], rgb.shape[0]
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self._stream.options = {"crf": "20", "preset": "veryfast"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        try:
            if self._container is not None:
                if kind is None:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
                self._container.close()
        finally:
            self._atomic.__exit__(kind, exc, tb)
        return False


def write_overlay_video(path: Path, clip: Path, frames: FrameRange, labels_dir: Path,
                        fps: Fraction) -> Path:
    """The overlay video of a finished clip: its frames decoded again, each with its label map
    (read back from `labels_dir`) drawn over it (`writers.overlay`), written atomically."""
    from PIL import Image

    from .writers import overlay

    with VideoWriter(path, fps / frames.step) as out:
        for index, rgb in read_frames(clip, frames):
            with Image.open(labels_dir / frame_name(index)) as im:
                labels = np.asarray(im)
            out.write(overlay(rgb, labels))
    return path


def partial_dir(out_dir: Path, stem: str) -> Path:
    """Where a clip's label maps gather until every frame is there."""
    return out_dir / f".{stem}.frames"


def finish_frames(out_dir: Path, stem: str) -> Path:
    """Rename the clip's finished partial folder to `NAME/` (replacing an older one)."""
    final, work = out_dir / stem, partial_dir(out_dir, stem)
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return final


def segment_clip(sd: Any, learned: Any, cfg: Any, clip: Path, out_dir: Path, stem: str,
                 num_classes: int, frames: FrameRange = FrameRange(), overlays: bool = True,
                 batch_size: int = 4, fresh: bool = False) -> int:
    """The segment job's step for one clip: every wanted frame's label map into `NAME/`, then
    the overlay video; frames already in the partial folder are skipped (unless `fresh`).
    Returns how many frames this call predicted. A bad clip's partial folder is removed
    (nothing partial is left)."""
    from .writers import remove_stale_temp_files, save_labels

    work = partial_dir(out_dir, stem)
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(exist_ok=True)
    remove_stale_temp_files(work)  # a killed run's half-written label maps
    done = {int(p.name[:-4]) for p in os.scandir(work)
            if p.name.endswith(".png") and p.name[:-4].isdigit()}
    predicted = 0
    try:
        fps = probe(clip).fps
        for index, _, labels in label_frames(sd, clip, learned, cfg, frames, batch_size, done):
            save_labels(work / frame_name(index), labels, num_classes)
            predicted += 1
        if overlays:
            write_overlay_video(out_dir / (stem + OVERLAY_VIDEO_SUFFIX), clip, frames, work, fps)
    except InputError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finish_frames(out_dir, stem)
    return predicted
