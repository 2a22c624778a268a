"""A ceiling for SLiMe on the lab world: a per-pixel linear classifier on the lab SD's UNet features.

What the model's features allow with plenty of labels: the outputs of every UNet up block for an
image noised at t = 100 (SLiMe's test timestep; one fixed noise, the empty prompt), bilinearly
resized to the latent grid and concatenated, standardised, then one linear layer (a 1x1 conv)
trained with cross-entropy (Adam, a few epochs) on `n_train` labelled images of the training
world. Targets are each latent cell's class fractions; at test time the logits are resized
bilinearly to the image and argmax-ed, and scored like SLiMe's rows (accumulated confusion
matrix on the same held-out images). The class weighting of the loss (none, 1/sqrt(frequency),
1/frequency) is chosen on a tenth of the training images held back, then the classifier is
retrained on all of them.

    python -m lab.ceiling --kinds car,face --threads 1 --json ceiling.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slimeseg import Segmenter
from slimeseg.metrics import ConfusionMatrix
from slimeseg.models import StableDiffusion
from slimeseg.synthetic import World
from slimeseg.writers import write_json

ROOT = Path(__file__).resolve().parents[1]
LAB_MODEL = ROOT / "tests" / "assets" / "lab-sd"
TRAIN_WORLD_SEED, TEST_WORLD_SEED = 0, 1  # as lab.quality: train on one world seed, test on another
WEIGHTINGS = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}  # class weight = frequency ** -power


@torch.no_grad()
def unet_features(sd: StableDiffusion, images: Sequence[np.ndarray], size: int, t: int = 100, seed: int = 0,
                  batch: int = 8) -> torch.Tensor:
    """(N, C, h, w) float16: the up blocks' outputs at the latent grid, for images resized to size."""
    from slimeseg.config import SlimeConfig
    from slimeseg.inference import model_input

    _Cfg = SlimeConfig(image_size=size, aspect="squash")  # noqa: N806 (square inputs, as v1 trained)

    context = sd.encode_prompt("")  # (1, 77, D): the unconditional prompt
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in sd.unet.up_blocks]
    hw = (size // 8, size // 8)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((4, *hw), generator=gen)
    feats = []
    try:
        for i in range(0, len(images), batch):
            x = torch.stack([model_input(im, _Cfg) for im in images[i : i + batch]])
            latents = sd.encode_image(x)
            n = latents.shape[0]
            outputs.clear()
            tt = torch.full((n,), t, dtype=torch.long, device=sd.device)
            sd.denoise(latents, noise.expand_as(latents), tt, context.expand(n, -1, -1))
            f = torch.cat([F.interpolate(o.float(), size=hw, mode="bilinear", align_corners=False) for o in outputs], 1)
            feats.append(f.to(torch.float16))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(feats)


def soft_targets(masks: Sequence[np.ndarray], n_classes: int, hw: tuple[int, int]) -> torch.Tensor:
    """(N, K, h, w): the fraction of each latent cell's pixels in each class."""
    out = []
    for m in masks:
        onehot = F.one_hot(torch.from_numpy(m.astype(np.int64)), n_classes).permute(2, 0, 1).float()
        out.append(F.adaptive_avg_pool2d(onehot[None], hw)[0])
    return torch.stack(out)


def train_linear(feats: torch.Tensor, targets: torch.Tensor, power: float, epochs: int = 8, batch: int = 8192,
                 lr: float = 1e-2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear classifier over standardised per-pixel features: (weight, bias, mean, std)."""
    c, k = feats.shape[1], targets.shape[1]
    x = feats.permute(0, 2, 3, 1).reshape(-1, c).float()
    y = targets.permute(0, 2, 3, 1).reshape(-1, k)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-4)
    x = (x - mean) / std
    freq = y.mean(0).clamp_min(1e-6)
    weight = freq ** -power
    weight = weight / (weight * freq).sum()  # the average pixel keeps weight 1
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(c, k)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            j = order[i : i + batch]
            logp = F.log_softmax(layer(x[j]), 1)
            loss = -(y[j] * weight * logp).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return layer.weight.detach(), layer.bias.detach(), mean, std


def predict(feats: torch.Tensor, model: tuple[torch.Tensor, ...], out_hw: tuple[int, int],
            batch: int = 16) -> list[np.ndarray]:
    """Label maps at out_hw: logits at the latent grid, resized bilinearly, argmax."""
    w, b, mean, std = model
    labels = []
    for i in range(0, len(feats), batch):
        f = (feats[i : i + batch].float() - mean[None, :, None, None]) / std[None, :, None, None]
        logits = torch.einsum("nchw,kc->nkhw", f, w) + b[None, :, None, None]
        logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
        labels += list(logits.argmax(1).to(torch.uint8).numpy())
    return labels


def score(preds: Sequence[np.ndarray], masks: Sequence[np.ndarray], classes: Sequence[str]) -> tuple[float, dict]:
    cm = ConfusionMatrix(len(classes))
    for p, m in zip(preds, masks, strict=True):
        cm.update(p, m)
    res = cm.result(list(classes))
    return float(res.miou), dict(res.per_class)


def ceiling(sd: StableDiffusion, kind: str, test_images: Sequence[np.ndarray], test_masks: Sequence[np.ndarray],
            size: int = 256, n_train: int = 500, seed: int = 0,
            log: Callable[[str], None] = lambda s: None) -> dict:
    """Fit the linear ceiling on n_train images of World(kind, size, TRAIN_WORLD_SEED); score it on
    the given held-out images (masks at the images' own size)."""
    t0, c0 = time.perf_counter(), time.process_time()
    world = World(kind, size, TRAIN_WORLD_SEED)
    classes = world.classes
    train = [world.sample(i) for i in range(n_train)]
    t_render = time.perf_counter() - t0
    feats = unet_features(sd, [s.image for s in train], size, seed=seed)
    hw = tuple(feats.shape[-2:])
    targets = soft_targets([s.mask for s in train], len(classes), hw)
    t_feat = time.perf_counter() - t0 - t_render
    log(f"{kind}: {n_train} training images rendered in {t_render:.0f} s, features {tuple(feats.shape)} in {t_feat:.0f} s")

    n_val = max(1, n_train // 10)  # choose the class weighting on held-back training images
    val_masks = [s.mask for s in train[-n_val:]]
    choice = {}
    for name, power in WEIGHTINGS.items():
        model = train_linear(feats[:-n_val], targets[:-n_val], power, seed=seed)
        choice[name] = score(predict(feats[-n_val:], model, (size, size)), val_masks, classes)[0]
    best = max(choice, key=choice.get)
    model = train_linear(feats, targets, WEIGHTINGS[best], seed=seed)
    test_feats = unet_features(sd, list(test_images), size, seed=seed)
    preds = [p if p.shape == m.shape else np.asarray(
        F.interpolate(torch.from_numpy(p)[None, None].float(), size=m.shape, mode="nearest")[0, 0].to(torch.uint8))
        for p, m in zip(predict(test_feats, model, (size, size)), test_masks, strict=True)]
    miou, per_class = score(preds, test_masks, classes)
    out = {"kind": kind, "miou": miou, "per_class": per_class, "n_train": n_train, "test_images": len(test_images),
           "weighting": best, "weighting_val_miou": choice, "features": int(feats.shape[1]),
           "latent": list(hw), "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    log(f"{kind}: ceiling mIoU {100 * miou:.1f} (weighting {best}; validation "
        + ", ".join(f"{k} {100 * v:.1f}" for k, v in choice.items())
        + f") in {out['seconds']:.0f} s ({out['cpu_seconds']:.0f} s CPU)")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(LAB_MODEL))
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--train", type=int, default=500, help="labelled training images per kind")
    p.add_argument("--test", type=int, default=50, help="held-out images per kind (world seed 1)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    seg = Segmenter.from_pretrained(a.model, device="cpu")
    results = {}
    for kind in a.kinds.split(","):
        test = [World(kind, a.size, TEST_WORLD_SEED).sample(i) for i in range(a.test)]
        r = ceiling(seg.sd, kind, [s.image for s in test], [s.mask for s in test], a.size, a.train,
                    log=lambda s: print(s, flush=True))
        results[kind] = r
        print(f"{kind} ceiling mIoU {100 * r['miou']:.1f}: "
              + ", ".join(f"{c} {100 * v:.1f}" for c, v in r["per_class"].items() if v is not None))
    report = {"benchmark": "lab ceiling (linear probe on UNet up-block features)", "model": a.model,
              "size": a.size, "threads": torch.get_num_threads(), "results": results}
    if a.json:
        write_json(a.json, report)
    return report


if __name__ == "__main__":
    main()
