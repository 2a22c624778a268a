"""A full 1-shot fit and batched-inference throughput on the full-size (random-weight) SD.

    python benchmarks/fit_throughput.py --device cuda --steps 200 --images 64 --batch 8

Model building is excluded from every timing. The fit is `Segmenter.fit` with the default
settings (augmentation on: a fresh augmented crop is VAE-encoded every step), 1 training pair.
Throughput is `predict_batch` over `--images` copies-with-variation of a scene, after one
warm-up batch, in images/s. Prints JSON (and writes it with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/
from bench import sync  # noqa: E402

from lab.fullsize import load_model  # noqa: E402
from slimeseg.errors import TrainingError  # noqa: E402
from slimeseg.models import pick_device, pick_dtype  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="full", choices=["tiny", "full"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--images", type=int, default=64, help="images for the throughput test")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    seg = load_model(args.model, device, dtype, num_classes=len(SHAPE_CLASSES))
    image, mask = shapes_scene(0, args.size)
    out: dict = {"model": args.model, "device": str(device), "dtype": str(dtype), "size": args.size, "torch": torch.__version__}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)

    sync(device)
    start = time.perf_counter()
    try:
        learned = seg.fit([image], [mask], SHAPE_CLASSES, steps=args.steps, image_size=args.size, method="slime", upsample="bilinear",
                          progress=False)
        error = None
    except TrainingError as exc:  # random weights in fp16 may overflow; report, go on
        learned, error = seg.learned, str(exc)
    sync(device)
    fit_s = time.perf_counter() - start
    done = max(int(learned.history.get("steps_done", 0)), 1)
    out["fit"] = {"steps": done, "total_s": fit_s, "s_per_step": fit_s / done,
                  "final_loss": (learned.history["loss"] or [None])[-1], "error": error}
    if device.type == "cuda":
        out["fit"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
        torch.cuda.reset_peak_memory_stats(device)

    images = [shapes_scene(i, args.size)[0] for i in range(args.images)]
    seg.predict_batch(images[:args.batch], learned, batch_size=args.batch)  # warm-up
    sync(device)
    start = time.perf_counter()
    labels = seg.predict_batch(images, learned, batch_size=args.batch)
    sync(device)
    infer_s = time.perf_counter() - start
    out["inference"] = {"images": len(labels), "batch": args.batch, "total_s": infer_s,
                        "images_per_s": len(labels) / infer_s}
    if device.type == "cuda":
        out["inference"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
