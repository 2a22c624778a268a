"""Writing segmentation results: the one place that decides names, formats and atomicity.

Every front end (the CLI, the app, distributed runs) writes through `SegmentWriter`, so they share
the same rules: output names are the input's stem made safe (`safe_stem`), two inputs that would
write the same file are refused (`output_names`), every file appears whole or not at all (temp file
+ rename, `atomic_path`), finished images are skipped on a re-run, and the temp files a killed run
left behind are removed. For each input `NAME` the outputs are:

- `NAME.png`: the label map, a palette PNG whose pixel values are class indices (viewable as a
  colour image: the palette is the class colours, background black);
- `NAME.overlay.png` (optional): the image, lightened and desaturated, with each class region
  filled in its colour and outlined, so regions read clearly even where an object's own colour is
  close to its class colour;
- `classes.json` once per folder: class names, palette, model and embeddings.

With `format="parquet"` (for feeding results to other Ray or Spark jobs) the label maps are rows
of one Parquet dataset instead, `labels/part-*.parquet`: the input's path, its name, its size, the
class names and the PNG bytes of its label map (the very bytes `NAME.png` would hold). Each part
is written atomically and named by a digest of its batch's inputs, so writing a batch again
replaces its part instead of duplicating rows. With `format="coco"` the files are those of "png"
and, when the run ends, `finish` assembles `coco.json` from the label maps (`slimeseg.coco`). A
run's failures go to `errors.jsonl` (PNG, COCO) or `errors.parquet` (path and a one-line reason
per input).
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from . import coco
from .coco import COCO_FILE
from .errors import InputError
from .files import atomic_path  # also importable from here (lab/, benchmarks/ use it)
from .video import OVERLAY_VIDEO_SUFFIX, is_video

LABELS_SUFFIX = ".png"
OVERLAY_SUFFIX = ".overlay.png"
CLASSES_FILE = "classes.json"
PARQUET_DIR = "labels"  # format="parquet": the dataset's folder inside the output folder
ERRORS_FILES = {"png": "errors.jsonl", "coco": "errors.jsonl", "parquet": "errors.parquet"}
FORMATS = tuple(ERRORS_FILES)
OVERLAY_BAND_PIXELS = 1 << 20  # overlays are drawn ~1 M pixels (a band of rows) at a time
_TEMP = re.compile(r"\.(.+\.png|classes\.json|.+\.zip|.+\.jsonl?|.+\.parquet)\.[^.]+\.tmp")  # atomic_path's


# ---------------------------------------------------------------------------- colours
def palette(num_classes: int) -> np.ndarray:
    """Distinct RGB colours per class, background black: (num_classes, 3) uint8."""
    colors = [(0, 0, 0)]
    for k in range(1, num_classes):
        hue = ((k - 1) * 0.618033988749895) % 1.0  # golden-ratio hues stay apart
        sat = 0.75 if (k - 1) % 2 == 0 else 0.55
        colors.append(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, 0.95)))
    return np.array(colors, dtype=np.uint8)


def colour_labels(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """The label map alone as an RGB image in the class colours: (H, W, 3) uint8."""
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    return palette(max(k, int(labels.max()) + 1 if labels.size else 1))[labels]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45,
            outline: int | None = None) -> np.ndarray:
    """The image with class regions filled and outlined in their colours: (H, W, 3) uint8.

    The image is first desaturated and lightened, so a class colour stands out even on an object
    of that very colour; each foreground region then gets a fill at `alpha` and an outline of
    `outline` px (default: about 1/150 of the shorter side, at least 1) in full colour, with a
    one-pixel dark edge on its outer side. Background stays as the (lightened) image. Drawn in
    bands of rows (each with a margin as wide as the outline), so a 12 MP image needs tens of
    MB of float scratch, not GBs; the result is the same as one whole-image pass.
    """
    h, w = labels.shape
    colors = palette(int(labels.max()) + 1 if labels.size else 1).astype(np.float32)
    width = outline if outline is not None else max(1, round(min(h, w) / 150))
    out = np.empty((h, w, 3), np.uint8)
    band, margin = max(16, OVERLAY_BAND_PIXELS // max(w, 1)), width + 1
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        a0, a1 = max(0, y0 - margin), min(h, y1 + margin)  # the band with its margin
        drawn = _overlay_rows(image[a0:a1], labels[a0:a1], colors, alpha, width)  # (a1-a0, W, 3)
        out[y0:y1] = drawn[y0 - a0:y1 - a0]
    return out


def _overlay_rows(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float,
                  width: int) -> np.ndarray:
    """`overlay` of a band of rows: (h, W, 3) uint8 (its first and last `width` + 1 rows are only
    right at the image's own edges; `overlay` keeps the inner rows)."""
    img = image.astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)  # (h, W)
    base = 0.35 * img + 0.65 * grey[..., None]  # mostly grey
    base = 0.75 * base + 0.25 * 255.0  # lighter
    fg = labels > 0  # (h, W)
    out = np.where(fg[..., None], (1 - alpha) * base + alpha * colors[labels], base)
    # a pixel is on a region's border if a neighbour within `width` has another label
    lo = ndimage.grey_erosion(labels, size=2 * width + 1, mode="nearest")
    hi = ndimage.grey_dilation(labels, size=2 * width + 1, mode="nearest")
    border = (lo != labels) | (hi != labels)  # (h, W)
    inner = border & fg
    out[inner] = colors[labels[inner]]
    # the dark edge: background pixels right next to a region
    near = ndimage.grey_dilation(labels, size=3, mode="nearest") > 0
    edge = near & ~fg
    out[edge] = 0.35 * out[edge]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- atomic files
