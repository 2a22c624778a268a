"""Cost of candidate lab-SD configurations: parameters, asset size, UNet training step, SLiMe fit step.

Every later quality benchmark pays the SLiMe fit step, the lab-SD training pays the UNet step;
this measures both for configurations of `lab.train_model` before committing hours of CPU to one.
Weights are untrained (speed does not depend on them). CPU seconds (process time) at the thread
count given, so a busy machine inflates the figures less than wall time would.

    python benchmarks/lab_pilot.py --threads 1 --json benchmarks/results-lab-pilot.json
    python benchmarks/lab_pilot.py --configs v1,v1-320 --fit-steps 4,12
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from diffusers import StableDiffusionPipeline  # noqa: E402

from lab.train_model import (  # noqa: E402
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    denoiser_optimizer,
    denoiser_step,
    tokenize,
)
from slimeseg import Segmenter, SlimeConfig  # noqa: E402
from slimeseg.synthetic import World, caption_vocabulary  # noqa: E402
from slimeseg.synthetic.tokenizer import build_tokenizer  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

# name: (size, UNet widths, heads per block, layers per block)
CONFIGS = {
    "v1": (256, (32, 64, 64, 64), (2, 4, 4, 4), 1),
    "v1-heads8": (256, (32, 64, 64, 64), (4, 8, 8, 8), 1),
    "mid": (256, (48, 96, 96, 96), (4, 8, 8, 8), 1),
    "mid-h2": (256, (48, 96, 96, 96), (2, 4, 4, 4), 1),
    "wide": (256, (64, 128, 128, 128), (4, 8, 8, 8), 1),
    "v1-lpb2": (256, (32, 64, 64, 64), (2, 4, 4, 4), 2),
    "v1-320": (320, (32, 64, 64, 64), (2, 4, 4, 4), 1),
    "mid-320": (320, (48, 96, 96, 96), (4, 8, 8, 8), 1),
    "mid-h2-320": (320, (48, 96, 96, 96), (2, 4, 4, 4), 1),
    "v1-384": (384, (32, 64, 64, 64), (2, 4, 4, 4), 1),
}


def _cpu(fn, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def measure(name: str, steps: int, fit_steps: tuple[int, int], folder: Path) -> dict:
    size, channels, heads, lpb = CONFIGS[name]
    torch.manual_seed(0)
    tokenizer = build_tokenizer(caption_vocabulary(2))
    text = build_text_encoder(tokenizer)
    unet = build_unet(size, 10.0, channels, heads, lpb)
    vae = build_vae(size)
    sched = build_scheduler()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = folder / name
    pipe.save_pretrained(out)
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6

    # UNet + text encoder training step, batch 8, as lab.train_model runs it
    n_lat = 64
    lat = (torch.randn(n_lat, 4, size // 8, size // 8), torch.full((n_lat, 4, size // 8, size // 8), 0.05))
    ids = tokenize(tokenizer, [World("car", 64, 0).sample(0).caption] * n_lat)
    empty = tokenize(tokenizer, [""])[0]
    opt = denoiser_optimizer(list(unet.parameters()) + list(text.parameters()))
    gen = torch.Generator().manual_seed(0)
    unet.train()
    text.train()
    k = iter(range(10 ** 6))
    step = lambda: denoiser_step(unet, text, opt, ids, empty, lat, sched, next(k), 1000, gen)  # noqa: E731
    step()  # warm-up
    unet_s = _cpu(step, steps)

    # SLiMe fit step: Segmenter.fit at image_size = model size, the quality benchmark's settings
    seg = Segmenter.from_pretrained(str(out), device="cpu")
    sample = World("car", size, 0).sample(0)
    cfg = SlimeConfig(image_size=size, seed=0, min_crop_ratio=0.6, rotate_degrees=30.0)
    times = []
    for n in fit_steps:
        t0 = time.process_time()
        seg.fit([sample.image], [sample.mask], list(World("car").classes), cfg, steps=n, progress=False)
        times.append(time.process_time() - t0)
    fit_s = (times[1] - times[0]) / (fit_steps[1] - fit_steps[0])
    # inference: one image through predict_batch (what scoring 50 held-out images pays per image)
    imgs = [World("car", size, 1).sample(i).image for i in range(8)]
    seg.predict_batch(imgs[:2], batch_size=8)
    t0 = time.process_time()
    seg.predict_batch(imgs, batch_size=8)
    predict_s = (time.process_time() - t0) / len(imgs)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_all = n_unet + sum(p.numel() for p in text.parameters()) + sum(p.numel() for p in vae.parameters())
    return {"config": name, "size": size, "unet_channels": channels, "heads": heads, "layers_per_block": lpb,
            "unet_params_m": round(n_unet / 1e6, 3), "all_params_m": round(n_all / 1e6, 3),
            "asset_mb": round(mb, 2), "unet_train_step_s": round(unet_s, 3), "slime_fit_step_s": round(fit_s, 4),
            "predict_image_s": round(predict_s, 4)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {', '.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=4, help="timed UNet training steps (after one warm-up)")
    p.add_argument("--fit-steps", default="4,14", help="two fit lengths; their time difference / step gap")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    fit_steps = tuple(int(x) for x in a.fit_steps.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.configs.split(","):
            row = measure(name, a.steps, fit_steps, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'config':<10} {'size':>4} {'UNet M':>7} {'all M':>6} {'MB':>6} {'s/UNet step':>11} "
          f"{'s/fit step':>10} {'s/image':>8}")
    for r in rows:
        print(f"{r['config']:<10} {r['size']:>4} {r['unet_params_m']:>7.2f} {r['all_params_m']:>6.2f} "
              f"{r['asset_mb']:>6.1f} {r['unet_train_step_s']:>11.3f} {r['slime_fit_step_s']:>10.4f} "
              f"{r['predict_image_s']:>8.4f}")
    if a.json:
        write_json(a.json, {"benchmark": "lab SD pilot", "threads": a.threads, "rows": rows,
                            "torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine()})
    return rows


if __name__ == "__main__":
    main()
