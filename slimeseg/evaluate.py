"""Scoring learned embeddings on a labelled dataset, and the paper's k-shot protocol.

- `evaluate_learned`: predict every image of a `Dataset` with one `Learned` artifact and report
  per-class IoU and mIoU accumulated over the whole set (`metrics.ConfusionMatrix`, the headline),
  optionally the reference code's per-image variant, with the settings, versions and timings
  needed to tell two reports apart.
- `reproduce`: the paper's experiment for one dataset and k: for each seed, a k-shot split
  (`splits.kshot_split`), training with the dataset's augmentation preset, evaluation on the
  test split; then mean +- std over seeds per class, printed beside the paper's mIoU.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .artifact import Learned
from .config import AUGMENT_PRESETS, SlimeConfig
from .datasets import Dataset
from .errors import InputError
from .metrics import ConfusionMatrix, PerImageIoU
from .segmenter import Segmenter
from .splits import DATASETS, kshot_split

REPORT_KIND = "slimeseg.eval-report"
REPORT_VERSION = 1

# mIoU (%) reported in the SLiMe paper (mean over 3 seeds), METHOD.md "Evaluation".
PAPER_MIOU: dict[tuple[str, int], float] = {
    ("car", 10): 68.3, ("car", 1): 61.6,
    ("horse", 10): 63.3, ("horse", 1): 56.4,
    ("celeba", 10): 75.7, ("celeba", 1): 69.6,
}
PAPER_MIOU_NO_WAS: dict[tuple[str, int], float] = {("car", 10): 62.7}  # cross-attention only
DATASET_TITLES = {"car": "PASCAL-Part car", "horse": "PASCAL-Part horse", "celeba": "CelebAMask-HQ"}
DATASET_PRESET = {"car": "car", "horse": "horse", "celeba": "face"}  # AUGMENT_PRESETS key
DATASET_TILES = {"car": 1, "horse": 1, "celeba": 2}  # inference tiles of the reference code


def versions() -> dict[str, str]:
    """Versions of what produced a number: slimeseg, torch, diffusers, Python."""
    import diffusers
    import torch

    return {"slimeseg": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version()}


def check_classes(learned_classes: Sequence[str], dataset_classes: Sequence[str],
                  learned_name: str = "embeddings", dataset_name: str = "dataset") -> None:
    """Refuse to score when the class lists differ in names or order (labels would mean other things)."""
    if list(learned_classes) != list(dataset_classes):
        raise InputError(f"{learned_name} classes [{', '.join(learned_classes)}] do not match "
                         f"{dataset_name} classes [{', '.join(dataset_classes)}] "
                         "(same names in the same order needed)")


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
    check_classes(learned.classes, dataset.classes,
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
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """A per-class IoU table (%) with the mIoU, as `slimeseg eval` prints it."""
    acc = report["accumulated"]
    per = report.get("per_image")
    width = max(len("class"), *(len(c) for c in report["classes"]))
    head = f"{'class':<{width}}  {'IoU %':>7}" + (f"  {'per-image %':>11}" if per else "")
    lines = [head, "-" * len(head)]
    for name in report["classes"]:
        row = f"{name:<{width}}  {_pct(acc['per_class'][name]):>7}"
        if per:
            row += f"  {_pct(per['per_class'][name]):>11}"
        lines.append(row)
    lines.append("-" * len(head))
    total = f"{'mIoU':<{width}}  {_pct(acc['miou']):>7}" + (f"  {_pct(per['miou']):>11}" if per else "")
    lines.append(total)
    lines.append(f"{report['num_images']} image(s); IoU accumulated over the whole set"
                 + ("; per-image = the SLiMe reference code's metric" if per else ""))
    if acc["excluded"]:
        lines.append(f"left out of the mean (in no ground truth and never predicted): "
                     f"{', '.join(acc['excluded'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- reproduce
def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the defined values."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None, 0
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0
    return float(np.mean(defined)), std, len(defined)


@dataclass
class ReproduceResult:
    """Per-seed reports and their summary for one dataset and k, beside the paper's mIoU."""

    dataset: str
    shots: int
    seeds: list[int]
    classes: list[str]
    model: str
    paper_miou: float | None  # percent, None where the paper gives none for these settings
    paper_label: str = "paper"  # "paper (no WAS)" when the figure is the paper's ablation
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per seed
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self, metric: str = "accumulated") -> dict[str, Any]:
        """{class: {mean, std, n}} and mIoU over seeds (fractions), for `metric`."""
        per_class = {}
        for name in self.classes:
            mean, std, n = _mean_std([r["report"][metric]["per_class"][name] for r in self.runs])
            per_class[name] = {"mean": mean, "std": std, "seeds": n}
        mean, std, n = _mean_std([r["report"][metric]["miou"] for r in self.runs])
        return {"per_class": per_class, "miou": {"mean": mean, "std": std, "seeds": n}}

    def columns(self) -> list[str]:
        """The paper's column order: the parts, then background, then the mean."""
        return [c for c in self.classes if c != "background"] + (
            ["background"] if "background" in self.classes else [])

    def table(self) -> str:
        """The paper's layout: a row per method (per seed, ours, paper), a column per part, mIoU last."""
        cols = self.columns()
        summary = self.summary()
        rows: list[tuple[str, list[str]]] = []
        for run in self.runs:
            acc = run["report"]["accumulated"]
            rows.append((f"seed {run['seed']}", [_pct(acc["per_class"][c]) for c in cols] + [_pct(acc["miou"])]))

        def pm(entry: dict[str, Any]) -> str:
            if entry["mean"] is None:
                return "-"
            return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"

        rows.append(("ours", [pm(summary["per_class"][c]) for c in cols] + [pm(summary["miou"])]))
        paper = "-" if self.paper_miou is None else f"{self.paper_miou:.1f}"
        rows.append((self.paper_label, ["-"] * len(cols) + [paper]))
        header = ["", *cols, "mIoU"]
        widths = [max(len(header[0]), *(len(r[0]) for r in rows))]
        for j in range(1, len(header)):
            widths.append(max(len(header[j]), *(len(r[1][j - 1]) for r in rows)))

        def line(cells: list[str]) -> str:
            return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

        title = (f"{DATASET_TITLES[self.dataset]}, {self.shots}-shot, {len(self.seeds)} seed(s), "
                 f"model {self.model}: IoU % over the test split (mean ± std over seeds)")
        out = [title, line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
        out += [line([name, *cells]) for name, cells in rows]
        ref = self.summary("per_image")["miou"]
        if ref["mean"] is not None:
            out.append(f"per-image mIoU (the reference code's metric): {pm(ref)}")
        out.append(f"{self.paper_label}: the SLiMe paper's mIoU, mean of 3 seeds (no per-class figures "
                   "given in METHOD.md); ours: IoU accumulated over the test split per seed")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON view: settings, the per-seed reports and splits, and the summaries."""
        return {"kind": "slimeseg.reproduce", "dataset": self.dataset, "shots": self.shots,
                "seeds": self.seeds, "classes": self.classes, "model": self.model,
                "paper_miou": self.paper_miou, "paper_label": self.paper_label, "summary": self.summary(),
                "summary_per_image": self.summary("per_image"), "settings": self.settings,
                "notes": self.notes, "runs": self.runs, "versions": versions()}


def reproduce(model: str, dataset_name: str, shots: int, seeds: int = 3, data_dir: str | os.PathLike = ".",
              steps: int | None = None, image_size: int | None = None, *,
              use_was: bool | None = None, use_ce: bool | None = None, use_mse: bool | None = None,
              use_ldm: bool | None = None, tiles: int | None = None, normalization: str | None = None,
              device: str | None = None, dtype: str | None = None, revision: str | None = None,
              segmenter: Segmenter | None = None, progress: bool = False,
              echo: Callable[[str], None] | None = None, **overrides: Any) -> ReproduceResult:
    """Run the paper's k-shot experiment on `dataset_name` (car, horse or celeba), seeds 0..n-1.

    Per seed: `splits.kshot_split(dataset_name, data_dir, shots, seed)`, `fit` with the dataset's
    augmentation preset (car / horse / face) and seed, then `evaluate_learned` on the test split
    with the same settings (so WAS / loss ablations reach training and inference) and, for celeba,
    2 x 2 inference tiles as in the reference code. `steps=None` keeps the paper's 200 epochs.
    `segmenter` reuses an already loaded model; `echo` receives one progress line per seed.
    """
    if dataset_name not in DATASETS:
        raise InputError(f"unknown dataset {dataset_name!r} (choose from {', '.join(DATASETS)})")
    if seeds < 1:
        raise InputError(f"seeds must be >= 1, got {seeds}")
    train_cfg = SlimeConfig(**AUGMENT_PRESETS[DATASET_PRESET[dataset_name]]).replace(
        steps=steps, image_size=image_size, use_was=use_was, use_ce=use_ce, use_mse=use_mse,
        use_ldm=use_ldm, **overrides)
    infer = {"tiles": tiles if tiles is not None else DATASET_TILES[dataset_name],
             "normalization": normalization}
    seg = segmenter or Segmenter.from_pretrained(model, revision=revision, device=device, dtype=dtype)
    paper_table = PAPER_MIOU if train_cfg.use_was else PAPER_MIOU_NO_WAS
    result: ReproduceResult | None = None
    for seed in range(seeds):
        split = kshot_split(dataset_name, data_dir, shots, seed)
        cfg = train_cfg.replace(seed=seed)
        start = time.perf_counter()
        learned = seg.fit([s.image for s in split.train], [s.mask for s in split.train],
                          split.classes, config=cfg, progress=progress)
        fit_s = time.perf_counter() - start
        report = evaluate_learned(seg, learned, split.test_set, SlimeConfig.from_dict(learned.config),
                                  per_image=True, progress=progress, dataset_path=data_dir,
                                  dataset_format=split.data_format, **infer)
        report["timings"]["fit_s"] = round(fit_s, 3)
        if result is None:
            result = ReproduceResult(
                dataset=dataset_name, shots=shots, seeds=[], classes=list(split.classes),
                model=seg.sd.model_id, paper_miou=paper_table.get((dataset_name, shots)),
                paper_label="paper" if train_cfg.use_was else "paper (no WAS)",
                settings={**report["settings"], "data_dir": str(data_dir), "split_rule": split.rule})
        result.seeds.append(seed)
        result.runs.append({"seed": seed, "split": split.describe(), "report": report})
        for note in split.notes:
            if note not in result.notes:
                result.notes.append(note)
        if echo is not None:
            echo(f"seed {seed}: trained on {len(split.train)}, tested on {len(split.test)} "
                 f"(fit {fit_s:.1f}s, eval {report['timings']['predict_s']:.1f}s): "
                 f"mIoU {_pct(report['miou'])}%")
    assert result is not None
    result.notes.insert(0, f"split: {result.settings['split_rule']}")
    if shots not in (1, 10):
        result.notes.append(f"the paper reports 1- and 10-shot only, not {shots}-shot")
    if not train_cfg.use_was and result.paper_miou is None:
        result.notes.append("the paper gives a no-WAS figure only for car 10-shot")
    off = [name for name in ("ce", "mse", "ldm") if not getattr(train_cfg, f"use_{name}")]
    if off:
        result.notes.append(f"loss term(s) {', '.join(off)} switched off; the paper row is the full method")
    return result
