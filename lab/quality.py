"""Segmentation quality on the synthetic lab world, with the small SD pretrained on it.

For each world kind (car, face), k-shot (1, 5) and seed, a SLiMe fit on k examples of the
world's training split is scored by mIoU on a held-out split (another world seed, >= 50 images),
with ablations: WAS maps on/off and augmentation on/off. Prints a table (mean +- std over seeds
(5 by default), per part), beside each row the all-background score (predicting background
everywhere on the same held-out images) and, with `--ceiling`, what a linear classifier on the
same model's UNet features reaches with 500 labelled images (`lab.ceiling`) and the row's share
of it; writes JSON. `--fast` is the variant the test suite runs. `--compare` tells a change from
noise: runs of one seed share their examples and fit noise, so it pairs them by seed (two
reports, or one report's variants against `full`) and prints the mean difference, its 95 %
interval and how many seeds would resolve a change of `--effect` points. On the lab SD v3 a
2-point WAS on/off change needs about 4-7 paired seeds at 5-shot and 25-30 at 1-shot, where which
example a seed draws moves mIoU by 3-7 points (`--examples-seed` fixes the examples to measure the rest).

    python benchmarks/quality.py --json benchmarks/results-quality.json
    python benchmarks/quality.py --fast
    python benchmarks/quality.py --kinds car --shots 1 --variants full --ceiling
    # the two kinds on two cores, then one table:
    python benchmarks/quality.py --kinds car --threads 1 --json car.json &
    python benchmarks/quality.py --kinds face --threads 1 --json face.json; wait
    python benchmarks/quality.py --merge car.json face.json --json benchmarks/results-quality-lab.json
    # is a change told from noise? B against A, or each variant against full
    python benchmarks/quality.py --compare before.json after.json
    python benchmarks/quality.py --compare benchmarks/results-quality-lab-v3.json --effect 2
    python benchmarks/quality.py --kinds car --shots 1 --seeds 0-29 --variants full,no-WAS --json car.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from slimeseg import Learned, Segmenter, SlimeConfig, __version__
from slimeseg.metrics import ConfusionMatrix
from slimeseg.synthetic import World
from slimeseg.writers import write_json

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]

LAB_MODEL = ROOT / "tests" / "assets" / "lab-sd"
# The lab SD was pretrained on world seed 0. quality.py draws examples and held-out images from
# worlds it never saw (UNSEEN_WORLDS), as a user's would; `--worlds 0,1` gives the draw of the
# earlier reports (examples from the pretraining world: optimistic), which protocol.py,
# refine.py and native.py still use.
TRAIN_WORLD_SEED, TEST_WORLD_SEED = 0, 1
UNSEEN_WORLDS = (2, 3)
TRAIN_POOL = 20  # k-shot examples are drawn (per seed) from the first TRAIN_POOL training samples

# the rows before guided upsampling became the default keep their meaning: bilinear
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"method": "slime", "upsample": "bilinear"},  # SLiMe, the paper's method
    "no-WAS": {"method": "slime", "use_was": False, "upsample": "bilinear"},
    "no-aug": {"method": "slime", "augment": False, "upsample": "bilinear"},
    "match": {"method": "match", "upsample": "bilinear"},  # training-free matching alone (`Segmenter.match`, no fit)
    "tiles-2": {"method": "slime", "tiles": 2, "upsample": "bilinear"},  # inference only: the "full" embeddings, 2 x 2 crops
    "fuse": {"method": "fuse", "upsample": "bilinear"},  # the "full" fit fused with matching, by confidence
    "fuse-mean": {"method": "fuse", "fuse_rule": "mean", "upsample": "bilinear"},  # ... by a fixed 50/50 mix
    "fuse-m75": {"method": "fuse", "fuse_rule": "mean", "fuse_weight": 0.75, "upsample": "bilinear"},  # ... 75 % matching
    "match-ctx": {"method": "match", "upsample": "bilinear"},  # matching alone, from the "full" fit's artifact
    "full-tta": {"method": "slime", "tta_flip": True, "upsample": "bilinear"},
    "fuse-tta": {"method": "fuse", "tta_flip": True, "upsample": "bilinear"},
    "match-tta": {"method": "match", "tta_flip": True, "upsample": "bilinear"},
    # edge-aware upsampling (`upsample="guided"`): the scores follow the image's colour edges
    "full-gf": {"method": "slime", "upsample": "guided", "guide_radius": 1.0},
    "match-gf": {"method": "match", "upsample": "guided", "guide_radius": 1.0},
    "fuse-gf": {"method": "fuse", "upsample": "guided", "guide_radius": 1.0},
    "fuse-gf2": {"method": "fuse", "upsample": "guided", "guide_radius": 2.0},  # the default before radius 3
    "match-gf2": {"method": "match", "upsample": "guided", "guide_radius": 2.0},
    "full-gf2": {"method": "slime", "upsample": "guided", "guide_radius": 2.0},
    # the matching bank with rescaled copies of the examples (`match_views`), with hue rotation
    "fuse-v4": {"method": "fuse", "upsample": "guided", "guide_radius": 2.0, "match_views": 4},
    "fuse-v4h": {"method": "fuse", "upsample": "guided", "guide_radius": 2.0, "match_views": 4, "match_hue": True},
    "match-v4": {"method": "match", "upsample": "guided", "guide_radius": 2.0, "match_views": 4},
    "match-v4h": {"method": "match", "upsample": "guided", "guide_radius": 2.0, "match_views": 4, "match_hue": True},
    "fuse-w75": {"method": "fuse", "upsample": "guided", "guide_radius": 2.0, "fuse_weight": 0.75},  # matching trusted more
    # fusion (b): matching's votes spread by the UNet's own self-attention, half or whole
    "fuse-s5": {"method": "fuse", "upsample": "guided", "guide_radius": 2.0, "match_spread": 0.5},
    "fuse-s10": {"method": "fuse", "upsample": "guided", "guide_radius": 2.0, "match_spread": 1.0},
    "match-s5": {"method": "match", "upsample": "guided", "guide_radius": 2.0, "match_spread": 0.5},
    "fuse-gf3": {"method": "fuse", "upsample": "guided", "guide_radius": 3.0},  # the default before match_small
    "fuse-gf4": {"method": "fuse", "upsample": "guided", "guide_radius": 4.0},
    "match-gf3": {"method": "match", "upsample": "guided", "guide_radius": 3.0},
    # small parts raised (`match_small`: classes under 32 latent cells in the examples)
    "fuse-sp25": {"method": "fuse", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.25},
    "fuse-sp5": {"method": "fuse", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.5},
    "match-sp5": {"method": "match", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.5},
    "fuse-sp10": {"method": "fuse", "upsample": "guided", "guide_radius": 3.0, "match_small": 1.0},
    "fuse-sp5c64": {"method": "fuse", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.5,
                    "match_small_cells": 64.0},  # today's default
    "fuse-sp5c128": {"method": "fuse", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.5,
                     "match_small_cells": 128.0},
    "match-sp5c64": {"method": "match", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.5,
                     "match_small_cells": 64.0},
    "fuse-gf-e2": {"method": "fuse", "upsample": "guided", "guide_radius": 1.0, "guide_eps": 1e-2},
    "fuse-tta-gf": {"method": "fuse", "tta_flip": True, "upsample": "guided", "guide_radius": 1.0},
    "match-tta-gf": {"method": "match", "tta_flip": True, "upsample": "guided", "guide_radius": 1.0},
}
# variants scored with another variant's artifact (no fit of their own) -> that variant
DERIVED = {"tiles-2": "full", "fuse": "full", "fuse-mean": "full", "fuse-m75": "full", "match-ctx": "full",
           "full-tta": "full", "fuse-tta": "full", "match-tta": "match",
           "full-gf": "full", "match-gf": "match", "fuse-gf": "full", "fuse-gf2": "full", "match-gf2": "match", "full-gf2": "full",
           "fuse-v4": "full", "fuse-v4h": "full", "match-v4": "match", "match-v4h": "match",
           "fuse-w75": "full", "fuse-s5": "full", "fuse-s10": "full", "match-s5": "match", "fuse-gf3": "full", "fuse-gf4": "full",
           "match-gf3": "match", "fuse-sp25": "full", "fuse-sp5": "full", "match-sp5": "match",
           "fuse-sp10": "full", "fuse-sp5c64": "full", "fuse-sp5c128": "full", "match-sp5c64": "match", "fuse-gf-e2": "full", "fuse-tta-gf": "full", "match-tta-gf": "match"}
# issue 28, fit speed: each setting's fit read as "full" (SLiMe, bilinear) and, derived from the
# same fit, as the default of then ("fuse-gf2") and of now ("fuse-sp5c64"): full-NAME,
# fuse-gf2-NAME and fuse-sp5c64-NAME
FIT_SPEED: dict[str, dict[str, Any]] = {
    "pool16": {"view_pool": 16}, "pool64": {"view_pool": 64}, "pool256": {"view_pool": 256},
    "local": {"gradients": "local"}, "local-m10": {"gradients": "local", "full_every": 10},
    "fast": {"view_pool": 64, "gradients": "local"}, "fast16": {"view_pool": 16, "gradients": "local"},
    "c2f": {"view_pool": 16, "gradients": "local", "coarse_size": 128},  # 128 then 256 px (75 / 25 %)
    "c2f-100": {"view_pool": 16, "gradients": "local", "coarse_size": 128, "steps": 100},  # 1-shot: 100 steps
}
for _name, _speed in FIT_SPEED.items():
    VARIANTS[f"full-{_name}"] = {**VARIANTS["full"], **_speed}
    VARIANTS[f"fuse-gf2-{_name}"] = dict(VARIANTS["fuse-gf2"])
    DERIVED[f"fuse-gf2-{_name}"] = f"full-{_name}"
    VARIANTS[f"fuse-sp5c64-{_name}"] = dict(VARIANTS["fuse-sp5c64"])  # read as today's default
    DERIVED[f"fuse-sp5c64-{_name}"] = f"full-{_name}"
# issue 28, inference speed (docs/speed.md "Inference"): today's default read in lower precision
INFER_SPEED: dict[str, dict[str, Any]] = {
    "bf16enc": {"encoder_dtype": "bfloat16"},
    "autocast": {"encoder_dtype": "bfloat16", "autocast": "bfloat16"},
    "bf16all": {"encoder_dtype": "bfloat16", "autocast": "bfloat16", "match_dtype": "bfloat16"},
}
for _name, _speed in INFER_SPEED.items():
    VARIANTS[f"fuse-gf3-{_name}"] = {**VARIANTS["fuse-gf3"], **_speed}
    DERIVED[f"fuse-gf3-{_name}"] = "full"
# today's default with the default precision "auto" (not LAB_PRECISION's float32): what a user on
# this machine gets; equals fuse-sp5c64 on a CPU without bfloat16 units
VARIANTS["fuse-sp5c64-auto"] = {**VARIANTS["fuse-sp5c64"], "encoder_dtype": "auto", "autocast": "auto"}
DERIVED["fuse-sp5c64-auto"] = "full"
# issue 29, test-time ensembling: today's default and matching alone with N noise draws at t_test
# (maps and features averaged, the bank's too): fuse-sp5c64-nN, match-sp5c64-nN
for _n in (2, 4):
    VARIANTS[f"fuse-sp5c64-n{_n}"] = {**VARIANTS["fuse-sp5c64"], "noise_draws": _n}
    DERIVED[f"fuse-sp5c64-n{_n}"] = "full"
    VARIANTS[f"match-sp5c64-n{_n}"] = {**VARIANTS["match-sp5c64"], "noise_draws": _n}
    DERIVED[f"match-sp5c64-n{_n}"] = "match"
# issue 29, which features and timestep matching reads, and the mirror (today's default otherwise)
for _name, _extra in {"t50": {"t_test": 50}, "t200": {"t_test": 200}, "b123": {"match_blocks": "1,2,3"},
                      "b012": {"match_blocks": "0,1,2"}, "b23": {"match_blocks": "2,3"},
                      "t300": {"t_test": 300}, "t400": {"t_test": 400}, "mt200": {"match_t": 200},
                      "mt300": {"match_t": 300}, "flip": {"tta_flip": True},
                      "mean": {"fuse_rule": "mean"}, "w25": {"fuse_weight": 0.25}}.items():
    VARIANTS[f"fuse-sp5c64-{_name}"] = {**VARIANTS["fuse-sp5c64"], **_extra}
    DERIVED[f"fuse-sp5c64-{_name}"] = "full"
VARIANTS["match-sp5c64-flip"] = {**VARIANTS["match-sp5c64"], "tta_flip": True}  # ... mirrored too
DERIVED["match-sp5c64-flip"] = "match"
for _n in (200, 300):  # matching alone at that timestep
    VARIANTS[f"match-sp5c64-t{_n}"] = {**VARIANTS["match-sp5c64"], "t_test": _n}
    DERIVED[f"match-sp5c64-t{_n}"] = "match"
# issue 29, fusion (c): SLiMe's fit also trained on matching's confident labels of the first N
# held-out images (the images to segment, unlabelled: `Segmenter.fit(unlabelled=...)`), labelled
# by matching as today's default reads it (guided r3, small parts raised), the pixels of a top
# share >= 0.5 (`-c3`: >= 0.3, the default); scored as SLiMe alone, guided r3 (full-stN) and as today's default
# (fuse-sp5c64-stN); matching alone is what it was (a fit does not change it)
SELF_TRAIN: dict[str, int] = {}
# (the thresholds in `selftrain.certainty`: 0.375 and 0.125 are top shares of 0.5 and 0.3 with
# the lab's 5 classes)
for _name, _extra in {"st10": {"self_train_conf": 0.375}, "st10-c3": {"self_train_conf": 0.125}}.items():
    VARIANTS[f"full-{_name}"] = {"method": "slime", "upsample": "guided", "guide_radius": 3.0, "match_small": 0.5,
                                 "match_small_cells": 64.0, **_extra}
    SELF_TRAIN[f"full-{_name}"] = 10
    VARIANTS[f"fuse-sp5c64-{_name}"] = dict(VARIANTS["fuse-sp5c64"])
    DERIVED[f"fuse-sp5c64-{_name}"] = f"full-{_name}"
# rows from before the small-part boost (`match_small`) keep their meaning: off unless they say
for _settings in VARIANTS.values():
    if _settings.get("method") != "slime":
        _settings.setdefault("match_small", 0.0)
PREDICT_ONLY = set(DERIVED)
NO_FIT = {"match"}  # artifacts made without training (`Segmenter.match`)


@dataclass
class Run:
    kind: str
    shots: int
    variant: str
    seed: int
    miou: float
    per_class: dict[str, float | None]
    fit_seconds: float
    steps: int
    predict_seconds: float | None = None  # per held-out image


def run_one(seg: Segmenter, kind: str, shots: int, variant: str, seed: int, size: int,
            steps_per_shot: int, test_images: list, test_masks: list,
            also: tuple[str, ...] = (), examples_seed: int | None = None,
            train_world: int = TRAIN_WORLD_SEED, artifacts: str | Path | None = None,
            score_own: bool = True) -> list[Run]:
    """Fit on `shots` seeded training examples (or, for NO_FIT variants, make the matching
    artifact), score on the held-out split; `also`: predict-only variants scored with the same
    artifact; `examples_seed`: draw the examples with it instead of `seed`, so that runs differ
    only in the fit's own noise; `artifacts`: a folder where each artifact is kept, and taken
    from if there (so new inference-only variants are scored without refitting). A run's
    `fit_seconds` is the artifact's making, `predict_seconds` the held-out images' inference, per image;
    `score_own=False`: only `also` is scored (the artifact's own variant was not asked for)."""
    world = World(kind, size=size, seed=train_world)
    pick = np.random.default_rng(seed if examples_seed is None else examples_seed).permutation(TRAIN_POOL)[:shots]
    train = [world.sample(int(i)) for i in pick]
    cfg = SlimeConfig(image_size=size, steps=steps_per_shot * shots, seed=seed,
                      **AUGMENT[kind]).replace(**{**LAB_PRECISION, **VARIANTS[variant]})
    t0 = time.perf_counter()
    images, masks, classes = [s.image for s in train], [s.mask for s in train], list(world.classes)
    kept = None if artifacts is None else Path(artifacts) / f"{kind}-{shots}shot-{variant}-seed{seed}.safetensors"
    if kept is not None and kept.is_file():  # made by an earlier run: score it again, no refit
        learned = Learned.load(kept)
        fit_s = float(learned.history.get("fit_seconds", float("nan")))
    else:
        extra = {"unlabelled": test_images[:SELF_TRAIN[variant]]} if variant in SELF_TRAIN else {}
        learned = (seg.match(images, masks, classes, cfg) if variant in NO_FIT
                   else seg.fit(images, masks, classes, cfg, progress=False, **extra))
        fit_s = time.perf_counter() - t0
        if kept is not None:
            learned.history["fit_seconds"] = fit_s
            learned.save(kept)
    runs = []
    for name in ((variant,) if score_own else ()) + tuple(also):
        cm = ConfusionMatrix(len(world.classes))
        t1 = time.perf_counter()
        # every variant's inference settings explicitly, its own too: an artifact kept from an
        # older run lacks settings added since, which would otherwise take today's defaults
        preds = seg.predict_batch(test_images, learned, batch_size=8, **{**LAB_PRECISION, **VARIANTS[name]})
        per_image = (time.perf_counter() - t1) / len(test_images)
        for pred, mask in zip(preds, test_masks, strict=True):
            cm.update(pred, mask)
        res = cm.result(list(world.classes))
        runs.append(Run(kind, shots, name, seed, float(res.miou), dict(res.per_class), fit_s,
                        0 if variant in NO_FIT else cfg.steps, per_image))
    return runs


# the lab's inference precision, pinned: float32 on every machine, so a figure does not depend on
# whether the CPU has bfloat16 units (the default "auto" uses them where it does); the INFER_SPEED
# variants set their own
LAB_PRECISION: dict[str, Any] = {"encoder_dtype": "model", "autocast": "off"}

# the paper's crop/rotation presets for the closest real dataset
AUGMENT = {"car": {"min_crop_ratio": 0.6, "rotate_degrees": 30.0},
           "face": {"min_crop_ratio": 0.6, "rotate_degrees": 10.0}}


def parse_seeds(text: str) -> list[int]:
    """Seeds from a comma list with ranges, "0-4,10" -> [0, 1, 2, 3, 4, 10] (1-shot comparisons
    want 20-30 seeds, too many to spell out)."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ValueError(f"--seeds: {part.strip()!r} is not a seed or a range like 0-19")
        seeds += range(int(m[1]), int(m[2] or m[1]) + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {text!r} names a seed twice")
    return seeds


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single value)."""
    v = list(values)
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def groups(runs: Iterable[T], key: Callable[[T], tuple]) -> dict[tuple, list[T]]:
    """Runs grouped by `key`, the groups in the order their keys first appear (the benchmarks'
    rows: one per (kind, shots, variant) or the like, over seeds)."""
    out: dict[tuple, list[T]] = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (kind, shots, variant), overall and per class."""
    rows = []
    grouped = groups(runs, lambda r: (r.kind, r.shots, r.variant))
    for kind, shots, variant in sorted(grouped, key=lambda k: (k[0], k[1], list(VARIANTS).index(k[2]))):
        group = grouped[(kind, shots, variant)]
        per_class = {}
        for name in group[0].per_class:
            vals = [r.per_class[name] for r in group if r.per_class[name] is not None]
            per_class[name] = mean_std(vals) if vals else None
        miou_mean, miou_std = mean_std(r.miou for r in group)
        rows.append({"kind": kind, "shots": shots, "variant": variant, "seeds": [r.seed for r in group],
                     "miou_mean": miou_mean, "miou_std": miou_std,
                     "per_class": per_class, "fit_seconds_median": statistics.median(r.fit_seconds for r in group),
                     "steps": group[0].steps})
    return rows


def all_background_miou(masks: list[np.ndarray], classes: tuple[str, ...] | list[str]) -> float:
    """mIoU of predicting background everywhere (the floor a row must clear)."""
    cm = ConfusionMatrix(len(classes))
    for mask in masks:
        cm.update(np.zeros_like(mask), mask)
    return float(cm.result(list(classes)).miou)


def format_table(rows: list[dict[str, Any]], all_background: dict[str, float] | None = None,
                 ceilings: dict[str, dict] | None = None) -> str:
    """mIoU % mean +- std over seeds, one line per (kind, shots, variant), beside it the
    all-background score and (if measured) the share of the linear ceiling; parts after."""
    lines = []
    all_background, ceilings = all_background or {}, ceilings or {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sub = [r for r in rows if r["kind"] == kind]
        classes = list(sub[0]["per_class"])
        ceil = ceilings.get(kind)
        vw = max(8, *(len(r["variant"]) for r in sub))
        head = (f"{kind:<5} {'shots':>5} {'variant':<{vw}} {'seeds':>5} {'mIoU %':>12} {'all-bg':>6} "
                + (f"{'% ceil':>6} " if ceil else "") + " ".join(f"{c:>12}" for c in classes))
        lines += [head, "-" * len(head)]
        bg = all_background.get(kind)
        bg_cell = f"{100 * bg:6.1f}" if bg is not None else f"{'-':>6}"
        for r in sub:
            cells = []
            for c in classes:
                v = r["per_class"][c]
                cells.append(f"{100 * v[0]:5.1f} ± {100 * v[1]:4.1f}" if v else f"{'-':>12}")
            share = f"{100 * r['miou_mean'] / ceil['miou']:6.0f} " if ceil else ""
            lines.append(f"{kind:<5} {r['shots']:>5} {r['variant']:<{vw}} {len(r['seeds']):>5} "
                         f"{100 * r['miou_mean']:5.1f} ± {100 * r['miou_std']:4.1f} {bg_cell} {share}" + " ".join(cells))
        if ceil:
            cells = [f"{100 * ceil['per_class'][c]:12.1f}" if ceil["per_class"].get(c) is not None else f"{'-':>12}"
                     for c in classes]
            lines.append(f"{kind:<5} {'':>5} {'ceiling':<{vw}} {'':>5} {100 * ceil['miou']:12.1f} {bg_cell} {100:6.0f} "
                         + " ".join(cells))
            lines.append(f"      (ceiling: a linear classifier on the UNet's up-block features, "
                         f"{ceil['n_train']} labelled images, {ceil['weighting']} class weighting)")
        lines.append("")
    return "\n".join(lines)


def merge(paths: list[str], out: str | None) -> dict[str, Any]:
    """One report from several (e.g. one process per kind): runs concatenated, rows recomputed; a
    run in more than one report (a baseline re-scored beside new variants) counts once, the last
    report's."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    _same_examples(paths, [_draw(rep) for rep in reports])
    unique = {(r["kind"], r["shots"], r["variant"], r["seed"]): r for rep in reports for r in rep["runs"]}
    runs = [Run(**r) for r in unique.values()]
    report = {**reports[0], "rows": summarise(runs), "runs": [r.__dict__ for r in runs],
              "seconds": max(r["seconds"] for r in reports), "merged_from": [str(p) for p in paths],
              "all_background": {k: v for rep in reports for k, v in rep.get("all_background", {}).items()},
              "ceiling": {k: v for rep in reports for k, v in (rep.get("ceiling") or {}).items()}}
    if report.get("examples_seed") is not None:
        print(f"(every run fitted on the examples of seed {report['examples_seed']}: the spread is the fit's own)")
    print(format_table(report["rows"], report["all_background"], report["ceiling"]))
    if out:
        write_json(out, report)
    return report


Pair = tuple[int, float, float]  # (seed, mIoU of A, mIoU of B)


def pairs_between(a: list[Run], b: list[Run]) -> dict[tuple[int | str, ...], list[Pair]]:
    """Runs of two reports (two models, or one setting changed) matched by (kind, shots, variant,
    seed): the same seed draws the same examples and the same fit noise, so each pair differs only
    in what changed between the reports."""
    index = {(r.kind, r.shots, r.variant, r.seed): r for r in a}
    out: dict[tuple[int | str, ...], list[Pair]] = {}
    for r in b:
        if (m := index.get((r.kind, r.shots, r.variant, r.seed))) is not None:
            out.setdefault((r.kind, r.shots, r.variant), []).append((r.seed, m.miou, r.miou))
    return out


def pairs_within(runs: list[Run], baseline: str = "full") -> dict[tuple[int | str, ...], list[Pair]]:
    """Each variant of one report against `baseline`, matched by (kind, shots, seed)."""
    index = {(r.kind, r.shots, r.seed): r for r in runs if r.variant == baseline}
    out: dict[tuple[int | str, ...], list[Pair]] = {}
    for r in runs:
        if r.variant != baseline and (m := index.get((r.kind, r.shots, r.seed))) is not None:
            out.setdefault((r.kind, r.shots, f"{r.variant} - {baseline}"), []).append((r.seed, m.miou, r.miou))
    return out


def seeds_for(sd: float, effect: float, most: int = 1000) -> int | None:
    """Fewest paired seeds whose 95 % interval is at most +-`effect` wide for this paired std
    (None: more than `most`)."""
    from scipy.stats import t

    for n in range(2, most + 1):
        if t.ppf(0.975, n - 1) * sd / n ** 0.5 <= effect:
            return n
    return None


def delta_rows(pairs: dict[tuple[int | str, ...], list[Pair]], effect: float = 0.02) -> list[dict[str, Any]]:
    """Per compared row: B - A mean over seeds, the paired std, a 95 % t interval of the mean, whether
    it excludes 0 (the change is told from noise), and how many seeds would resolve +-`effect`."""
    from scipy.stats import t

    rows = []
    for (kind, shots, what), group in pairs.items():
        deltas = [mb - ma for _, ma, mb in sorted(group)]
        n = len(deltas)
        mean, sd = mean_std(deltas)
        half = float(t.ppf(0.975, n - 1) * sd / n ** 0.5) if n > 1 else None
        rows.append({"kind": kind, "shots": shots, "compared": what, "seeds": sorted(s for s, _, _ in group),
                     "a_mean": statistics.mean(ma for _, ma, _ in group),
                     "b_mean": statistics.mean(mb for _, _, mb in group),
                     "delta_mean": mean, "delta_std": sd if n > 1 else None,
                     "ci95": [mean - half, mean + half] if half is not None else None,
                     "resolved": (abs(mean) > half) if half is not None else None,
                     "effect": effect, "seeds_for_effect": seeds_for(sd, effect) if n > 1 else None})
    return rows


def format_deltas(rows: list[dict[str, Any]]) -> str:
    """One line per compared row, in mIoU points: A, B, B - A with its paired std and 95 % interval,
    whether the interval excludes 0, and the seeds a +-effect interval needs."""
    effect = 100 * rows[0]["effect"] if rows else 2.0
    w = max([18, *(len(r["compared"]) for r in rows)])  # the widest variant name sets the column
    head = (f"{'kind':<5} {'shots':>5} {'compared':<{w}} {'seeds':>5} {'A':>5} {'B':>5} {'B - A':>6} "
            f"{'sd':>5} {'95 % interval':>15} {'told':>4} {f'seeds for ±{effect:g}':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"[{100 * r['ci95'][0]:+5.1f}, {100 * r['ci95'][1]:+5.1f}]" if r["ci95"] else "-"
        sd = f"{100 * r['delta_std']:5.1f}" if r["delta_std"] is not None else "-"
        told = {True: "yes", False: "no", None: "-"}[r["resolved"]]
        need = r["seeds_for_effect"] if r["seeds_for_effect"] is not None else "-"
        lines.append(f"{r['kind']:<5} {r['shots']:>5} {r['compared']:<{w}} {len(r['seeds']):>5} "
                     f"{100 * r['a_mean']:5.1f} {100 * r['b_mean']:5.1f} {100 * r['delta_mean']:+6.1f} "
                     f"{sd:>5} {ci:>15} {told:>4} {need:>14}")
    return "\n".join(lines)


def _draw(report: dict[str, Any]) -> tuple[int | None, int, int]:
    """How a report drew its examples and held-out images: (examples seed, example world, test
    world); reports from before `--worlds` used worlds 0 and 1."""
    return (report.get("examples_seed"), int(report.get("train_world_seed", TRAIN_WORLD_SEED)),
            int(report.get("test_world_seed", TEST_WORLD_SEED)))


def _same_examples(paths: list[str], draws: list[tuple[int | None, int, int]]) -> None:
    """Refuse to pool or pair runs whose seeds drew their examples differently (`--examples-seed`,
    `--worlds`)."""
    if len(set(draws)) > 1:
        worlds = len({d[1:] for d in draws}) > 1  # named only where they differ
        which = ", ".join(f"{p}: {'each seed' if e is None else f'seed {e}'}" + (f", worlds {a},{b}" if worlds else "")
                          for p, (e, a, b) in zip(paths, draws, strict=True))
        raise SystemExit(f"error: these reports drew their examples differently ({which}); "
                         "their runs of one seed are not the same examples")


def _paired_fields(run: dict[str, Any]) -> Run:
    """The fields pairing needs, from a run of quality.py or of protocol.py (which writes them
    alike, with its own extras): so `--compare` pairs protocol variants against `--baseline last`."""
    return Run(str(run["kind"]), int(run["shots"]), str(run["variant"]), int(run["seed"]), float(run["miou"]),
               {}, float(run.get("fit_seconds") or 0.0), int(run.get("steps") or run.get("steps_run") or 0))


def compare(paths: list[str], baseline: str, effect: float, out: str | None) -> list[dict[str, Any]]:
    """Paired differences: two reports (B = the second, A = the first) row by row, or one report's
    variants against `baseline`; printed, and written to `out` as JSON."""
    reports, examples = [], []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            reports.append([_paired_fields(r) for r in report["runs"]])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {path}: not a quality report ({type(e).__name__}: {e})") from None
        examples.append(_draw(report))
    _same_examples(paths, examples)
    pairs = pairs_between(*reports) if len(reports) == 2 else pairs_within(reports[0], baseline)
    if not pairs:
        what = "runs with the same kind, shots, variant and seed" if len(reports) == 2 else \
            f"variants with seeds of the baseline '{baseline}'"
        raise SystemExit(f"error: {', '.join(paths)}: no {what} to pair")
    rows = delta_rows(pairs, effect)
    print(f"B - A in mIoU points, paired by seed (A: {paths[0]}"
          + (f", B: {paths[1]})" if len(paths) == 2 else f" '{baseline}', B: the variant named)"))
    print(format_deltas(rows))
    if out:
        write_json(out, {"benchmark": "slimeseg lab quality, paired differences", "compared": paths,
                          "baseline": baseline if len(paths) == 1 else None, "rows": rows})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(LAB_MODEL), help="the lab SD (default: the committed one)")
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--seeds", default="0-4", help="comma list with ranges, e.g. 0-19 or 0,2,5-9")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--examples-seed", type=int, default=None,
                   help="draw every run's examples with this seed (the seeds then vary only the fit's noise)")
    p.add_argument("--test", type=int, default=50, help="held-out images per kind")
    p.add_argument("--worlds", default=",".join(map(str, UNSEEN_WORLDS)),
                   help="world seeds of the examples and of the held-out images (default: two the lab SD "
                        f"never saw; {TRAIN_WORLD_SEED},{TEST_WORLD_SEED}: the earlier reports' draw, examples from "
                        "its pretraining world)")
    p.add_argument("--keep-artifacts", metavar="DIR",
                   help="keep every fit's artifact here and reuse those already there (no refit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run that wrote --json: skip the (kind, shots, variant, seed) it measured")
    p.add_argument("--size", type=int, default=None,
                   help="image size (default: the lab SD's training size, 8 x its UNet sample size)")
    p.add_argument("--steps-per-shot", type=int, default=200, help="optimisation steps per example (paper: 200)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--dtype", default=None, help="model dtype (default float32 on CPU), e.g. bfloat16")
    p.add_argument("--fast", action="store_true",
                   help="the test-suite variant: car, 1-shot, 1 seed, SLiMe with WAS on/off, matching, fused; "
                        "few steps and images")
    p.add_argument("--ceiling", action="store_true",
                   help="also fit the linear ceiling (lab.ceiling) per kind and print each row's share of it")
    p.add_argument("--ceiling-train", type=int, default=500, help="labelled images the ceiling is fitted on")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge reports of earlier runs into one table")
    p.add_argument("--compare", nargs="+", metavar="JSON",
                   help="paired differences by seed: B.json against A.json (A B), or one report's "
                        "variants against --baseline (A)")
    p.add_argument("--baseline", default="full", help="the variant others are compared with (one --compare report)")
    p.add_argument("--effect", type=float, default=2.0,
                   help="the change, in mIoU points, whose resolving seeds --compare reports")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json)
    if args.compare:
        if len(args.compare) > 2:
            p.error("--compare takes one report (variants against --baseline) or two (B against A)")
        return {"rows": compare(args.compare, args.baseline, args.effect / 100, args.json)}
    if args.fast:
        args.kinds, args.shots, args.seeds, args.variants = "car", "1", "0", "full,no-WAS,match,fuse,fuse-gf3,fuse-sp5c64"
        args.test, args.steps_per_shot = 16, 100
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = Segmenter.from_pretrained(args.model, device="cpu", dtype=args.dtype)
    if args.size is None:
        args.size = 8 * int(seg.sd.unet.config.sample_size)
    train_world, test_world = (int(w) for w in args.worlds.split(","))
    if args.keep_artifacts:
        Path(args.keep_artifacts).mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    all_background: dict[str, float] = {}
    ceilings: dict[str, dict] = {}
    if args.resume and args.json and Path(args.json).is_file():  # continue a stopped run
        old = json.loads(Path(args.json).read_text())
        if [old.get(k) for k in ("train_world_seed", "test_world_seed", "examples_seed", "size", "test_images",
                                 "steps_per_shot")] != [train_world, test_world, args.examples_seed, args.size,
                                                        args.test, args.steps_per_shot]:
            p.error(f"--resume: {args.json} was made with other worlds, examples, size, test images or steps")
        runs = [Run(**r) for r in old["runs"]]
        all_background = old.get("all_background") or {}
        print(f"resuming {args.json}: {len(runs)} runs measured", flush=True)
    have = {(r.kind, r.shots, r.variant, r.seed) for r in runs}
    t_start = time.perf_counter()
    for kind in args.kinds.split(","):
        test = [World(kind, size=args.size, seed=test_world).sample(i) for i in range(args.test)]
        images, masks = [s.image for s in test], [s.mask for s in test]
        all_background[kind] = all_background_miou(masks, World(kind).classes)
        if args.ceiling:
            from .ceiling import ceiling

            ceilings[kind] = ceiling(seg.sd, kind, images, masks, args.size, args.ceiling_train,
                                     log=lambda s: print(s, flush=True))
        for shots in map(int, args.shots.split(",")):
            wanted = args.variants.split(",")
            fits = [v for v in wanted if v not in PREDICT_ONLY]
            for v in wanted:  # predict-only variants reuse their base variant's artifact
                if v in PREDICT_ONLY and DERIVED[v] not in fits:
                    fits.insert(0, DERIVED[v])
            for seed in seeds:  # seed by seed: a stopped run has every variant of its first seeds
                for variant in fits:
                    also = tuple(v for v in wanted if DERIVED.get(v) == variant)
                    if all((kind, shots, v, seed) in have for v in (variant, *also) if v in wanted):
                        continue  # --resume: measured by the run that wrote --json
                    done = run_one(seg, kind, shots, variant, seed, args.size, args.steps_per_shot, images,
                                   masks, also, args.examples_seed, train_world, args.keep_artifacts,
                                   score_own=variant in wanted)
                    fresh = {(r.kind, r.shots, r.variant, r.seed) for r in done}
                    runs = [r for r in runs if (r.kind, r.shots, r.variant, r.seed) not in fresh]  # re-scored
                    runs += [r for r in done if r.variant in wanted]
                    for run in done:
                        print(f"{kind} {shots}-shot {run.variant:<9} seed {seed}: mIoU {100 * run.miou:5.1f} "
                              f"({run.steps} steps, fit {run.fit_seconds:.1f} s, "
                              f"{run.predict_seconds:.2f} s/image)", flush=True)
                    if args.json:  # after every fit, so a stopped run keeps what it measured
                        write_json(args.json, _report(args, seg, runs, all_background, ceilings, t_start))
    report = _report(args, seg, runs, all_background, ceilings, t_start)
    print()
    if args.examples_seed is not None:
        print(f"(every run fitted on the examples of seed {args.examples_seed}: the spread is the fit's own)")
    print(format_table(report["rows"], all_background, ceilings))
    if args.json:
        write_json(args.json, report)
    return report


def _report(args: argparse.Namespace, seg: Segmenter, runs: list[Run], all_background: dict[str, float],
            ceilings: dict[str, dict], t_start: float) -> dict[str, Any]:
    return {"benchmark": "slimeseg lab quality", "model": args.model, "size": args.size,
            "dtype": str(seg.sd.dtype).replace("torch.", ""),
            "test_images": args.test, "steps_per_shot": args.steps_per_shot, "examples_seed": args.examples_seed,
            "train_world_seed": int(args.worlds.split(",")[0]), "test_world_seed": int(args.worlds.split(",")[1]),
            "all_background": all_background, "ceiling": ceilings or None,
            "rows": summarise(runs), "runs": [r.__dict__ for r in runs],
            "seconds": time.perf_counter() - t_start, "threads": torch.get_num_threads(),
            "versions": {"slimeseg": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}


if __name__ == "__main__":
    main()
