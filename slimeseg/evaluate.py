"""Scoring learned embeddings on a labelled dataset (`slimeseg eval`).

`evaluate_learned` predicts every image of a `Dataset` with one `Learned` artifact and reports
per-class IoU and mIoU accumulated over the whole set (`metrics.ConfusionMatrix`, the headline),
optionally the reference code's per-image variant, with the settings, versions and timings
needed to tell two reports apart. The paper's k-shot protocol over seeds is `reproduce.py`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from . import __version__
from .artifact import Learned
from .config import SlimeConfig
from .datasets import IGNORE, Dataset
from .errors import InputError
from .metrics import ConfusionMatrix, PerImageIoU
from .segmenter import Segmenter

REPORT_KIND = "slimeseg.eval-report"
REPORT_VERSION = 1

def versions() -> dict[str, str]:
    """Versions of what produced a number: slimeseg, torch, diffusers, Python."""
    import diffusers
    import torch

    return {"slimeseg": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version()}


def require_same_classes(learned_classes: Sequence[str], dataset_classes: Sequence[str],
                         learned_name: str = "embeddings", dataset_name: str = "dataset") -> None:
    """Refuse to score when the class lists differ in names or order (labels would mean other things)."""
    if list(learned_classes) != list(dataset_classes):
        raise InputError(f"{learned_name} classes [{', '.join(learned_classes)}] do not match "
                         f"{dataset_name} classes [{', '.join(dataset_classes)}] "
                         "(same names in the same order needed)")


def match_classes(learned_classes: Sequence[str], dataset: Dataset, learned_name: str = "embeddings",
                  dataset_name: str = "dataset") -> tuple[Dataset, str | None]:
    """The dataset to score, with a note when its class names were taken from the embeddings.

    A dataset that names no classes (a folder without a class file) takes the embeddings' names
    when its labels fit them; otherwise the two class lists must be equal (`require_same_classes`).
    """
    if not dataset.named:
        top = max((int(s.mask[s.mask != IGNORE].max(initial=0)) for s in dataset.samples), default=0)
        if top < len(learned_classes):
            note = (f"{dataset_name} names no classes; using the embeddings' "
                    f"[{', '.join(learned_classes)}]")
            return Dataset(classes=list(learned_classes), samples=dataset.samples), note
    require_same_classes(learned_classes, dataset.classes, learned_name, dataset_name)
    return dataset, None


def evaluate_learned(segmenter: Segmenter, learned: Learned, dataset: Dataset,
                     config: SlimeConfig | None = None, *, per_image: bool = False,
                     batch_size: int = 4, progress: bool = False,
                     learned_path: str | os.PathLike | None = None,
                     dataset_path: str | os.PathLike | None = None,
                     dataset_format: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Segment every image of `dataset` with `learned` and score it against its label map.

    Inference settings are the artifact's own (`learned.config`) unless `config` is given;
    `overrides` change single fields (tiles=2, use_was=False, normalization="reference", ...).
    Returns a JSON-ready report: `miou` and `accumulated` (per-class IoU over the whole set),
    `per_image` (the reference code's variant) when asked, plus settings, model, dataset,
    versions and timings. IoU values are fractions in [0, 1]; None marks an undefined class.
    """
    dataset, note = match_classes(learned.classes, dataset,
                                  str(learned_path) if learned_path else "embeddings",
                                  str(dataset_path) if dataset_path else "dataset")
    if not len(dataset):
        raise InputError(f"{dataset_path or 'dataset'}: no images to evaluate")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    cfg = (config or SlimeConfig.from_dict(learned.config)).replace(**overrides)
    k = len(dataset.classes)
    accumulated = ConfusionMatrix(k)
    reference = PerImageIoU(k)
    start = time.perf_counter()
    samples = dataset.samples
    with tqdm(total=len(samples), disable=not progress, desc="eval", unit="img", dynamic_ncols=True) as bar:
        for first in range(0, len(samples), batch_size):
            chunk = samples[first:first + batch_size]
            preds = segmenter.predict_batch([s.image for s in chunk], learned,
                                            batch_size=batch_size, config=cfg)
            for sample, pred in zip(chunk, preds, strict=True):
                accumulated.update(pred, sample.mask)
                reference.update(pred, sample.mask)
            bar.update(len(chunk))
    elapsed = time.perf_counter() - start
    acc = accumulated.result(dataset.classes)
    sd = segmenter.sd
    report: dict[str, Any] = {
        "kind": REPORT_KIND,
        "format_version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(dataset.classes),
        "miou": acc.miou,
        "accumulated": acc.to_dict(),
    }
    if per_image:
        report["per_image"] = reference.result(dataset.classes).to_dict()
    report.update({
        "num_images": len(samples),
        "settings": cfg.to_dict(),
        "model": {"id": sd.model_id, "revision": sd.revision, "fingerprint": sd.fingerprint},
        "learned": {"path": str(learned_path) if learned_path else None, "model_id": learned.model_id,
                    "steps_done": learned.history.get("steps_done"),
                    "num_training_images": len(learned.image_hashes)},
        "dataset": {"path": str(dataset_path) if dataset_path else None, "format": dataset_format,
                    "num_images": len(samples)},
        "versions": versions(),
        "timings": {"predict_s": round(elapsed, 3), "per_image_s": round(elapsed / len(samples), 4)},
    })
    if note:
        report["notes"] = [note]
    return report


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "-" when undefined."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """A per-class IoU table (%) with the mIoU, as `slimeseg eval` prints it."""
    acc = report["accumulated"]
    per = report.get("per_image")
    width = max(len("class"), *(len(c) for c in report["classes"]))
    head = f"{'class':<{width}}  {'IoU %':>7}" + (f"  {'per-image %':>11}" if per else "")
    lines = [head, "-" * len(head)]
    for name in report["classes"]:
        row = f"{name:<{width}}  {percent(acc['per_class'][name]):>7}"
        if per:
            row += f"  {percent(per['per_class'][name]):>11}"
        lines.append(row)
    lines.append("-" * len(head))
    total = f"{'mIoU':<{width}}  {percent(acc['miou']):>7}" + (f"  {percent(per['miou']):>11}" if per else "")
    lines.append(total)
    lines.append(f"{report['num_images']} image(s); IoU accumulated over the whole set"
                 + ("; per-image = the SLiMe reference code's metric" if per else ""))
    if acc["excluded"]:
        lines.append(f"left out of the mean (in no ground truth and never predicted): "
                     f"{', '.join(acc['excluded'])}")
    return "\n".join(lines)
