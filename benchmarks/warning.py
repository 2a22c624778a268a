"""Does the poor-example warning rank examples like their held-out mIoU? (lab SD, unseen worlds)

For each of the TRAIN_POOL candidate examples of a kind (world 2), 1-shot: the example check
(`inference.example_check`: matching re-finding the example's parts in augmented copies of it,
from the example alone) beside the held-out mIoU (world 3) of matching on that example, and,
given quality reports (`--reports`), of their variants (each seed's example is known: the same
draw as `lab.quality.run_one`). Prints Spearman's rank correlation per kind and method, writes
JSON after every example (resumable with `--resume`).

    python benchmarks/warning.py --threads 1 --json benchmarks/results-warning-lab-v3.json \\
        --reports q1-car.json q1-face.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.quality import AUGMENT, LAB_MODEL, LAB_PRECISION, TRAIN_POOL, UNSEEN_WORLDS  # noqa: E402
from slimeseg import Segmenter, SlimeConfig, inference  # noqa: E402
from slimeseg.metrics import ConfusionMatrix  # noqa: E402
from slimeseg.synthetic import World  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--test", type=int, default=50, help="held-out images per kind")
    p.add_argument("--views", type=int, default=4, help="augmented copies per example in the check")
    p.add_argument("--reports", nargs="*", default=[], help="quality.py reports (1-shot runs) to rank too")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write the results here (after every example)")
    p.add_argument("--resume", action="store_true", help="keep the examples --json already has")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    seg = Segmenter.from_pretrained(str(LAB_MODEL), device="cpu")
    size = 8 * int(seg.sd.unet.config.sample_size)
    out = json.loads(Path(a.json).read_text()) if a.resume and a.json and Path(a.json).is_file() else {}
    out.update({"benchmark": "slimeseg poor-example warning", "model": str(LAB_MODEL), "size": size,
                "worlds": list(UNSEEN_WORLDS), "views": a.views, "test_images": a.test})
    examples = out.setdefault("examples", {})
    t0 = time.perf_counter()
    for kind in a.kinds.split(","):
        world = World(kind, size=size, seed=UNSEEN_WORLDS[0])
        test = [World(kind, size=size, seed=UNSEEN_WORLDS[1]).sample(i) for i in range(a.test)]
        classes = list(world.classes)
        for i in range(TRAIN_POOL):
            key = f"{kind}/{i}"
            if key in examples:
                continue
            ex = world.sample(i)
            cfg = SlimeConfig(image_size=size, **AUGMENT[kind], **LAB_PRECISION)
            learned = seg.match([ex.image], [ex.mask], classes, cfg)
            t1 = time.perf_counter()
            check = inference.example_check(seg.sd, learned, SlimeConfig.from_dict(learned.config), a.views)
            check_s = time.perf_counter() - t1
            cm = ConfusionMatrix(len(classes))
            for pred, s in zip(seg.predict_batch([s.image for s in test], learned, batch_size=8), test,
                               strict=True):
                cm.update(pred, s.mask)
            examples[key] = {"check": check, "check_seconds": check_s,
                             "match_miou": float(cm.result(classes).miou)}
            print(f"{kind} example {i:2d}: check {100 * check:5.1f}  matching mIoU "
                  f"{100 * examples[key]['match_miou']:5.1f}  ({check_s:.1f} s)", flush=True)
            if a.json:
                write_json(a.json, out)
    # rank correlations: matching over the pool, and each report's variants over its seeds
    ranks = {}
    for kind in a.kinds.split(","):
        pool = [examples[f"{kind}/{i}"] for i in range(TRAIN_POOL)]
        ranks[f"{kind} match (pool of {TRAIN_POOL})"] = spearman([e["check"] for e in pool],
                                                                [e["match_miou"] for e in pool])
        for path in a.reports:
            report = json.loads(Path(path).read_text())
            for variant in dict.fromkeys(r["variant"] for r in report["runs"]):
                runs = [r for r in report["runs"] if r["kind"] == kind and r["shots"] == 1
                        and r["variant"] == variant]
                if len(runs) < 5:
                    continue
                picked = [int(np.random.default_rng(r["seed"]).permutation(TRAIN_POOL)[0]) for r in runs]
                ranks[f"{kind} {variant} ({len(runs)} seeds of {Path(path).name})"] = spearman(
                    [examples[f"{kind}/{i}"]["check"] for i in picked], [r["miou"] for r in runs])
    out["spearman"] = ranks
    out["seconds"] = out.get("seconds", 0) + time.perf_counter() - t0
    for name, rho in ranks.items():
        print(f"Spearman {name}: {rho:+.2f}")
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
