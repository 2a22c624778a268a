"""CelebAMask-HQ face label maps, merged into the SLiMe paper's 10 face classes.

Input: combined label maps (8-bit PNG, value = CelebAMask-HQ class 0..18, as written by the
dataset's `g_mask.py` and shipped in its MaskGAN demo) paired by stem with the CelebA-HQ images,
in either folder layout of `folder.py` (`STEM.jpg` beside `STEM.png`, or images/ + masks/), or
with `mask_dir` given explicitly. The images are 1024x1024 and the masks 512x512: each image is
downscaled to its mask's size (Pillow bilinear, which low-pass filters when shrinking), as the
reference code does, so the annotation is never resampled.

CelebAMask-HQ index -> slimeseg class (`CELEBAMASK_TO_CLASS`):

    =====  =======  ==========  =====================================================
    index  name     class       why
    =====  =======  ==========  =====================================================
    0      bg       background
    1      skin     face        the paper's "face" is the skin region
    2      nose     nose
    3      eye_g    face        eyeglasses sit on the face; `g_mask.py` paints them over
                                skin and nose, so background here would punch holes in it
    4, 5   l/r_eye  eye
    6, 7   l/r_brow eyebrow
    8, 9   l/r_ear  ear
    10-12  mouth,   mouth       mouth interior and both lips, as in the reference code
           u/l_lip
    13     hair     hair
    14     hat      background  not one of the 10 classes; the reference code, which builds
    15     ear_r    background  its maps from the per-part masks, leaves accessories out too
    16     neck_l   background  (necklace; where it lies on the neck, neck is painted over it)
    17     neck     neck
    18     cloth    cloth
    =====  =======  ==========  =====================================================

With `ignore_accessories=True` the four accessories (eye_g, hat, ear_r, neck_l) become IGNORE
instead, so that they are left out of the scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import load_image, load_mask
from .base import IGNORE, Dataset, Sample, natural_key, select_names
from .folder import find_pairs, pair_dirs

CLASSES = ["background", "cloth", "eyebrow", "ear", "eye", "hair", "mouth", "neck", "nose", "face"]

CELEBAMASK_NAMES = [
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
]  # index = value in the label map (face_parsing/README.md of CelebAMask-HQ)

CELEBAMASK_TO_CLASS = {
    "background": "background",
    "skin": "face",
    "nose": "nose",
    "eye_g": "face",
    "l_eye": "eye",
    "r_eye": "eye",
    "l_brow": "eyebrow",
    "r_brow": "eyebrow",
    "l_ear": "ear",
    "r_ear": "ear",
    "mouth": "mouth",
    "u_lip": "mouth",
    "l_lip": "mouth",
    "hair": "hair",
    "hat": "background",
    "ear_r": "background",
    "neck_l": "background",
    "neck": "neck",
    "cloth": "cloth",
}
ACCESSORIES = ("eye_g", "hat", "ear_r", "neck_l")


def lookup_table(ignore_accessories: bool = False) -> np.ndarray:
    """(256,) uint8 map from CelebAMask-HQ value to slimeseg class; unknown values -> IGNORE."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    for index, name in enumerate(CELEBAMASK_NAMES):
        target = CELEBAMASK_TO_CLASS[name]
        if ignore_accessories and name in ACCESSORIES:
            continue
        table[index] = CLASSES.index(target)
    return table


def _resize_to(image: np.ndarray, shape: tuple[int, int], image_path: Path, mask_path: Path) -> np.ndarray:
    """Bring the image to the mask's (H, W); a different aspect ratio means a wrong pairing."""
    (ih, iw), (mh, mw) = image.shape[:2], shape
    if (ih, iw) == (mh, mw):
        return image
    if abs(iw * mh - ih * mw) > max(iw, ih):  # allow a pixel of rounding
        raise InputError(
            f"{mask_path}: mask is {mw}x{mh} but image {image_path} is {iw}x{ih} "
            "(different aspect ratio)"
        )
    return np.asarray(Image.fromarray(image).resize((mw, mh), Image.BILINEAR))


def load_celebamask_hq(
    path: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    ignore_accessories: bool = False,
) -> Dataset:
    """Read CelebA-HQ images with their CelebAMask-HQ label maps as the paper's 10 classes."""
    folder = Path(path)
    pairs = pair_dirs(folder, Path(mask_dir)) if mask_dir is not None else find_pairs(folder)
    if not pairs:
        raise InputError(f"{folder}: no image/mask pairs found")
    table = lookup_table(ignore_accessories)
    samples = []
    for stem in sorted(select_names(pairs, names, folder), key=natural_key):
        image_path, mask_path = pairs[stem]
        raw = load_mask(mask_path)
        if raw.max() >= len(CELEBAMASK_NAMES):
            raise InputError(
                f"{mask_path}: value {int(raw.max())} is not a CelebAMask-HQ class (0..18)"
            )
        image = _resize_to(load_image(image_path), raw.shape, image_path, mask_path)
        samples.append(Sample(image=image, mask=table[raw], name=stem))
    return Dataset(classes=list(CLASSES), samples=samples)
