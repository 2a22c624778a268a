"""Exploration (issue 29): other ways to sum up the cycle check on cars. For lab car examples 0-39
(world 2) and the first 10 held-out images of world 3: per (example, image) the per-class IoUs of
the example labelled back (exactly `inference.cycle_check`'s, image by image), then Spearman's
rank correlation with held-out mIoU (from results-warning-lab-v3-cycle.json) for each summary.

    python benchmarks/cycle_aggregations.py compute car benchmarks/results-warning-lab-v3-cycle-classes.json
    python benchmarks/cycle_aggregations.py summarise car benchmarks/results-warning-lab-v3-cycle-classes.json

Result: docs/methods.md ("The example check")."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.quality import LAB_PRECISION, UNSEEN_WORLDS  # noqa: E402
from slimeseg.config import SlimeConfig  # noqa: E402
from slimeseg.metrics import image_confusion, iou_from_confusion  # noqa: E402
from slimeseg.segmenter import Segmenter  # noqa: E402
from slimeseg.synthetic.world import World  # noqa: E402


def compute(kind: str, out: str) -> None:
    torch.set_num_threads(1)
    seg = Segmenter.from_pretrained("tests/assets/lab-sd", device="cpu")
    size = 256
    world = World(kind, size=size, seed=UNSEEN_WORLDS[0])
    test = [World(kind, size=size, seed=UNSEEN_WORLDS[1]).sample(i) for i in range(10)]
    classes = list(world.classes)
    k = len(classes)
    cfg = SlimeConfig(image_size=size, method="match", **LAB_PRECISION)
    rows = {}
    for i in range(40):
        s = world.sample(i)
        learned = seg.match([s.image], [s.mask], classes, cfg)
        preds = seg.predict_batch([t.image for t in test], learned, batch_size=8)
        per = []
        for t, p in zip(test, preds, strict=True):
            back = seg.match([t.image], [np.asarray(p)], classes, cfg)
            lab = seg.predict(s.image, back)
            m = image_confusion(lab, np.asarray(s.mask).astype(np.uint8), k, None)
            iou = iou_from_confusion(m)
            per.append([float(x) if m.sum(1)[c] > 0 else None for c, x in enumerate(iou)])
        cells = np.bincount(np.asarray(s.mask).ravel(), minlength=k) / 64
        rows[i] = {"iou": per, "cells": cells.tolist()}
        print(i, np.nanmean([[np.nan if x is None else x for x in r] for r in per]), flush=True)
        json.dump(rows, open(out, "w"))


def summarise(kind: str, out: str) -> None:
    rows = json.loads(Path(out).read_text())
    held = json.loads(Path(__file__).with_name("results-warning-lab-v3-cycle.json").read_text())["examples"]
    ids = sorted(rows, key=int)
    y = np.array([held[f"{kind}/{i}"]["held_out_miou"] for i in ids])

    def rho(summary) -> float:  # summary(ious (images, K) with NaN for absent classes, cells (K,))
        v = [summary(np.array([[np.nan if x is None else x for x in r] for r in rows[i]["iou"]], dtype=float),
                     np.array(rows[i]["cells"])) for i in ids]
        return round(float(spearmanr(v, y).statistic), 2)

    print(kind, len(ids), "examples; Spearman with held-out mIoU:")
    print(" mean over classes, then images (the check)", rho(lambda a, c: np.nanmean(np.nanmean(a, 1))))
    for t in (16, 32, 64):
        print(f" classes of >= {t} cells only", rho(lambda a, c, t=t: np.nanmean(np.nanmean(a[:, c >= t], 1))))
    print(" median over images", rho(lambda a, c: np.median(np.nanmean(a, 1))))
    print(" worst image", rho(lambda a, c: np.min(np.nanmean(a, 1))))
    print(" classes weighted by their cells", rho(lambda a, c: np.nanmean(np.nansum(np.nan_to_num(a) * c, 1)
                                                                        / np.sum(c[None] * ~np.isnan(a), 1))))
    print(" without background", rho(lambda a, c: np.nanmean(np.nanmean(a[:, 1:], 1))))
    for j in range(len(rows[ids[0]]["cells"]) - 1):  # the last car class, the light, is 0 everywhere
        print(f" class {j} alone", rho(lambda a, c, j=j: np.nanmean(a[:, j])))


if __name__ == "__main__":
    {"compute": compute, "summarise": summarise}[sys.argv[1]](sys.argv[2], sys.argv[3])
