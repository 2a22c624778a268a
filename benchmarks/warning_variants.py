"""Other candidates for the poor-example warning, ranked against held-out mIoU (lab SD, unseen worlds).

For each of the TRAIN_POOL examples of a kind (world 2), 1-shot matching:
- `--what copies`: matching re-finding the example's parts in 6 copies of it that are rescaled
  (`zoom`), hue-rotated (`hue`) or both (`augment.bank_view`), as `inference.example_check` does
  with the training augmentation; from the example alone.
- `--what confidence`: matching's mean certainty (1 - normalised entropy, and the mean top
  vote) on the held-out images themselves (unlabelled, so a warning at segment time could use it).
Spearman's rank correlation with the held-out mIoU of `results-warning-lab-v3.json` (copies) or
measured here (confidence, 30 images of world 3).

    python benchmarks/warning_variants.py --what copies --json benchmarks/results-warning-lab-v3-variants.json
    python benchmarks/warning_variants.py --what confidence --json benchmarks/results-warning-lab-v3-confidence.json
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

from lab.quality import LAB_MODEL, TRAIN_POOL, UNSEEN_WORLDS  # noqa: E402
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


def main(argv: list[str] | None = None) -> dict:
    from scipy.stats import spearmanr

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("copies", "confidence"), default="copies")
    p.add_argument("--test", type=int, default=30, help="held-out images per kind (confidence)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    seg = Segmenter.from_pretrained(str(LAB_MODEL), device="cpu")
    size = 8 * int(seg.sd.unet.config.sample_size)
    held = json.loads(HELD_OUT.read_text())["examples"]
    out: dict = {"what": a.what, "examples": {}, "spearman": {}}
    for kind in ("car", "face"):
        world = World(kind, size=size, seed=UNSEEN_WORLDS[0])
        test = [World(kind, size=size, seed=UNSEEN_WORLDS[1]).sample(i) for i in range(a.test)]
        cols: dict[str, list[float]] = {}
        ys = []
        for i in range(TRAIN_POOL):
            s = world.sample(i)
            cfg = SlimeConfig(image_size=size, method="match", upsample="bilinear",
                              match_mirror=a.what == "confidence")
            learned = seg.match([s.image], [s.mask], list(world.classes), cfg)
            row: dict[str, float] = {}
            if a.what == "copies":
                row = {m: copies_check(seg, learned, m) for m in ("zoom", "hue", "both")}
                y = held[f"{kind}/{i}"]["match_miou"]
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
        for k, v in cols.items():
            out["spearman"][f"{kind} {k}"] = float(spearmanr(v, ys).statistic)
            print(f"{kind} {k}: Spearman {out['spearman'][f'{kind} {k}']:+.2f}", flush=True)
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
