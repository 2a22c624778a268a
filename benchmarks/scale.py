"""Throughput of `slimeseg segment` on one process vs on Ray Data with 1 and 2 workers.

One run, one machine, the same images, artifact and settings for every configuration, so the
Ray overhead (Ray with 1 worker / one process) and the scaling (2 workers / 1 worker) are ratios:

- single: `python -m slimeseg segment LEARNED DIR --out OUT` in a fresh process (1 torch thread);
- ray-1, ray-2: `slimeseg.distributed.segment(...)` on a local cluster started once
  (`ray.init(num_cpus=2)`, timed apart), 1 or 2 workers of 1 CPU (1 torch thread) each.

Each configuration runs `--repeats` times (interleaved) into fresh folders; the medians are
reported. "e2e" is images / wall seconds of the whole run, start-up included (a fresh process
imports torch and loads the model; Ray starts worker processes, which do the same). "steady" is
the rate at which label maps appear once running: from the modification times of the written
`NAME.png` files (the last file of each image), (N - k) / (t_N - t_k) for the k = N/10 first,
which leaves start-up out; it is what a long job runs at. "start" is the seconds until the first
label map. Ray Data's own actors start once, before the runs (the no-op pipeline below). Also measured: the CPU cost per image of decoding and writing (what would limit a GPU
pool), the driver's cost per input (listing, naming, skipping), and Ray Data's own ceiling
(rows/s through a no-op actor pool).

    python benchmarks/scale.py --json benchmarks/results-scale.json      # ~25 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimeseg import Segmenter, distributed  # noqa: E402
from slimeseg.io import load_image  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402
from slimeseg.synthetic.tiny import save_tiny_sd  # noqa: E402
from slimeseg.writers import SegmentWriter, write_json  # noqa: E402

LAB = ROOT / "tests" / "assets" / "lab-sd"
CONFIGS = ("single", "ray-1", "ray-2")


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error"}


def run(config: str, learned: Path, folder: Path, out: Path) -> dict:
    """One run of a configuration: wall seconds, and the times its label maps appeared."""
    start, t = time.time(), time.perf_counter()
    if config == "single":
        subprocess.run([sys.executable, "-m", "slimeseg", "segment", str(learned), str(folder),
                        "--out", str(out), "--quiet"], check=True, env=_env(), stdout=subprocess.DEVNULL)
    else:
        r = distributed.segment(str(learned), [str(folder)], out, workers=int(config[-1]),
                                cpus_per_worker=1, progress=False, echo=None)
        assert r.segmented == len(list(folder.iterdir())) and not r.failed, r.summary()
    seconds = time.perf_counter() - t
    done = sorted(p.stat().st_mtime for p in out.glob("*.png") if not p.name.endswith(".overlay.png"))
    n, k = len(done), max(1, len(done) // 10)
    return {"seconds": seconds, "e2e_images_per_s": n / seconds,
            "steady_images_per_s": (n - k) / (done[-1] - done[k - 1]),
            "start_s": done[0] - start, "load_avg_1min": os.getloadavg()[0]}


def io_costs(tmp: Path, repeats: int = 10) -> list[dict]:
    """Milliseconds of CPU per image: decode (PNG, JPEG q90), write label map, + overlay."""
    rows = []
    for size in (256, 512):
        image, mask = shapes_scene(1, size)
        Image.fromarray(image).save(tmp / f"io{size}.png")
        Image.fromarray(image).save(tmp / f"io{size}.jpg", quality=90)
        labels_only = SegmentWriter(tmp / f"io-l{size}", SHAPE_CLASSES, overlays=False)
        both = SegmentWriter(tmp / f"io-o{size}", SHAPE_CLASSES)
        labels_only.prepare()
        both.prepare()

        def ms(fn) -> float:
            times = []
            for _ in range(repeats):
                t = time.process_time()
                fn()
                times.append(time.process_time() - t)
            return 1000 * statistics.median(times)

        rows.append({"size": size,
                     "decode_png_ms": ms(lambda s=size: load_image(tmp / f"io{s}.png")),
                     "decode_jpg_ms": ms(lambda s=size: load_image(tmp / f"io{s}.jpg")),
                     "write_labels_ms": ms(lambda w=labels_only, i=image, m=mask: w.write("x", i, m)),
                     "write_labels_overlay_ms": ms(lambda w=both, i=image, m=mask: w.write("x", i, m))})
    return rows


def driver_costs(tmp: Path, n: int = 100_000) -> dict:
    """The driver's work per input before any worker runs: list, name, skip (empty output)."""
    listing = tmp / "list.txt"
    listing.write_text("".join(f"photos/dir{i % 100}/img{i:07d}.jpg\n" for i in range(n)))
    t = time.perf_counter()
    paths = distributed.list_inputs([str(listing)])
    t_list = time.perf_counter() - t
    writer = SegmentWriter(tmp / "driver-out", SHAPE_CLASSES)
    writer.prepare()
    t = time.perf_counter()
    names = writer.names(paths)
    t_names = time.perf_counter() - t
    t = time.perf_counter()
    writer.finished(names)
    t_finished = time.perf_counter() - t
    return {"inputs": n, "list_s": t_list, "names_s": t_names, "finished_s": t_finished,
            "us_per_input": 1e6 * (t_list + t_names + t_finished) / n}


class _Noop:
    def __call__(self, batch: dict) -> dict:
        return {"path": batch["path"], "status": batch["path"]}