def save_png(path: str | os.PathLike, image: Image.Image) -> None:
    """Write a PIL image as PNG atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A label map as a palette ("P") image whose pixel values are the class indices."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:num_classes] = palette(num_classes)
    img.putpalette(pal.reshape(-1).tolist())
    return img


def label_png_bytes(labels: np.ndarray, num_classes: int) -> bytes:
    """The bytes of the label map's PNG file (what `save_labels` writes)."""
    buf = io.BytesIO()
    label_image(labels, num_classes).save(buf, format="PNG")
    return buf.getvalue()


def save_labels(path: str | os.PathLike, labels: np.ndarray, num_classes: int) -> None:
    """Write a label map as a single-channel palette PNG whose pixel values are class indices."""
    save_png(path, label_image(labels, num_classes))


def save_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """Write the image with its class regions drawn over it (see `overlay`), atomically."""
    save_png(path, Image.fromarray(overlay(image, labels)))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write a JSON file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------- names
def safe_stem(stem: str) -> str:
    """An output name from an input's stem: only [A-Za-z0-9._-], never hidden, never empty."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"


def output_names(inputs: Sequence[Path], suffixes: Sequence[str] = (LABELS_SUFFIX, OVERLAY_SUFFIX)
                 ) -> dict[Path, str]:
    """Output stem per input; two inputs that would write the same file are an InputError.

    Stems are sanitised (`safe_stem`) and compared case-insensitively over every file an input
    writes (`NAME.png` and `NAME.overlay.png`), as case-insensitive file systems would.
    """
    owners: dict[str, Path] = {}
    out: dict[Path, str] = {}
    for path in inputs:
        stem = safe_stem(path.stem)
        files = [stem + s for s in suffixes]
        for file in files:
            other = owners.get(file.lower())
            if other is not None and other != path:
                raise InputError(f"{path}: would write the same output '{file}' as {other}; "
                                 "rename one of them")
        for file in files:
            owners[file.lower()] = path
        out[path] = stem
    return out


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete the temp files an interrupted run left behind (atomic writes never renamed)."""
    removed = 0
    for tmp in out_dir.glob(".*.tmp"):
        if tmp.is_file() and _TEMP.fullmatch(tmp.name):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


