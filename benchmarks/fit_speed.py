"""Fit speed settings (issue 28) timed on the full-size SD (random weights) at 512 px.

    python benchmarks/fit_speed.py --dtype float32,bfloat16 --threads 1 --repeats 3 \
        --json benchmarks/results-fit-speed.json

For each dtype and each row of --rows (a name -> SlimeConfig settings, see ROWS), a 1-shot fit
of `warmup + repeats + 1` steps with `Segmenter.fit` (augmentation on, as by default: without
cached views a fresh view is VAE-encoded every step); a step's time is the gap between two
per-step callbacks, so the first step (which also builds the view pool) is never timed. The
pool's cost is timed on its own (`training.view_pool`, `--pool` views of one example, encoded
VIEW_BATCH at a time) and reported per view. Medians of CPU seconds on one thread (as bench.py:
free of waiting for a core on a shared machine; the JSON also has wall seconds); the "default"
row is today's default, the in-run baseline of the ratios. --whole times whole fits (the view
pool included). Model building is excluded from every timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

import bench  # noqa: E402
from bench import now, summary, sync  # noqa: E402

from lab.fullsize import add_timing_arguments, load_model  # noqa: E402
from slimeseg import SlimeConfig  # noqa: E402
from slimeseg.errors import TrainingError  # noqa: E402
from slimeseg.examples import prepare_examples  # noqa: E402
from slimeseg.models import pick_device, pick_dtype  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402
from slimeseg.training import TrainingJob, view_pool  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

# what each row changes from the defaults (the fit reads SLiMe's maps; inference is not timed here)
# (a step's time does not depend on the pool's size: 4 views keep the untimed first step short)
ROWS: dict[str, dict[str, Any]] = {
    "default": {},
    "pool": {"view_pool": 4},
    "pool+local": {"view_pool": 4, "gradients": "local"},
}
# whole fits (--whole NAME=SETTINGS, e.g. c2f-200=view_pool:16,gradients:local,coarse_size:256)


def parse_settings(text: str) -> dict[str, Any]:
    """"view_pool:16,gradients:local" -> SlimeConfig settings (ints where they parse)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, value = item.split(":")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def time_fit(seg: Any, image: Any, mask: Any, settings: dict[str, Any], size: int, repeats: int,
             warmup: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each timed step of a short fit with `settings`."""
    stamps: list[tuple[float, float]] = []

    def on_step(step: int, total: int, losses: dict[str, float]) -> None:
        sync(seg.sd.device)
        stamps.append(now())

    seg.fit([image], [mask], SHAPE_CLASSES, steps=warmup + repeats + 1, image_size=size, progress=False,
            callback=on_step, **settings)
    gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]
    return gaps[warmup:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(p, ROWS)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--pool", type=int, default=4, help="views whose encoding is timed (per-view cost)")
    p.add_argument("--whole", action="append", default=[], metavar="NAME=SETTINGS",
                   help="also time a whole fit (pool included) with these settings, e.g. "
                        "fast=view_pool:16,gradients:local,steps:200 (repeatable)")
    p.add_argument("--no-rows", action="store_true", help="only the --whole fits")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # the table's clock: CPU seconds on one thread (free of waiting for a core on a shared
    # machine, as bench.py), wall otherwise; the JSON has both
    bench.CLOCK = "cpu" if args.threads == 1 and args.device == "cpu" else "wall"
    device = pick_device(args.device)
    image, mask = shapes_scene(0, args.size)
    out: dict[str, Any] = {"benchmark": "slimeseg fit speed settings, full-size SD (random weights)",
                           "model": args.model, "device": str(device), "size": args.size, "threads": args.threads, "torch": torch.__version__,
                           "repeats": args.repeats, "warmup": args.warmup, "clock": bench.CLOCK, "rows": ROWS,
                           "results": []}
    for dtype_name in args.dtype.split(","):
        dtype = pick_dtype(dtype_name, device)
        seg = load_model(args.model, device, dtype, num_classes=len(SHAPE_CLASSES))
        res: dict[str, Any] = {"dtype": dtype_name, "step_s": {}, "whole_fit_s": {}}
        for spec in args.whole:  # 1. whole fits, wall seconds (the view pool's encoding included)
            name, _, text = spec.partition("=")
            settings = parse_settings(text)
            w0, c0 = now()
            learned = seg.fit([image], [mask], SHAPE_CLASSES, image_size=args.size, progress=False, **settings)
            sync(device)
            w1, c1 = now()
            res["whole_fit_s"][name] = {"settings": settings, "wall_s": w1 - w0, "cpu_s": c1 - c0,
                                        "steps": learned.history["steps_done"]}
            print(f"[{dtype_name}] whole fit {name} {settings}: wall {w1 - w0:.1f} s, CPU {c1 - c0:.1f} s",
                  flush=True)
        if args.no_rows:
            out["results"].append(res)
            continue
        # 2. the view pool's encoding, per view
        cfg = SlimeConfig(image_size=args.size, view_pool=args.pool)
        job = TrainingJob.create(seg.sd, prepare_examples([image], [mask], SHAPE_CLASSES), SHAPE_CLASSES, cfg)
        w0, c0 = now()
        view_pool(job)
        sync(device)
        w1, c1 = now()
        res["pool_encode_per_view_s"] = {"wall": (w1 - w0) / args.pool, "cpu": (c1 - c0) / args.pool}
        print(f"[{dtype_name}] pool: {res['pool_encode_per_view_s']} s per view", flush=True)
        for row in args.rows.split(","):  # 3. a step of each row
            try:
                times = time_fit(seg, image, mask, ROWS[row], args.size, args.repeats, args.warmup)
            except TrainingError as exc:  # random weights in float16 may overflow: say so, go on
                res["step_s"][row] = {"error": str(exc)}
                print(f"[{dtype_name}] {row}: fit stopped: {exc}", file=sys.stderr, flush=True)
                continue
            res["step_s"][row] = summary(times)
            print(f"[{dtype_name}] {row}: {res['step_s'][row]['median']:.2f} s per step "
                  f"({bench.CLOCK}; {res['step_s'][row]})", flush=True)
        base = res["step_s"].get("default", {}).get("median")
        if base:
            res["ratio_to_default"] = {r: v["median"] / base for r, v in res["step_s"].items() if "median" in v}
        out["results"].append(res)
        del seg
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
