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
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import InputError

LABELS_SUFFIX = ".png"
OVERLAY_SUFFIX = ".overlay.png"
CLASSES_FILE = "classes.json"
_TEMP = re.compile(r"\.(.+\.png|classes\.json|.+\.zip|.+\.json)\.[^.]+\.tmp")  # what atomic_path makes


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
    one-pixel dark edge on its outer side. Background stays as the (lightened) image.
    """
    h, w = labels.shape
    colors = palette(int(labels.max()) + 1 if labels.size else 1).astype(np.float32)
    img = image.astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    base = 0.35 * img + 0.65 * grey[..., None]  # mostly grey
    base = 0.75 * base + 0.25 * 255.0  # lighter
    fg = labels > 0  # (H, W)
    out = np.where(fg[..., None], (1 - alpha) * base + alpha * colors[labels], base)
    width = outline if outline is not None else max(1, round(min(h, w) / 150))
    # a pixel is on a region's border if a neighbour within `width` has another label
    lo = ndimage.grey_erosion(labels, size=2 * width + 1, mode="nearest")
    hi = ndimage.grey_dilation(labels, size=2 * width + 1, mode="nearest")
    border = (lo != labels) | (hi != labels)  # (H, W)
    inner = border & fg
    out[inner] = colors[labels[inner]]
    # the dark edge: background pixels right next to a region
    near = ndimage.grey_dilation(labels, size=3, mode="nearest") > 0
    edge = near & ~fg
    out[edge] = 0.35 * out[edge]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output directory {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write here ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


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

    Holds only paths and settings, so it can be copied to worker processes; `prepare` runs once
    (on the driver), `done` and `write` per image (anywhere).
    """

    out_dir: Path
    classes: list[str]
    overlays: bool = True
    info: dict[str, Any] = field(default_factory=dict)  # model, embeddings: kept in classes.json

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.classes = list(self.classes)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (LABELS_SUFFIX, OVERLAY_SUFFIX) if self.overlays else (LABELS_SUFFIX,)

    def prepare(self) -> int:
        """Create the folder, check it is writable, remove a killed run's temp files, write
        classes.json; returns how many temp files were removed."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.out_dir}: cannot create output directory ({exc.strerror})") from None
        if not os.access(self.out_dir, os.W_OK):
            raise InputError(f"{self.out_dir}: output directory is not writable")
        removed = remove_stale_temp_files(self.out_dir)
        write_json(self.out_dir / CLASSES_FILE, {"classes": self.classes,
                                                 "palette": palette(len(self.classes)).tolist(),
                                                 **self.info})
        return removed

    def names(self, inputs: Sequence[Path]) -> dict[Path, str]:
        """Output stem per input (see `output_names`)."""
        return output_names(inputs, self.suffixes)

    def files(self, stem: str) -> list[Path]:
        """The files written for one input, the label map last."""
        return [self.out_dir / (stem + s) for s in reversed(self.suffixes)]

    def done(self, stem: str) -> bool:
        """Whether every output of this input exists (each is whole: writes are atomic)."""
        return all(p.exists() for p in self.files(stem))

    def write(self, stem: str, image: np.ndarray, labels: np.ndarray) -> list[Path]:
        """Write one input's outputs atomically; the label map goes last, so its presence means
        the image is finished."""
        if self.overlays:
            save_overlay(self.out_dir / (stem + OVERLAY_SUFFIX), image, labels)
        save_labels(self.out_dir / (stem + LABELS_SUFFIX), labels, len(self.classes))
        return self.files(stem)

    def zip(self, name: str = "labels.zip", stems: Iterable[str] | None = None) -> Path:
        """All outputs (or those of `stems`) and classes.json in one zip, written atomically."""
        wanted = None if stems is None else {p.name for s in stems for p in self.files(s)}
        path = self.out_dir / name
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(self.out_dir.iterdir()):
                if p.name.startswith(".") or p == path or not p.is_file():
                    continue
                if p.name == CLASSES_FILE or (p.suffix == ".png" and (wanted is None or p.name in wanted)):
                    zf.write(p, p.name)
        return path
