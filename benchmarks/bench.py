"""Benchmark slimeseg's engine against a reference-style baseline and the bare-UNet floor.

    python benchmarks/bench.py --quick --json benchmarks/results-quick.json
    python benchmarks/bench.py --device cuda --json benchmarks/results-cuda.json

For each model (the tiny test SD, and a full-size SD 2.1-base-shaped UNet with random weights;
see fullsize.py) it times, as the median of --repeats runs after warm-up:
- step: one optimisation step as `Segmenter.fit` runs it (augmentation off, so latents are
  cached and the VAE encode is EXCLUDED; times are the gaps between fit's per-step callbacks);
  `encode` is the VAE encode alone and `step+encode` their sum (what a step with augmentation
  costs, augmentation itself aside);
- infer: one segmented image with `Segmenter.predict` (resize, VAE encode, UNet, maps, argmax);
- batch: `predict_batch` throughput in images/s;
- peak memory of each phase: peak RSS on CPU (VmHWM from /proc, reset through clear_refs),
  torch.cuda.max_memory_allocated on CUDA.
Each figure is "ours / baseline" from this one process. The floor is a bare UNet forward +
backward to the context (and a no-grad forward) with diffusers' default fused attention and no
maps captured, on the same inputs. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/
from lab.baseline import Baseline  # noqa: E402
from lab.fullsize import load_model  # noqa: E402
from slimeseg.errors import TrainingError  # noqa: E402
from slimeseg.examples import image_tensor  # noqa: E402
from slimeseg.losses import ldm_loss  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

GiB = 1024 ** 3


# ---------------------------------------------------------------------------- measuring
class Memory:
    """Peak memory of a phase: RSS high-water mark on CPU, max allocated on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # hand freed heap back to the OS, then restart the high-water mark
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GiB
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GiB
        return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = "wall"  # which clock the table's medians use: "wall" or "cpu" (set from --clock)


def now() -> tuple[float, float]:
    """(wall, process CPU) seconds. With one torch thread on a shared machine, CPU time is the
    work done, free of the time spent waiting for a core."""
    return time.perf_counter(), time.process_time()


