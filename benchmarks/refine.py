"""Refining by correcting, on the lab world: warm starts from learned embeddings vs fresh fits.

A simulated user: start from a 1-shot fit (the same draw as `benchmarks/quality.py`), find the
image of a pool of unused training-world images on which it scores worst, take its exact mask as
"the correction", and refine: continue the embeddings for N steps on both examples (N in 25, 50,
100, 200), against a fresh 2-shot fit on the same two (200 epochs = 400 steps). A second round
does the same from each refined chain with its own worst image (3 examples; fresh: 600 steps).
Held-out mIoU on the test world and wall seconds of each fit; seeds 0-2.

    python benchmarks/refine.py --kinds car --threads 1 --json car.json
    python benchmarks/refine.py --merge car.json face.json --json benchmarks/results-refine-lab.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.quality import (  # noqa: E402
    AUGMENT,
    LAB_MODEL,
    TEST_WORLD_SEED,
    TRAIN_POOL,
    TRAIN_WORLD_SEED,
    groups,
    mean_std,
)
from slimeseg import Learned, Segmenter, SlimeConfig, __version__  # noqa: E402
from slimeseg.metrics import ConfusionMatrix, image_confusion, iou_from_confusion  # noqa: E402
from slimeseg.synthetic import World  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

CANDIDATES = 30  # unused training-world images a user could correct: samples TRAIN_POOL.. of the world


def held_out_miou(seg: Segmenter, learned: Learned, test: list, k: int) -> float:
    cm = ConfusionMatrix(k)
    for pred, s in zip(seg.predict_batch([s.image for s in test], learned, batch_size=8), test, strict=True):
        cm.update(pred, s.mask)
    return float(cm.result().miou)


def worst(seg: Segmenter, learned: Learned, pool: list, used: set[int], k: int) -> int:
    """Index (into `pool`) of the unused image with the lowest per-image mIoU."""
    preds = seg.predict_batch([s.image for s in pool], learned, batch_size=8)
    scores = {}
    for i, (pred, s) in enumerate(zip(preds, pool, strict=True)):
        if i in used:
            continue
        m = image_confusion(pred, s.mask, k, None)
        scores[i] = float(iou_from_confusion(m)[m.sum(1) > 0].mean())
    return min(scores, key=scores.get)


def fit(seg: Segmenter, examples: list, classes: list[str], cfg: SlimeConfig, **kw: Any) -> tuple[Learned, float]:
    t0 = time.perf_counter()
    learned = seg.fit([s.image for s in examples], [s.mask for s in examples], classes, cfg,
                      progress=False, **kw)
    return learned, time.perf_counter() - t0


def run_seed(seg: Segmenter, kind: str, seed: int, size: int, steps_list: list[int], test: list,
             epochs: int = 200, echo: Any = print) -> list[dict[str, Any]]:
    world = World(kind, size=size, seed=TRAIN_WORLD_SEED)
    classes, k = list(world.classes), len(world.classes)
    first = world.sample(int(np.random.default_rng(seed).permutation(TRAIN_POOL)[0]))
    pool = [world.sample(TRAIN_POOL + i) for i in range(CANDIDATES)]
    cfg = SlimeConfig(image_size=size, seed=seed, epochs=epochs, method="slime", upsample="bilinear", **AUGMENT[kind])
    rows: list[dict[str, Any]] = []

    def record(round_: int, variant: str, learned: Learned, secs: float) -> None:
        miou = held_out_miou(seg, learned, test, k)
        rows.append({"kind": kind, "seed": seed, "round": round_, "variant": variant, "miou": miou,
                     "fit_seconds": secs, "steps": learned.history["steps_done"]})
        echo(f"{kind} seed {seed} round {round_} {variant:<10} mIoU {100 * miou:5.1f} "
             f"({learned.history['steps_done']} steps, {secs:.0f} s)")

    base, secs = fit(seg, [first], classes, cfg)
    record(0, "1-shot", base, secs)
    fix1 = worst(seg, base, pool, set(), k)
    two = [first, pool[fix1]]
    fresh2, secs = fit(seg, two, classes, cfg)
    record(1, "fresh", fresh2, secs)
    for n in steps_list:
        refined, secs = fit(seg, two, classes, cfg.replace(steps=n), init=base)
        record(1, f"refine-{n}", refined, secs)
        fix2 = worst(seg, refined, pool, {fix1}, k)
        three = [*two, pool[fix2]]
        again, secs = fit(seg, three, classes, cfg.replace(steps=n), init=refined)
        record(2, f"refine-{n}", again, secs)
        fresh3, secs = fit(seg, three, classes, cfg)
        record(2, f"fresh@{n}", fresh3, secs)  # the fresh 3-shot fit on this chain's examples
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key, g in groups(rows, lambda r: (r["kind"], r["round"], r["variant"])).items():
        miou_mean, miou_std = mean_std(r["miou"] for r in g)
        out.append({"kind": key[0], "round": key[1], "variant": key[2], "seeds": [r["seed"] for r in g],
                    "miou_mean": miou_mean, "miou_std": miou_std,
                    "fit_seconds_mean": statistics.mean(r["fit_seconds"] for r in g), "steps": g[0]["steps"]})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'kind':<5} {'round':>5} {'variant':<11} {'mIoU %':>12} {'steps':>6} {'fit s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kind']:<5} {r['round']:>5} {r['variant']:<11} {100 * r['miou_mean']:5.1f} ± "
                     f"{100 * r['miou_std']:4.1f} {r['steps']:>6} {r['fit_seconds_mean']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(LAB_MODEL))
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", default="25,50,100,200", help="refinement steps to compare")
    p.add_argument("--test", type=int, default=50)
    p.add_argument("--epochs", type=int, default=200, help="epochs of the fresh fits (paper: 200)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--merge", nargs="+", metavar="JSON")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.merge:
        reports = [json.loads(Path(f).read_text()) for f in a.merge]
        runs = [r for rep in reports for r in rep["runs"]]
        report = {**reports[0], "runs": runs, "merged_from": a.merge}
    else:
        if a.threads:
            torch.set_num_threads(a.threads)
        seg = Segmenter.from_pretrained(a.model, device="cpu")
        runs, start = [], time.perf_counter()
        for kind in a.kinds.split(","):
            test = [World(kind, size=a.size, seed=TEST_WORLD_SEED).sample(i) for i in range(a.test)]
            for seed in map(int, a.seeds.split(",")):
                runs += run_seed(seg, kind, seed, a.size, [int(n) for n in a.steps.split(",")], test,
                                 a.epochs)
        report = {"benchmark": "slimeseg lab refinement", "model": a.model, "size": a.size, "epochs": a.epochs,
                  "test_images": a.test, "candidates": CANDIDATES, "runs": runs,
                  "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
                  "versions": {"slimeseg": __version__, "torch": torch.__version__,
                               "python": platform.python_version()}}
    report["rows"] = summarise(report["runs"])
    report["table"] = table(report["rows"])
    print(report["table"])
    if a.json:
        write_json(a.json, report)
    return report


if __name__ == "__main__":
    main()
