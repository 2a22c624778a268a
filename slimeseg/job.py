"""The one segment job: inputs in, label maps (and overlays) out, resumable, with per-input errors.

`segment(learned, inputs, out)` is `slimeseg segment`. Every front end goes through the pieces
here, so an input kind or an output format is added in one place:

    list_inputs     folders, image files, globs, .txt / .lst lists, Parquet lists -> paths
    SegmentJob      the artifact, the writer, each input's output name, what is already done;
                    its three steps for one input: `read`, `predict`, `write`
    Result          what a run did; `summary()` is the line the CLI prints

The CLI runs the steps in one process (`segment`), the app on its uploads (`SegmentJob.run`),
and the Ray workers (`distributed`) as separate tasks per batch. A problem with one input
(unreadable, corrupt, too large, out of memory) becomes that input's row in `errors.jsonl`
(`{"path": ..., "error": ...}` per line, replaced by each run) and never stops the job; outputs
are written atomically, and a re-run skips inputs whose outputs all exist.
"""

from __future__ import annotations

import dataclasses
import glob as _glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .artifact import Learned
from .config import SlimeConfig
from .errors import InputError, one_line, reason
from .io import IMAGE_EXTENSIONS, list_images, load_image
from .video import VIDEO_EXTENSIONS, FrameRange, is_video
from .writers import SegmentWriter

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst")  # a text file listing one image path per line
PARQUET_HINT = "pip install 'slimeseg[ray]'"

Inputs = str | os.PathLike | Iterable[str | os.PathLike]


# ---------------------------------------------------------------------------- inputs
def list_inputs(items: Inputs) -> list[Path]:
    """Absolute image and clip paths, each once, in the order given.

    An item is a folder (its images, sorted by name), an image file, a clip (`video`), a glob
    (`photos/**/*.jpg`, recursive with `**`), a text file (`.txt`, `.lst`) listing one path per line (blank lines
    and `#` comments skipped), or a Parquet file with a `path` column. Paths in a list are
    relative to the list's folder and are not checked here: a missing or unreadable one becomes
    that input's error when it is read.
    """
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += [str(q) for q in list_images(p)]
        elif p.is_file():
            suffix = p.suffix.lower()
            if suffix in LIST_SUFFIXES:
                out += _read_text_list(p)
            elif suffix == ".parquet":
                out += _read_parquet_list(p)
            elif suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS:
                out.append(str(p))
            else:
                raise InputError(f"{p}: not an image, a clip, a folder, or a list of images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}; {', '.join(VIDEO_EXTENSIONS)}; "
                                 f"{', '.join(LIST_SUFFIXES)} or .parquet with a 'path' column)")
        elif any(c in str(item) for c in "*?["):
            known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
            matches = sorted(m for m in _glob.glob(str(item), recursive=True)
                             if Path(m).suffix.lower() in known and Path(m).is_file())
            if not matches:
                raise InputError(f"{item}: no image matches this pattern")
            out += matches
        else:
            raise InputError(f"{p}: no such file or directory")
    return [Path(q) for q in dict.fromkeys(os.path.abspath(q) for q in out)]


def _read_text_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read this list of images ({exc})") from None
    entries = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    return [os.path.join(path.parent, e) for e in entries]


