"""Intersection over union for part segmentation, two ways.

- `ConfusionMatrix` accumulates one (K, K) pixel count over the whole test set and derives
  per-class IoU from it: the standard semantic-segmentation mIoU, and slimeseg's headline number.
- `PerImageIoU` is what the SLiMe reference code reports: IoU per image and class, an image that
  lacks a class in its ground truth is skipped for that class (so predicting it there costs
  nothing), then averaged over images per class and over classes.

Both count background as a class and leave out of the mean only classes whose IoU is undefined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class IoUResult:
    """Per-class IoU and their mean; `None` marks a class with no defined IoU (JSON null)."""

    method: str  # "accumulated" (confusion matrix) or "per_image" (reference code)
    per_class: dict[str, float | None]
    miou: float | None  # mean over the classes with a defined IoU, background included
    excluded: list[str]  # classes left out of the mean
    num_images: int

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _labels(arr: np.ndarray, what: str) -> np.ndarray:
    """Flatten a label array to int64, refusing non-integer dtypes (a float mask is a bug here)."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64)


def _check_num_classes(num_classes: int, ignore_index: int | None) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} is a real class (num_classes={num_classes})")


def image_confusion(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """(K, K) int64 pixel counts for one image: rows ground truth, columns prediction.

    Pixels whose target equals `ignore_index` are skipped; any other value outside [0, K) in
    either array is an error rather than something silently dropped.
    """
    _check_num_classes(num_classes, ignore_index)
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"prediction shape {np.shape(pred)} != target shape {np.shape(target)}")
    p, t = _labels(pred, "prediction"), _labels(target, "target")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for arr, what in ((p, "prediction"), (t, "target")):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = int(arr.max()) if arr.max() >= num_classes else int(arr.min())
            raise ValueError(f"{what} holds class {bad}, outside [0, {num_classes})")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN where the class is neither in truth nor predicted."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _result(method: str, ious: np.ndarray, classes: Sequence[str] | None, n: int) -> IoUResult:
    """Package per-class IoU (NaN = undefined) with names, the mean and the excluded classes."""
    names = list(classes) if classes is not None else [str(k) for k in range(len(ious))]
    if len(names) != len(ious):
        raise ValueError(f"{len(names)} class names given for {len(ious)} classes")
    per_class = {name: (None if math.isnan(v) else float(v)) for name, v in zip(names, ious, strict=True)}
    defined = [v for v in per_class.values() if v is not None]
    return IoUResult(
        method=method,
        per_class=per_class,
        miou=float(np.mean(defined)) if defined else None,
        excluded=[name for name, v in per_class.items() if v is None],
        num_images=n,
    )


class ConfusionMatrix:
    """Pixel counts over a whole test set; IoU per class from the totals (the default metric)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        _check_num_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one (H, W) prediction / ground-truth pair."""
        self.matrix += image_confusion(pred, target, self.num_classes, self.ignore_index)
        self.num_images += 1

    def iou(self) -> np.ndarray:
        """(K,) IoU per class; NaN for a class absent from the ground truth and never predicted."""
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU (background included); NaN if none."""
        ious = self.iou()
        return float(np.nanmean(ious)) if not np.isnan(ious).all() else math.nan

    def result(self, classes: Sequence[str] | None = None) -> IoUResult:
        return _result("accumulated", self.iou(), classes, self.num_images)


class PerImageIoU:
    """The SLiMe reference code's IoU: per image and class, then averaged over images per class.

    A class is scored on an image only if it occurs in that image's ground truth; false positives
    on images without the class therefore go unpunished, which is why this variant reads higher.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        _check_num_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.sums = np.zeros(num_classes, dtype=np.float64)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Score one (H, W) pair for each class present in its ground truth."""
        matrix = image_confusion(pred, target, self.num_classes, self.ignore_index)
        present = matrix.sum(axis=1) > 0
        ious = iou_from_confusion(matrix)
        self.sums[present] += ious[present]
        self.counts[present] += 1
        self.num_images += 1

    def iou(self) -> np.ndarray:
        """(K,) mean per-image IoU per class; NaN for a class no ground truth contains."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def miou(self) -> float:
        ious = self.iou()
        return float(np.nanmean(ious)) if not np.isnan(ious).all() else math.nan

    def result(self, classes: Sequence[str] | None = None) -> IoUResult:
        return _result("per_image", self.iou(), classes, self.num_images)


def evaluate(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
    ignore_index: int | None = 255,
) -> dict[str, IoUResult]:
    """Score (prediction, ground truth) pairs both ways: {"accumulated": ..., "per_image": ...}."""
    acc = ConfusionMatrix(len(classes), ignore_index)
    per = PerImageIoU(len(classes), ignore_index)
    for pred, target in pairs:
        acc.update(pred, target)
        per.update(pred, target)
    return {"accumulated": acc.result(classes), "per_image": per.result(classes)}