# ---------------------------------------------------------------------------- the writer
@dataclass
class SegmentWriter:
    """Writes label maps (and overlays) for one output folder by the rules in the module doc.

    Holds only paths and settings, so it can be copied to worker processes; `prepare` and
    `finished` run once (on the driver), `done`, `write` and `write_part` per image or batch
    (anywhere).
    """

    out_dir: Path
    classes: list[str]
    overlays: bool = True
    info: dict[str, Any] = field(default_factory=dict)  # model, embeddings: kept in classes.json
    format: str = "png"  # "png": files per input; "coco": those + coco.json; "parquet": rows
    instances: bool = False  # coco: one annotation per connected component, not per class
    job: dict[str, Any] = field(default_factory=dict)  # coco: what names the job in coco.json

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.classes = list(self.classes)
        if self.format not in FORMATS:
            raise InputError(f"unknown output format '{self.format}' (choose {', '.join(FORMATS)})")
        if self.format == "parquet":
            self.overlays = False  # the dataset holds label maps only
        if self.instances and self.format != "coco":
            raise InputError("--instances goes with --format coco")
        if self.format == "coco":
            coco._mask_api()  # say what to install before any work

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (LABELS_SUFFIX, OVERLAY_SUFFIX) if self.overlays else (LABELS_SUFFIX,)

    @property
    def parquet_dir(self) -> Path:
        return self.out_dir / PARQUET_DIR

    @property
    def errors_file(self) -> Path:
        return self.out_dir / ERRORS_FILES[self.format]

    @property
    def coco_file(self) -> Path:
        return self.out_dir / COCO_FILE

    def check(self, overwrite: bool = False) -> None:
        """Before anything is written (and before a model loads): refuse a folder that cannot be
        written, and a `coco.json` another job left in it (unless `overwrite`, which redoes the
        folder with this job)."""
        existing = self.out_dir
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            why = "is not a directory" if not existing.is_dir() else "is not writable"
            raise InputError(f"{self.out_dir}: cannot create output directory ({existing} {why})")
        if self.format == "coco" and not overwrite:
            coco.check_target(self.coco_file, self.job)

    def finish(self, names: Mapping[Path, str]) -> Path | None:
        """After a run (COCO): `coco.json` of every input (of `names`, in order) whose label map
        is there, assembled from those files and written atomically; None for other formats."""
        if self.format != "coco":
            return None
        coco._mask_api()  # say what to install before reading any file
        present = {e.name for e in os.scandir(self.out_dir)}
        done = [(p, stem) for p, stem in names.items() if stem + LABELS_SUFFIX in present]
        root = coco.input_root([p for p, _ in done])
        items = ((Path(os.path.relpath(p, root)).as_posix(),
                  coco.read_labels(self.out_dir / (stem + LABELS_SUFFIX))) for p, stem in done)
        return coco.write(self.coco_file, items, self.classes, self.job, self.instances)

    def prepare(self) -> int:
        """Create the folder, check it is writable, remove a killed run's temp files, write
        classes.json; returns how many temp files were removed."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.format == "parquet":
                self.parquet_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.out_dir}: cannot create output directory ({exc.strerror})") from None
        if not os.access(self.out_dir, os.W_OK):
            raise InputError(f"{self.out_dir}: output directory is not writable")
        removed = self.remove_temp_files()
        write_json(self.out_dir / CLASSES_FILE, {"classes": self.classes,
                                                 "palette": palette(len(self.classes)).tolist(),
                                                 **self.info})
        return removed

    def remove_temp_files(self) -> int:
        """Delete the temp files of writes that never finished (a killed process's)."""
        removed = remove_stale_temp_files(self.out_dir)
        if self.format == "parquet" and self.parquet_dir.is_dir():
            removed += remove_stale_temp_files(self.parquet_dir)
        return removed

    def names(self, inputs: Sequence[Path]) -> dict[Path, str]:
        """Output stem per input (see `output_names`); Parquet rows are keyed by path, so there
        inputs of the same stem do not clash."""
        if self.format == "parquet":
            return {p: safe_stem(p.stem) for p in inputs}
        return output_names(inputs, self.suffixes)

    def files(self, stem: str) -> list[Path]:
        """The files written for one input, the label map last."""
        return [self.out_dir / (stem + s) for s in reversed(self.suffixes)]

    def done(self, stem: str) -> bool:
        """Whether every output of this input exists (each is whole: writes are atomic)."""
        return all(p.exists() for p in self.files(stem))

    def finished(self, names: Mapping[Path, str]) -> set[Path]:
        """The inputs (of `names`: input -> stem) whose outputs are all there, from one listing of
        the folder (PNG) or the path column of the Parquet parts: no per-file look-ups, so it
        stays fast for millions of inputs on a network file system."""
        if self.format == "parquet":
            done = self._parquet_paths()
            return {p for p in names if str(p) in done}
        present = {e.name for e in os.scandir(self.out_dir)} if self.out_dir.is_dir() else set()
        return {p for p, stem in names.items() if all(f in present for f in self.outputs(p, stem))}

    def outputs(self, path: Path, stem: str) -> list[str]:
        """The names an input's outputs have in the folder: a clip's (`video`) are its folder of
        label maps and its overlay video, an image's its label map and overlay."""
        if is_video(path):
            return [stem] + ([stem + OVERLAY_VIDEO_SUFFIX] if self.overlays else [])
        return [stem + s for s in self.suffixes]

    def write(self, stem: str, image: np.ndarray, labels: np.ndarray) -> list[Path]:
        """Write one input's outputs atomically; the label map goes last, so its presence means
        the image is finished."""
        if self.overlays:
            save_overlay(self.out_dir / (stem + OVERLAY_SUFFIX), image, labels)
        save_labels(self.out_dir / (stem + LABELS_SUFFIX), labels, len(self.classes))
        return self.files(stem)

    # ------------------------------------------------------------------ Parquet
    def write_part(self, rows: Sequence[tuple[str, str, np.ndarray]],
                   batch: Iterable[str] | None = None) -> Path | None:
        """Parquet: one part file with a row per (path, name, labels), written atomically.

        Its name is a digest of `batch` (the paths of the whole batch, failed ones included;
        default: the rows' paths), so a retried task that writes the same batch again replaces
        the part instead of adding duplicate rows. Nothing is written for no rows.
        """
        pa, pq = _pyarrow()
        if not rows:
            return None
        key = sorted(batch if batch is not None else (r[0] for r in rows))
        digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:24]
        k = len(self.classes)
        table = pa.table({
            "path": pa.array([r[0] for r in rows], pa.string()),
            "name": pa.array([r[1] for r in rows], pa.string()),
            "width": pa.array([r[2].shape[1] for r in rows], pa.int32()),
            "height": pa.array([r[2].shape[0] for r in rows], pa.int32()),
            "classes": pa.array([self.classes] * len(rows), pa.list_(pa.string())),
            "labels_png": pa.array([label_png_bytes(r[2], k) for r in rows], pa.binary()),
        })
        path = self.parquet_dir / f"part-{digest}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def _parquet_paths(self) -> set[str]:
        """The paths already in the Parquet parts (each part is whole: writes are atomic)."""
        _, pq = _pyarrow()
        parts = sorted(self.parquet_dir.glob("part-*.parquet")) if self.parquet_dir.is_dir() else []
        done: set[str] = set()
        for part in parts:
            done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
        return done

    # ------------------------------------------------------------------ failures
    def write_errors(self, errors: Sequence[tuple[str, str]]) -> Path:
        """A run's failures, (path, one-line reason) each, replacing an earlier run's list:
        `errors.jsonl` ({"path": ..., "error": ...} per line) or `errors.parquet`."""
        path = self.errors_file
        with atomic_path(path) as tmp:
            if self.format == "parquet":
                pa, pq = _pyarrow()
                pq.write_table(pa.table({"path": pa.array([e[0] for e in errors], pa.string()),
                                         "error": pa.array([e[1] for e in errors], pa.string())}),
                               tmp)
            else:
                tmp.write_text("".join(json.dumps({"path": p, "error": e}) + "\n" for p, e in errors))
        return path

    def zip(self, name: str = "labels.zip", stems: Iterable[str] | None = None) -> Path:
        """All outputs (or those of `stems`) and classes.json in one zip, written atomically;
        a clip's are its folder of label maps (`NAME/000000.png`, ...) and overlay video."""
        wanted = None if stems is None else {p.name for s in stems for p in self.files(s)}
        clips = None if stems is None else set(stems)
        path = self.out_dir / name
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(self.out_dir.iterdir()):
                if p.name.startswith(".") or p == path:
                    continue
                if p.is_dir() and (clips is None or p.name in clips):  # a clip's label maps
                    for q in sorted(p.glob("*.png")):
                        zf.write(q, f"{p.name}/{q.name}")
                elif not p.is_file():
                    continue
                elif p.name == CLASSES_FILE or (p.suffix == ".png" and (wanted is None or p.name in wanted)):
                    zf.write(p, p.name)
                elif p.name.endswith(OVERLAY_VIDEO_SUFFIX) and (
                        clips is None or p.name[:-len(OVERLAY_VIDEO_SUFFIX)] in clips):
                    zf.write(p, p.name, compress_type=zipfile.ZIP_STORED)  # already compressed
        return path


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, for the Parquet format (installed with slimeseg[ray])."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet output needs pyarrow; install it with: pip install 'slimeseg[ray]'") from None
    return pa, pq
