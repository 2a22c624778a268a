"""User inputs -> validated tensors: training pairs (`prepare_examples`) and images (`image_tensor`).

The engine (training, inference) only ever sees what these return: images as (3, H, W) floats
in [0, 1] at their own size, masks as (H, W) class indices checked against the class list.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .artifact import image_hash
from .config import MAX_CLASSES
from .errors import InputError
from .io import as_image_array, as_mask_array, check_pair

ImageLike = np.ndarray | Image.Image | str | os.PathLike


def input_name(item: Any, kind: str, index: int) -> str:
    """How messages name an input: its path, or "image #3" for an in-memory array."""
    return str(item) if isinstance(item, (str, os.PathLike)) else f"{kind} #{index}"


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


@dataclass
class Example:
    """One validated training pair, as tensors at the image's own size."""

    image: torch.Tensor  # (3, H, W) float in [0, 1]
    mask: torch.Tensor  # (H, W) long
    name: str
    sha256: str


def check_class_names(classes: Sequence[str]) -> list[str]:
    """A class list must hold 2..MAX_CLASSES distinct, non-empty names (background first)."""
    classes = list(classes)
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise InputError(f"{len(classes)} classes named; need 2 to {MAX_CLASSES} (background first)")
    if len(set(classes)) != len(classes) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise InputError(f"class names must be distinct and non-empty, got {classes}")
    return classes


def prepare_examples(images: Sequence[ImageLike], masks: Sequence[ImageLike],
                     classes: Sequence[str]) -> list[Example]:
    """Read and check training pairs: matching sizes, class indices below K, K in 2..MAX_CLASSES."""
    if len(images) != len(masks):
        raise InputError(f"got {len(images)} images but {len(masks)} masks; give one mask per image")
    if not images:
        raise InputError("no training images given")
    classes = check_class_names(classes)
    k = len(classes)
    examples, seen = [], np.zeros(k, dtype=bool)
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        img_name, msk_name = input_name(img, "image", i), input_name(msk, "mask", i)
        arr = as_image_array(img, img_name)
        lab = as_mask_array(msk, msk_name)
        check_pair(arr, lab, img_name, msk_name)
        top = int(lab.max())
        if top >= k:
            raise InputError(f"{msk_name}: mask holds class {top} but only {k} classes are named "
                             f"({', '.join(classes)}), so values must be 0..{k - 1}")
        seen[np.unique(lab)] = True
        examples.append(Example(image_tensor(arr), torch.from_numpy(lab.astype(np.int64)),
                                img_name, image_hash(arr)))
    absent = [c for c, s in zip(classes, seen, strict=True) if not s]
    if absent:
        warnings.warn(f"class(es) {', '.join(absent)} appear in no mask; they cannot be learned",
                      stacklevel=3)
    return examples
