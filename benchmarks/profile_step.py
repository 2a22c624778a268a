"""Profile one `Segmenter.fit` step (and one predict) with torch.profiler: where does time go?

    python benchmarks/profile_step.py --model full --size 256 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/
from lab.fullsize import load_model  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="full", choices=["tiny", "full"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--trace", default=None, help="write a chrome trace here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    image, mask = shapes_scene(0, args.size)
    seg = load_model(args.model, args.device, num_classes=len(SHAPE_CLASSES))
    kw = {"image_size": args.size, "augment": False, "progress": False, "method": "slime", "upsample": "bilinear"}
    seg.fit([image], [mask], SHAPE_CLASSES, steps=1, **kw)  # warm-up
    acts = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        with torch.profiler.record_function("fit_1_step"):
            learned = seg.fit([image], [mask], SHAPE_CLASSES, steps=1, **kw)
        with torch.profiler.record_function("predict"):
            seg.predict(image, learned)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
