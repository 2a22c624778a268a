"""k-shot train/test splits of the paper's datasets, drawn from a seed.

The SLiMe paper trains on k = 1 or 10 annotated examples and tests on a held-out set, three
times with different seeds. Which files the paper used is only partly public, so the rules here
are (`kshot_split`):

- **PASCAL-Part car / horse** (`load_pascal_part` object crops). ReGAN's train/test image lists,
  which the paper uses, are not available here. Rule: all objects of the category that pass the
  reader's filters form one pool; a seeded permutation of it (numpy `default_rng(seed)`) puts
  the first k objects in train and every other object in test. Objects are pooled across images,
  so two objects of one photo may land on both sides.
- **CelebAMask-HQ, SLiMe layout** (a folder with `train_*` and `test` sub-folders of PNG + .npy,
  the paper's own split): the train pool is `train_<k>` if it exists, else every `train*`
  folder together; k examples are drawn from it with the seed (all of them if it holds k), and
  the test set is the whole `test` folder.
- **CelebAMask-HQ, plain folder** (images with CelebAMask-HQ label maps, `load_celebamask_hq`):
  the same seeded pick as PASCAL-Part, k in train and the rest in test.

With too few examples (the small sample sets used for smoke runs), train takes at most all but
one example so that something is left to test on; with a single example, it is used for both
training and testing. Every such departure is described in `Split.notes`, which the reproduce
report prints: numbers from such a split say nothing about segmentation quality.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import Dataset, Sample, load_dataset
from .errors import InputError

DATASETS = ("car", "horse", "celeba")


@dataclass
class Split:
    """Training examples and test set of one seed, and how they were chosen."""

    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    rule: str  # one line: how train and test were chosen
    data_format: str  # the reader used (load_dataset format name)
    notes: list[str] = field(default_factory=list)  # departures from the protocol

    @property
    def test_set(self) -> Dataset:
        return Dataset(classes=list(self.classes), samples=list(self.test))

    def describe(self) -> dict:
        """JSON view: names, not pixels."""
        return {"train": [s.name for s in self.train], "test": [s.name for s in self.test],
                "rule": self.rule, "format": self.data_format, "notes": list(self.notes)}


def seeded_pick(samples: list[Sample], shots: int, seed: int) -> tuple[list[Sample], list[Sample], list[str]]:
    """k examples for training and the rest for testing, from a seeded permutation of `samples`."""
    n = len(samples)
    if n == 0:
        raise InputError("no samples to split")
    order = np.random.default_rng(seed).permutation(n).tolist()
    notes: list[str] = []
    if n == 1:
        notes.append("only 1 example in the data: trained and tested on the SAME example")
        return [samples[0]], [samples[0]], notes
    k = shots
    if shots > n - 1:
        k = n - 1
        notes.append(f"only {n} examples in the data: trained on {k} (not {shots}), "
                     f"tested on the other {n - k}")
    train = [samples[i] for i in order[:k]]
    test = [samples[i] for i in order[k:]]
    return train, test, notes


def _slime_train_dirs(root: Path, shots: int) -> list[Path]:
    exact = root / f"train_{shots}"
    if exact.is_dir():
        return [exact]
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("train"))


def is_slime_layout(root: Path) -> bool:
    """A folder with a `test` sub-folder and at least one `train*` sub-folder."""
    return (root / "test").is_dir() and any(
        p.is_dir() and p.name.startswith("train") for p in root.iterdir())


def _celeba_split(root: Path, shots: int, seed: int) -> Split:
    if is_slime_layout(root):
        train_dirs = _slime_train_dirs(root, shots)
        pools = [load_dataset(d, format="slime") for d in train_dirs]
        test = load_dataset(root / "test", format="slime")
        for d, pool in zip(train_dirs, pools, strict=True):
            if pool.classes != test.classes:
                raise InputError(f"{d}: classes {pool.classes} differ from {root / 'test'}'s {test.classes}")
        pool = [s for p in pools for s in p.samples]
        notes: list[str] = []
        if len(pool) <= shots:
            train = pool
            notes.append(f"the train pool holds {len(pool)} example(s): every seed trains on the same "
                         "image(s); the seed changes only the training randomness")
            if len(pool) < shots:
                notes.append(f"only {len(pool)} training example(s) in "
                             f"{', '.join(d.name for d in train_dirs)}: trained on {len(pool)} (not {shots})")
        else:
            order = np.random.default_rng(seed).permutation(len(pool)).tolist()
            train = [pool[i] for i in order[:shots]]
        rule = (f"SLiMe layout: {shots} example(s) drawn with the seed from "
                f"{'+'.join(d.name for d in train_dirs)}/, tested on all of test/")
        return Split(test.classes, train, test.samples, rule, "slime", notes)
    data = load_dataset(root, format="celebamask-hq")
    train, test_samples, notes = seeded_pick(data.samples, shots, seed)
    rule = f"CelebAMask-HQ folder: {shots} image(s) drawn with the seed for training, the rest tested"
    return Split(data.classes, train, test_samples, rule, "celebamask-hq", notes)


def kshot_split(dataset: str, data_dir: str | os.PathLike, shots: int, seed: int) -> Split:
    """The train examples and test set for `dataset` (car, horse or celeba), k = `shots`."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}")
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    if dataset == "celeba":
        return _celeba_split(root, shots, seed)
    data = load_dataset(root, format="pascal-part", category=dataset)
    if not len(data):
        raise InputError(f"{root}: no usable {dataset} objects (after the PASCAL-Part filters)")
    train, test, notes = seeded_pick(data.samples, shots, seed)
    rule = (f"PASCAL-Part {dataset} objects (ReGAN's lists not available): {shots} drawn with the "
            "seed for training, the rest tested")
    return Split(data.classes, train, test, rule, "pascal-part", notes)
