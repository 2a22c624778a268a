"""The reference's training protocol on the lab world: best-step selection, early stopping,
augmentation order and LDM guidance, each against today's defaults, with seeds.

Same splits as `benchmarks/quality.py` (k examples of the lab training world drawn per seed,
scored on held-out images of another world seed). Per (kind, shots, variant, seed): held-out
mIoU, the step whose embeddings were kept, the steps run and the fit's seconds.

    python benchmarks/protocol.py --kinds car --threads 1 --json car.json
    python benchmarks/protocol.py --merge car.json face.json --json benchmarks/results-protocol-lab.json
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
    parse_seeds,
)
from slimeseg import Segmenter, SlimeConfig, __version__  # noqa: E402
from slimeseg.metrics import ConfusionMatrix  # noqa: E402
from slimeseg.synthetic import World  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "last": {},  # today: 200 epochs, the last embeddings
    "best": {"select_best": True},  # the reference: validate each epoch, keep the best
    "best-trainval": {"select_best": True, "validation": "train"},  # k-shot: validate on all, hold none out
    "best-stop10": {"select_best": True, "patience": 10},
    "best-stop25": {"select_best": True, "patience": 25},
    "ref-aug": {"augment_order": "reference"},
    "ldm-g100": {"ldm_guidance": 100.0},
}


def run(seg: Segmenter, kind: str, shots: int, variant: str, seed: int, size: int, steps_per_shot: int,
        test: list) -> dict[str, Any]:
    """One fit on the seeded k-shot draw and its held-out score."""
    world = World(kind, size=size, seed=TRAIN_WORLD_SEED)
    pick = np.random.default_rng(seed).permutation(TRAIN_POOL)[:shots]
    train = [world.sample(int(i)) for i in pick]
    cfg = SlimeConfig(image_size=size, epochs=steps_per_shot, seed=seed, method="slime", upsample="bilinear", **AUGMENT[kind]).replace(
        **VARIANTS[variant])
    t0 = time.perf_counter()
    learned = seg.fit([s.image for s in train], [s.mask for s in train], list(world.classes), cfg,
                      progress=False)
    fit_s = time.perf_counter() - t0
    cm = ConfusionMatrix(len(world.classes))
    for pred, s in zip(seg.predict_batch([s.image for s in test], learned, batch_size=8), test, strict=True):
        cm.update(pred, s.mask)
    res = cm.result(list(world.classes))
    hist = learned.history
    return {"kind": kind, "shots": shots, "variant": variant, "seed": seed, "miou": float(res.miou),
            "per_class": dict(res.per_class), "fit_seconds": fit_s, "steps_run": hist["steps_done"],
            "steps_planned": hist["total_steps"], "best_step": hist.get("best_step"),
            "trained_on": len(learned.image_hashes), "validation": hist.get("validation")}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (kind, shots, variant)."""
    rows = []
    for key, group in groups(runs, lambda r: (r["kind"], r["shots"], r["variant"])).items():
        miou_mean, miou_std = mean_std(r["miou"] for r in group)
        best = [r["best_step"] for r in group if r["best_step"] is not None]
        rows.append({"kind": key[0], "shots": key[1], "variant": key[2], "seeds": [r["seed"] for r in group],
                     "miou_mean": miou_mean, "miou_std": miou_std,
                     "best_steps": best, "steps_run_mean": statistics.mean(r["steps_run"] for r in group),
                     "steps_planned": group[0]["steps_planned"],
                     "fit_seconds_mean": statistics.mean(r["fit_seconds"] for r in group)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'kind':<5} {'shots':>5} {'variant':<14} {'mIoU %':>12} {'best step(s)':<18} "
            f"{'steps run':>9} {'fit s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        best = ",".join(str(b) for b in r["best_steps"]) or "-"
        lines.append(f"{r['kind']:<5} {r['shots']:>5} {r['variant']:<14} {100 * r['miou_mean']:5.1f} ± "
                     f"{100 * r['miou_std']:4.1f} {best:<18} {r['steps_run_mean']:6.0f}/{r['steps_planned']:<4}"
                     f"{r['fit_seconds_mean']:6.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(LAB_MODEL))
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--seeds", default="0-2", help="comma list with ranges, e.g. 0-4 or 0,2,5-9")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--test", type=int, default=50, help="held-out images per kind")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps-per-shot", type=int, default=200, help="epochs (paper: 200)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--merge", nargs="+", metavar="JSON")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.merge:
        reports = [json.loads(Path(f).read_text()) for f in a.merge]
        runs = [r for rep in reports for r in rep["runs"]]
        report = {**reports[0], "runs": runs, "rows": summarise(runs), "merged_from": a.merge}
    else:
        try:
            seeds = parse_seeds(a.seeds)
        except ValueError as e:
            p.error(str(e))
        if a.threads:
            torch.set_num_threads(a.threads)
        seg = Segmenter.from_pretrained(a.model, device="cpu")
        runs, start = [], time.perf_counter()
        for kind in a.kinds.split(","):
            test = [World(kind, size=a.size, seed=TEST_WORLD_SEED).sample(i) for i in range(a.test)]
            for shots in map(int, a.shots.split(",")):
                for variant in a.variants.split(","):
                    if shots == 1 and variant == "best-trainval":
                        continue  # the same as "best" for one example
                    for seed in seeds:
                        r = run(seg, kind, shots, variant, seed, a.size, a.steps_per_shot, test)
                        runs.append(r)
                        print(f"{kind} {shots}-shot {variant:<14} seed {seed}: mIoU {100 * r['miou']:5.1f}, "
                              f"best step {r['best_step']}, {r['steps_run']} steps, {r['fit_seconds']:.0f} s",
                              flush=True)
                        if a.json:  # after every fit, atomically, so a stopped run keeps what it measured
                            write_json(a.json, _report(a, runs, start))
        report = _report(a, runs, start)
    report["table"] = table(report["rows"])
    print(report["table"])
    if a.json:
        write_json(a.json, report)
    return report


def _report(a: argparse.Namespace, runs: list[dict[str, Any]], start: float) -> dict[str, Any]:
    return {"benchmark": "slimeseg lab protocol", "model": a.model, "size": a.size,
            "test_images": a.test, "epochs": a.steps_per_shot, "runs": runs, "rows": summarise(runs),
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
            "versions": {"slimeseg": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}


if __name__ == "__main__":
    main()
