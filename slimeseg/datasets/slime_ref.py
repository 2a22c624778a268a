"""The SLiMe reference code's data layout: `STEM.png` images with `STEM.npy` label maps.

Each split is its own folder (e.g. `celeba/train_1/`, `celeba/test/`). The masks are float64
arrays holding whole class numbers, one per pixel, same size as the PNG; `io.load_mask` checks
they really are whole and non-negative. The reference passes the class names on the command line
(`--part_names`); here they come from `classes`, or a classes.txt / labels.txt in the split
folder or its parent (where one list serves every split).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .base import Dataset, select_names
from .folder import load_pairs, pair_side_by_side, resolve_classes


def load_slime(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
) -> Dataset:
    """Read one split folder of PNG/JPEG images with `.npy` masks paired by stem."""
    folder = Path(path)
    pairs = pair_side_by_side(folder)
    for stem, (image_path, mask_path) in pairs.items():
        if mask_path.suffix.lower() != ".npy":
            raise InputError(
                f"{image_path}: no {stem}.npy mask beside it (the SLiMe layout keeps masks as .npy)"
            )
    if not pairs:
        raise InputError(f"{folder}: no image/.npy mask pairs found")
    samples = load_pairs(pairs, select_names(pairs, names, folder))
    names, named = resolve_classes(classes, samples, folder, folder.parent)
    return Dataset(classes=names, samples=samples, named=named)
