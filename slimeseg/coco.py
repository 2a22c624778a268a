"""COCO export: one `coco.json` for a folder of label maps, for the tools people label with.

CVAT, Label Studio (through its converter), FiftyOne, Detectron2, MMDetection and Ultralytics
read COCO. `--format coco` writes the per-image label PNGs as `--format png` does (they stay the
resumable unit: each is whole, and a re-run skips inputs whose PNG exists) and, at the end of the
run, assembles `coco.json` from them, atomically. So a run killed half-way and run again gives the
very same file, and the file is never partial. Its content:

- `images`: `file_name` relative to the input root (the inputs' common folder), `width`, `height`;
  ids 1..N in input order; failed inputs are left out (they are in `errors.jsonl`);
- `categories`: the classes without background (id = class index), colour as an extra `color`;
- `annotations`: one per (image, class present) with an RLE `segmentation` (pycocotools'
  compressed encoding), `area`, `bbox` [x, y, w, h] and `iscrowd` 0 (tools ignore crowd regions
  in training); with `instances`, one per 8-connected component of each class instead.

`info.slimeseg` names the job (the embeddings' digest, classes, settings, instances); a folder
whose `coco.json` another job wrote (other embeddings, classes or settings: other label maps) is
refused, not silently mixed (`--overwrite` redoes it); `--instances` alone may change, since the
same label maps give either file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import InputError
from .files import atomic_path

COCO_FILE = "coco.json"
COCO_HINT = "pip install 'slimeseg[coco]'"
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: pixels touching at a corner are one object


def _mask_api() -> Any:
    """pycocotools.mask (the RLE encoder every COCO reader decodes with)."""
    try:
        from pycocotools import mask
    except ImportError:
        raise InputError(f"COCO output needs pycocotools; install it with: {COCO_HINT}") from None
    return mask


def input_root(paths: Sequence[Path]) -> Path:
    """The folder COCO file names are relative to: the inputs' common folder."""
    if not paths:
        return Path(".")
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))


def rle(binary: np.ndarray) -> dict[str, Any]:
    """A binary (H, W) mask as COCO's compressed RLE, JSON-ready (`counts` a str)."""
    code = _mask_api().encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in code["size"]], "counts": code["counts"].decode("ascii")}


def regions(labels: np.ndarray, num_classes: int, instances: bool = False
            ) -> list[tuple[int, np.ndarray]]:
    """(class, binary mask) per class present (background 0 excluded), in class order; with
    `instances` one per 8-connected component, in scan order."""
    out = []
    for k in range(1, num_classes):
        binary = labels == k
        if not binary.any():
            continue
        if not instances:
            out.append((k, binary))
            continue
        comp, n = ndimage.label(binary, structure=_EIGHT)
        out += [(k, comp == i) for i in range(1, n + 1)]
    return out


def annotations(labels: np.ndarray, num_classes: int, image_id: int, first_id: int,
                instances: bool = False) -> list[dict[str, Any]]:
    """The COCO annotations of one label map, ids from `first_id`."""
    mask = _mask_api()
    out = []
    for i, (k, binary) in enumerate(regions(labels, num_classes, instances)):
        seg = rle(binary)
        code = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        out.append({"id": first_id + i, "image_id": image_id, "category_id": k,
                    "segmentation": seg, "area": int(mask.area(code)),
                    "bbox": [float(v) for v in mask.toBbox(code)], "iscrowd": 0})
    return out


def categories(classes: Sequence[str]) -> list[dict[str, Any]]:
    """The classes without background, id = class index, colour as in the label PNGs' palette."""
    from .writers import palette

    colours = palette(len(classes))
    return [{"id": k, "name": name, "supercategory": "", "color": [int(c) for c in colours[k]]}
            for k, name in enumerate(classes) if k > 0]


def document(items: Iterable[tuple[str, np.ndarray]], classes: Sequence[str], job: dict[str, Any],
             instances: bool = False) -> dict[str, Any]:
    """The COCO dataset of (file name, label map) pairs, in their order (ids from 1)."""
    images, anns = [], []
    for image_id, (file_name, labels) in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": int(labels.shape[1]),
                       "height": int(labels.shape[0])})
        anns += annotations(labels, len(classes), image_id, len(anns) + 1, instances)
    return {"info": {"description": "segmented by slimeseg", "slimeseg": job},
            "licenses": [], "images": images, "categories": categories(classes), "annotations": anns}


def check_target(path: Path, job: dict[str, Any]) -> None:
    """Refuse (one line) a `coco.json` that another job wrote: other embeddings, classes or
    settings, or not slimeseg's at all; the same job's file is fine (it is rebuilt)."""
    if not path.exists():
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8"))["info"]["slimeseg"]
        if not isinstance(found, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path}: a coco.json not written by slimeseg is in the way; move it or "
                         "choose another --out") from None
    # what the label maps depend on (not `instances`: the same maps give either file)
    diff = sorted(k for k in ("embeddings", "classes", "settings")
                  if found.get(k) != job.get(k))
    if diff:
        raise InputError(f"{path}: written by another job (its {', '.join(diff)} differ); choose "
                         "another --out, or add --overwrite to redo the folder with this one")


def write(path: Path, items: Iterable[tuple[str, np.ndarray]], classes: Sequence[str],
          job: dict[str, Any], instances: bool = False) -> Path:
    """Write the COCO file atomically (whole or not at all)."""
    data = document(items, classes, job, instances)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def read_labels(path: Path) -> np.ndarray:
    """A label PNG's class indices, (H, W) uint8."""
    with Image.open(path) as img:
        return np.asarray(img)
