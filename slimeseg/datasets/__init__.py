"""Dataset readers: every format becomes a `Dataset` of (image, label map, name) samples.

    load_dataset("data/faces", format="celebamask-hq")
    load_dataset("VOC2010", format="pascal-part", category="car")

Formats (each a small module with one entry point; options pass through as keywords):
- `folder`:        images and masks paired by stem (folder.py)
- `pascal-part`:   PASCAL-Part car / horse object crops, ReGAN protocol (pascal_part.py)
- `celebamask-hq`: CelebAMask-HQ label maps as the paper's 10 face classes (celebamask.py)
- `slime`:         the SLiMe reference code's PNG + .npy layout (slime_ref.py)
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import InputError
from .base import IGNORE, Dataset, Sample
from .celebamask import load_celebamask_hq
from .folder import load_folder
from .pascal_part import load_pascal_part
from .slime_ref import load_slime

FORMATS: dict[str, Callable[..., Dataset]] = {
    "folder": load_folder,
    "pascal-part": load_pascal_part,
    "celebamask-hq": load_celebamask_hq,
    "slime": load_slime,
}


def load_dataset(path: str | os.PathLike, format: str = "folder", **options) -> Dataset:
    """Read the dataset at `path` in the named format; `options` go to that format's reader."""
    if format not in FORMATS:
        raise InputError(f"unknown dataset format {format!r} (choose from {', '.join(FORMATS)})")
    return FORMATS[format](path, **options)


__all__ = [
    "FORMATS",
    "IGNORE",
    "Dataset",
    "Sample",
    "load_celebamask_hq",
    "load_dataset",
    "load_folder",
    "load_pascal_part",
    "load_slime",
]