def _read_parquet_list(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading a Parquet list needs pyarrow ({PARQUET_HINT})") from None
    try:
        schema = pq.read_schema(path)
        if "path" not in schema.names:
            raise InputError(f"{path}: a Parquet list of images needs a 'path' column "
                             f"(it has {', '.join(schema.names) or 'none'})")
        column = pq.read_table(path, columns=["path"]).column("path").to_pylist()
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several types on damaged files
        raise InputError(f"{path}: not a readable Parquet file ({one_line(exc)})") from None
    return [os.path.join(path.parent, str(e)) for e in column if e]


# ---------------------------------------------------------------------------- the result
@dataclass
class Result:
    """What a run did; `summary()` is the final line the CLI prints."""

    out_dir: Path
    inputs: int  # inputs listed
    skipped: int = 0  # already finished before this run
    segmented: int = 0  # finished by this run
    predicted: int = 0  # of those, predicted and written by this run (not found done by a retry)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    seconds: float = 0.0  # the whole call, loading the model (or starting the workers) included
    workers: int = 0  # Ray actors in the pool (0: one process, or nothing to do)
    frames: int = 0  # clips' frames predicted by this run
    errors_file: Path | None = None
    coco_file: Path | None = None  # format "coco": the annotations file written at the end

    @property
    def images_per_s(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        on = f" on {self.workers} Ray worker(s)" if self.workers else ""
        return (f"segmented {self.segmented} image(s) into {self.out_dir} in {self.seconds:.1f} s "
                f"({self.images_per_s:.2f} images/s){on}"
                + (f" ({self.frames} clip frame(s))" if self.frames else "")
                + (f", skipped {self.skipped} already done" if self.skipped else "")
                + (f", COCO annotations in {self.coco_file}" if self.coco_file else "")
                + (f", {len(self.failed)} failed (listed in {self.errors_file})" if self.failed else ""))


# ---------------------------------------------------------------------------- the job
Reader = Callable[[Path], np.ndarray]


@dataclass
class SegmentJob:
    """One output folder's job: the artifact, the writer and each input's output name.

    Holds only data (the artifact, paths, settings), so it can be copied to worker processes.
    `plan` builds it on the driver; `read`, `predict` and `write` are the steps of one input.
    """

    learned: Learned
    name: str  # the artifact as the user named it (its file), for messages
    writer: SegmentWriter
    inputs: list[Path]
    names: dict[Path, str]  # input -> output stem
    overrides: dict[str, Any] = field(default_factory=dict)  # SlimeConfig settings for predict
    refused: list[tuple[str, str]] = field(default_factory=list)  # (input, reason) refused at listing
    frames: FrameRange = field(default_factory=FrameRange)  # clips: which frames (`--frames`)
    batch_size: int = 4  # clips: frames per UNet batch

    @classmethod
    def plan(cls, learned: Learned | str | os.PathLike, inputs: Inputs, out: str | os.PathLike, *,
             format: str = "png", overlays: bool = True, overrides: dict[str, Any] | None = None,
             each: bool = False, instances: bool = False,
             frames: str | FrameRange | None = None) -> SegmentJob:
        """List the inputs and name their outputs; bad settings and (unless `each`) a bad input
        or two inputs that would write the same file are one-line InputErrors, before any model
        loads. With `each` (the app's uploads) such an input is refused alone (`refused`).
        `instances` (format "coco"): one annotation per connected component."""
        name = str(learned) if isinstance(learned, (str, os.PathLike)) else "embeddings"
        art = learned if isinstance(learned, Learned) else Learned.load(learned)
        overrides = dict(overrides or {})
        try:
            SlimeConfig.from_dict(art.config).replace(**overrides)  # bad settings fail here, once
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad setting: {exc}") from None
        job = {"embeddings": art.digest(), "classes": art.classes, "instances": instances,
               "settings": json.loads(json.dumps(overrides, sort_keys=True, default=str))}
        frames = frames if isinstance(frames, FrameRange) else FrameRange.parse(frames)
        writer = SegmentWriter(Path(os.path.abspath(out)), art.classes, overlays=overlays,
                               format=format, info={"model": art.model_id, "embeddings": name},
                               instances=instances, job=job if format == "coco" else {})
        if not each:
            paths = list_inputs(inputs)
            clips = [p for p in paths if is_video(p)] if format == "coco" else []
            if clips:  # COCO lists images; a clip's frames are no files of their own
                raise InputError(f"{clips[0]}: a clip; --format coco takes images (segment clips "
                                 "with --format png: a folder of label maps per clip)")
            return cls(art, name, writer, paths, writer.names(paths), overrides, frames=frames)
        paths, refused = [], []
        for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs):
            try:
                listed = [p for p in list_inputs(item) if p not in paths]
                writer.names([*paths, *listed])  # refuses a clash with an earlier input
            except InputError as exc:
                refused.append((os.path.abspath(item), reason(exc, str(Path(item)))))
                continue
            paths += listed
        return cls(art, name, writer, paths, writer.names(paths), overrides, refused, frames)

    # ------------------------------------------------------------ the steps of one input
    @staticmethod
    def read(path: str | os.PathLike) -> np.ndarray:
        """Step 1: decode an input (EXIF orientation applied, any mode to RGB): (H, W, 3) uint8.
        Clips are not read here but streamed by `segment_clip`."""
        if is_video(path):
            raise InputError(f"{path}: a clip: its label maps go to a folder of PNGs, not into a "
                             "Parquet dataset (use --format png)")
        return load_image(path)

    def predict(self, segmenter: Any, image: np.ndarray) -> np.ndarray:
        """Step 2: its label map (H, W) uint8, at the image's own size."""
        return segmenter.predict(image, self.learned, **self.overrides)

    def predict_many(self, segmenter: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Step 2 for several images in one UNet pass (faster on GPUs; a few pixels may differ
        from `predict`'s, batched arithmetic being what it is)."""
        return segmenter.predict_batch(list(images), self.learned, batch_size=len(images),
                                       **self.overrides)

    def write(self, stem: str, image: np.ndarray, labels: np.ndarray) -> list[Path]:
        """Step 3: the outputs of the input named `stem` (`names`), atomically; the label map
        goes last, so its presence means the input is done."""
        return self.writer.write(stem, image, labels)

    def segment_clip(self, segmenter: Any, path: Path, overwrite: bool = False,
                     stem: str | None = None) -> int:
        """Steps 1-3 for a clip: its frames streamed, predicted in batches, written
        (`video.segment_clip`; `overwrite`: an interrupted run's frames are not reused; `stem`:
        its output name, default `names`'); returns the frames predicted by this call."""
        from .video import segment_clip

        if segmenter.learned is not self.learned:
            segmenter.use(self.learned, self.name)
        cfg = SlimeConfig.from_dict(self.learned.config).replace(**self.overrides)
        return segment_clip(segmenter.sd, self.learned, cfg, Path(path), self.writer.out_dir,
                            stem or self.names[path], len(self.learned.classes), self.frames,
                            self.writer.overlays, self.batch_size, overwrite)

    def without_inputs(self) -> SegmentJob:
        """This job less its input list: what each worker needs (rows carry path and name)."""
        return dataclasses.replace(self, inputs=[], names={}, refused=[])

    # ------------------------------------------------------------ the run
    def prepare(self, overwrite: bool = False) -> int:
        """Refuse a COCO file another job left (unless `overwrite`), then create the output
        folder, write classes.json and remove a killed run's temp files."""
        self.writer.check(overwrite)
        removed = self.writer.prepare()
        if removed:
            log.info("removed %d temp file(s) left by an interrupted run in %s", removed,
                     self.writer.out_dir)
        return removed

    def todo(self, overwrite: bool = False) -> list[Path]:
        """The inputs still to do (all with `overwrite`), from one listing of the output folder."""
        done = set() if overwrite else self.writer.finished(self.names)
        return [p for p in self.inputs if p not in done]

    def finish(self) -> Path | None:
        """After a run: the files assembled from every input's outputs (COCO: `coco.json`)."""
        return self.writer.finish(self.names)

    def record_errors(self, failed: Sequence[tuple[str, str]]) -> Path | None:
        """`errors.jsonl` (or `errors.parquet`) lists this run's failures, replacing an earlier
        run's list; a run without failures removes it, so it always tells about the last run."""
        if failed:
            return self.writer.write_errors(failed)
        self.writer.errors_file.unlink(missing_ok=True)
        return None

    def segmenter(self, model: str | None = None, revision: str | None = None,
                  device: str | None = None, dtype: str | None = None,
                  model_config: str | None = None) -> Any:
        """A Segmenter for the artifact: its own model unless `model` says otherwise."""
        from .segmenter import Segmenter

        return Segmenter.from_learned(self.learned, model, revision=revision, device=device,
                                      dtype=dtype, name=self.name, model_config=model_config)

    def run(self, segmenter: Any | None = None, *, load: Callable[[], Any] | None = None,
            overwrite: bool = False, progress: bool = True, read: Reader | None = None,
            on_error: Callable[[str, str], None] | None = None,
            on_result: Callable[[Path, np.ndarray, np.ndarray], None] | None = None) -> Result:
        """Segment every input still to do in this process, one image at a time.

        `segmenter`: the Segmenter to use, or None for `load()`'s (called only if there is work).
        `read`: step 1 (default `read`; the app adds its size limit). `on_error(path, reason)`
        and `on_result(path, image, labels)` see each input as it finishes. Writes
        `errors.jsonl` and returns the Result (its `seconds` from this call).
        """
        t0 = time.perf_counter()
        self.writer.check(overwrite)
        todo = self.todo(overwrite)
        # the model loads before anything is written: a model that cannot load leaves no folder
        seg = segmenter if segmenter is not None or not todo or load is None else load()
        self.prepare(overwrite)
        result = Result(self.writer.out_dir, len(self.inputs) + len(self.refused),
                        skipped=len(self.inputs) - len(todo))
        for path, why in self.refused:
            result.failed.append((path, why))
            if on_error is not None:
                on_error(path, why)
        read = read or self.read
        for path in tqdm(todo, desc="segment", unit="img", disable=not progress, dynamic_ncols=True):
            try:
                if is_video(path):
                    result.frames += self.segment_clip(seg, path, overwrite)
                    result.segmented += 1
                    result.predicted += 1
                    continue
                image = read(path)
                labels = self.predict(seg, image)
                self.write(self.names[path], image, labels)
            except Exception as exc:  # one input's problem never stops the job
                why = reason(exc, str(path))
                result.failed.append((str(path), why))
                if on_error is not None:
                    on_error(str(path), why)
                continue
            result.segmented += 1
            result.predicted += 1
            if on_result is not None:
                on_result(path, image, labels)
        result.errors_file = self.record_errors(result.failed)
        result.coco_file = self.finish()
        result.seconds = time.perf_counter() - t0
        return result


def segment(learned: Learned | str | os.PathLike, inputs: Inputs, out: str | os.PathLike, *,
            format: str = "png", overlays: bool = True, overwrite: bool = False,
            instances: bool = False, model: str | None = None, revision: str | None = None,
            device: str | None = None, dtype: str | None = None, model_config: str | None = None,
            progress: bool = True, frames: str | None = None,
            echo: Callable[[str], Any] | None = print, **overrides: Any) -> Result:
    """Segment `inputs` (see `list_inputs`) with `learned` (an artifact or its file) into `out`.

    `format`: "png" (label maps `NAME.png`, overlays `NAME.overlay.png` unless `overlays=False`),
    "coco" (those and `out/coco.json`, `slimeseg.coco`; `instances`: one annotation per connected
    component) or "parquet" (`out/labels/part-*.parquet`, with Ray only). `model`, `revision`,
    `device`, `dtype`, `model_config` (for a single-file model): the Segmenter's (default: the
    artifact's own model); `overrides`: SlimeConfig settings for predict; `frames`: clips'
    START:STOP:STEP. Each failure is printed to stderr as `error: PATH: REASON` as it happens,
    and the summary line through `echo` at the end (None: silent).
    """
    t0 = time.perf_counter()
    if format == "parquet":  # Parquet parts are written per batch of rows, on the Ray path
        raise InputError(f"--format {format} goes with --ray")
    job = SegmentJob.plan(learned, inputs, out, format=format, overlays=overlays,
                          overrides=overrides, instances=instances, frames=frames)

    def warn(path: str, why: str) -> None:
        print(f"error: {path}: {why}", file=sys.stderr)

    result = job.run(load=lambda: job.segmenter(model, revision, device, dtype, model_config),
                     overwrite=overwrite, progress=progress, on_error=None if echo is None else warn)
    result.seconds = time.perf_counter() - t0
    if echo is not None:
        echo(result.summary())
    return result
