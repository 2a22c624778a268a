"""Other candidates for the poor-example warning, ranked against held-out mIoU (lab SD, unseen worlds).

For each of the TRAIN_POOL examples of a kind (world 2), 1-shot matching:
- `--what copies`: matching re-finding the example's parts in 6 copies of it that are rescaled
  (`zoom`), hue-rotated (`hue`) or both (`augment.bank_view`), as `inference.example_check` does
  with the training augmentation; from the example alone.
- `--what confidence`: matching's mean certainty (1 - normalised entropy, and the mean top
  vote) on the held-out images themselves (unlabelled, so a warning at segment time could use it).
- `--what cycle`: the labels matching gives the held-out images (unlabelled) sent back: those
  images with their predicted labels become the examples (pooled, `cycle_pool`; or one at a
  time, `cycle_each`, the mean over the first 10) and segment the example itself, scored by mIoU
  against its true mask over the classes in it. Needs the images to segment, not the example alone.
Spearman's rank correlation with the held-out mIoU of `results-warning-lab-v3.json` (copies) or
measured here (confidence, 30 images of world 3).

    python benchmarks/warning_variants.py --what copies --json benchmarks/results-warning-lab-v3-variants.json
    python benchmarks/warning_variants.py --what confidence --json benchmarks/results-warning-lab-v3-confidence.json
    python benchmarks/warning_variants.py --what cycle --json benchmarks/results-warning-lab-v3-cycle.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.quality import LAB_MODEL, LAB_PRECISION, TRAIN_POOL, UNSEEN_WORLDS  # noqa: E402
from slimeseg import Segmenter, SlimeConfig, inference, matching  # noqa: E402
from slimeseg.augment import bank_view  # noqa: E402
from slimeseg.metrics import ConfusionMatrix  # noqa: E402
from slimeseg.synthetic import World  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

HELD_OUT = Path(__file__).with_name("results-warning-lab-v3.json")


def copies_check(seg: Segmenter, learned, mode: str, n: int = 6) -> float:
    """The example check (`inference.example_check`) with n rescaled / hue-rotated copies instead
    of the training augmentation's."""
    zoom = (1.0, 1.0) if mode == "hue" else (0.5, 2.0)
    copy = functools.partial(_copy, zoom=zoom, hue=mode != "zoom")
    return inference.example_check(seg.sd, learned, SlimeConfig.from_dict(learned.config), n, copy)


def _copy(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, zoom: tuple[float, float],
          hue: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return bank_view(image, mask.long(), gen, zoom, hue)


def cycle_check(seg: Segmenter, learned, example, test: list, preds: list[np.ndarray], classes: list[str],
                cfg: SlimeConfig, each: tuple[int, ...] = (10,)) -> dict[str, float]:
    """The held-out images with the labels matching gave them, as examples segmenting the example
    back: pooled (one bank of all of them) and one at a time (`inference.cycle_check`, the
    product's check, image by image: the mean over the first n, for each n of `each`)."""
    k = len(classes)
    back = seg.match([t.image for t in test], preds, classes, cfg)
    out = {"cycle_pool": inference.present_miou(seg.predict(example.image, back), np.asarray(example.mask), k)}
    singles = [inference.cycle_check(seg.sd, learned, cfg, [t.image], [p])
               for t, p in zip(test[:max(each)], preds[:max(each)], strict=True)]
    for n in each:
        out["cycle_each" if n == 10 else f"cycle_each{n}"] = float(np.mean(singles[:n]))
    return out


def main(argv: list[str] | None = None) -> dict:
    from scipy.stats import spearmanr

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("copies", "confidence", "cycle"), default="copies")
    p.add_argument("--test", type=int, default=30, help="held-out images per kind (confidence)")
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--pool", type=int, default=TRAIN_POOL, help="candidate examples per kind (cycle)")
    p.add_argument("--cycle-each", default="10", help="cycle: image counts of the one-at-a-time mean")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here (after every example)")
    p.add_argument("--resume", action="store_true", help="keep the examples --json already has")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    seg = Segmenter.from_pretrained(str(LAB_MODEL), device="cpu")
    size = 8 * int(seg.sd.unet.config.sample_size)
    held = json.loads(HELD_OUT.read_text())["examples"]
    old = json.loads(Path(a.json).read_text()) if a.resume and a.json and Path(a.json).is_file() else {}
    out: dict = {"what": a.what, "examples": old.get("examples", {}), "spearman": {}}
    for kind in a.kinds.split(","):
        world = World(kind, size=size, seed=UNSEEN_WORLDS[0])
        test = [World(kind, size=size, seed=UNSEEN_WORLDS[1]).sample(i) for i in range(a.test)]
        cols: dict[str, list[float]] = {}
        ys = []
        for i in range(a.pool if a.what == "cycle" else TRAIN_POOL):
            if f"{kind}/{i}" in out["examples"]:  # resumed
                done = out["examples"][f"{kind}/{i}"]
                ys.append(done["held_out_miou"])
                for k, v in done.items():
                    if k != "held_out_miou":
                        cols.setdefault(k, []).append(v)
                continue
            s = world.sample(i)
            cfg = SlimeConfig(image_size=size, method="match", upsample="bilinear",
                              match_mirror=a.what == "confidence")
            if a.what == "cycle":  # today's matching defaults (guided, small parts raised), float32
                cfg = SlimeConfig(image_size=size, method="match", **LAB_PRECISION)
            learned = seg.match([s.image], [s.mask], list(world.classes), cfg)
            row: dict[str, float] = {}
            if a.what == "copies":
                row = {m: copies_check(seg, learned, m) for m in ("zoom", "hue", "both")}
                y = held[f"{kind}/{i}"]["match_miou"]
            elif a.what == "cycle":
                preds = seg.predict_batch([t.image for t in test], learned, batch_size=8)
                cm = ConfusionMatrix(len(world.classes))
                for pred, t in zip(preds, test, strict=True):
                    cm.update(pred, t.mask)
                y = float(cm.result(list(world.classes)).miou)
                each = tuple(int(n) for n in a.cycle_each.split(","))
                row = {**({"check": held[f"{kind}/{i}"]["check"]} if f"{kind}/{i}" in held else {}),
                       **cycle_check(seg, learned, s, test, [np.asarray(q) for q in preds], list(world.classes), cfg,
                                   each)}
            else:
                cm, conf, top = ConfusionMatrix(len(world.classes)), [], []
                for t in test:
                    sc = inference.low_res_scores(seg.sd, t.image, learned, cfg)[None]  # (1, K, h, w)
                    conf.append(float(matching.confidence(sc).mean()))
                    top.append(float(sc.max(1).values.mean()))
                    cm.update(inference.labels_for(sc[0], t.image, cfg), t.mask)
                row, y = {"confidence": float(np.mean(conf)), "top_vote": float(np.mean(top))}, \
                    float(cm.result(list(world.classes)).miou)
            ys.append(y)
            for k, v in row.items():
                cols.setdefault(k, []).append(v)
            out["examples"][f"{kind}/{i}"] = {**row, "held_out_miou": y}
            print(kind, i, round(y, 3), {k: round(v, 3) for k, v in row.items()}, flush=True)
            if a.json:
                write_json(a.json, out)
        for k, v in cols.items():
            if len(v) != len(ys):  # the example check is known for the first TRAIN_POOL only
                continue
            out["spearman"][f"{kind} {k}"] = float(spearmanr(v, ys).statistic)
            print(f"{kind} {k}: Spearman {out['spearman'][f'{kind} {k}']:+.2f}", flush=True)
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
