"""One-shot fit of the tiny test model on the synthetic shapes scene: mIoU and timings.

The figures quoted for the engine issue: train-image mIoU (and on held-out scenes), seconds per
optimisation step and per segmented image, median over the run. The tiny model is NOT a trained
SD; this shows the mechanics work, not real-world quality.

    python benchmarks/tiny_fit.py [--size 256] [--steps 200] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from slimeseg import Segmenter
from slimeseg.metrics import ConfusionMatrix
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.synthetic.tiny import save_tiny_sd
from slimeseg.writers import write_json


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--heldout", type=int, default=5, help="held-out scenes to score")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = Segmenter.from_pretrained(str(save_tiny_sd(tempfile.mkdtemp(prefix="tiny-sd-"))), device="cpu")
    image, mask = shapes_scene(0, args.size)
    heldout = [shapes_scene(s, args.size) for s in range(1, args.heldout + 1)]
    rows = []
    for augment in (False, True):
        stamps: list[float] = []
        t0 = time.perf_counter()
        seg.fit([image], [mask], SHAPE_CLASSES, image_size=args.size, steps=args.steps, augment=augment, method="slime", upsample="bilinear",
                seed=0, progress=False, callback=lambda *a, s=stamps: s.append(time.perf_counter()))
        fit_s = time.perf_counter() - t0
        step_s = statistics.median(np.diff([t0, *stamps]))
        train = ConfusionMatrix(len(SHAPE_CLASSES))
        train.update(seg.predict(image), mask)
        held = ConfusionMatrix(len(SHAPE_CLASSES))
        times = []
        for im, m in heldout:
            t = time.perf_counter()
            held.update(seg.predict(im), m)
            times.append(time.perf_counter() - t)
        rows.append({"augment": augment, "train_miou": train.miou(), "heldout_miou": held.miou(),
                     "step_s_median": step_s, "image_s_median": statistics.median(times), "fit_s": fit_s})
    print(f"tiny model, {args.size} px, {args.steps} steps, {torch.get_num_threads()} thread(s)")
    print(f"{'augment':<8} {'train mIoU':>10} {'held-out':>9} {'s/step':>8} {'s/image':>8}")
    for r in rows:
        print(f"{str(r['augment']):<8} {r['train_miou']:>10.3f} {r['heldout_miou']:>9.3f} "
              f"{r['step_s_median']:>8.3f} {r['image_s_median']:>8.3f}")
    report = {"size": args.size, "steps": args.steps, "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
