"""Exploration (issue 29, not a setting): transductive matching. The images to segment teach
each other: the confident cells of the first 10 held-out images, labelled by today's default
(fused, small parts raised) or by matching alone, join the examples' bank, and every held-out
image is matched again (its own cells left out), then fused with SLiMe's maps or not.

    python benchmarks/pool_explore.py --kind car --seeds 0-4 --out pool-car.jsonl

Kept 1-shot fits (`quality.py --keep-artifacts KEPT`), lab SD v3, examples from world 2, the 50
held-out images of world 3 (quality.py's draw). One JSON line per seed (appended): mIoU of the
default ("fuse-base"), matching alone ("match-base") and each variant, "f"/"m" = pseudo-labels
from the fused / matching scores, "t0.5" = cells whose top score is over 0.5 (one-hot), "soft" =
every cell with its scores; "match-"/"fuse-" = the re-matched votes alone / fused with SLiMe's
maps. Result and verdict: docs/methods.md ("Tried, and not adopted").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.quality import LAB_PRECISION, VARIANTS, parse_seeds  # noqa: E402
from slimeseg import inference  # noqa: E402
from slimeseg.artifact import Learned  # noqa: E402
from slimeseg.matching import MatchBank  # noqa: E402
from slimeseg.metrics import ConfusionMatrix  # noqa: E402
from slimeseg.segmenter import Segmenter  # noqa: E402
from slimeseg.synthetic.world import World  # noqa: E402

POOL = 10  # the held-out images whose cells join the bank
# (name, source, threshold, soft targets)
VARIANTS_POOL = (("f-t0.5", "f", 0.5, False), ("f-t0.3", "f", 0.3, False), ("f-soft", "f", 0.0, True),
                 ("m-t0.5", "m", 0.5, False))


def vote_pooled(bank: MatchBank, q: torch.Tensor, pf: torch.Tensor | None, pt: torch.Tensor | None,
                pid: torch.Tensor | None, me: int, k: int = 10, temp: float = 0.1) -> torch.Tensor:
    """k-NN votes (h*w, K) of one image's unit features q (h*w, C) over the bank's cells and the
    pooled cells pf (M, C) with targets pt (M, K) from images pid (M,), image `me`'s own left out."""
    sim, tgt = q @ bank.features.float().T, bank.targets.float()  # (hw, N), (N, K)
    if pf is not None:
        s2 = q @ pf.T  # (hw, M)
        s2[:, pid == me] = -9
        sim, tgt = torch.cat([sim, s2], 1), torch.cat([tgt, pt])
    top, idx = sim.topk(k, 1)  # (hw, k)
    return ((top / temp).softmax(1)[..., None] * tgt[idx]).sum(1)  # (hw, K)


def miou(preds: list, masks: list, classes: tuple[str, ...]) -> float:
    cm = ConfusionMatrix(len(classes))
    for p, m in zip(preds, masks, strict=True):
        cm.update(p, m)
    return float(cm.result(list(classes)).miou)


@torch.no_grad()
def run_seed(seg: Segmenter, kind: str, seed: int, images: list, masks: list, kept: Path) -> dict:
    classes = World(kind).classes
    n_cls = len(classes)
    learned = Learned.load(kept / f"{kind}-1shot-full-seed{seed}.safetensors")
    cfg = seg._predict_config(learned, None, {**LAB_PRECISION, **VARIANTS["fuse-sp5c64"]})
    t0 = time.time()
    # 1. every held-out image's features and SLiMe maps (one pass, as the default's)
    feats, slimes = [], []
    for i in range(0, len(images), 10):
        x = torch.stack([inference.model_input(im, cfg) for im in images[i:i + 10]])  # (B, 3, h, w)
        s, f, _ = inference._one_pass(seg.sd, x, learned, cfg)
        feats.append(f)
        slimes.append(s)
    feats, slimes = torch.cat(feats), torch.cat(slimes).float()  # (N, C, h, w), (N, K, h, w)
    bank = inference.match_bank(seg.sd, learned, cfg.replace(method="match"))
    b, c, h, w = feats.shape
    q = bank.standardise(feats)  # (N, h*w, C)
    base = torch.stack([vote_pooled(bank, q[i], None, None, None, i) for i in range(b)])  # (N, hw, K)
    base = base.transpose(1, 2).reshape(b, n_cls, h, w)  # (N, K, h, w)
    res: dict = {"kind": kind, "seed": seed}

    def score(votes: torch.Tensor, name: str) -> None:
        sc = inference.small_part_boost(votes, learned, cfg)
        res[f"match-{name}"] = miou([inference.labels_for(sc[i], images[i], cfg) for i in range(b)], masks, classes)
        fz = inference.small_part_boost(inference.fuse(slimes, votes, cfg), learned, cfg)
        res[f"fuse-{name}"] = miou([inference.labels_for(fz[i], images[i], cfg) for i in range(b)], masks, classes)

    score(base, "base")
    sources = {"f": inference.small_part_boost(inference.fuse(slimes, base, cfg), learned, cfg),
               "m": inference.small_part_boost(base, learned, cfg)}  # (N, K, h, w) each
    # 2. the pool's confident cells join the bank; every image is matched again
    for name, source, tau, soft in VARIANTS_POOL:
        src = sources[source]
        conf, lab = src.max(1)  # (N, h, w)
        sel = (conf[:POOL] > tau).flatten()  # (POOL*hw,)
        pf = q[:POOL].reshape(-1, c)[sel]  # (M, C)
        pt = (src[:POOL].permute(0, 2, 3, 1).reshape(-1, n_cls)[sel] if soft
              else F.one_hot(lab[:POOL].flatten()[sel], n_cls).float())  # (M, K)
        pid = torch.arange(POOL).repeat_interleave(h * w)[sel]  # (M,)
        v = torch.stack([vote_pooled(bank, q[i], pf, pt, pid, i) for i in range(b)])  # (N, hw, K)
        score(v.transpose(1, 2).reshape(b, n_cls, h, w), name)
    res["seconds"] = time.time() - t0
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="car")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--out", required=True, help="JSON lines, one per seed, appended")
    p.add_argument("--kept", default="/tmp/exp/runs/kept", help="quality.py's --keep-artifacts folder")
    p.add_argument("--model", default="tests/assets/lab-sd")
    args = p.parse_args()
    torch.set_num_threads(1)
    seg = Segmenter.from_pretrained(args.model, device="cpu")
    test = [World(args.kind, size=256, seed=3).sample(i) for i in range(50)]
    images, masks = [s.image for s in test], [s.mask for s in test]
    for seed in parse_seeds(args.seeds):
        res = run_seed(seg, args.kind, seed, images, masks, Path(args.kept))
        print(json.dumps(res), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
