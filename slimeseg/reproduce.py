"""The paper's k-shot experiment (`slimeseg reproduce`): train and score over seeds.

For one dataset and k: per seed, a k-shot split (`splits.kshot_split`), training with the
dataset's augmentation preset (and the reference code's inference tiles) unless the settings say
otherwise, evaluation on the test split; then mean +- std over seeds per class, printed beside the
paper's mIoU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import AUGMENT_PRESETS, SlimeConfig
from .errors import InputError
from .evaluate import evaluate_learned, percent, versions
from .segmenter import Segmenter
from .splits import DATASETS, kshot_split

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
            rows.append((f"seed {run['seed']}", [percent(acc["per_class"][c]) for c in cols] + [percent(acc["miou"])]))

        def pm(entry: dict[str, Any]) -> str:
            if entry["mean"] is None:
                return "-"
            return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"

        rows.append(("ours", [pm(summary["per_class"][c]) for c in cols] + [pm(summary["miou"])]))
        if all("reference_decoding" in r["report"] for r in self.runs) and self.runs:
            ref_dec = self.summary("reference_decoding")
            rows.append(("ours, reference decoding", [pm(ref_dec["per_class"][c]) for c in cols]
                         + [pm(ref_dec["miou"])]))
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


def protocol_config(dataset_name: str, config: SlimeConfig | None = None,
                    **overrides: Any) -> SlimeConfig:
    """The settings of the paper's protocol for a dataset: `config` (default: the dataset's
    augmentation preset and the reference code's inference tiles) with `overrides` on top."""
    base = config or SlimeConfig(**AUGMENT_PRESETS[DATASET_PRESET[dataset_name]],
                                 tiles=DATASET_TILES[dataset_name],
                                 method="slime", upsample="bilinear")  # the paper's method, exactly
    return base.replace(**overrides)


def reproduce(model: str, dataset_name: str, shots: int, seeds: int = 3, data_dir: str | os.PathLike = ".",
              config: SlimeConfig | None = None, *, device: str | None = None, dtype: str | None = None,
              revision: str | None = None, segmenter: Segmenter | None = None, progress: bool = False,
              echo: Callable[[str], None] | None = None, reference_decoding: bool = True,
              **overrides: Any) -> ReproduceResult:
    """Run the paper's k-shot experiment on `dataset_name` (car, horse or celeba), seeds 0..n-1.

    Settings: `protocol_config(dataset_name, config, **overrides)`, e.g. `steps=50`,
    `use_was=False`; the same settings reach training and inference, so ablations apply to both.
    Per seed: `splits.kshot_split(dataset_name, data_dir, shots, seed)`, `fit`, then
    `evaluate_learned` on the test split. `segmenter` reuses an already loaded model; `echo`
    receives one progress line per seed. `reference_decoding` also scores each seed's embeddings
    with the reference code's own test step (`normalization="reference_exact"`), printed beside.
    """
    if dataset_name not in DATASETS:
        raise InputError(f"unknown dataset {dataset_name!r} (choose from {', '.join(DATASETS)})")
    if seeds < 1:
        raise InputError(f"seeds must be >= 1, got {seeds}")
    if overrides.get("seed") is not None:
        raise InputError("reproduce runs seeds 0..N-1 itself; set how many with seeds (--seeds)")
    train_cfg = protocol_config(dataset_name, config, **overrides)
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
                                  dataset_format=split.data_format)
        report["timings"]["fit_s"] = round(fit_s, 3)
        if reference_decoding:  # the same embeddings decoded by the reference code's test step
            ref = evaluate_learned(seg, learned, split.test_set,
                                   SlimeConfig.from_dict(learned.config).replace(normalization="reference_exact"),
                                   dataset_path=data_dir, dataset_format=split.data_format)
            report["reference_decoding"] = ref["accumulated"]
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
                 f"mIoU {percent(report['miou'])}%"
                 + (f" (reference decoding {percent(report['reference_decoding']['miou'])}%)"
                    if reference_decoding else ""))
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
