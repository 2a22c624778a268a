"""Images as they are: squash vs aspect kept vs native-resolution windows on high-resolution lab scenes.

A high-resolution lab set (`slimeseg.synthetic.compose`: non-square canvases holding several whole
objects from ~0.9 of the frame down to ~1/6 of it, exact masks, deterministic from a seed) is
segmented with the SAME embeddings (the usual 1- and 5-shot fits on `tests/assets/lab-sd`'s
training world, as `benchmarks/quality.py` draws them) in each inference mode:

- squash:        the image squashed to an image_size square (the paper's, before this change)
- keep:          aspect ratio kept, about image_size^2 pixels
- win-X:         image_size windows over the image at scale X (1 = native), windows alone
- win-X+mean:    ... averaged with the whole-image (keep) pass
- win-X+gate:    ... the whole-image pass decides object vs background, the windows the part

Per mode: mIoU, per-class IoU (small parts reported apart), median seconds per image, mean +- std
over seeds, and the peak RSS of one large image in a fresh child. Fits are cached under --cache.

    python benchmarks/native.py --json benchmarks/results-native-lab.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.quality import (  # noqa: E402
    AUGMENT,
    LAB_MODEL,
    LAB_PRECISION,
    TRAIN_POOL,
    TRAIN_WORLD_SEED,
    groups,
    mean_std,
)
from slimeseg import Learned, Segmenter, SlimeConfig, __version__, inference  # noqa: E402
from slimeseg.metrics import ConfusionMatrix  # noqa: E402
from slimeseg.synthetic import World, compose  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

SMALL_PARTS = {"car": ("wheel", "light", "window"), "face": ("eye", "mouth")}
CANVASES = ((1024, 768), (1536, 1024))  # (width, height), alternated over the test set
HIGHRES_SEED = 7  # the compose() seed base of the high-resolution test set


def modes(scales: list[str]) -> dict[str, dict[str, Any]]:
    """Inference settings per mode name."""
    out: dict[str, dict[str, Any]] = {"squash": {"aspect": "squash"}, "keep": {"aspect": "keep"}}
    for s in scales:
        for rule in ("none", "mean", "gate"):
            name = f"win-{s}" + ("" if rule == "none" else f"+{rule}")
            out[name] = {"aspect": "keep", "resolution": "native" if s == "1" else s, "context": rule}
    return out


def highres_set(kind: str, n: int) -> list[Any]:
    """n deterministic large scenes of `kind`, canvases alternating between CANVASES."""
    return [compose(kind, *CANVASES[i % len(CANVASES)], seed=HIGHRES_SEED * 1000 + i) for i in range(n)]


def fitted(seg: Segmenter, kind: str, shots: int, seed: int, size: int, cache: Path) -> Learned:
    """The seeded k-shot fit of quality.py's protocol (cached)."""
    path = cache / f"{kind}-{shots}shot-seed{seed}-{size}.safetensors"
    if path.exists():
        return Learned.load(path)
    world = World(kind, size=size, seed=TRAIN_WORLD_SEED)
    pick = np.random.default_rng(seed).permutation(TRAIN_POOL)[:shots]
    train = [world.sample(int(i)) for i in pick]
    cfg = SlimeConfig(image_size=size, seed=seed, method="slime", upsample="bilinear", **AUGMENT[kind], **LAB_PRECISION)
    learned = seg.fit([s.image for s in train], [s.mask for s in train], list(world.classes), cfg,
                      progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    learned.save(path)
    return learned


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score(seg: Segmenter, learned: Learned, test: list[Any], scales: list[str],
          classes: list[str], **settings: Any) -> dict[str, dict[str, Any]]:
    """mIoU, per-class IoU and median seconds per image of every mode. The window modes of one
    scale share one windows pass and one whole-image pass per image (the rules only combine them);
    each mode's seconds are what it alone would take. `settings`: inference settings over the
    fit's own (method, upsample)."""
    base = SlimeConfig.from_dict(learned.config).replace(**{**LAB_PRECISION, **settings})
    names = list(modes(scales))
    cms = {m: ConfusionMatrix(len(classes)) for m in names}
    secs: dict[str, list[float]] = {m: [] for m in names}
    for s in test:
        whole = {}
        for m in ("squash", "keep"):
            cfg = base.replace(aspect=m)
            t0 = time.perf_counter()
            whole[m] = inference.score_batch(seg.sd, inference.model_input(s.image, cfg)[None], learned, cfg)[0]
            pred = inference.labels_for(whole[m], s.image, cfg)
            secs[m].append(time.perf_counter() - t0)
            cms[m].update(pred, s.mask)
        for scale in scales:
            cfg = base.replace(aspect="keep", resolution="native" if scale == "1" else scale)
            t0 = time.perf_counter()
            windows = inference.score_windows(seg.sd, s.image, learned, cfg, progress=False)
            t_win = time.perf_counter() - t0
            for rule in ("none", "mean", "gate"):
                name = f"win-{scale}" + ("" if rule == "none" else f"+{rule}")
                t0 = time.perf_counter()
                pred = inference.labels_for(inference.combine(windows, whole["keep"], rule), s.image, cfg)
                extra = secs["keep"][-1] if rule != "none" else 0.0  # the whole-image pass
                secs[name].append(t_win + extra + time.perf_counter() - t0)
                cms[name].update(pred, s.mask)
    out = {}
    for m in names:
        res = cms[m].result(classes)
        out[m] = {"miou": float(res.miou), "per_class": {k: float(v) for k, v in res.per_class.items()},
                  "seconds_per_image": statistics.median(secs[m])}
    return out


def peak_rss(seg: Segmenter, learned: Learned, image: np.ndarray, settings: dict[str, Any]) -> float:
    """Peak RSS (MB) of a fresh process predicting `image` in one mode: measured in a child so the
    figure is the mode's own, not this long run's high-water mark."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        seg.predict(image, learned, **settings)
        q.put(rss_mb())

    proc = ctx.Process(target=child)
    proc.start()
    value = q.get()
    proc.join()
    return value


def summarise(runs: list[dict[str, Any]], rss: dict[str, float]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (kind, shots, mode), the small parts apart."""
    rows = []
    for key, group in groups(runs, lambda r: (r["kind"], r["shots"], r["mode"])).items():
        miou_mean, miou_std = mean_std(r["miou"] for r in group)
        small_mean, small_std = mean_std(statistics.mean(r["per_class"][c] for c in SMALL_PARTS[key[0]])
                                         for r in group)
        rows.append({"kind": key[0], "shots": key[1], "mode": key[2], "seeds": len(group),
                     "miou_mean": miou_mean, "miou_std": miou_std,
                     "small_mean": small_mean, "small_std": small_std,
                     "peak_rss_mb": rss.get(f"{key[0]}/{key[2]}"),
                     "per_class_mean": {c: statistics.mean(r["per_class"][c] for r in group)
                                        for c in group[0]["per_class"]},
                     "seconds_per_image": statistics.median(r["seconds_per_image"] for r in group)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'kind':<5} {'shots':>5} {'mode':<14} {'mIoU %':>12} {'small parts %':>14} "
            f"{'s/image':>8} {'RSS MB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kind']:<5} {r['shots']:>5} {r['mode']:<14} {100 * r['miou_mean']:5.1f} ± "
                     f"{100 * r['miou_std']:4.1f} {100 * r['small_mean']:6.1f} ± {100 * r['small_std']:4.1f} "
                     f"{r['seconds_per_image']:8.2f} {r['peak_rss_mb'] or 0:8.0f}")
    return "\n".join(lines)


def sample_grid(seg: Segmenter, learned: Learned, kind: str, out: str, shown: list[str],
                scales: list[str]) -> None:
    """One 1536 x 1024 test scene: the truth and each shown mode's overlay (a third of the size),
    two per row, titled."""
    from PIL import Image, ImageDraw

    from slimeseg.writers import overlay

    s = compose(kind, *CANVASES[1], seed=HIGHRES_SEED * 1000 + 1)
    panels = [("truth", s.mask)] + [(m, seg.predict(s.image, learned, **modes(scales)[m])) for m in shown]
    h, w = s.image.shape[0] // 3, s.image.shape[1] // 3
    grid = Image.new("RGB", (2 * w, ((len(panels) + 1) // 2) * (h + 24)), "white")
    for i, (title, labels) in enumerate(panels):
        tile = Image.fromarray(overlay(s.image, labels)).resize((w, h), Image.Resampling.LANCZOS)
        x, y = (i % 2) * w, (i // 2) * (h + 24)
        grid.paste(tile, (x, y + 24))
        ImageDraw.Draw(grid).text((x + 6, y + 6), title, fill="black")
    grid.quantize(128).save(out, optimize=True)  # a small file: it is committed beside the results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(LAB_MODEL))
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test", type=int, default=30, help="high-resolution test images per kind")
    p.add_argument("--size", type=int, default=256, help="image_size (the lab SD's)")
    p.add_argument("--scales", default="0.5,1", help="window scales (1 = native)")
    p.add_argument("--modes", default=None, help="comma list of modes (default: all)")
    p.add_argument("--method", default="slime", help="slime (the paper's, as the fits are made), "
                   "match or fuse: the same fits' artifacts")
    p.add_argument("--upsample", default="bilinear", help="bilinear or guided")
    p.add_argument("--cache", default="/tmp/slimeseg-native-fits")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--merge", nargs="+", metavar="JSON", help="join reports of runs per kind")
    p.add_argument("--sample", metavar="PNG", help="only draw one scene in several modes (the first "
                   "kind, 1-shot, seed 0) to PNG")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.merge:
        reports = [json.loads(Path(f).read_text()) for f in a.merge]
        runs = [r for rep in reports for r in rep["runs"]]
        rss = {k: v for rep in reports for r in rep["rows"] for k, v in
               [(f"{r['kind']}/{r['mode']}", r["peak_rss_mb"])]}
        report = {**reports[0], "runs": runs, "rows": summarise(runs, rss), "merged_from": a.merge,
                  "seconds": sum(rep["seconds"] for rep in reports)}
        print(table(report["rows"]))
        if a.json:
            write_json(a.json, report)
        return report
    if a.threads:
        torch.set_num_threads(a.threads)
    seg = Segmenter.from_pretrained(a.model, device="cpu")
    scales = a.scales.split(",")
    if a.sample:
        kind = a.kinds.split(",")[0]
        shown = ["squash", "keep", f"win-{scales[-1]}", f"win-{scales[-1]}+mean", f"win-{scales[-1]}+gate"]
        sample_grid(seg, fitted(seg, kind, 1, 0, a.size, Path(a.cache)), kind, a.sample, shown, scales)
        return {}
    all_modes = modes(scales)
    chosen = a.modes.split(",") if a.modes else list(all_modes)
    runs, rss, start = [], {}, time.perf_counter()
    for kind in a.kinds.split(","):
        test = highres_set(kind, a.test)
        classes = list(World(kind, size=a.size).classes)
        for seed in map(int, a.seeds.split(",")):  # seeds outermost: an interrupted run is balanced
            for shots in map(int, a.shots.split(",")):
                learned = fitted(seg, kind, shots, seed, a.size, Path(a.cache))
                scored = score(seg, learned, test, scales, classes, method=a.method, upsample=a.upsample)
                for mode in chosen:
                    r = {**scored[mode], "kind": kind, "shots": shots, "seed": seed, "mode": mode,
                         "method": a.method, "upsample": a.upsample}
                    runs.append(r)
                    small = statistics.mean(r["per_class"][c] for c in SMALL_PARTS[kind])
                    print(f"{kind} {shots}-shot seed {seed} {mode:<14} mIoU {100 * r['miou']:5.1f} "
                          f"small {100 * small:5.1f} {r['seconds_per_image']:.2f} s/image", flush=True)
                if a.json:  # after every fit, so an interrupted run keeps what it measured
                    write_json(a.json + ".partial", {"runs": runs})
        big = max(test, key=lambda t: t.image.size)
        for mode in chosen:  # peak memory of one large image per mode, each in a fresh child
            rss[f"{kind}/{mode}"] = peak_rss(seg, learned, big.image, all_modes[mode])
    rows = summarise(runs, rss)
    print(table(rows))
    report = {"benchmark": "slimeseg native resolution (lab)", "model": a.model, "size": a.size,
              "test_images": a.test, "canvases": CANVASES, "modes": {m: all_modes[m] for m in chosen},
              "runs": runs, "rows": rows, "seconds": time.perf_counter() - start,
              "torch": torch.__version__, "slimeseg": __version__, "machine": platform.processor(),
              "threads": torch.get_num_threads(),
              "note": "peak RSS: a forked child (the model already loaded) predicting the largest "
                      "test image of the kind in that mode, with the last fit's embeddings"}
    if a.json:
        write_json(a.json, report)
    return report


if __name__ == "__main__":
    main()