def engine_ceiling(ray, rows: int = 20_000, block: int = 64) -> dict:
    """Rows/s of Ray Data's pipeline itself: 2 no-op actors, blocks of 64 rows, as segment runs."""
    import pyarrow as pa

    blocks = [pa.table({"path": [f"p{i}" for i in range(j, min(j + block, rows))]})
              for j in range(0, rows, block)]
    t = time.perf_counter()
    ds = ray.data.from_arrow(blocks).map_batches(
        _Noop, batch_size=block, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
    n = sum(len(b["path"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    seconds = time.perf_counter() - t
    assert n == rows
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=120)
    p.add_argument("--size", type=int, default=256, help="image side and model input (px)")
    p.add_argument("--models", default="tiny,lab")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.update({k: v for k, v in _env().items() if k in ("PYTHONPATH", "OMP_NUM_THREADS")})
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    folder = tmp / "images"
    folder.mkdir()
    for i in range(args.images):
        Image.fromarray(shapes_scene(i + 1, args.size)[0]).save(folder / f"scene{i:03d}.png")
    models = {"tiny": str(save_tiny_sd(tmp / "tiny-sd", seed=0)), "lab": str(LAB)}
    learned = {}
    image, mask = shapes_scene(0, args.size)
    for name in args.models.split(","):
        seg = Segmenter.from_pretrained(models[name], device="cpu")
        learned[name] = tmp / f"{name}.safetensors"
        seg.fit([image], [mask], SHAPE_CLASSES, steps=1, image_size=args.size, method="slime", upsample="bilinear", progress=False).save(learned[name])

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "OMP_NUM_THREADS": "1"}})
    cluster_start_s = time.perf_counter() - t
    ceiling = engine_ceiling(ray)  # also starts Ray Data's own actors, once, before the runs
    rows = []
    for name in learned:
        runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
        for rep in range(args.repeats):
            for config in CONFIGS:
                out = tmp / f"out-{name}-{config}-{rep}"
                runs[config].append(run(config, learned[name], folder, out))
                r = runs[config][-1]
                print(f"{name:5} {config:7} run {rep}: {r['seconds']:6.1f} s, steady "
                      f"{r['steady_images_per_s']:.2f} images/s, first label map at {r['start_s']:.1f} s, "
                      f"load {r['load_avg_1min']:.1f}", flush=True)
        reference = tmp / f"out-{name}-single-0"
        same = all((tmp / f"out-{name}-{c}-{rep}" / f).read_bytes() == (reference / f).read_bytes()
                   for c in CONFIGS[1:] for rep in range(args.repeats) for f in os.listdir(reference))
        for config in CONFIGS:
            med = {k: statistics.median(r[k] for r in runs[config]) for k in runs[config][0]}
            rows.append({"model": name, "config": config, "images": args.images, **med,
                         "runs": runs[config], "outputs_equal_single": same})
    ray.shutdown()
    io = io_costs(tmp)
    driver = driver_costs(tmp)

    by = {(r["model"], r["config"]): r for r in rows}
    lines = [f"{args.size} px, {args.images} images, median of {args.repeats} runs, 1 torch thread per "
             f"process, 2 cores shared with other jobs (cluster start {cluster_start_s:.1f} s, not counted)",
             f"{'model':6} {'config':7} {'seconds':>8} {'start s':>8} {'e2e img/s':>10} {'steady img/s':>13} "
             f"{'(min-max)':>11} {'e2e / single':>13} {'steady / single':>16}"]
    for r in rows:
        base = by[(r["model"], "single")]
        r["e2e_vs_single"] = r["e2e_images_per_s"] / base["e2e_images_per_s"]
        r["steady_vs_single"] = r["steady_images_per_s"] / base["steady_images_per_s"]
        lines.append(f"{r['model']:6} {r['config']:7} {r['seconds']:8.1f} {r['start_s']:8.1f} "
                     f"{r['e2e_images_per_s']:10.2f} {r['steady_images_per_s']:13.2f} "
                     f"{min(x['steady_images_per_s'] for x in r['runs']):5.2f}-"
                     f"{max(x['steady_images_per_s'] for x in r['runs']):<5.2f} "
                     f"{r['e2e_vs_single']:13.2f} {r['steady_vs_single']:16.2f}")
    for name in learned:
        one, two = by[(name, "ray-1")], by[(name, "ray-2")]
        lines.append(f"{name}: 2 workers / 1 worker: e2e {two['e2e_images_per_s'] / one['e2e_images_per_s']:.2f}, "
                     f"steady {two['steady_images_per_s'] / one['steady_images_per_s']:.2f}; "
                     f"Ray outputs equal the single process's: {two['outputs_equal_single']}")
    lines.append("CPU ms per image: " + "; ".join(
        f"{r['size']} px decode png {r['decode_png_ms']:.1f} / jpg {r['decode_jpg_ms']:.1f}, write labels "
        f"{r['write_labels_ms']:.1f}, labels+overlay {r['write_labels_overlay_ms']:.1f}" for r in io))
    lines.append(f"driver: {driver['us_per_input']:.1f} us per input to list, name and skip "
                 f"({driver['inputs']} inputs); Ray Data ceiling: {ceiling['rows_per_s']:.0f} rows/s "
                 "through 2 no-op actors")
    table = "\n".join(lines)
    print(table)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "ray": ray.__version__, "load_avg_at_end": os.getloadavg()},
              "command": "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "size": args.size, "images": args.images, "repeats": args.repeats,
              "cluster_start_s": cluster_start_s, "rows": rows,
              "io_ms": io, "driver": driver, "engine_ceiling": ceiling, "table": table}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