def timed(fn: Callable[[], Any], repeats: int, warmup: int,
          device: torch.device) -> list[tuple[float, float]]:
    """(wall, CPU) times of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        w0, c0 = now()
        fn()
        sync(device)
        w1, c1 = now()
        times.append((w1 - w0, c1 - c0))
    return times


def summary(times: list[tuple[float, float]]) -> dict[str, Any]:
    """Medians of both clocks; `median` is the one the table uses (CLOCK)."""
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    return {"median": cpu if CLOCK == "cpu" else wall, "wall_median": wall, "cpu_median": cpu,
            "wall_runs": [round(t[0], 4) for t in times], "cpu_runs": [round(t[1], 4) for t in times]}


# ---------------------------------------------------------------------------- one model
def bench_model(name: str, size: int, device: torch.device, dtype: torch.dtype | None,
                repeats: int, baseline_repeats: int, warmup: int, batch: int,
                skip_baseline: bool = False) -> dict[str, Any]:
    """All figures for one model at one image size."""
    mem = Memory(device)
    classes = SHAPE_CLASSES
    k = len(classes)
    image, mask = shapes_scene(0, size)
    t0 = time.perf_counter()
    seg = load_model(name, device, dtype, num_classes=k)
    sd = seg.sd
    load_s = time.perf_counter() - t0
    res: dict[str, Any] = {"model": name, "size": size, "latent": size // 8, "load_s": load_s,
                           "dtype": str(sd.dtype).replace("torch.", ""),
                           "params_M": sum(p.numel() for p in sd.unet.parameters()) / 1e6}
    hw = (size // 8, size // 8)
    x = image_tensor(image)
    mask_lo = F.interpolate(torch.from_numpy(mask).long()[None, None].float(), size=hw,
                            mode="nearest")[0, 0].long().to(device)
    base = sd.encode_prompt(" ".join(["part"] * k)).to(device)  # (1, 77, D)
    uncond = sd.encode_prompt("").to(device)

    # -- VAE encode alone
    mem.reset()
    res["encode_s"] = summary(timed(lambda: sd.encode_image(x[None]), repeats, warmup, device))
    latents = sd.encode_image(x[None])
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([50], device=device)
    noise = torch.randn(latents.shape, generator=gen).to(latents)
    noisy = sd.add_noise(latents, noise, t)

    # -- the floor: bare UNet, default fused attention, no maps
    # diffusers' default processor on torch 2 (fused SDPA). Not `set_default_attn_processor()`:
    # that installs the classic explicit-softmax `AttnProcessor`, a slower, inflated floor.
    sd.unet.set_attn_processor(AttnProcessor2_0())

    def floor_step() -> None:
        ctx = base.clone().to(sd.dtype).requires_grad_(True)
        loss = ldm_loss(sd.unet(noisy, t, encoder_hidden_states=ctx).sample, noise)
        loss.backward()

    def floor_forward() -> None:
        with torch.no_grad():
            sd.unet(noisy, t, encoder_hidden_states=base.to(sd.dtype))

    mem.reset()
    res["floor_step_s"] = summary(timed(floor_step, repeats, warmup, device))
    res["floor_step_peak_gib"] = mem.peak_gib()
    mem.reset()
    res["floor_forward_s"] = summary(timed(floor_forward, repeats, warmup, device))
    res["floor_forward_peak_gib"] = mem.peak_gib()

    # -- ours: Segmenter.fit, timed between its per-step callbacks
    stamps: list[tuple[float, float]] = []

    def on_step(step: int, total: int, losses: dict[str, float]) -> None:
        sync(device)
        stamps.append(now())

    mem.reset()
    try:
        learned = seg.fit([image], [mask], classes, steps=warmup + repeats + 1, augment=False, method="slime", upsample="bilinear",
                          image_size=size, progress=False, callback=on_step)
    except TrainingError as exc:  # random weights in fp16 may overflow: keep the timings so far
        res["ours_fit_error"] = str(exc)
        learned = seg.learned
        print(f"[bench] {name}: fit stopped: {exc}", file=sys.stderr)
    if len(stamps) < 2:
        raise RuntimeError(f"{name}: fit ran {len(stamps)} step(s); cannot time a step")
    res["ours_step_peak_gib"] = mem.peak_gib()
    gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]
    res["ours_step_s"] = summary(gaps[warmup:])
    mem.reset()
    res["ours_infer_s"] = summary(timed(lambda: seg.predict(image, learned), repeats, warmup, device))
    res["ours_infer_peak_gib"] = mem.peak_gib()
    if batch > 1:
        images = [image] * batch
        mem.reset()
        times = timed(lambda: seg.predict_batch(images, learned, batch_size=batch), max(1, repeats // 2),
                      1, device)
        sm = summary(times)
        res["ours_batch"] = {"batch": batch, "images_per_s": batch / sm["median"], **sm,
                             "peak_gib": mem.peak_gib()}

    # -- the baseline: reference-style computation, float32, on the same model
    if not skip_baseline:
        bl_sd = sd
        if sd.dtype != torch.float32:  # the baseline is float32: a second copy of the model
            del seg
            gc.collect()
            bl_sd = load_model(name, device, torch.float32, num_classes=k).sd
        bl = Baseline(bl_sd, k, uncond.to(bl_sd.dtype))
        trainable = base[0, 1:k].clone().float().requires_grad_(True)
        optimizer = torch.optim.Adam([trainable], lr=0.1)
        bgen = torch.Generator().manual_seed(0)
        lat32 = latents.to(bl_sd.dtype)
        mem.reset()
        res["baseline_step_s"] = summary(timed(
            lambda: bl.step(lat32, mask_lo, trainable, base.to(bl_sd.dtype), optimizer, bgen),
            baseline_repeats, 1, device))
        res["baseline_step_peak_gib"] = mem.peak_gib()
        ctx = learned.context[None].to(device, bl_sd.dtype)
        mem.reset()
        res["baseline_infer_s"] = summary(timed(lambda: bl.predict(x, ctx), baseline_repeats, 1, device))
        res["baseline_infer_peak_gib"] = mem.peak_gib()
    return res


# ---------------------------------------------------------------------------- report
def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def fmt(v: float | None) -> str:
    return f"{v:9.3f}" if v is not None else f"{'-':>9}"


def table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: ours, baseline, ours/baseline, floor, ours/floor per figure."""
    lines = [f"{'model':<10} {'px':>4} {'figure':<18} {'ours':>9} {'baseline':>9} {'o/b':>6} "
             f"{'floor':>9} {'o/f':>6}"]

    def med(r: dict, key: str) -> float | None:
        v = r.get(key)
        return v["median"] if isinstance(v, dict) else v

    for r in results:
        enc = med(r, "encode_s")
        dt = {"float32": "", "bfloat16": " bf16", "float16": " fp16"}.get(r["dtype"], " " + r["dtype"])
        rows = [
            ("step s", med(r, "ours_step_s"), med(r, "baseline_step_s"), med(r, "floor_step_s")),
            ("step+encode s", med(r, "ours_step_s") + enc,
             (med(r, "baseline_step_s") or 0) + enc if "baseline_step_s" in r else None,
             med(r, "floor_step_s") + enc),
            ("infer s/image", med(r, "ours_infer_s"), med(r, "baseline_infer_s"),
             med(r, "floor_forward_s")),
            ("step peak GiB", r["ours_step_peak_gib"], r.get("baseline_step_peak_gib"),
             r["floor_step_peak_gib"]),
            ("infer peak GiB", r["ours_infer_peak_gib"], r.get("baseline_infer_peak_gib"),
             r["floor_forward_peak_gib"]),
        ]
        if "ours_batch" in r:
            b = r["ours_batch"]
            rows.append((f"batch{b['batch']} img/s", b["images_per_s"], None, None))
        rows.append(("encode s", enc, None, None))
        for label, ours, base, floor in rows:
            lines.append(f"{r['model'] + dt:<10} {r['size']:>4} {label:<18} {fmt(ours)} {fmt(base)} "
                         f"{ratio(ours, base):>6} {fmt(floor)} {ratio(ours, floor):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="256x256 images instead of 512x512")
    p.add_argument("--size", type=int, default=None, help="image side (overrides --quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default=None,
                   help="ours' dtype, or a comma list to compare in one run: float32 | float16 | "
                        "bfloat16 (default: fp32 CPU, fp16 CUDA); the baseline is always float32 and "
                        "runs once per model (with the first dtype)")
    p.add_argument("--models", default="tiny,full", help="comma list of tiny, full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=4, help="predict_batch size (0: skip)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="clock for the table (JSON has both); default: cpu when on 1 CPU thread, "
                        "else wall")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    global CLOCK

    from slimeseg.models import pick_device, pick_dtype

    threads = args.threads
    if threads is None and os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5:
        # Other work holds the cores: OpenMP threads spinning for a core make every op many
        # times slower (measured here: tiny step 2.8 s on 2 threads vs 0.1 s on 1), so use one.
        threads = 1
        print("[bench] machine busy (load average above core count): 1 CPU thread",
              file=sys.stderr)
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    device = pick_device(args.device)
    CLOCK = args.clock or ("cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall")
    dtypes = [pick_dtype(d, device) for d in (args.dtype.split(",") if args.dtype else [None])]
    size = args.size or (256 if args.quick else 512)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "size": size,
            "repeats": args.repeats, "clock": CLOCK, "loadavg_start": os.getloadavg(),
            "note": "step excludes the VAE encode (fit with augment=False caches latents); "
                    "step+encode adds the separately timed encode. Full-size = SD 2.1-base UNet "
                    "and VAE-encoder shapes, random weights."}
    results = []
    started = time.perf_counter()
    for name in args.models.split(","):
        first: dict[str, Any] = {}
        for i, dtype in enumerate(dtypes):
            print(f"[bench] {name} at {size}px on {device} in {dtype} ...", file=sys.stderr, flush=True)
            res = bench_model(name, size, device, dtype, args.repeats,
                              args.baseline_repeats or args.repeats, args.warmup, args.batch,
                              skip_baseline=args.no_baseline or i > 0)
            if i == 0:
                first = res
            else:  # the same float32 baseline, measured in this process, for every dtype's row
                res.update({k: v for k, v in first.items() if k.startswith("baseline_")})
            results.append(res)
            gc.collect()
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = f"times: {CLOCK} seconds, median of {args.repeats}; memory: peak GiB\n" + table(results)
    print(text)
    if args.json:
        write_json(args.json, {"meta": meta, "results": results, "table": text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
