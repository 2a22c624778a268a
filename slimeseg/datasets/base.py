"""What every dataset reader returns: samples of (image, label map, name) plus the class names.

Label maps hold class indices 0..K-1 (0 = background) and may hold IGNORE (255) for pixels that
must not be scored ("void"); `slimeseg.metrics` skips those by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import IGNORE
from ..errors import InputError

CLASS_FILES = ("classes.txt", "labels.txt", "classes.json")  # classes.json: as `segment` writes it


@dataclass(eq=False)
class Sample:
    """One image and its label map, same height and width."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8 class indices, IGNORE allowed
    name: str  # file stem, or stem plus object index for object crops

    def __post_init__(self) -> None:
        img, msk = self.image, self.mask
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"{self.name}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if msk.ndim != 2 or msk.dtype != np.uint8:
            raise InputError(f"{self.name}: mask must be (H, W) uint8, got {msk.shape} {msk.dtype}")
        if img.shape[:2] != msk.shape:
            raise InputError(f"{self.name}: image is {img.shape[:2]} but mask is {msk.shape}")


@dataclass(eq=False)
class Dataset:
    """Class names (index = label value, 0 = background) and the samples, in a stable order."""

    classes: list[str]
    samples: list[Sample] = field(default_factory=list)
    named: bool = True  # False: the data names no classes; `classes` are stand-ins (class_1, ...)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]


def natural_key(text: str) -> list:
    """Sort key that puts "2" before "10" (file stems are often numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def select_names(available: Iterable[str], names: Sequence[str] | None, where: Path) -> set[str]:
    """The names to load: all of `available`, or `names`, every one of which must exist."""
    available = set(available)
    if names is None:
        return available
    missing = [n for n in names if n not in available]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{where}: no sample named {shown}")
    return set(names)


def read_class_names(path: Path) -> list[str]:
    """Parse a class list: one name per line, or "index name" lines covering 0..K-1, or a JSON
    file with a "classes" list (the `classes.json` that `slimeseg segment` writes).

    Blank lines and lines starting with '#' are skipped. Names must be unique.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read class names ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text).get("classes")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise InputError(f"{path}: not a classes.json file ({exc})") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise InputError(f"{path}: needs a \"classes\" list of names")
        text = "\n".join(names)
    lines = text.splitlines()
    lines = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: no class names in file")
    indexed = [re.fullmatch(r"(\d+)[\s:,]+(\S.*)", ln) for ln in lines]
    if all(indexed):
        by_index = {}
        for m in indexed:
            k = int(m.group(1))
            if k in by_index:
                raise InputError(f"{path}: class index {k} appears twice")
            by_index[k] = m.group(2).strip()
        if sorted(by_index) != list(range(len(by_index))):
            raise InputError(f"{path}: class indices must be 0..{len(by_index) - 1} with no gaps")
        names = [by_index[k] for k in range(len(by_index))]
    elif any(indexed):
        raise InputError(f"{path}: mixes 'index name' lines with plain names")
    else:
        names = lines
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{path}: class name {dupes[0]!r} appears twice")
    return names


def find_class_file(*folders: Path) -> Path | None:
    """The first classes.txt / labels.txt in the given folders; both in one folder is ambiguous."""
    for folder in folders:
        found = [folder / name for name in CLASS_FILES if (folder / name).is_file()]
        if len(found) > 1:
            raise InputError(f"{folder}: {' and '.join(p.name for p in found)} all name classes; keep one")
        if found:
            return found[0]
    return None


def check_labels(samples: Sequence[Sample], classes: Sequence[str], where: str) -> None:
    """Refuse a mask holding a label beyond the class list (IGNORE excepted)."""
    for s in samples:
        values = np.unique(s.mask)
        bad = values[(values >= len(classes)) & (values != IGNORE)]
        if bad.size:
            raise InputError(
                f"{s.name}: mask holds class {int(bad[0])} but {where} lists only "
                f"{len(classes)} classes (0..{len(classes) - 1})"
            )


def default_class_names(samples: Sequence[Sample]) -> list[str]:
    """Names when no class list is given: background, class_1, ... up to the largest label."""
    top = 0
    for s in samples:
        values = s.mask[s.mask != IGNORE]
        if values.size:
            top = max(top, int(values.max()))
    return ["background"] + [f"class_{k}" for k in range(1, max(top, 1) + 1)]
