"""A folder of image/mask pairs, matched by file stem (never by sort order).

Two layouts are accepted:

1. `DIR/images/` and `DIR/masks/`: `images/STEM.<any image ext>` pairs with
   `masks/STEM.<png|bmp|tif|gif|npy>`.
2. Side by side in `DIR`: `STEM.npy` is always a mask and pairs with the one image of that stem;
   otherwise `STEM.png` is the mask of a non-PNG image of the same stem (`STEM.jpg`, ...).
   So a PNG image needs a `.npy` mask here (or use layout 1).

A file with no partner, or a stem with more than one candidate image or mask, is an InputError
that names it. `DIR/classes.txt` or `DIR/labels.txt` (one name per line, or "index name" lines)
(or the `classes.json` that `slimeseg segment` writes) names the classes; without one they are
called background, class_1, class_2, ... and the dataset says it names none (`Dataset.named`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, check_pair, load_image, load_mask
from .base import (
    Dataset,
    Sample,
    check_labels,
    default_class_names,
    find_class_file,
    natural_key,
    read_class_names,
    select_names,
)

Pairs = dict[str, tuple[Path, Path]]  # stem -> (image path, mask path)


def _files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Visible regular files in `folder` whose suffix is one of `extensions` (any case)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    """Index files by stem, refusing two files of one stem (a.jpg and a.png)."""
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise InputError(f"{path}: two {what}s named {path.stem!r} ({out[path.stem].name}, {path.name})")
        out[path.stem] = path
    return out


def pair_dirs(image_dir: Path, mask_dir: Path) -> Pairs:
    """Pair `image_dir/STEM.*` with `mask_dir/STEM.*`; any file without a partner is an error."""
    images = _by_stem(_files(image_dir, IMAGE_EXTENSIONS), "image")
    # JPEG masks are listed so that load_mask can say why they are refused.
    masks = _by_stem(_files(mask_dir, tuple(set(MASK_EXTENSIONS) | set(IMAGE_EXTENSIONS))), "mask")
    for stem, path in images.items():
        if stem not in masks:
            raise InputError(f"{path}: no mask named {stem}.* in {mask_dir}")
    for stem, path in masks.items():
        if stem not in images:
            raise InputError(f"{path}: no image named {stem}.* in {image_dir}")
    return {stem: (images[stem], masks[stem]) for stem in images}


def pair_side_by_side(folder: Path) -> Pairs:
    """Pair images and masks that share a stem in one folder (rules in the module docstring)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in _files(folder, tuple(IMAGE_EXTENSIONS) + (".npy",)):
        groups[path.stem].append(path)
    pairs: Pairs = {}
    for stem, files in groups.items():
        npy = [p for p in files if p.suffix.lower() == ".npy"]
        if npy:
            images = [p for p in files if p.suffix.lower() != ".npy"]
            if not images:
                raise InputError(f"{npy[0]}: mask has no image named {stem}.* beside it")
            if len(images) > 1:
                names = ", ".join(p.name for p in images)
                raise InputError(f"{npy[0]}: more than one image for this mask ({names})")
            pairs[stem] = (images[0], npy[0])
            continue
        pngs = [p for p in files if p.suffix.lower() == ".png"]
        others = [p for p in files if p.suffix.lower() != ".png"]
        if len(files) == 1:
            raise InputError(
                f"{files[0]}: unpaired file; expected {stem}.png (mask of a {stem}.jpg) or "
                f"{stem}.npy beside it"
            )
        if len(pngs) != 1 or len(others) != 1:
            names = ", ".join(p.name for p in files)
            raise InputError(
                f"{folder}: cannot tell image from mask among {names}; "
                "use images/ and masks/ folders or a .npy mask"
            )
        pairs[stem] = (others[0], pngs[0])
    return pairs


def find_pairs(folder: Path) -> Pairs:
    """Pairs from either layout: images/ + masks/ when both exist, else side by side."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    image_dir, mask_dir = folder / "images", folder / "masks"
    if image_dir.is_dir() and mask_dir.is_dir():
        return pair_dirs(image_dir, mask_dir)
    if image_dir.is_dir() or mask_dir.is_dir():
        raise InputError(f"{folder}: has {'images/' if image_dir.is_dir() else 'masks/'} but not the other")
    return pair_side_by_side(folder)


def load_pairs(pairs: Pairs, names: set[str]) -> list[Sample]:
    """Read and size-check the chosen pairs, in natural order of their stems."""
    samples = []
    for stem in sorted(names, key=natural_key):
        image_path, mask_path = pairs[stem]
        image, mask = load_image(image_path), load_mask(mask_path)
        check_pair(image, mask, str(image_path), str(mask_path))
        samples.append(Sample(image=image, mask=mask, name=stem))
    return samples


def resolve_classes(
    classes: Sequence[str] | str | os.PathLike | None, samples: list[Sample], *folders: Path
) -> tuple[list[str], bool]:
    """Class names from an explicit list, a file, a class file in `folders`, or stand-ins
    (background, class_1, ...); the flag says whether the names are real (not stand-ins)."""
    named = True
    if isinstance(classes, (str, os.PathLike)):
        names = read_class_names(Path(classes))
    elif classes is not None:
        names = list(classes)
    else:
        found = find_class_file(*folders)
        named = found is not None
        names = read_class_names(found) if found else default_class_names(samples)
    check_labels(samples, names, "the class list")
    return names, named


def load_folder(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
) -> Dataset:
    """Read every image/mask pair in `path` (or only the stems in `names`)."""
    folder = Path(path)
    pairs = find_pairs(folder)
    if not pairs:
        raise InputError(f"{folder}: no image/mask pairs found")
    samples = load_pairs(pairs, select_names(pairs, names, folder))
    class_names, named = resolve_classes(classes, samples, folder)
    return Dataset(classes=class_names, samples=samples, named=named)
