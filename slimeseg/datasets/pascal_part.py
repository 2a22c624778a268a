"""PASCAL-Part object crops for car and horse, with the part classes of ReGAN and SLiMe.

Input: PASCAL VOC 2010 JPEGs (`ROOT/JPEGImages/ID.jpg`) and PASCAL-Part annotations
(`ROOT/Annotations_Part/ID.mat`). Each .mat holds `anno` with `imname` and `objects`, a struct
array with `class` (e.g. 'car'), `class_ind`, `mask` (the instance silhouette, HxW {0,1}) and
`parts`, a struct array of `part_name` and `mask` ((0, 0) when the object has no part labels).

Protocol (ReGAN, as used by the SLiMe paper), per object of the chosen category:
- skip it if it has no part labels;
- skip it if its bounding box overlaps another annotated object's box (any class, parts or not)
  by more than `max_overlap` = 5%, measured as intersection area / the object's OWN box area.
  (The reference code instead compares box IoU, and only between car/horse/dog objects.)
- skip it if its tight box has fewer than 50*50 (car) or 32*32 (horse) pixels, the reference
  code's reading of "smaller than 50x50";
- crop image and label map to its box. With `square=True` (the reference code's choice, so that
  resizing to 512x512 does not distort) the shorter side of the box is widened symmetrically to
  a square, shifted to stay inside the image, and clipped where the image is too small.

Label map: part masks may overlap and do not cover the whole object. Classes are painted in
`PAINT_ORDER`, later ones on top (body first, so every non-body part wins over body, as in the
reference code). Object pixels no part covers, and everything outside the object, are
background, as in the reference code.

Part name -> class (`PART_TO_CLASS`; a trailing `_<number>` is dropped first, so `wheel_7` and
`window_20` map like `wheel` and `window`):

    car
    ==========  =====================================================================
    class       PASCAL-Part part names
    ==========  =====================================================================
    body        frontside backside leftside rightside roofside leftmirror rightmirror
                door_k
    light       headlight_k (head lights; PASCAL-Part has no separate back lights)
    plate       fliplate bliplate (front / back licence plate)
    wheel       wheel_k
    window      window_k
    ==========  =====================================================================

    horse
    ==========  =====================================================================
    head        head leye reye lear rear muzzle
    neck+torso  neck torso
    leg         lfuleg lflleg rfuleg rflleg lbuleg lblleg rbuleg rblleg (upper/lower legs)
                lfho rfho lbho rbho (hooves); lfleg rfleg lbleg rbleg (whole-leg names)
    tail        tail
    ==========  =====================================================================

(The reference code's table sends `lblleg` to a class 'log', a typo, so its horse leg class
misses left back lower legs; here they are leg. It also lists only door_1-3, headlight_1-6,
wheel_1-5 and window_1-7.)

A part name outside this table is not painted (its pixels stay background unless another part
covers them) and is reported in one warning per load, so that nothing is dropped silently.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from ..errors import InputError
from ..io import check_pair, load_image
from .base import Dataset, Sample, natural_key, select_names

CLASSES = {
    "car": ["background", "body", "light", "plate", "wheel", "window"],
    "horse": ["background", "head", "neck+torso", "leg", "tail"],
}
MIN_SIZE = {"car": 50, "horse": 32}  # objects whose tight box has < MIN_SIZE**2 pixels are dropped
PAINT_ORDER = {  # later classes are painted over earlier ones where part masks overlap
    "car": ["body", "window", "wheel", "light", "plate"],
    "horse": ["neck+torso", "leg", "tail", "head"],
}

_CAR_BODY = ("frontside", "backside", "leftside", "rightside", "roofside",
             "leftmirror", "rightmirror", "door")
_HORSE_HEAD = ("head", "leye", "reye", "lear", "rear", "muzzle")
_HORSE_LEG = ("lfuleg", "lflleg", "rfuleg", "rflleg", "lbuleg", "lblleg", "rbuleg", "rblleg",
              "lfho", "rfho", "lbho", "rbho", "lfleg", "rfleg", "lbleg", "rbleg")
PART_TO_CLASS = {  # base part name (no _<number>) -> class
    "car": {
        **{name: "body" for name in _CAR_BODY},
        "headlight": "light",
        "fliplate": "plate",
        "bliplate": "plate",
        "wheel": "wheel",
        "window": "window",
    },
    "horse": {
        **{name: "head" for name in _HORSE_HEAD},
        "neck": "neck+torso",
        "torso": "neck+torso",
        **{name: "leg" for name in _HORSE_LEG},
        "tail": "tail",
    },
}


def part_class(category: str, part_name: str) -> str | None:
    """The class of a PASCAL-Part part name (`wheel_3` -> `wheel`), or None if unknown."""
    return PART_TO_CLASS[category].get(re.sub(r"_\d+$", "", part_name))


@dataclass
class Annotated:
    """One annotated object of a PASCAL-Part .mat file."""

    cls: str
    mask: np.ndarray  # (H, W) bool silhouette
    parts: list[tuple[str, np.ndarray]]  # (part name, (H, W) bool mask)


def _text(value: object) -> str:
    """MATLAB strings arrive as 1-element arrays of str (or empty arrays)."""
    arr = np.asarray(value).ravel()
    return str(arr[0]) if arr.size else ""


def read_annotation(path: Path) -> list[Annotated]:
    """Parse a PASCAL-Part .mat file into its objects."""
    try:
        anno = scipy.io.loadmat(str(path))["anno"][0, 0]
        objects = anno["objects"].ravel()
        out = []
        for obj in objects:
            parts = obj["parts"]
            part_list = [] if parts.size == 0 else [
                (_text(p["part_name"]), np.asarray(p["mask"]) > 0) for p in parts.ravel()
            ]
            out.append(Annotated(_text(obj["class"]), np.asarray(obj["mask"]) > 0, part_list))
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file not found") from None
    except (scipy.io.matlab.MatReadError, NotImplementedError, KeyError, IndexError,
            ValueError, TypeError, OSError) as exc:
        raise InputError(f"{path}: not a PASCAL-Part annotation ({type(exc).__name__}: {exc})") from None
    return out


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with exclusive ends


def bounding_box(mask: np.ndarray) -> Box | None:
    """Tight box around the True pixels, None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def overlap_fraction(box: Box, other: Box) -> float:
    """Area of `box` ∩ `other` divided by the area of `box` (not symmetric)."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    return max(w, 0) * max(h, 0) / box_area(box)


def _widen(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to length `side` around its centre, kept inside [0, limit)."""
    extra = side - (hi - lo)
    lo, hi = lo - (extra + 1) // 2, hi + extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def square_box(box: Box, width: int, height: int) -> Box:
    """The box grown to a square on its shorter side, inside a width x height image if it fits."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    x0, x1 = _widen(x0, x1, side, width)
    y0, y1 = _widen(y0, y1, side, height)
    return x0, y0, x1, y1


def label_map(obj: Annotated, category: str, unknown: Counter) -> np.ndarray:
    """(H, W) uint8 part labels of one object, overlaps resolved by PAINT_ORDER."""
    classes = CLASSES[category]
    by_class: dict[str, list[np.ndarray]] = {}
    for name, mask in obj.parts:
        cls = part_class(category, name)
        if cls is None:
            unknown[name] += 1
            continue
        by_class.setdefault(cls, []).append(mask)
    labels = np.zeros(obj.mask.shape, dtype=np.uint8)
    for cls in PAINT_ORDER[category]:
        for mask in by_class.get(cls, []):
            labels[mask] = classes.index(cls)
    return labels


def keep_objects(objects: list[Annotated], category: str, max_overlap: float, min_size: int) -> list[int]:
    """Indices of the objects of `category` that pass the part, overlap and size filters."""
    boxes = [bounding_box(o.mask) for o in objects]
    kept = []
    for i, (obj, box) in enumerate(zip(objects, boxes, strict=True)):
        if obj.cls != category or not obj.parts or box is None:
            continue
        if box_area(box) < min_size * min_size:
            continue
        others = (b for j, b in enumerate(boxes) if j != i and b is not None)
        if any(overlap_fraction(box, b) > max_overlap for b in others):
            continue
        kept.append(i)
    return kept


def load_pascal_part(
    path: str | os.PathLike,
    category: str,
    image_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    max_overlap: float = 0.05,
    min_size: int | None = None,
    square: bool = True,
) -> Dataset:
    """Object crops of `category` ('car' or 'horse') with their part label maps.

    `path` holds Annotations_Part/ (or is that folder); images come from `image_dir`, by default
    JPEGImages/ beside the annotations. `names` limits the image ids read (e.g. a split list).
    Samples are named `<image id>_<object index in the .mat>`.
    """
    if category not in CLASSES:
        raise InputError(f"unknown PASCAL-Part category {category!r} (choose from {', '.join(CLASSES)})")
    root = Path(path)
    ann_dir = root / "Annotations_Part" if (root / "Annotations_Part").is_dir() else root
    if not ann_dir.is_dir():
        raise InputError(f"{root}: not a directory")
    img_dir = Path(image_dir) if image_dir is not None else ann_dir.parent / "JPEGImages"
    files = {p.stem: p for p in ann_dir.glob("*.mat") if not p.name.startswith(".")}
    if not files:
        raise InputError(f"{ann_dir}: no PASCAL-Part .mat annotations found")
    min_size = MIN_SIZE[category] if min_size is None else min_size

    samples: list[Sample] = []
    unknown: Counter = Counter()
    for stem in sorted(select_names(files, names, ann_dir), key=natural_key):
        objects = read_annotation(files[stem])
        kept = keep_objects(objects, category, max_overlap, min_size)
        if not kept:
            continue
        image_path = img_dir / f"{stem}.jpg"
        image = load_image(image_path)
        height, width = image.shape[:2]
        for i in kept:
            obj = objects[i]
            check_pair(image, obj.mask, str(image_path), f"{files[stem]} object {i}")
            box = bounding_box(obj.mask)
            x0, y0, x1, y1 = square_box(box, width, height) if square else box
            labels = label_map(obj, category, unknown)
            samples.append(Sample(
                image=np.ascontiguousarray(image[y0:y1, x0:x1]),
                mask=np.ascontiguousarray(labels[y0:y1, x0:x1]),
                name=f"{stem}_{i}",
            ))
    if unknown:
        listed = ", ".join(f"{name} (x{n})" for name, n in sorted(unknown.items()))
        warnings.warn(
            f"{ann_dir}: {category} part names not in the class table were left as background: "
            f"{listed}",
            stacklevel=2,
        )
    return Dataset(classes=list(CLASSES[category]), samples=samples)
